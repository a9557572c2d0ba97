//! Programming a peer table into the kernel: the VXLAN device, neighbours, FDB entries and
//! routes, from the desired state of [`super::plan`], changing only what differs. Every step
//! that fails is reported and the others still run: one bad peer never strands the rest.

use super::conf::{Mode, RoutingConf};
use super::plan::{self, Connected, Desired};
use super::table::Table;
use crate::cni::Result;
use crate::dataplane::route::{self, KernelRoute, OwnedRoute};
use crate::dataplane::{Nl, link, neigh, nft, vxlan};
use futures::StreamExt;
use serde::Serialize;
use std::net::IpAddr;

/// The VXLAN device's name: fixed, so that a reboot finds (or makes) the same one.
pub const VXLAN_DEVICE: &str = "holdfast-vx";

/// How many netlink requests are in flight at once: the kernel answers each in microseconds,
/// and 5,000 peers sent one by one would wait on 15,000 round trips.
const IN_FLIGHT: usize = 64;

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub peers: usize,
    pub routes_in_place: usize,
    pub routes_replaced: usize,
    pub routes_removed: usize,
    pub entries_set: usize,
    pub entries_removed: usize,
    /// Each thing not done, one sentence each.
    pub problems: Vec<String>,
}

/// Makes the kernel match `table` under `rc`. `Err` only when the kernel cannot even be read.
pub async fn apply(h: &Nl, rc: &RoutingConf, table: &Table) -> Result<Outcome> {
    let mut out = Outcome {
        peers: table.peers.len(),
        ..Default::default()
    };
    let vx = device(h, rc, table, plan::local_vteps(table, rc.mode), &mut out).await;
    let have = route::list_main(h).await?;
    let d = plan::desired(table, rc.mode, &Connected::new(&have, vx), vx);
    out.problems.extend(d.skipped.iter().cloned());
    if vx != 0 {
        entries(h, vx, &d, false, &mut out).await?;
    }
    routes(h, &d.routes, &have, &mut out).await;
    if vx != 0 {
        entries(h, vx, &d, true, &mut out).await?;
    }
    masquerade(rc, table, &mut out);
    Ok(out)
}

/// Traffic from this node's pod CIDRs to anything outside every known pod CIDR leaves with the
/// node's address; with masquerade off (or nothing known of this node), holdfast's tables go.
fn masquerade(rc: &RoutingConf, table: &Table, out: &mut Outcome) {
    let m = table
        .local
        .as_ref()
        .filter(|_| rc.masquerade && rc.mode != Mode::None)
        .map(|l| nft::Masquerade {
            local: l.pod_cidrs.clone(),
            cluster: l
                .pod_cidrs
                .iter()
                .chain(table.peers.values().flat_map(|p| &p.pod_cidrs))
                .copied()
                .collect(),
        });
    if let Err(e) = nft::apply(m.as_ref()) {
        out.problems.push(format!("masquerade: {e}"));
    }
}

/// The VXLAN device made and tuned, with this node's VTEP addresses `vteps`, or (`None`: not
/// wanted) gone; its index, 0 when there is none.
async fn device(
    h: &Nl,
    rc: &RoutingConf,
    table: &Table,
    vteps: Option<Vec<IpAddr>>,
    out: &mut Outcome,
) -> u32 {
    let local = table.local.as_ref().and_then(|l| l.underlay());
    let (Some(vteps), Some(local)) = (vteps, local) else {
        if let Err(e) = link::delete_by_name(h, VXLAN_DEVICE).await {
            out.problems.push(e.to_string());
        }
        return 0;
    };
    let spec = vxlan::Spec {
        name: VXLAN_DEVICE.into(),
        vni: rc.vxlan.vni,
        port: rc.vxlan.port,
        local,
        mac: plan::vtep_mac(local),
        mtu: rc.mtu,
    };
    let made = match vxlan::ensure(h, &spec).await {
        Ok(l) => vxlan::set_addresses(h, l.index, &vteps, VXLAN_DEVICE)
            .await
            .map(|()| l.index),
        Err(e) => Err(e),
    };
    let peer = table
        .peers
        .values()
        .find_map(|p| p.address(local.is_ipv6()));
    if let Some(p) = underlay_mtu_problem(h, peer, rc.mtu).await {
        out.problems.push(p);
    }
    made.unwrap_or_else(|e| {
        out.problems.push(e.to_string());
        0
    })
}

