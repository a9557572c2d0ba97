//! What `holdfast doctor` says about routing: the mode, the peer table's age, and for each peer
//! whether each of its routes is in the kernel as holdfast would place it.

use super::apply::VXLAN_DEVICE;
use super::conf::{Mode, RoutingConf};
use super::plan::{self, Connected};
use super::table::{self, Table};
use crate::cluster::KubeConf;
use crate::dataplane::{Host, link, route};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub mode: &'static str,
    pub table: PathBuf,
    pub synced_unix: Option<u64>,
    /// Seconds since the table last matched a full list of Nodes.
    pub age_seconds: Option<u64>,
    pub peers: Vec<PeerRoutes>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PeerRoutes {
    pub name: String,
    pub internal_ips: Vec<String>,
    pub routes: Vec<RouteState>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RouteState {
    pub dst: String,
    pub via: String,
    pub dev: String,
    pub in_place: bool,
}

/// The routing section; what needs attention is added to `attention`. `None` in mode `none`.
pub async fn report(
    rc: &RoutingConf,
    state_dir: &Path,
    kube: Option<&KubeConf>,
    attention: &mut Vec<String>,
) -> Option<Report> {
    if rc.mode == Mode::None {
        return None;
    }
    let mut r = Report {
        mode: rc.mode.as_str(),
        table: table::path(state_dir),
        ..Default::default()
    };
    let loaded = super::node_name(kube).and_then(|n| table::load(state_dir, &n));
    let t = match loaded {
        Ok(Some(t)) => t,
        Ok(None) => {
            attention.push(format!(
                "routing {}: no peer table yet ({}): no route to other nodes survives a reboot \
                 until the agent has listed the Nodes once",
                rc.mode.as_str(),
                r.table.display()
            ));
            return Some(r);
        }
        Err(e) => {
            attention.push(format!("routing: {e}"));
            return Some(r);
        }
    };
    r.synced_unix = (t.synced_unix > 0).then_some(t.synced_unix);
    r.age_seconds = t.age_secs(crate::state::now_unix());
    match kernel_view(rc, &t).await {
        Ok((peers, skipped)) => {
            for p in peers
                .iter()
                .flat_map(|p| p.routes.iter().map(move |x| (p, x)))
            {
                if !p.1.in_place {
                    attention.push(format!(
                        "route to {} of {} (via {} dev {}) is not in place: run holdfast routes apply",
                        p.1.dst, p.0.name, p.1.via, p.1.dev
                    ));
                }
            }
            attention.extend(skipped.into_iter().map(|s| format!("routing: {s}")));
            r.peers = peers;
        }
        Err(e) => attention.push(format!("routing: reading the kernel's routes: {e}")),
    }
    Some(r)
}

/// Each peer's routes as they should be, and whether each is there; and what gets no route.
async fn kernel_view(
    rc: &RoutingConf,
    t: &Table,
) -> crate::cni::Result<(Vec<PeerRoutes>, Vec<String>)> {
    let h = Host::connect()?;
    let have = route::list_main(&h).await?;
    let vx = link::by_name(&h, VXLAN_DEVICE)
        .await?
        .map(|l| l.index)
        .unwrap_or(0);
    let d = plan::desired(t, rc.mode, &Connected::new(&have, vx), vx);
    let links = link::all(&h).await?;
    let dev = |i: u32| {
        links
            .iter()
            .find(|l| l.index == i)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{i}"))
    };
    let peers = t
        .peers
        .values()
        .map(|p| PeerRoutes {
            name: p.name.clone(),
            internal_ips: p.internal_ips.iter().map(|i| i.to_string()).collect(),
            routes: d
                .routes
                .iter()
                .filter(|w| p.pod_cidrs.contains(&w.dst))
                .map(|w| RouteState {
                    dst: w.dst.to_string(),
                    via: w.gw.to_string(),
                    dev: dev(w.oif),
                    in_place: have.iter().any(|k| w.matches(k)),
                })
                .collect(),
        })
        .collect();
    Ok((peers, d.skipped))
}

/// The human-readable lines.
pub fn render(r: Option<&Report>) -> String {
    let Some(r) = r else {
        return "routing     none (the network routes pod CIDRs)\n".into();
    };
    let age = r
        .age_seconds
        .map(|a| format!("{a}s"))
        .unwrap_or_else(|| "-".into());
    let placed = r
        .peers
        .iter()
        .flat_map(|p| &p.routes)
        .filter(|x| x.in_place)
        .count();
    let total: usize = r.peers.iter().map(|p| p.routes.len()).sum();
    let mut o = format!(
        "routing     {} table {} age {age}: {} peers, {placed} of {total} routes in place\n",
        r.mode,
        r.table.display(),
        r.peers.len()
    );
    for p in r.peers.iter().take(10) {
        let routes: Vec<String> = p
            .routes
            .iter()
            .map(|x| {
                format!(
                    "{} via {} dev {} {}",
                    x.dst,
                    x.via,
                    x.dev,
                    if x.in_place { "ok" } else { "MISSING" }
                )
            })
            .collect();
        o += &format!(
            "peer        {} [{}] {}\n",
            p.name,
            p.internal_ips.join(", "),
            routes.join("; ")
        );
    }
    if r.peers.len() > 10 {
        o += &format!("peer        … {} more (see --json)\n", r.peers.len() - 10);
    }
    o
}
