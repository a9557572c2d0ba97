//! Cluster info (this node's podCIDRs and UID, the apiserver's real addresses) and the rule that
//! keeps pods starting when the API is unreachable: fresh cache → no request; stale → a bounded
//! attempt; no answer → the cache; no cache → error 11 naming every attempt.
//!
//! Only ADD, `sync`, `doctor` and STATUS (when it has no cache) come here. DEL, CHECK and GC never do.

pub mod cache;
pub mod client;
pub mod conf;

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
    pub fn age_secs(&self) -> u64 {
        crate::state::now_unix().saturating_sub(self.fetched_unix)
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
        && c.age_secs() < kube.refresh_seconds
    {
        return Ok(c.clone());
    }
    let endpoints = cached
        .as_ref()
        .map(|c| c.api_endpoints.clone())
        .unwrap_or_default();
    match client::fetch(kube, &node, &endpoints).await {
        Ok(info) => {
            if let Err(e) = cache::store(state_dir, &info) {
                tracing::warn!("could not write the cluster-info cache: {e}");
            }
            Ok(info)
        }
        Err(attempts) => {
            let what = client::describe_attempts(&attempts);
            match cached {
                Some(c)
                    if kube.max_stale_seconds == 0 || c.age_secs() <= kube.max_stale_seconds =>
                {
                    tracing::warn!(
                        "Kubernetes API unreachable ({what}); using cluster info cached {}s ago",
                        c.age_secs()
                    );
                    Ok(c)
                }
                Some(c) => Err(Error::TryAgainLater(format!(
                    "Kubernetes API unreachable ({what}) and the cached cluster info is {}s old, over maxStaleSeconds {}",
                    c.age_secs(),
                    kube.max_stale_seconds
                ))),
                None => Err(Error::TryAgainLater(format!(
                    "Kubernetes API unreachable and no cached cluster info: {what}"
                ))),
            }
        }
    }
}

/// Fetches now, ignoring the cache's age (`holdfast sync`); stores what it got.
pub async fn refresh(
    kube: &KubeConf,
    state_dir: &Path,
) -> Result<std::result::Result<ClusterInfo, Vec<client::Attempt>>> {
    let node = node_name(kube)?;
    let endpoints = cache::load(state_dir, &node)
        .map(|c| c.api_endpoints)
        .unwrap_or_default();
    let r = client::fetch(kube, &node, &endpoints).await;
    if let Ok(info) = &r {
        cache::store(state_dir, info)?;
    }
    Ok(r)
}

/// Cached podCIDRs only, whatever their age: for verbs that must not contact the API.
pub fn cached_pod_cidrs(kube: &KubeConf, state_dir: &Path) -> Option<Vec<IpNetwork>> {
    let node = node_name(kube).ok()?;
    cache::load(state_dir, &node).ok().map(|c| c.pod_cidrs)
}
