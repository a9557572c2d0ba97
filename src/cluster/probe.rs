//! One probe per node at a time (SPEC §7, "a wave is one probe"). After a cold boot the kubelet
//! starts every pod at once: without this, each ADD of the wave would wait on the API itself.
//!
//! The prober holds an exclusive `flock` on `stateDir/api-probe.lock` while it asks; the kernel
//! drops it when the prober exits or is killed, so a dead prober never blocks anyone. The others
//! try the lock without waiting: those with a usable cache take it at once; those without one
//! wait for the lock (bounded by their own `timeoutMs`) and then read the prober's answer from
//! `stateDir/api-probe.json`, which the prober writes before it lets go. An answer published
//! before the waiter came is not its answer: the waiter then probes itself (the prober died).
//!
//! Only ADDs whose cache is stale come here: a fresh cache's ADD never touches these files.

use super::client::{Attempt, Kind};
use crate::state::{at, atomic, lock};
use nix::fcntl::{Flock, OFlag};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const LOCK: &str = "api-probe.lock";
pub const ANSWER: &str = "api-probe.json";
const VERSION: u32 = 1;
const MAX_BYTES: usize = 64 << 10;
/// How much past its own timeoutMs a waiter listens for the prober's answer: the prober may
/// have started its clock a few milliseconds later.
pub const WAIT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// The right to ask the API for the node; published and released on drop of [`Prober`].
pub struct Prober {
    state_dir: PathBuf,
    /// `None` when the lock file could not be used (a read-only stateDir): probing anyway beats
    /// never noticing that the API is back.
    _lock: Option<Flock<File>>,
}

/// Another invocation is asking right now.
pub struct Busy {
    state_dir: PathBuf,
    file: File,
    /// Wall-clock nanoseconds when this invocation came: answers published since are for it.
    since: u128,
}

pub enum Claim {
    Prober(Prober),
    Busy(Busy),
}

/// What a waiter got.
pub enum Waited {
    /// The prober's answer.
    Answer(Answer),
    /// The lock came free without an answer for us (the prober died): we are the prober now.
    Orphaned(Prober),
    /// No answer within the deadline.
    TimedOut,
}

/// What a probe found, as the waiters read it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    version: u32,
    /// Wall-clock nanoseconds when it was published.
    published_nanos: u128,
    /// The API answered and the cache holds what it said.
    pub ok: bool,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    server: String,
    error: String,
    kind: String,
}

