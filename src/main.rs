fn main() {
    std::process::exit(holdfast::cli::main());
}
