//! holdfast runs once per pod start, so what happens before `main` counts. A position-independent
//! executable makes the dynamic loader apply ~13k relocations (reading and dirtying ~0.7 MiB) on
//! every start; linking the plugin binary as non-PIE resolves them at link time. Static builds
//! (`crt-static`, see README) get the same from `-C relocation-model=static` and must not get
//! `-no-pie`. Only the `bin` target is affected. Measured in bench/RESULTS.md.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
