//! What the kernel should hold for a peer table (the desired state), and what to change to get
//! there from what it holds (the diff). Pure: no netlink here, so every rule is unit-tested.
//!
//! - `direct`: each peer pod CIDR via the peer's address of the same family, out of the link
//!   that address is on.
//! - `vxlan`: per peer, a neighbour entry VTEP address -> VTEP MAC and an FDB entry VTEP MAC ->
//!   the peer's underlay address on the VXLAN device, then each pod CIDR via the VTEP address,
//!   onlink (flannel's order: an onlink route never points at an unresolved neighbour).
//! - `auto`: `direct` for a CIDR whose peer address is on-link, `vxlan` for the rest.
//!
//! A node's VTEP address for a pod CIDR is the CIDR's network address (as flannel does): IPAM
//! never hands it out, so it is free on every node, and it is known from the table alone.

use super::conf::Mode;
use super::table::{Peer, Table};
use crate::dataplane::neigh::Entry;
use crate::dataplane::route::{KernelRoute, OwnedRoute, PROTO};
use ipnetwork::IpNetwork;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

/// The VTEP MAC of the node whose underlay address is `ip`: locally administered, unicast,
/// `0e:68` followed by the IPv4 address (readable in `bridge fdb`), or by 4 bytes of the IPv6
/// address's SHA-256. Derived, not random, so it survives a reboot and no peer needs the API or
/// an annotation to learn it.
pub fn vtep_mac(ip: IpAddr) -> [u8; 6] {
    let tail: [u8; 4] = match ip {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(v) => {
            use sha2::Digest;
            let h = sha2::Sha256::digest(v.octets());
            [h[0], h[1], h[2], h[3]]
        }
    };
    [0x0e, 0x68, tail[0], tail[1], tail[2], tail[3]]
}

/// The VTEP address of a pod CIDR: its network address.
pub fn vtep_ip(cidr: IpNetwork) -> IpAddr {
    cidr.network()
}

/// What the kernel tells about reaching an address: the link it is on-link through, if it is.
pub trait Reach {
    fn on_link(&self, ip: IpAddr) -> Option<u32>;
}

/// The desired state.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// Whether the VXLAN device is needed (and its addresses: this node's VTEPs).
    pub vxlan: bool,
    pub local_vteps: Vec<IpAddr>,
    pub routes: Vec<OwnedRoute>,
    pub neighbours: BTreeSet<Entry>,
    pub fdb: BTreeSet<Entry>,
    /// Pod CIDRs that get no route, and why (one sentence each).
    pub skipped: Vec<String>,
}

/// The desired state of `table` under `mode`; `vx` is the VXLAN device's index (0 before it
/// exists: routes through it are then planned again once it does).
pub fn desired(table: &Table, mode: Mode, reach: &impl Reach, vx: u32) -> Desired {
    let mut d = Desired::default();
    if mode == Mode::None {
        return d;
    }
    let local = table.local.as_ref().and_then(Peer::underlay);
    match local_vteps(table, mode) {
        Some(v) => {
            d.vxlan = true;
            d.local_vteps = v;
        }
        None if mode.uses_vxlan() => d.skipped.push(format!(
            "this node ({}) has no known InternalIP: no VXLAN device",
            table.node
        )),
        None => {}
    }
    for p in table.peers.values() {
        for c in &p.pod_cidrs {
            peer_cidr(&mut d, mode, reach, vx, local, p, *c);
        }
    }
    d
}

/// This node's VTEP addresses when `mode` wants the VXLAN device and this node's underlay address
/// is known; `None` otherwise.
pub fn local_vteps(table: &Table, mode: Mode) -> Option<Vec<IpAddr>> {
    let l = table.local.as_ref()?;
    l.underlay()?;
    mode.uses_vxlan()
        .then(|| l.pod_cidrs.iter().map(|c| vtep_ip(*c)).collect())
}

