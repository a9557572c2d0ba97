//! The agent's watch of Nodes: one full list (paged), then a watch from its resourceVersion,
//! listed again when the watch expires (410 Gone) or breaks. Each request is bounded (connect
//! and read timeouts, the shared body cap, no retries); only the fields of a [`Peer`] stay in
//! memory. The table is persisted and applied after the full list (the reconcile: wrong gateways
//! replaced, gone peers pruned) and after each batch of changes. A list that fails, or stops
//! part-way through its pages, changes nothing: the table on disk and the routes stay.

use super::conf::{Mode, RoutingConf};
use super::table::{self, Peer, Table};
use crate::cluster::{self, KubeConf, client};
use crate::cni::{Error, Result};
use crate::dataplane::Host;
use futures::{FutureExt, StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Nodes per list page: a Node is up to ~40 KiB, so a page stays under the 4 MiB body cap.
const PAGE: u32 = 50;
/// How long the apiserver keeps one watch open before it ends it (then it is re-opened from the
/// last resourceVersion, not listed again).
const WATCH_SECS: u32 = 290;
/// Pause after a failed list or a broken watch, growing to the maximum.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the agent calls on start: re-applies the table on disk now (before anything waits on
/// the API), then keeps it current from a watch of Nodes on a thread of its own.
pub fn start(rc: &RoutingConf, state_dir: &Path, kube: &KubeConf) {
    if rc.mode == Mode::None {
        return;
    }
    let node = match cluster::node_name(kube) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("routing: {e}");
            return;
        }
    };
    let applied = crate::runtime::block_on(async {
        let host = Host::connect()?;
        super::apply_from_disk(&host, rc, state_dir, &node).await
    });
    match applied {
        Ok(Some(out)) => tracing::info!(
            "peer table re-applied from disk: {} peers, {} routes placed, {} problems",
            out.peers,
            out.routes_replaced,
            out.problems.len()
        ),
        Ok(None) => tracing::info!("no peer table on disk yet"),
        Err(e) => tracing::warn!("peer table not re-applied from disk: {e}"),
    }
    let w = Watcher {
        rc: *rc,
        state_dir: state_dir.to_path_buf(),
        kube: kube.clone(),
        node,
    };
    let spawned = std::thread::Builder::new()
        .name("node-watch".into())
        .spawn(move || crate::runtime::block_on(w.run()));
    if let Err(e) = spawned {
        tracing::error!("routing: could not start the Node watch: {e}");
    }
}

struct Watcher {
    rc: RoutingConf,
    state_dir: PathBuf,
    kube: KubeConf,
    node: String,
}