impl Answer {
    pub fn attempts(&self) -> Vec<Attempt> {
        self.failures
            .iter()
            .map(|f| Attempt {
                server: f.server.clone(),
                error: f.error.clone(),
                kind: match f.kind.as_str() {
                    "rejected" => Kind::Rejected,
                    "credentials" => Kind::Credentials,
                    "config" => Kind::Config,
                    _ => Kind::Unreachable,
                },
            })
            .collect()
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Unreachable => "unreachable",
        Kind::Rejected => "rejected",
        Kind::Credentials => "credentials",
        Kind::Config => "config",
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn open_lock(state_dir: &Path) -> crate::cni::Result<File> {
    at::Dir::open(state_dir, true)?
        .ok_or_else(|| crate::cni::Error::Internal(format!("{} vanished", state_dir.display())))?
        .open_file(LOCK, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)
}

/// Takes the probe lock without waiting.
pub fn claim(state_dir: &Path) -> Claim {
    let since = now_nanos();
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::debug!("API probe lock: {e}");
        Claim::Prober(Prober {
            state_dir: state_dir.to_path_buf(),
            _lock: None,
        })
    };
    let file = match open_lock(state_dir) {
        Ok(f) => f,
        Err(e) => return unavailable(&e),
    };
    match lock::try_flock(file, &state_dir.join(LOCK)) {
        Ok(Ok(l)) => Claim::Prober(Prober {
            state_dir: state_dir.to_path_buf(),
            _lock: Some(l),
        }),
        Ok(Err(file)) => Claim::Busy(Busy {
            state_dir: state_dir.to_path_buf(),
            file,
            since,
        }),
        Err(e) => unavailable(&e),
    }
}

/// Takes the probe lock, waiting until `deadline` at most; `None` when it did not come.
/// For `sync` and the agent, which ask in any case but should not ask alongside an ADD.
pub fn claim_until(state_dir: &Path, deadline: Instant) -> Option<Prober> {
    let file = open_lock(state_dir).ok()?;
    let l = lock::flock_until(file, &state_dir.join(LOCK), deadline).ok()?;
    Some(Prober {
        state_dir: state_dir.to_path_buf(),
        _lock: Some(l),
    })
}

impl Busy {
    /// Waits for the prober to let go, until `deadline` at most.
    pub fn wait(self, deadline: Instant) -> Waited {
        let what = self.state_dir.join(LOCK);
        let l = match lock::flock_until(self.file, &what, deadline) {
            Ok(l) => l,
            Err(e) => {
                if !matches!(e, crate::cni::Error::TryAgainLater(_)) {
                    tracing::debug!("API probe lock: {e}");
                }
                return Waited::TimedOut;
            }
        };
        match read_answer(&self.state_dir) {
            Some(a) if a.published_nanos >= self.since && a.published_nanos <= now_nanos() => {
                Waited::Answer(a)
            }
            _ => Waited::Orphaned(Prober {
                state_dir: self.state_dir,
                _lock: Some(l),
            }),
        }
    }
}

fn read_answer(state_dir: &Path) -> Option<Answer> {
    let bytes = atomic::read(&state_dir.join(ANSWER), MAX_BYTES).ok()??;
    serde_json::from_slice::<Answer>(&bytes)
        .ok()
        .filter(|a| a.version == VERSION)
}

impl Prober {
    /// Writes down what this probe found for the waiters, then lets go of the lock.
    pub fn publish(self, ok: bool, failures: &[Attempt]) {
        if self._lock.is_none() {
            return;
        }
        let a = Answer {
            version: VERSION,
            published_nanos: now_nanos(),
            ok,
            failures: failures
                .iter()
                .map(|f| Failure {
                    server: f.server.clone(),
                    error: f.error.clone(),
                    kind: kind_name(f.kind).into(),
                })
                .collect(),
        };
        let written = serde_json::to_vec(&a)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                atomic::write(&self.state_dir.join(ANSWER), &b, false).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::debug!("could not publish the API probe's answer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hf-probe-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn failure() -> Attempt {
        Attempt {
            server: "10.43.0.1:443".into(),
            error: "connect timed out".into(),
            kind: Kind::Unreachable,
        }
    }

    #[test]
    fn one_prober_the_waiter_gets_its_answer() {
        let d = dir("answer");
        let Claim::Prober(p) = claim(&d) else {
            panic!("the first claim probes")
        };
        let Claim::Busy(b) = claim(&d) else {
            panic!("a second claim must not probe")
        };
        let d2 = d.clone();
        let t = std::thread::spawn(move || matches!(claim(&d2), Claim::Busy(_)));
        assert!(t.join().unwrap(), "nor a third");
        let waiter = std::thread::spawn(move || b.wait(Instant::now() + Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        p.publish(false, &[failure()]);
        match waiter.join().unwrap() {
            Waited::Answer(a) => {
                assert!(!a.ok);
                assert_eq!(a.attempts(), vec![failure()]);
            }
            _ => panic!("the waiter must get the prober's answer"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_old_answer_or_none_makes_the_waiter_the_prober() {
        let d = dir("orphan");
        let Claim::Prober(p) = claim(&d) else {
            panic!()
        };
        p.publish(true, &[]);
        let Claim::Prober(p) = claim(&d) else {
            panic!()
        };
        let Claim::Busy(b) = claim(&d) else { panic!() };
        // The prober dies without publishing: its lock goes with it.
        drop(p);
        assert!(matches!(
            b.wait(Instant::now() + Duration::from_secs(30)),
            Waited::Orphaned(_)
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_waiter_gives_up_at_its_deadline() {
        let d = dir("deadline");
        let Claim::Prober(_p) = claim(&d) else {
            panic!()
        };
        let Claim::Busy(b) = claim(&d) else { panic!() };
        assert!(matches!(
            b.wait(Instant::now() + Duration::from_millis(100)),
            Waited::TimedOut
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
