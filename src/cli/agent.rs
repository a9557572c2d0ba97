//! `holdfast agent`: the DaemonSet's long-running container. Every half `refreshSeconds` it
//! copies a rotated service-account token where the plugin reads it and refreshes the
//! cluster-info cache, so the first pod after a cold reboot finds a warm cache even when the
//! VIP is down. ADD and DEL never need it. `holdfast agent --check` is its exec probe. With
//! `--metrics-addr ADDR` it also serves Prometheus metrics, `/healthz` and `/readyz` (metrics.rs)
//! on the same current-thread runtime as the loop.

use super::metrics::{self, Agent};
use super::{conffile, logging};
use crate::cluster::{self, KubeConf, credentials};
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
    metrics_addr: Option<std::net::SocketAddr>,
}

fn parse(args: &[String]) -> std::result::Result<Args, String> {
    let mut a = Args {
        conf: None,
        sa_dir: credentials::SA_DIR.into(),
        check: false,
        metrics_addr: None,
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--conf" => a.conf = Some(it.next().ok_or("--conf needs a path")?.into()),
            "--sa-dir" => a.sa_dir = it.next().ok_or("--sa-dir needs a path")?.into(),
            "--check" => a.check = true,
            "--metrics-addr" => {
                let v = it.next().ok_or("--metrics-addr needs ADDR:PORT")?;
                let addr = v
                    .parse()
                    .map_err(|e| format!("--metrics-addr {v:?}: {e} (e.g. 0.0.0.0:9473)"))?;
                a.metrics_addr = Some(addr);
            }
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
    match run(conf, kube, &a.sa_dir, a.metrics_addr) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

/// Ticks until SIGTERM or SIGINT (as PID 1 of its container nothing else would stop it), on
/// one current-thread runtime that also serves the metrics when asked to.
fn run(
    conf: Conf,
    kube: KubeConf,
    sa_dir: &Path,
    metrics_addr: Option<std::net::SocketAddr>,
) -> Result<()> {
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    // Blocked before any other thread exists, so every thread inherits the mask and only the
    // waiter below takes them.
    stop.thread_block()
        .map_err(|e| Error::Internal(format!("blocking signals: {e}")))?;
    // The Node watch runs on a thread of its own, started after the mask so it inherits it.
    crate::routing::watch::start(&conf.routing, &conf.state_dir, &kube);
    let agent = std::sync::Arc::new(Agent::new(conf, kube));
    crate::runtime::block_on(async move {
        if let Some(addr) = metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io(format!("binding the metrics address {addr}"), e))?;
            tracing::info!("metrics, /healthz and /readyz on http://{addr}");
            tokio::spawn(metrics::serve(listener, agent.clone()));
        }
        let mut signalled = signal_waiter(stop);
        loop {
            let outcome = tick(&agent, sa_dir).await;
            beat(&agent, outcome)?;
            let interval = interval(&agent.kube);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                sig = &mut signalled => {
                    tracing::info!("agent stopping on {:?}", sig.ok());
                    return Ok(());
                }
            }
        }
    })
}

/// Records the loop's beat where the probes read it: the file for `--check`, memory for
/// `/healthz`.
fn beat(agent: &Agent, outcome: std::result::Result<String, String>) -> Result<()> {
    let now = crate::state::now_unix();
    let b = agent.beat(now, interval(&agent.kube).as_secs(), outcome);
    let health = Health {
        beat_unix: b.unix,
        interval_secs: b.interval_secs,
        last_refresh_ok_unix: b.last_ok_unix,
        last_outcome: b.last_outcome,
    };
    let bytes = serde_json::to_vec(&health).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::atomic::write(&agent.conf.state_dir.join(HEALTH_FILE), &bytes, false)
}