fn peer_cidr(
    d: &mut Desired,
    mode: Mode,
    reach: &impl Reach,
    vx: u32,
    local: Option<IpAddr>,
    p: &Peer,
    cidr: IpNetwork,
) {
    let direct = p
        .address(cidr.is_ipv6())
        .and_then(|gw| reach.on_link(gw).map(|oif| (gw, oif)));
    if let (Mode::Direct | Mode::Auto, Some((gw, oif))) = (mode, direct) {
        d.routes.push(OwnedRoute {
            dst: cidr,
            gw,
            oif,
            onlink: false,
        });
        return;
    }
    if mode == Mode::Direct {
        d.skipped.push(match p.address(cidr.is_ipv6()) {
            Some(a) => format!("{cidr} of {}: {a} is not on-link (direct mode)", p.name),
            None => format!("{cidr} of {}: no InternalIP of its family", p.name),
        });
        return;
    }
    let Some(local) = local.filter(|_| d.vxlan) else {
        return;
    };
    let Some(under) = p.address(local.is_ipv6()) else {
        d.skipped.push(format!(
            "{cidr} of {}: no InternalIP of this node's underlay family",
            p.name
        ));
        return;
    };
    let mac = vtep_mac(under);
    let vtep = vtep_ip(cidr);
    d.neighbours.insert(Entry { ip: vtep, mac });
    d.fdb.insert(Entry { ip: under, mac });
    if vx != 0 {
        d.routes.push(OwnedRoute {
            dst: cidr,
            gw: vtep,
            oif: vx,
            onlink: true,
        });
    }
}

/// What to change in the routes.
#[derive(Debug, Default, PartialEq)]
pub struct RouteDiff {
    /// Missing or wrong: added, or replacing holdfast's own route to the same destination.
    pub replace: Vec<OwnedRoute>,
    /// holdfast's own routes that nothing wants any more.
    pub remove: Vec<KernelRoute>,
    /// Wanted, but the destination already has someone else's route: left alone.
    pub foreign: Vec<(OwnedRoute, KernelRoute)>,
    /// Already right.
    pub in_place: usize,
}

/// Diffs `want` against the main table's routes `have`. Only routes with [`PROTO`] are ever
/// replaced or removed; a destination held by anyone else's route is reported, not taken.
pub fn diff_routes(want: &[OwnedRoute], have: &[KernelRoute]) -> RouteDiff {
    let mut out = RouteDiff::default();
    // By destination: 5,000 peers must not cost 25 million comparisons.
    let mut by_dst: HashMap<IpNetwork, Vec<&KernelRoute>> = HashMap::new();
    for k in have {
        by_dst.entry(k.dst).or_default().push(k);
    }
    let none = Vec::new();
    let at = |dst: &IpNetwork| by_dst.get(dst).unwrap_or(&none);
    for w in want {
        let here = at(&w.dst);
        if here.iter().any(|k| w.matches(k)) {
            out.in_place += 1;
        } else if let Some(k) = here.iter().find(|k| k.proto != PROTO) {
            out.foreign.push((w.clone(), (*k).clone()));
        } else {
            out.replace.push(w.clone());
        }
    }
    let wanted: HashMap<IpNetwork, &OwnedRoute> = want.iter().map(|w| (w.dst, w)).collect();
    let replaced: HashSet<IpNetwork> = out.replace.iter().map(|w| w.dst).collect();
    for k in have.iter().filter(|k| k.proto == PROTO) {
        let kept = wanted.get(&k.dst).is_some_and(|w| w.matches(k));
        // A replace overwrites the route of the same destination and metric; anything else of
        // ours that is not wanted goes.
        let overwritten = k.metric == 0 && replaced.contains(&k.dst);
        if !kept && !overwritten {
            out.remove.push(k.clone());
        }
    }
    out
}

/// What to set and remove in a set of entries (neighbours or FDB entries of our own device).
pub fn diff_entries(want: &BTreeSet<Entry>, have: &[Entry]) -> (Vec<Entry>, Vec<Entry>) {
    let present: BTreeSet<&Entry> = have.iter().collect();
    let set: Vec<Entry> = want
        .iter()
        .filter(|w| !present.contains(w))
        .cloned()
        .collect();
    let remove: Vec<Entry> = have.iter().filter(|h| !want.contains(h)).cloned().collect();
    (set, remove)
}

/// [`Reach`] from the main table's routes: an address is on-link through a link when the
/// longest prefix that holds it is a route without a gateway (as the kernel would look it up,
/// policy rules aside). holdfast's own routes and the VXLAN device do not count.
pub struct Connected {
    routes: Vec<(IpNetwork, u32)>,
    gatewayed: Vec<IpNetwork>,
}

