//! Logs go to `logFile` or stderr, never stdout (stdout carries the result).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// At `info` and quieter, only holdfast's own events: a fallback is one line naming the failure,
/// not that line plus the HTTP client's. At `debug` and `trace`, every crate's except the kube
/// client's: its per-request ERROR lines (`HTTP{…}: failed with error …`) and its WARN with a
/// malformed body's whole text would read as failures to log alerting, and holdfast names each
/// failed attempt itself.
///
/// The log file is created 0600 and never opened through a symlink.
pub fn init(file: Option<&Path>, level: &str) {
    let level = match level {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    let others = if level >= LevelFilter::DEBUG {
        level
    } else {
        LevelFilter::OFF
    };
    let filter = Targets::new()
        .with_target("holdfast", level)
        .with_target("kube_client", LevelFilter::OFF)
        .with_default(others);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false);
    let opened = file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
            .ok()
    });
    let _ = match opened {
        Some(f) => tracing_subscriber::registry()
            .with(
                fmt.with_writer(std::sync::Mutex::new(f))
                    .with_filter(filter),
            )
            .try_init(),
        None => tracing_subscriber::registry()
            .with(fmt.with_writer(std::io::stderr).with_filter(filter))
            .try_init(),
    };
}
