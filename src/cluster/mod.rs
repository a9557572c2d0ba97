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
mod probe;
pub mod served;

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
    let cached = load_cache(state_dir, &node);
    if let Some(c) = &cached
        && c.age_secs().is_some_and(|a| a < kube.refresh_seconds)
    {
        return Ok(c.clone());
    }
    // Past this point the ADD is on the slow path: nothing here touches a fresh cache's ADD.
    let started = std::time::Instant::now();
    // A wave's ADDs come together on a busy node, so what each of them does, all of them do:
    // while a probe is in flight, one with a usable cache takes it before it reads the
    // kubeconfig or the remembered health.
    let claim = probe::claim(state_dir);
    if let probe::Claim::Busy(_) = &claim
        && let Some(c) = cached.as_ref().filter(|c| within_max_stale(kube, c))
    {
        tracing::info!(
            "another holdfast invocation is asking the Kubernetes API; using cluster info cached {}",
            c.describe_age()
        );
        served::set(served::CACHE);
        return Ok(c.clone());
    }
    // Whatever returns from here without probing drops a prober's claim unanswered: the ADDs
    // waiting on it then probe themselves.
    let base = match client::load_config(kube).await {
        Ok(b) => b,
        Err(a) => return fall_back(kube, cached, &[a]),
    };
    let endpoints = endpoints_of(cached.as_ref(), &base);
    if cached.is_some()
        && let Plan::Remembered(failures) =
            plan(&health::load(state_dir), &base.label, &endpoints, kube)
    {
        return fall_back(kube, cached, &failures);
    }
    match claim {
        probe::Claim::Prober(p) => as_prober(kube, state_dir, &node, &base, cached, p, None).await,
        probe::Claim::Busy(busy) => {
            // The prober that came a moment before this ADD answers a moment after its
            // deadline: a little grace lets this one hear it instead of timing out.
            let deadline =
                started + std::time::Duration::from_millis(kube.timeout_ms) + probe::WAIT_GRACE;
            waiter(kube, state_dir, &node, &base, cached, busy, deadline).await
        }
    }
}

/// This node's cache, or `None` with the reason logged when it is there but unusable.
fn load_cache(state_dir: &Path, node: &str) -> Option<ClusterInfo> {
    match cache::load(state_dir, node) {
        Ok(c) => Some(c),
        Err(cache::Unusable::Missing) => None,
        Err(why) => {
            tracing::warn!(
                "cluster-info cache {}: {why}",
                cache::path(state_dir).display()
            );
            None
        }
    }
}

/// The cached real endpoints, less the kubeconfig's own server.
fn endpoints_of(cached: Option<&ClusterInfo>, base: &client::Base) -> Vec<SocketAddr> {
    cached
        .map(|c| c.api_endpoints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.to_string() != base.label)
        .collect()
}

/// An ADD without a usable cache while another one probes: the prober's answer, waited for
/// until `deadline` (from this ADD's own timeoutMs); a dead prober's place is taken with what is
/// left of it.
async fn waiter(
    kube: &KubeConf,
    state_dir: &Path,
    node: &str,
    base: &client::Base,
    cached: Option<ClusterInfo>,
    busy: probe::Busy,
    deadline: std::time::Instant,
) -> Result<ClusterInfo> {
    match busy.wait(deadline) {
        probe::Waited::Answer(a) if a.ok => match cache::load(state_dir, node) {
            Ok(info) => {
                served::set(served::FRESH);
                Ok(info)
            }
            Err(why) => Err(Error::TryAgainLater(format!(
                "the Kubernetes API answered another holdfast invocation, but its answer is not in the cache: {why}"
            ))),
        },
        probe::Waited::Answer(a) => fall_back(kube, cached, &a.attempts()),
        probe::Waited::Orphaned(p) => {
            as_prober(kube, state_dir, node, base, cached, p, Some(deadline)).await
        }
        probe::Waited::TimedOut => Err(Error::TryAgainLater(format!(
            "no cached cluster info, and another holdfast invocation asking the Kubernetes API had no answer within timeoutMs {}",
            kube.timeout_ms
        ))),
    }
}

/// Asks the API for the node (for timeoutMs, or until `deadline`), and publishes what came back
/// for the ADDs waiting on it.
async fn as_prober(
    kube: &KubeConf,
    state_dir: &Path,
    node: &str,
    base: &client::Base,
    cached: Option<ClusterInfo>,
    prober: probe::Prober,
    deadline: Option<std::time::Instant>,
) -> Result<ClusterInfo> {
    // Another prober may have finished between this ADD's look and its lock: what it learned
    // counts (a refreshed cache, servers now known down).
    let cached = load_cache(state_dir, node).or(cached);
    if let Some(c) = &cached
        && c.age_secs().is_some_and(|a| a < kube.refresh_seconds)
    {
        return Ok(c.clone());
    }
    let endpoints = endpoints_of(cached.as_ref(), base);
    let route = match plan(&health::load(state_dir), &base.label, &endpoints, kube) {
        Plan::Ask(route) => route,
        Plan::Remembered(_) if cached.is_none() => client::Route {
            primary: true,
            endpoints,
        },
        Plan::Remembered(failures) => {
            prober.publish(false, &failures);
            return fall_back(kube, cached, &failures);
        }
    };
    served::set(served::ASKED);
    // A waiter that took a dead prober's place has only what is left of its own timeoutMs.
    let kube = match deadline {
        None => kube.clone(),
        Some(d) => {
            let left = d.saturating_duration_since(std::time::Instant::now());
            KubeConf {
                timeout_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                ..kube.clone()
            }
        }
    };
    let outcome = client::fetch(&kube, base, node, &route).await;
    remember(state_dir, &outcome, crate::state::now_unix());
    match outcome.info {
        Some(info) => {
            let stored = cache::store(state_dir, &info);
            if let Err(e) = &stored {
                tracing::warn!("could not write the cluster-info cache: {e}");
            }
            prober.publish(stored.is_ok(), &outcome.failures);
            served::set(served::FRESH);
            Ok(info)
        }
        None => {
            prober.publish(false, &outcome.failures);
            fall_back(&kube, cached, &outcome.failures)
        }
    }
}