impl Connected {
    pub fn new(have: &[KernelRoute], vx: u32) -> Connected {
        // holdfast's own routes and the VXLAN device say nothing about the underlay.
        let mine = |k: &&KernelRoute| k.proto != PROTO && (vx == 0 || k.oif != Some(vx));
        let routes = have
            .iter()
            .filter(mine)
            .filter(|k| k.gw.is_none())
            .filter_map(|k| Some((k.dst, k.oif?)))
            .collect();
        let gatewayed = have
            .iter()
            .filter(mine)
            .filter(|k| k.gw.is_some())
            .map(|k| k.dst)
            .collect();
        Connected { routes, gatewayed }
    }
}

impl Reach for Connected {
    fn on_link(&self, ip: IpAddr) -> Option<u32> {
        let best = self
            .routes
            .iter()
            .filter(|(n, _)| n.contains(ip))
            .max_by_key(|(n, _)| n.prefix())?;
        let via_gw = self
            .gatewayed
            .iter()
            .filter(|n| n.contains(ip))
            .map(|n| n.prefix())
            .max();
        match via_gw {
            Some(p) if p > best.0.prefix() => None,
            _ => Some(best.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::peer;

    struct Map(Vec<(IpAddr, u32)>);
    impl Reach for Map {
        fn on_link(&self, ip: IpAddr) -> Option<u32> {
            self.0.iter().find(|(a, _)| *a == ip).map(|x| x.1)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table() -> Table {
        Table::from_full_list(
            "a",
            [
                peer("a", "192.0.2.1", &["10.1.0.0/24"]),
                peer("b", "192.0.2.2", &["10.2.0.0/24"]),
                peer("c", "198.51.100.3", &["10.3.0.0/24"]),
            ],
            1,
        )
    }

    #[test]
    fn macs_are_derived_local_and_unicast() {
        let m = vtep_mac(ip("192.0.2.2"));
        assert_eq!(m, [0x0e, 0x68, 192, 0, 2, 2]);
        assert_eq!(m[0] & 0b11, 0b10, "locally administered, unicast");
        let a = vtep_mac(ip("2001:db8::1"));
        assert_eq!(a, vtep_mac(ip("2001:db8::1")));
        assert_ne!(a, vtep_mac(ip("2001:db8::2")));
        assert_eq!(a[0] & 0b11, 0b10);
    }

    #[test]
    fn direct_routes_on_link_peers_and_skips_the_rest() {
        let reach = Map(vec![(ip("192.0.2.2"), 7)]);
        let d = desired(&table(), Mode::Direct, &reach, 0);
        assert!(!d.vxlan);
        assert_eq!(
            d.routes,
            [OwnedRoute {
                dst: "10.2.0.0/24".parse().unwrap(),
                gw: ip("192.0.2.2"),
                oif: 7,
                onlink: false
            }]
        );
        assert_eq!(d.skipped.len(), 1);
        assert!(d.skipped[0].contains("10.3.0.0/24"), "{:?}", d.skipped);
    }

    #[test]
    fn vxlan_has_neighbour_fdb_and_onlink_route_per_peer() {
        let d = desired(&table(), Mode::Vxlan, &Map(vec![(ip("192.0.2.2"), 7)]), 9);
        assert!(d.vxlan);
        assert_eq!(d.local_vteps, [ip("10.1.0.0")]);
        assert_eq!(d.routes.len(), 2);
        assert!(d.routes.iter().all(|r| r.oif == 9 && r.onlink));
        assert_eq!(d.routes[0].gw, ip("10.2.0.0"));
        let mac_c = vtep_mac(ip("198.51.100.3"));
        assert!(d.neighbours.contains(&Entry {
            ip: ip("10.3.0.0"),
            mac: mac_c
        }));
        assert!(d.fdb.contains(&Entry {
            ip: ip("198.51.100.3"),
            mac: mac_c
        }));
        // Before the device exists, only the entries are planned.
        assert!(
            desired(&table(), Mode::Vxlan, &Map(vec![]), 0)
                .routes
                .is_empty()
        );
    }

    #[test]
    fn auto_is_direct_on_link_and_vxlan_elsewhere() {
        let d = desired(&table(), Mode::Auto, &Map(vec![(ip("192.0.2.2"), 7)]), 9);
        assert_eq!(d.routes.len(), 2);
        assert_eq!((d.routes[0].oif, d.routes[0].onlink), (7, false));
        assert_eq!((d.routes[1].oif, d.routes[1].onlink), (9, true));
        assert_eq!(d.fdb.len(), 1, "only the off-link peer is tunnelled");
        let mut t = table();
        t.local = None;
        let d = desired(&t, Mode::Auto, &Map(vec![]), 9);
        assert!(!d.vxlan && d.routes.is_empty() && !d.skipped.is_empty());
        assert_eq!(
            desired(&table(), Mode::None, &Map(vec![]), 9),
            Desired::default()
        );
    }

    fn k(dst: &str, gw: Option<&str>, oif: u32, proto: u8) -> KernelRoute {
        KernelRoute {
            dst: dst.parse().unwrap(),
            gw: gw.map(ip),
            oif: Some(oif),
            proto,
            onlink: false,
            metric: 0,
        }
    }

    #[test]
    fn the_diff_replaces_wrong_gateways_prunes_ours_and_leaves_others() {
        let want = [
            OwnedRoute {
                dst: "10.2.0.0/24".parse().unwrap(),
                gw: ip("192.0.2.2"),
                oif: 7,
                onlink: false,
            },
            OwnedRoute {
                dst: "10.3.0.0/24".parse().unwrap(),
                gw: ip("192.0.2.3"),
                oif: 7,
                onlink: false,
            },
            OwnedRoute {
                dst: "10.4.0.0/24".parse().unwrap(),
                gw: ip("192.0.2.4"),
                oif: 7,
                onlink: false,
            },
            OwnedRoute {
                dst: "10.5.0.0/24".parse().unwrap(),
                gw: ip("192.0.2.5"),
                oif: 7,
                onlink: false,
            },
        ];
        let have = [
            k("10.2.0.0/24", Some("192.0.2.2"), 7, PROTO),  // right
            k("10.3.0.0/24", Some("192.0.2.99"), 7, PROTO), // wrong gateway (kind#2941)
            k("10.4.0.0/24", Some("192.0.2.50"), 7, 4),     // someone else's: left alone
            k("10.9.0.0/24", Some("192.0.2.9"), 7, PROTO),  // a gone peer's
            k("10.8.0.0/24", Some("192.0.2.8"), 7, 3),      // foreign, unrelated
        ];
        let d = diff_routes(&want, &have);
        assert_eq!(d.in_place, 1);
        let replaced: Vec<String> = d.replace.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(replaced, ["10.3.0.0/24", "10.5.0.0/24"]);
        assert_eq!(d.remove, [have[3].clone()]);
        assert_eq!(d.foreign.len(), 1);
        assert_eq!(d.foreign[0].1.proto, 4);
    }

    #[test]
    fn entries_diff_both_ways() {
        let e = |i: &str, m: u8| Entry {
            ip: ip(i),
            mac: [0x0e, 0x68, 0, 0, 0, m],
        };
        let want: BTreeSet<Entry> = [e("10.2.0.0", 2), e("10.3.0.0", 3)].into();
        let (set, remove) = diff_entries(
            &want,
            &[e("10.2.0.0", 2), e("10.3.0.0", 9), e("10.7.0.0", 7)],
        );
        assert_eq!(set, [e("10.3.0.0", 3)]);
        assert_eq!(remove, [e("10.3.0.0", 9), e("10.7.0.0", 7)]);
    }

    #[test]
    fn connected_is_the_longest_prefix_without_a_gateway() {
        let have = [
            k("192.0.2.0/24", None, 3, 2),
            k("0.0.0.0/0", Some("192.0.2.254"), 3, 3),
            k("192.0.2.128/25", Some("192.0.2.254"), 3, 4),
            k("10.2.0.0/24", None, 9, PROTO),
        ];
        let c = Connected::new(&have, 9);
        assert_eq!(c.on_link(ip("192.0.2.2")), Some(3));
        assert_eq!(
            c.on_link(ip("192.0.2.200")),
            None,
            "a longer gatewayed route wins"
        );
        assert_eq!(c.on_link(ip("198.51.100.1")), None);
        assert_eq!(
            c.on_link(ip("10.2.0.5")),
            None,
            "holdfast's own routes do not count"
        );
    }
}
