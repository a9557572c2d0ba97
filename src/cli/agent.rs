//! `holdfast agent`: the DaemonSet's long-running container. Every half `refreshSeconds` it
//! copies a rotated service-account token where the plugin reads it and refreshes the
//! cluster-info cache, so the first pod after a cold reboot finds a warm cache even when the
//! VIP is down. ADD and DEL never need it. `holdfast agent --check` is its exec probe.

use super::{conffile, install, logging};
use crate::cluster::{self, KubeConf};
use crate::cni::{Error, Result};
use crate::plugin::conf::Conf;
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

const HEALTH_FILE: &str = "agent.json";

/// What the probe reads: the loop's last beat and the last refresh's outcome.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub beat_unix: u64,
    pub interval_secs: u64,
    pub last_refresh_ok_unix: Option<u64>,
    pub last_outcome: String,
}

struct Args {
    conf: Option<PathBuf>,
    sa_dir: PathBuf,
    check: bool,
}

fn parse(args: &[String]) -> std::result::Result<Args, String> {
    let mut a = Args {
        conf: None,
        sa_dir: install::SA_DIR.into(),
        check: false,
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--conf" => a.conf = Some(it.next().ok_or("--conf needs a path")?.into()),
            "--sa-dir" => a.sa_dir = it.next().ok_or("--sa-dir needs a path")?.into(),
            "--check" => a.check = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// Half the refresh period: a cache refreshed this often is never older than refreshSeconds.
pub fn interval(kube: &KubeConf) -> Duration {
    Duration::from_secs((kube.refresh_seconds / 2).clamp(5, 600))
}

/// The command's entry point; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("holdfast agent: {e}");
            return 2;
        }
    };
    let loaded =
        conffile::load(a.conf.as_deref()).and_then(|(f, c)| c.kube().cloned().map(|k| (f, c, k)));
    let (file, conf, kube) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("holdfast agent: {e}");
            return 1;
        }
    };
    if a.check {
        return check(&conf.state_dir, crate::state::now_unix());
    }
    // The container's log, not the plugin's logFile.
    logging::init(None, conf.log_level.as_str());
    tracing::info!(
        "agent for {} (every {:?}): cache {}",
        file.display(),
        interval(&kube),
        cluster::cache::path(&conf.state_dir).display()
    );
    crate::routing::watch::start(&conf.routing, &conf.state_dir, &kube);
    match run(&conf, &kube, &a.sa_dir) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

/// Ticks until SIGTERM or SIGINT (as PID 1 of its container nothing else would stop it).
fn run(conf: &Conf, kube: &KubeConf, sa_dir: &Path) -> Result<()> {
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block()
        .map_err(|e| Error::Internal(format!("blocking signals: {e}")))?;
    let mut last_ok = None;
    loop {
        let outcome = tick(conf, kube, sa_dir);
        let now = crate::state::now_unix();
        if outcome.is_ok() {
            last_ok = Some(now);
        }
        let health = Health {
            beat_unix: now,
            interval_secs: interval(kube).as_secs(),
            last_refresh_ok_unix: last_ok,
            last_outcome: outcome.unwrap_or_else(|e| e),
        };
        let bytes = serde_json::to_vec(&health).map_err(|e| Error::Internal(e.to_string()))?;
        crate::state::atomic::write(&conf.state_dir.join(HEALTH_FILE), &bytes, false)?;
        if let Some(sig) = wait_for(&stop, interval(kube)) {
            tracing::info!("agent stopping on {sig:?}");
            return Ok(());
        }
    }
}

/// One round: token and CA, then the cache. `Ok` names what was fetched, `Err` why not.
fn tick(conf: &Conf, kube: &KubeConf, sa_dir: &Path) -> std::result::Result<String, String> {
    let dir = kube.kubeconfig.parent().unwrap_or(Path::new("."));
    match install::sync_service_account(sa_dir, dir) {
        Ok(files) => {
            for (f, changed) in files {
                if changed {
                    tracing::info!("replaced {} from the service account", f.display());
                }
            }
        }
        Err(e) => tracing::warn!("service account: {e}"),
    }
    match crate::runtime::block_on(cluster::refresh(kube, &conf.state_dir)) {
        Ok(Ok(info)) => {
            let cidrs: Vec<String> = info.pod_cidrs.iter().map(|c| c.to_string()).collect();
            let what = format!(
                "node {} podCIDRs [{}] from {}",
                info.node_name,
                cidrs.join(", "),
                info.fetched_from
            );
            tracing::debug!("cache refreshed: {what}");
            Ok(what)
        }
        Ok(Err(attempts)) => {
            let why = attempts
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!("Kubernetes API unreachable, cache kept: {why}");
            Err(why)
        }
        Err(e) => {
            tracing::warn!("refresh: {e}");
            Err(e.to_string())
        }
    }
}

/// Sleeps `d` unless one of `set` (blocked) arrives first; returns it then.
fn wait_for(set: &SigSet, d: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: 0,
    };
    // SAFETY: both pointers are to live values of the right types; a null siginfo is allowed.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(n).ok()
}

/// The probe: healthy while the loop beats (a dead API is not the agent's failure; the cache
/// covers it and `holdfast doctor` says so).
fn check(state_dir: &Path, now: u64) -> i32 {
    match health_verdict(state_dir, now) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(line) => {
            println!("{line}");
            1
        }
    }
}

fn health_verdict(state_dir: &Path, now: u64) -> std::result::Result<String, String> {
    let p = state_dir.join(HEALTH_FILE);
    let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let h: Health = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
    let age = now.saturating_sub(h.beat_unix);
    let limit = h.interval_secs.saturating_mul(3).max(30);
    let refreshed = h
        .last_refresh_ok_unix
        .map(|t| format!("{}s ago", now.saturating_sub(t)))
        .unwrap_or_else(|| "never".into());
    let line = format!(
        "agent beat {age}s ago (limit {limit}s); cache last refreshed {refreshed}; last: {}",
        h.last_outcome
    );
    if age <= limit { Ok(line) } else { Err(line) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_fails_when_the_loop_stops_beating() {
        let d = std::env::temp_dir().join(format!("hf-agent-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(health_verdict(&d, 1000).is_err(), "no health file yet");
        let h = Health {
            beat_unix: 1000,
            interval_secs: 30,
            last_refresh_ok_unix: None,
            last_outcome: "10.43.0.1:443: connect timed out".into(),
        };
        std::fs::write(d.join(HEALTH_FILE), serde_json::to_vec(&h).unwrap()).unwrap();
        let ok = health_verdict(&d, 1080).unwrap();
        assert!(
            ok.contains("refreshed never") && ok.contains("timed out"),
            "{ok}"
        );
        assert!(health_verdict(&d, 1091).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_blocked_signal_ends_the_wait() {
        let mut set = SigSet::empty();
        set.add(Signal::SIGUSR1);
        set.thread_block().unwrap();
        assert_eq!(wait_for(&set, Duration::ZERO), None);
        nix::sys::signal::raise(Signal::SIGUSR1).unwrap();
        assert_eq!(
            wait_for(&set, Duration::from_secs(5)),
            Some(Signal::SIGUSR1)
        );
        set.thread_unblock().unwrap();
    }
}
