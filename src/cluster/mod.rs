//! Cluster info (this node's podCIDRs and UID, the apiserver's real addresses) and the rule that
//! keeps pods starting when the API is unreachable: fresh cache → no request; stale → a bounded
//! attempt of the servers not known to be down; no answer → the cache; no cache → error 11
//! naming every attempt. What each server did is remembered ([`health`]), so an outage costs
//! one ADD its wait, not every ADD.
//!
//! Only ADD, `sync`, `doctor` and STATUS (when it has no cache) come here. DEL, CHECK and GC never do.

pub mod cache;
pub mod client;
pub mod conf;
pub mod credentials;
pub mod health;

use crate::cni::{Error, Result};
pub use conf::KubeConf;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    pub node_name: String,
    pub node_uid: String,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNetwork>,
    pub api_endpoints: Vec<SocketAddr>,
    pub fetched_unix: u64,
    pub fetched_from: String,
}

impl ClusterInfo {
    /// Seconds since it was fetched; `None` when it is dated in the future (the clock stepped
    /// back, as at a cold boot before NTP): its age is unknown, so it is never fresh.
    pub fn age_secs(&self) -> Option<u64> {
        crate::state::now_unix().checked_sub(self.fetched_unix)
    }

    fn describe_age(&self) -> String {
        match self.age_secs() {
            Some(a) => format!("{a}s ago"),
            None => "at a time in the future (clock stepped back?)".into(),
        }
    }
}

pub fn node_name(kube: &KubeConf) -> Result<String> {
    if let Some(n) = kube.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Ok(n.clone());
    }
    nix::unistd::gethostname()
        .map_err(|e| {
            Error::config(format!(
                "kubernetes.nodeName is not set and the host name is unknown: {e}"
            ))
        })?
        .into_string()
        .map_err(|_| Error::config("kubernetes.nodeName is not set and the host name is not UTF-8"))
}

/// Cluster info for ADD, by the rule in the module doc.
pub async fn for_add(kube: &KubeConf, state_dir: &Path) -> Result<ClusterInfo> {
    let node = node_name(kube)?;
    let cached = match cache::load(state_dir, &node) {
        Ok(c) => Some(c),
        Err(cache::Unusable::Missing) => None,
        Err(why) => {
            tracing::warn!(
                "cluster-info cache {}: {why}",
                cache::path(state_dir).display()
            );
            None
        }
    };
    if let Some(c) = &cached
        && c.age_secs().is_some_and(|a| a < kube.refresh_seconds)
    {
        return Ok(c.clone());
    }
    let outcome = ask(kube, state_dir, &node, cached.as_ref(), false).await;
    if let Some(info) = outcome.info {
        if let Err(e) = cache::store(state_dir, &info) {
            tracing::warn!("could not write the cluster-info cache: {e}");
        }
        return Ok(info);
    }
    fall_back(kube, cached, &outcome.failures)
}

/// The cache when no answer came, with one warning; error 11 when there is none to use.
fn fall_back(
    kube: &KubeConf,
    cached: Option<ClusterInfo>,
    failures: &[client::Attempt],
) -> Result<ClusterInfo> {
    let what = client::describe_attempts(failures);
    let headline = if failures.iter().all(|a| a.kind == client::Kind::Unreachable) {
        "Kubernetes API unreachable"
    } else {
        "no usable answer from the Kubernetes API"
    };
    let Some(c) = cached else {
        return Err(Error::TryAgainLater(format!(
            "{headline} and no cached cluster info: {what}"
        )));
    };
    let within = match c.age_secs() {
        _ if kube.max_stale_seconds == 0 => true,
        Some(a) => a <= kube.max_stale_seconds,
        None => false,
    };
    if !within {
        return Err(Error::TryAgainLater(format!(
            "{headline} ({what}) and the cached cluster info, fetched {}, is over maxStaleSeconds {}",
            c.describe_age(),
            kube.max_stale_seconds
        )));
    }
    tracing::warn!(
        "{headline} ({what}); using cluster info cached {}",
        c.describe_age()
    );
    Ok(c)
}

/// Fetches now, ignoring the cache's age and the remembered health (`holdfast sync`); stores
/// what it got and remembers what each server did.
pub async fn refresh(
    kube: &KubeConf,
    state_dir: &Path,
) -> Result<std::result::Result<ClusterInfo, Vec<client::Attempt>>> {
    let node = node_name(kube)?;
    let cached = cache::load(state_dir, &node).ok();
    let outcome = ask(kube, state_dir, &node, cached.as_ref(), true).await;
    match outcome.info {
        Some(info) => {
            cache::store(state_dir, &info)?;
            Ok(Ok(info))
        }
        None => Ok(Err(outcome.failures)),
    }
}

/// Cached podCIDRs only, whatever their age: for verbs that must not contact the API. `None`
/// when there is no usable cache (missing, corrupt, another node's, no podCIDRs).
pub fn cached_pod_cidrs(kube: &KubeConf, state_dir: &Path) -> Option<Vec<IpNetwork>> {
    let node = node_name(kube).ok()?;
    cache::load(state_dir, &node).ok().map(|c| c.pod_cidrs)
}