impl Watcher {
    /// Lists and watches forever; never returns except on a setup error.
    async fn run(self) -> Result<()> {
        let host = Host::connect()?;
        let mut pause = BACKOFF_MIN;
        loop {
            match self.cycle(&host).await {
                Ok(()) => pause = BACKOFF_MIN,
                Err(e) => {
                    tracing::warn!("Node watch: {e}; listing again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One full list, its reconcile, then the watch, re-opened from the last resourceVersion
    /// each time the server ends it on time, until it expires (410) or breaks.
    async fn cycle(&self, host: &Host) -> Result<()> {
        let api = self.api(self.kube.timeout_ms).await?;
        let (peers, mut rv) = list_all(&api).await?;
        let mut t = Table::from_full_list(&self.node, peers, crate::state::now_unix());
        self.commit(host, &t).await;
        let api = self.api(u64::from(WATCH_SECS + 30) * 1000).await?;
        loop {
            rv = watch(&api, &rv, |batch| {
                let mut changed = false;
                for ev in batch {
                    changed |= apply_event(&mut t, ev);
                }
                let snapshot = changed.then(|| t.clone());
                async move {
                    if let Some(s) = snapshot {
                        self.commit(host, &s).await;
                    }
                }
            })
            .await?;
        }
    }

    /// A Node API whose every request is bounded by `timeout_ms` (connect, read, write).
    async fn api(&self, timeout_ms: u64) -> Result<Api<Node>> {
        let fail = |a: client::Attempt| Error::TryAgainLater(a.to_string());
        let base = client::load_config(&self.kube).await.map_err(fail)?;
        let budget = Duration::from_millis(self.kube.timeout_ms);
        let mut cfg = base
            .with_credentials(tokio::time::Instant::now() + budget)
            .await
            .map_err(fail)?;
        cfg.connect_timeout = Some(budget);
        cfg.read_timeout = Some(Duration::from_millis(timeout_ms));
        cfg.write_timeout = Some(budget);
        let c = client::client(cfg).map_err(|(_, e)| Error::TryAgainLater(e))?;
        Ok(Api::all(c))
    }

    /// Persists and applies `t` (persisted first: a crash in between re-applies it at boot).
    async fn commit(&self, host: &Host, t: &Table) {
        if let Err(e) = table::store(&self.state_dir, t) {
            tracing::warn!("could not persist the peer table: {e}");
        }
        let deadline = std::time::Instant::now() + super::BUDGET;
        let done = match super::lock(&self.state_dir, deadline) {
            Ok(_lock) => super::bounded(deadline, super::apply::apply(host, &self.rc, t)).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(out) => {
                tracing::info!(
                    "peers applied: {} peers, routes {} in place, {} placed, {} removed",
                    out.peers,
                    out.routes_in_place,
                    out.routes_replaced,
                    out.routes_removed
                );
                for p in &out.problems {
                    tracing::warn!("routing: {p}");
                }
            }
            Err(e) => tracing::warn!("peers not applied: {e}"),
        }
    }
}

/// Every Node, page by page, and the list's resourceVersion. Any failed page fails the whole
/// list: a partial list must never stand for the cluster.
async fn list_all(api: &Api<Node>) -> Result<(Vec<Peer>, String)> {
    let mut peers = Vec::new();
    let mut lp = ListParams::default().limit(PAGE);
    loop {
        let page = api
            .list(&lp)
            .await
            .map_err(|e| api_error("listing Nodes", &e))?;
        peers.extend(page.items.iter().filter_map(peer_of));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => {
                let rv = page.metadata.resource_version.unwrap_or_default();
                return Ok((peers, rv));
            }
        }
    }
}

/// Watches from `rv`, handing each batch of ready events to `on_batch`; returns the last
/// resourceVersion seen when the watch ends (on time, or broken) for the caller to watch again
/// from. `Err` when it cannot be opened or the server ends it with an error (410 Gone: expired):
/// the caller lists again.
async fn watch<F, Fut>(api: &Api<Node>, rv: &str, mut on_batch: F) -> Result<String>
where
    F: FnMut(Vec<WatchEvent<Node>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let wp = WatchParams::default().timeout(WATCH_SECS);
    let stream = api
        .watch(&wp, rv)
        .await
        .map_err(|e| api_error("watching Nodes", &e))?;
    let mut stream = std::pin::pin!(stream);
    let mut last = rv.to_string();
    loop {
        let first = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            // A broken stream (the body cap, a reset) loses nothing: the watch is re-opened from
            // the last resourceVersion seen, after a pause; only expiry (410) needs a list.
            Err(e) => {
                tracing::info!(
                    "{}; watching again from {last}",
                    api_error("the Node watch broke", &e)
                );
                tokio::time::sleep(BACKOFF_MIN).await;
                break;
            }
        };
        let mut batch = vec![first];
        // Whatever else has already arrived goes into the same apply.
        while let Some(Some(Ok(ev))) = stream.next().now_or_never() {
            batch.push(ev);
        }
        for ev in &batch {
            match ev {
                WatchEvent::Error(s) => {
                    return Err(Error::TryAgainLater(format!(
                        "the Node watch ended: HTTP {} {}",
                        s.code, s.reason
                    )));
                }
                WatchEvent::Bookmark(b) => last.clone_from(&b.metadata.resource_version),
                WatchEvent::Added(n) | WatchEvent::Modified(n) | WatchEvent::Deleted(n) => {
                    if let Some(v) = &n.metadata.resource_version {
                        last.clone_from(v);
                    }
                }
            }
        }
        on_batch(batch).await;
    }
    Ok(last)
}

/// Applies one event to the table; `true` if the table changed.
fn apply_event(t: &mut Table, ev: WatchEvent<Node>) -> bool {
    match ev {
        WatchEvent::Added(n) | WatchEvent::Modified(n) => {
            let Some(p) = peer_of(&n) else { return false };
            let old = if p.name == t.node {
                t.local.as_ref()
            } else {
                t.peers.get(&p.name)
            };
            if old == Some(&p) {
                return false;
            }
            t.upsert(p);
            true
        }
        WatchEvent::Deleted(n) => n.metadata.name.is_some_and(|name| t.remove(&name)),
        WatchEvent::Bookmark(_) | WatchEvent::Error(_) => false,
    }
}

/// The fields routing keeps of a Node; `None` for a Node without a name.
pub fn peer_of(n: &Node) -> Option<Peer> {
    let name = n.metadata.name.clone()?;
    let internal_ips = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let spec = n.spec.as_ref();
    let raw: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(v) if !v.is_empty() => v.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let pod_cidrs = raw
        .into_iter()
        .filter_map(|c| c.parse::<IpNetwork>().ok())
        .map(crate::dataplane::route::network_of)
        .collect();
    Some(Peer {
        name,
        uid: n.metadata.uid.clone().unwrap_or_default(),
        internal_ips,
        pod_cidrs,
    })
}

fn api_error(what: &str, e: &kube::Error) -> Error {
    Error::TryAgainLater(format!("{what}: {}", client::classify(e).1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ips: &[(&str, &str)], cidrs: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("u-{name}")),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|c| c.to_string()),
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    ips.iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_internal_ips_and_pod_cidrs_are_kept() {
        let n = node(
            "b",
            &[
                ("Hostname", "b"),
                ("ExternalIP", "203.0.113.9"),
                ("InternalIP", "192.0.2.2"),
                ("InternalIP", "2001:db8::2"),
            ],
            &["10.2.0.0/24", "fd00:2::/64", "not-a-cidr"],
        );
        let p = peer_of(&n).unwrap();
        assert_eq!(p.uid, "u-b");
        let ips: Vec<String> = p.internal_ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["192.0.2.2", "2001:db8::2"]);
        let cidrs: Vec<String> = p.pod_cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(cidrs, ["10.2.0.0/24", "fd00:2::/64"]);
        let mut old = node("c", &[], &[]);
        old.spec.as_mut().unwrap().pod_cidrs = None;
        old.spec.as_mut().unwrap().pod_cidr = Some("10.3.0.0/24".into());
        assert_eq!(
            peer_of(&old).unwrap().pod_cidrs[0].to_string(),
            "10.3.0.0/24"
        );
        assert!(peer_of(&Node::default()).is_none());
    }

    #[test]
    fn events_change_the_table_only_when_a_kept_field_changes() {
        let mut t = Table::new("a");
        let b = node("b", &[("InternalIP", "192.0.2.2")], &["10.2.0.0/24"]);
        assert!(apply_event(&mut t, WatchEvent::Added(b.clone())));
        assert!(
            !apply_event(&mut t, WatchEvent::Modified(b.clone())),
            "same fields"
        );
        let moved = node("b", &[("InternalIP", "192.0.2.7")], &["10.2.0.0/24"]);
        assert!(
            apply_event(&mut t, WatchEvent::Modified(moved)),
            "a changed address is followed"
        );
        assert_eq!(t.peers["b"].internal_ips[0].to_string(), "192.0.2.7");
        let me = node("a", &[("InternalIP", "192.0.2.1")], &["10.1.0.0/24"]);
        assert!(apply_event(&mut t, WatchEvent::Added(me)));
        assert!(t.local.is_some() && !t.peers.contains_key("a"));
        assert!(apply_event(&mut t, WatchEvent::Deleted(b)));
        assert!(t.peers.is_empty());
    }
}