/// Whether a cache that is not fresh may still stand in for the API (`maxStaleSeconds`).
fn within_max_stale(kube: &KubeConf, c: &ClusterInfo) -> bool {
    match c.age_secs() {
        _ if kube.max_stale_seconds == 0 => true,
        Some(a) => a <= kube.max_stale_seconds,
        None => false,
    }
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
    if !within_max_stale(kube, &c) {
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
    served::set(served::CACHE);
    Ok(c)
}

/// Fetches now, ignoring the cache's age and the remembered health (`holdfast sync`, the
/// agent): the answer (if any) and every failure seen; stores what it got and remembers what each server did. An ADD's probe in progress is
/// waited for (bounded by `timeoutMs`) rather than asked alongside, and the ADDs that come while
/// this one asks wait for its answer in turn.
pub async fn refresh(kube: &KubeConf, state_dir: &Path) -> Result<client::Outcome> {
    let node = node_name(kube)?;
    let cached = cache::load(state_dir, &node).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(kube.timeout_ms);
    let dir = state_dir.to_path_buf();
    // On a blocking thread: the agent's runtime serves its metrics meanwhile.
    let prober = tokio::task::spawn_blocking(move || probe::claim_until(&dir, deadline))
        .await
        .ok()
        .flatten();
    let base = match client::load_config(kube).await {
        Ok(b) => b,
        Err(a) => {
            return Ok(client::Outcome {
                info: None,
                failures: vec![a],
            });
        }
    };
    let route = client::Route {
        primary: true,
        endpoints: endpoints_of(cached.as_ref(), &base),
    };
    let outcome = client::fetch(kube, &base, &node, &route).await;
    remember(state_dir, &outcome, crate::state::now_unix());
    let stored = outcome
        .info
        .as_ref()
        .map(|info| cache::store(state_dir, info));
    if let Some(p) = prober {
        p.publish(matches!(stored, Some(Ok(()))), &outcome.failures);
    }
    stored.transpose()?;
    Ok(outcome)
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

enum Plan {
    /// Ask along this route.
    Ask(client::Route),
    /// Every server is known not to answer and within its hold: what each last did.
    Remembered(Vec<client::Attempt>),
}

/// Which servers the prober asks: the healthy and unknown ones, and those whose hold has passed.
fn plan(h: &health::Health, primary: &str, endpoints: &[SocketAddr], kube: &KubeConf) -> Plan {
    use health::Judgement;
    let now = crate::state::now_unix();
    let asks = |s: &str| match h.judge(s, now, kube.outage_hold_seconds) {
        Judgement::Ask => true,
        // Only the prober gets this far with a plan to ask.
        Judgement::Due => true,
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
        return Plan::Ask(route);
    }
    let labels =
        std::iter::once(primary.to_string()).chain(endpoints.iter().map(|e| e.to_string()));
    let failures = labels
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_usable_cache_is_taken_without_the_kubeconfig_while_a_probe_is_in_flight() {
        let dir = std::env::temp_dir().join(format!("hf-wave-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Opening a FIFO to read it waits for a writer, and none comes: an ADD that reads this
        // kubeconfig never returns.
        let kubeconfig = dir.join("kubeconfig");
        nix::unistd::mkfifo(&kubeconfig, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let info = ClusterInfo {
            node_name: "n1".into(),
            node_uid: "uid".into(),
            pod_cidrs: vec!["10.42.0.0/24".parse().unwrap()],
            api_endpoints: vec![],
            fetched_unix: crate::state::now_unix() - 300,
            fetched_from: "10.43.0.1:443".into(),
        };
        cache::store(&dir, &info).unwrap();
        let kube: KubeConf = serde_json::from_value(serde_json::json!({
            "kubeconfig": kubeconfig, "nodeName": "n1", "refreshSeconds": 0}))
        .unwrap();
        let probe::Claim::Prober(_in_flight) = probe::claim(&dir) else {
            panic!("nobody else probes this stateDir")
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let _ = tx.send(crate::runtime::block_on(for_add(&kube, &d)));
        });
        let got = rx.recv_timeout(Duration::from_secs(5)).expect(
            "the ADD read the kubeconfig while a probe was in flight (blocked on the FIFO)",
        );
        assert_eq!(got.unwrap(), info);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