/// Asks each server on its own for `doctor` (the kubeconfig's first, then each of `endpoints`),
/// and remembers what each did.
pub async fn probe_servers(
    kube: &KubeConf,
    state_dir: &Path,
    node: &str,
    endpoints: &[SocketAddr],
) -> Vec<(String, std::result::Result<(), client::Attempt>)> {
    let base = match client::load_config(kube).await {
        Ok(b) => b,
        Err(a) => return vec![(a.server.clone(), Err(a))],
    };
    let probes = client::probe_each(kube, &base, node, endpoints).await;
    let outcome = client::Outcome {
        info: None,
        failures: probes.iter().filter_map(|(_, r)| r.clone().err()).collect(),
    };
    remember(state_dir, &outcome, crate::state::now_unix());
    let ok: Vec<(String, health::State, Option<String>)> = probes
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| (s.clone(), health::State::Ok, None))
        .collect();
    health::record(state_dir, &ok, crate::state::now_unix());
    probes
}

/// Asks the servers the remembered health allows (all of them when `everyone`, or when there
/// is no cache to fall back to), and remembers what they did.
async fn ask(
    kube: &KubeConf,
    state_dir: &Path,
    node: &str,
    cached: Option<&ClusterInfo>,
    everyone: bool,
) -> client::Outcome {
    let base = match client::load_config(kube).await {
        Ok(b) => b,
        Err(a) => {
            return client::Outcome {
                info: None,
                failures: vec![a],
            };
        }
    };
    let endpoints: Vec<SocketAddr> = cached
        .map(|c| c.api_endpoints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.to_string() != base.label)
        .collect();
    let now = crate::state::now_unix();
    let remembered = health::load(state_dir);
    // The lock, when taken, is held until what the servers did is on disk.
    let (route, _lock) = match plan(&remembered, &base.label, &endpoints, now, kube, state_dir) {
        Plan::Ask(route, lock) => (route, lock),
        Plan::Remembered(_) if everyone || cached.is_none() => (
            client::Route {
                primary: true,
                endpoints,
            },
            None,
        ),
        Plan::Remembered(failures) => {
            return client::Outcome {
                info: None,
                failures,
            };
        }
    };
    let outcome = client::fetch(kube, &base, node, &route).await;
    remember(state_dir, &outcome, crate::state::now_unix());
    outcome
}

enum Plan {
    /// Ask along this route, holding the probe lock if servers past their hold are included.
    Ask(client::Route, Option<health::ProbeLock>),
    /// Every server is known not to answer and within its hold: what each last did.
    Remembered(Vec<client::Attempt>),
}

/// Which servers to ask: the healthy and unknown ones, and those whose hold has passed when
/// this ADD wins the probe lock (one ADD at a time re-probes; the others don't wait for it).
fn plan(
    h: &health::Health,
    primary: &str,
    endpoints: &[SocketAddr],
    now: u64,
    kube: &KubeConf,
    state_dir: &Path,
) -> Plan {
    use health::Judgement;
    let judge = |s: &str| h.judge(s, now, kube.outage_hold_seconds);
    let labels: Vec<String> = std::iter::once(primary.to_string())
        .chain(endpoints.iter().map(|e| e.to_string()))
        .collect();
    let lock = if labels.iter().any(|l| judge(l) == Judgement::Due) {
        health::try_probe_lock(state_dir)
    } else {
        None
    };
    let asks = |s: &str| match judge(s) {
        Judgement::Ask => true,
        Judgement::Due => lock.is_some(),
        Judgement::Held => false,
    };
    let route = client::Route {
        primary: asks(primary),
        endpoints: endpoints
            .iter()
            .filter(|e| asks(&e.to_string()))
            .copied()
            .collect(),
    };
    if route.primary || !route.endpoints.is_empty() {
        return Plan::Ask(route, lock);
    }
    let failures = labels
        .into_iter()
        .filter_map(|l| {
            let s = h.servers.get(&l)?;
            let ago = now.saturating_sub(s.checked_unix);
            Some(client::Attempt {
                error: format!(
                    "{} ({ago}s ago; asked again after outageHoldSeconds {})",
                    s.error.as_deref().unwrap_or("no answer"),
                    kube.outage_hold_seconds
                ),
                server: l,
                kind: client::Kind::Unreachable,
            })
        })
        .collect();
    Plan::Remembered(failures)
}

/// Writes down what each server did; credential and config failures say nothing about a server.
fn remember(state_dir: &Path, outcome: &client::Outcome, now: u64) {
    let mut seen: Vec<(String, health::State, Option<String>)> = outcome
        .failures
        .iter()
        .filter_map(|a| {
            let state = match a.kind {
                client::Kind::Unreachable => health::State::Unreachable,
                client::Kind::Rejected => health::State::Failing,
                client::Kind::Credentials | client::Kind::Config => return None,
            };
            Some((a.server.clone(), state, Some(a.error.clone())))
        })
        .collect();
    if let Some(info) = &outcome.info {
        seen.push((info.fetched_from.clone(), health::State::Ok, None));
    }
    health::record(state_dir, &seen, now);
}
