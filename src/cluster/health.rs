//! Remembered API health: the last outcome of asking each server (the kubeconfig's and each real
//! endpoint), with its time, in `stateDir/api-health.json`. It is what lets an outage cost one
//! ADD its wait instead of every ADD: a server that did not answer is left alone for
//! `outageHoldSeconds`, then one ADD at a time (the prober of [`super::probe`]) asks it again.

use super::cache::read_state_file;
use crate::state::atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE: &str = "api-health.json";
const VERSION: u32 = 1;
const MAX_BYTES: u64 = 64 << 10;

/// What a server did the last time it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Gave a usable answer.
    Ok,
    /// Did not answer: no connection, refused, reset, or no response in time.
    Unreachable,
    /// Answered, but not usefully (HTTP error, TLS, garbage, no podCIDRs).
    Failing,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Ok => "ok",
            State::Unreachable => "unreachable",
            State::Failing => "failing",
        })
    }
}

/// One server's remembered state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub state: State,
    /// When the server entered this state.
    pub since_unix: u64,
    /// When it was last asked.
    pub checked_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    servers: BTreeMap<String, Server>,
}

/// What to do with a server for this ADD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Healthy or unknown: ask it.
    Ask,
    /// Did not answer within the hold: leave it alone.
    Held,
    /// Did not answer, and the hold has passed: the prober asks it again.
    Due,
}

/// Every server's remembered state, keyed by `addr:port`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    pub servers: BTreeMap<String, Server>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The remembered health; a missing or unreadable file is an empty memory, never an error.
pub fn load(state_dir: &Path) -> Health {
    let servers = read_state_file(&path(state_dir), MAX_BYTES)
        .ok()
        .and_then(|b| serde_json::from_slice::<OnDisk>(&b).ok())
        .filter(|d| d.version == VERSION)
        .map(|d| d.servers)
        .unwrap_or_default();
    Health { servers }
}

impl Health {
    pub fn judge(&self, server: &str, now: u64, hold_secs: u64) -> Judgement {
        match self.servers.get(server) {
            Some(s) if s.state == State::Unreachable => {
                // A check dated in the future (the clock stepped back) says nothing about now.
                match now.checked_sub(s.checked_unix) {
                    Some(age) if age < hold_secs => Judgement::Held,
                    _ => Judgement::Due,
                }
            }
            _ => Judgement::Ask,
        }
    }

    /// Merges one observation, keeping `since` while the state stays the same.
    pub fn observe(&mut self, server: &str, state: State, error: Option<String>, now: u64) {
        let since = match self.servers.get(server) {
            Some(s) if s.state == state && s.since_unix <= now => s.since_unix,
            _ => now,
        };
        self.servers.insert(
            server.to_string(),
            Server {
                state,
                since_unix: since,
                checked_unix: now,
                error,
            },
        );
    }
}

/// Records `observations` (server, state, error) made at `now`. Re-reads the file first so that
/// concurrent ADDs lose as little of each other's news as possible; a failure to write only
/// costs the memory, so it is logged, not returned.
pub fn record(state_dir: &Path, observations: &[(String, State, Option<String>)], now: u64) {
    if observations.is_empty() {
        return;
    }
    let mut h = load(state_dir);
    for (server, state, error) in observations {
        h.observe(server, *state, error.clone(), now);
    }
    let d = OnDisk {
        version: VERSION,
        servers: h.servers,
    };
    let written = serde_json::to_vec_pretty(&d)
        .map_err(|e| e.to_string())
        .and_then(|b| atomic::write(&path(state_dir), &b, false).map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::debug!("could not remember the API's health: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_since_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("hf-health-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir), Health::default());
        let vip = "10.43.0.1:443".to_string();
        record(
            &dir,
            &[(
                vip.clone(),
                State::Unreachable,
                Some("connect timed out".into()),
            )],
            1000,
        );
        record(
            &dir,
            &[(
                vip.clone(),
                State::Unreachable,
                Some("connect timed out".into()),
            )],
            1005,
        );
        let h = load(&dir);
        let s = &h.servers[&vip];
        assert_eq!((s.since_unix, s.checked_unix), (1000, 1005));
        assert_eq!(h.judge(&vip, 1010, 10), Judgement::Held);
        assert_eq!(h.judge(&vip, 1015, 10), Judgement::Due);
        assert_eq!(
            h.judge(&vip, 900, 10),
            Judgement::Due,
            "checked in the future"
        );
        assert_eq!(h.judge("10.44.0.5:443", 1010, 10), Judgement::Ask);
        record(&dir, &[(vip.clone(), State::Ok, None)], 1020);
        let h = load(&dir);
        assert_eq!(h.servers[&vip].since_unix, 1020);
        assert_eq!(h.judge(&vip, 1021, 10), Judgement::Ask);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path(&dir)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let _ = std::fs::remove_dir_all(&dir);
    }
}