/// Whether the link tunnelled packets leave by (towards `peer`, a peer's underlay address)
/// leaves room for the VXLAN header above the pod MTU; a sentence when it does not (tunnelled
/// packets that big would be dropped).
async fn underlay_mtu_problem(h: &Nl, peer: Option<IpAddr>, pod: Option<u32>) -> Option<String> {
    let (pod, peer) = (pod?, peer?);
    let overhead = if peer.is_ipv6() {
        70
    } else {
        super::conf::VXLAN_OVERHEAD_V4
    };
    let (oif, _) = route::lookup(h, peer).await.ok()??;
    let l = link::by_index(h, oif?).await.ok()??;
    let under = l.mtu?;
    (pod.saturating_add(overhead) > under).then(|| {
        format!(
            "pod mtu {pod} + {overhead} bytes of VXLAN header exceeds {}'s mtu {under}: set mtu to at most {}",
            l.name,
            under.saturating_sub(overhead)
        )
    })
}

/// Neighbours then FDB entries: set what is missing (`prune` false), or remove what nothing
/// wants (`prune` true, after the routes that used them are gone).
async fn entries(h: &Nl, vx: u32, d: &Desired, prune: bool, out: &mut Outcome) -> Result<()> {
    for fdb in [false, true] {
        let (want, have) = if fdb {
            (&d.fdb, neigh::list_fdb(h, vx).await?)
        } else {
            (&d.neighbours, neigh::list(h, vx).await?)
        };
        let (set, remove) = plan::diff_entries(want, &have);
        let results: Vec<Result<()>> = if prune {
            run_all(remove.iter().map(|e| neigh::delete(h, vx, e, fdb))).await
        } else if fdb {
            run_all(set.iter().map(|e| neigh::replace_fdb(h, vx, e))).await
        } else {
            run_all(set.iter().map(|e| neigh::replace(h, vx, e))).await
        };
        let n = tally(results, out);
        if prune {
            out.entries_removed += n;
        } else {
            out.entries_set += n;
        }
    }
    Ok(())
}

/// Stale routes of ours go first, then the missing or wrong ones are (re)placed.
async fn routes(h: &Nl, want: &[OwnedRoute], have: &[KernelRoute], out: &mut Outcome) {
    let diff = plan::diff_routes(want, have);
    out.routes_in_place = diff.in_place;
    for (w, k) in &diff.foreign {
        out.problems.push(format!(
            "route to {} is someone else's (protocol {}, via {}): left alone, {} not routed via {}",
            k.dst,
            k.proto,
            k.gw.map(|g| g.to_string())
                .unwrap_or_else(|| "a link".into()),
            w.dst,
            w.gw
        ));
    }
    let removed = run_all(diff.remove.iter().map(|k| route::delete_owned(h, k))).await;
    out.routes_removed = tally(removed, out);
    let replaced = run_all(diff.replace.iter().map(|r| route::replace_owned(h, r))).await;
    out.routes_replaced = tally(replaced, out);
}

async fn run_all<F: std::future::Future<Output = Result<()>>>(
    fs: impl Iterator<Item = F>,
) -> Vec<Result<()>> {
    futures::stream::iter(fs)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// How many succeeded; each failure becomes a problem.
fn tally(results: Vec<Result<()>>, out: &mut Outcome) -> usize {
    let mut ok = 0;
    for r in results {
        match r {
            Ok(()) => ok += 1,
            Err(e) => out.problems.push(e.to_string()),
        }
    }
    ok
}
