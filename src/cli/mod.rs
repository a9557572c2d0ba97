//! The process edge: reads the environment and stdin, runs a verb or a subcommand, writes the
//! one result (or error JSON) to stdout and picks the exit code.

mod agent;
mod conffile;
mod counters;
mod doctor;
mod install;
mod logging;
mod metrics;
mod routes;

use crate::cni::config::{config_version, read_json};
use crate::cni::version::{LATEST, SUPPORTED};
use crate::cni::{Command, Env, Error, NetConf, Result};
use crate::plugin::{self, Request, conf::Conf};
use crate::state::at::read_capped;
use serde_json::Value;
use std::io::Write;

pub const NAME: &str = "holdfast";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The most stdin a runtime can reasonably send (a conflist entry with a prevResult): more is
/// an error, not memory.
const MAX_STDIN: usize = 4 << 20;

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    one_malloc_arena();
    if std::env::var_os("CNI_COMMAND").is_none_or(|v| v.is_empty()) {
        return subcommand(std::env::args().skip(1).collect());
    }
    // A panic must still end as error JSON on stdout, not as a trace the runtime cannot parse.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
    let mut version = LATEST.to_string();
    let outcome = guarded(|| cni_main(&mut version));
    match outcome {
        Ok(out) => {
            if let Some(v) = out
                && print_json(&v).is_err()
            {
                return 1;
            }
            0
        }
        Err(e) => {
            tracing::error!(code = e.code(), "{e}");
            let _ = print_json(&serde_json::to_value(e.to_json(&version)).unwrap_or(Value::Null));
            1
        }
    }
}

/// Runs `f`, turning a panic into an internal error.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Internal(format!("panic: {msg}")))
    })
}

fn print_json(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The CNI skeleton: the environment and stdin are read once, stdin is parsed once (its
/// `cniVersion` is kept for an error reply), the typed request is built, and the one runtime
/// of the process runs it.
fn cni_main(version: &mut String) -> Result<Option<Value>> {
    let env = Env::from_lookup(|k| std::env::var_os(k))?;
    let stdin = read_capped(
        std::io::stdin().lock(),
        MAX_STDIN,
        "the network config on stdin",
    )?;
    if env.command == Command::Version {
        // VERSION's stdin is just `{"cniVersion": …}`; answer in it when it is one we speak.
        let v = read_json(&stdin)
            .ok()
            .and_then(|raw| config_version(&raw).ok());
        return Ok(Some(plugin::version_json(v)));
    }
    let raw = read_json(&stdin)?;
    if let Some(v) = raw.get("cniVersion").and_then(Value::as_str) {
        *version = v.to_string();
    }
    let conf = Conf::from_net(NetConf::from_value(raw)?)?;
    logging::init(conf.log_file.as_deref(), conf.log_level.as_str());
    tracing::debug!(command = ?env.command, container = %env.container_id, ifname = %env.ifname, "start");
    // ADD outcomes are counted for the agent's metrics (most ADDs count nothing: counters.rs).
    let counted = (env.command == Command::Add).then(|| conf.state_dir.clone());
    let out = Request::new(env, conf).and_then(|r| crate::runtime::block_on(plugin::run(r)));
    if let Some(state_dir) = counted {
        counters::count_add(&state_dir, out.is_ok());
    }
    out
}

fn about() -> String {
    format!(
        "CNI plugin {NAME} v{VERSION}\nCNI protocol versions supported: {}\n\n\
         Run by a container runtime with CNI_COMMAND set (ADD, DEL, CHECK, VERSION, STATUS, GC).\n\
         Without CNI_COMMAND:\n  \
         {NAME} sync [--conf PATH]     refresh the cluster-info cache now\n  \
         {NAME} doctor [--conf PATH] [--json]\n                               \
         what needs attention on this node (exit 1 if anything)\n  \
         {NAME} install [--bin-dir DIR] [--conf-dir DIR] [--conflist FILE]\n                               \
         put holdfast on this node (DaemonSet init container)\n  \
         {NAME} agent [--conf PATH] [--check] [--metrics-addr ADDR:PORT]\n                               \
         keep the cache warm and the token current (DaemonSet);\n                               \
         with --metrics-addr: /metrics, /healthz, /readyz\n  \
         {NAME} routes apply [--conf PATH]\n                               \
         re-apply the persisted peer table now (boot unit)\n  \
         {NAME} routes clear           remove every route, device and table routing made\n  \
         {NAME} version                print this text\n",
        SUPPORTED.join(", ")
    )
}

fn subcommand(args: Vec<String>) -> i32 {
    match args.first().map(String::as_str) {
        None | Some("version") | Some("--version") | Some("-h") | Some("--help") | Some("help") => {
            eprint!("{}", about());
            0
        }
        Some("sync") => sync(&args[1..]),
        Some("doctor") => doctor_cmd(&args[1..]),
        Some("install") => install::main(&args[1..]),
        Some("agent") => agent::main(&args[1..]),
        Some("routes") => routes::main(&args[1..]),
        Some(other) => {
            eprintln!("{NAME}: unknown subcommand {other:?}\n");
            eprint!("{}", about());
            2
        }
    }
}

/// `--conf PATH` from the arguments, rejecting anything else.
fn conf_arg(
    args: &[String],
    allowed: &[&str],
) -> std::result::Result<(Option<std::path::PathBuf>, Vec<String>), String> {
    let mut conf = None;
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--conf" => conf = Some(it.next().ok_or("--conf needs a path")?.into()),
            f if allowed.contains(&f) => flags.push(f.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((conf, flags))
}

fn doctor_cmd(args: &[String]) -> i32 {
    let (path, flags) = match conf_arg(args, &["--json"]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{NAME} doctor: {e}");
            return 2;
        }
    };
    let (file, conf) = match conffile::load(path.as_deref()) {
        Ok((f, c)) => (Some(f), Ok(c)),
        Err(e) => (path, Err(e.to_string())),
    };
    if let Ok(c) = &conf {
        // Logs stay out of the report: only errors, on stderr.
        let off = c.log_level == crate::plugin::conf::LogLevel::Off;
        logging::init(None, if off { "off" } else { "error" });
    }
    let report = match crate::runtime::block_on(async { Ok(doctor::run(file, conf).await) }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{NAME} doctor: {e}");
            return 2;
        }
    };
    if flags.iter().any(|f| f == "--json") {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("{NAME} doctor: {e}");
                return 2;
            }
        }
    } else {
        print!("{}", doctor::render(&report));
    }
    if report.attention.is_empty() { 0 } else { 1 }
}