/// A thread that waits for one of `set` (blocked in every thread) and hands it over.
fn signal_waiter(set: SigSet) -> tokio::sync::oneshot::Receiver<Signal> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // A bounded wait, again and again: it notices a loop that went away.
            while !tx.is_closed() {
                if let Some(sig) = wait_for(&set, Duration::from_secs(1)) {
                    let _ = tx.send(sig);
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no signal thread ({e}): stop the agent with SIGKILL");
    }
    rx
}

/// One round: token and CA, then the cache. `Ok` names what was fetched, `Err` why not.
async fn tick(agent: &Agent, sa_dir: &Path) -> std::result::Result<String, String> {
    let kube = &agent.kube;
    let dir = kube.kubeconfig.parent().unwrap_or(Path::new("."));
    match credentials::sync_service_account(sa_dir, dir) {
        Ok(files) => {
            for (f, changed) in files {
                if changed {
                    tracing::info!("replaced {} from the service account", f.display());
                }
            }
        }
        Err(e) => tracing::warn!("service account: {e}"),
    }
    let dir = agent.conf.state_dir.clone();
    // On a blocking thread: it may wait for an ADD's change of the tables.
    let restored = tokio::task::spawn_blocking(move || crate::plugin::hostports::restore(&dir))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = restored {
        tracing::warn!("hostPort tables: {e}");
    }
    let started = std::time::Instant::now();
    let refreshed = cluster::refresh(kube, &agent.conf.state_dir).await;
    let took = started.elapsed();
    match refreshed {
        Ok(outcome) => {
            agent.requests(&outcome, took);
            match outcome.info {
                Some(info) => {
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
                None => {
                    let why = cluster::client::describe_attempts(&outcome.failures);
                    tracing::warn!("{}", cache_kept(&outcome.failures));
                    Err(why)
                }
            }
        }
        Err(e) => {
            tracing::warn!("refresh: {e}");
            Err(e.to_string())
        }
    }
}

/// The warning for a round that got no cluster info.
fn cache_kept(attempts: &[cluster::client::Attempt]) -> String {
    format!(
        "{}, cache kept: {}",
        cluster::client::headline(attempts),
        cluster::client::describe_attempts(attempts)
    )
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
    // Bounded and non-blocking: a FIFO planted there must not hang the probe.
    let bytes = crate::state::atomic::read(&p, 64 << 10)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: no beat yet", p.display()))?;
    let h: Health = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
    let limit = h.interval_secs.saturating_mul(3).max(30);
    // A beat from the future (the clock stepped back) proves nothing about now: unhealthy, so
    // the restarted agent beats by the new clock.
    let Some(age) = now
        .checked_sub(h.beat_unix)
        .or_else(|| (h.beat_unix <= now.saturating_add(h.interval_secs)).then_some(0))
    else {
        return Err(format!(
            "agent beat dated {}s in the future (clock stepped back?)",
            h.beat_unix.saturating_sub(now)
        ));
    };
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
        // A beat from the future: within one interval is clock jitter, beyond is a step back.
        assert!(health_verdict(&d, 980).is_ok());
        let e = health_verdict(&d, 900).unwrap_err();
        assert!(e.contains("future"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_probe_does_not_hang_on_a_fifo() {
        let d = std::env::temp_dir().join(format!("hf-agent-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let fifo = d.join(HEALTH_FILE);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let dd = d.clone();
        std::thread::spawn(move || tx.send(health_verdict(&dd, 1000)));
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the probe hung on a FIFO");
        assert!(got.unwrap_err().contains("not a regular file"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_answer_that_was_not_usable_is_not_called_unreachable() {
        use cluster::client::{Attempt, Kind};
        let a = |kind| Attempt {
            server: "10.43.0.1:443".into(),
            error: "HTTP 500: boom".into(),
            kind,
        };
        let line = cache_kept(&[a(Kind::Unreachable), a(Kind::Rejected)]);
        assert!(
            line.starts_with("no usable answer from the Kubernetes API, cache kept: "),
            "{line}"
        );
        assert!(cache_kept(&[a(Kind::Unreachable)]).starts_with("Kubernetes API unreachable"));
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