/// The plugin's other threads (the pod-netns socket's, the fsyncs') live for a millisecond and
/// allocate little; glibc would give each a fresh arena, pages that only raise the peak RSS.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn sync(args: &[String]) -> i32 {
    let (path, _) = match conf_arg(args, &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{NAME} sync: {e}");
            return 2;
        }
    };
    let (file, conf) = match conffile::load(path.as_deref()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{NAME} sync: {e}");
            return 1;
        }
    };
    logging::init(conf.log_file.as_deref(), conf.log_level.as_str());
    let refreshed = conf
        .kube()
        .and_then(|kube| crate::runtime::block_on(crate::cluster::refresh(kube, &conf.state_dir)));
    match refreshed.map(|o| o.info.ok_or(o.failures)) {
        Ok(Ok(info)) => {
            let cidrs: Vec<String> = info.pod_cidrs.iter().map(|c| c.to_string()).collect();
            let eps: Vec<String> = info.api_endpoints.iter().map(|e| e.to_string()).collect();
            println!(
                "fetched from {}: node {} (uid {}), podCIDRs [{}], apiserver endpoints [{}]\ncached in {} (config {})",
                info.fetched_from,
                info.node_name,
                info.node_uid,
                cidrs.join(", "),
                eps.join(", "),
                crate::cluster::cache::path(&conf.state_dir).display(),
                file.display()
            );
            0
        }
        Ok(Err(attempts)) => {
            eprintln!("{NAME} sync: Kubernetes API unreachable, cache unchanged:");
            for a in attempts {
                eprintln!("  {a}");
            }
            1
        }
        Err(e) => {
            eprintln!("{NAME} sync: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_a_code() {
        std::panic::set_hook(Box::new(|_| {}));
        let e = guarded::<()>(|| panic!("boom {}", 7)).unwrap_err();
        let _ = std::panic::take_hook();
        assert_eq!(e.code(), 999);
        let j = serde_json::to_value(e.to_json("1.0.0")).unwrap();
        assert_eq!(j["msg"], "internal error: panic: boom 7");
        assert!(guarded(|| Ok(1)).is_ok());
    }
}
