//! Routes in the main table.

use super::Nl;
use crate::cni::{Error, Result};
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteVia,
};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A route as read back from the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// The network of `n` with host bits cleared, as the kernel wants route destinations.
pub fn network_of(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

/// Adds a route to `dst` out of link `oif`, via `gw` or (without one) scope link.
///
/// Appended, not exclusive: a pod attached twice to one network (eth0 and net1, as Multus does)
/// needs the same destinations through both interfaces, and the kernel keeps both routes (the
/// first one answers lookups; when its interface goes, the other takes over). An identical route
/// already there is fine.
pub async fn add(h: &Nl, dst: IpNetwork, gw: Option<IpAddr>, oif: u32) -> Result<()> {
    let dst = network_of(dst);
    let what = || match gw {
        Some(g) => format!("adding route {dst} via {g}"),
        None => format!("adding route {dst} dev #{oif}"),
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.ip(), dst.prefix())
        .map_err(|e| Error::Internal(format!("{}: {e}", what())))?
        .output_interface(oif);
    b = match gw {
        Some(g) => b
            .gateway(g)
            .map_err(|e| Error::Internal(format!("{}: {e}", what())))?,
        None => b.scope(RouteScope::Link),
    };
    super::request(
        h,
        RouteNetlinkMessage::NewRoute(b.build()),
        NLM_F_CREATE | NLM_F_APPEND,
        &[libc::EEXIST],
        &what(),
    )
    .await
}

/// Every route of one family, all tables (the kernel's dump).
async fn dump(h: &Nl, v6: bool) -> Result<Vec<RouteMessage>> {
    let msg = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    h.0.route()
        .get(msg)
        .execute()
        .try_collect()
        .await
        .map_err(|e| super::nl_error("listing routes", &e))
}

/// Routes of one family in the main table.
pub async fn list(h: &Nl, v6: bool) -> Result<Vec<RouteEntry>> {
    let msgs = dump(h, v6).await?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
        .filter_map(|m| {
            let mut dst = None;
            let mut gw = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(a) => dst = route_ip(a),
                    RouteAttribute::Gateway(a) => gw = route_ip(a),
                    RouteAttribute::Via(RouteVia::Inet6(v)) => gw = Some(IpAddr::V6(*v)),
                    _ => {}
                }
            }
            let dst = dst.unwrap_or(if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
            Some(RouteEntry {
                dst: IpNetwork::new(dst, m.header.destination_prefix_length).ok()?,
                gw,
            })
        })
        .collect())
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// The route protocol number (`rtm_protocol`) of every route holdfast adds between nodes: what
/// lets it list, replace and remove exactly its own routes and never anyone else's, even right
/// after a boot when it knows nothing of the cluster. 0x68 ("h", 104) is not in iproute2's
/// `rt_protos` (kernel 0-4, routing daemons 8-18, babel 42, openr 99, bgp/isis/ospf/rip/eigrp
/// 186-192) and not what other Kubernetes networks use: Calico's Felix 80, kube-router's 0x11.
/// `ip route show proto 104` lists them.
pub const PROTO: u8 = 0x68;

/// A route of the main table with what ownership and reconciling need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub proto: u8,
    pub onlink: bool,
    pub metric: u32,
}

/// A route holdfast wants: `dst` via `gw` out of `oif`, `onlink` when `gw` is not on any of the
/// link's subnets (a peer's VTEP address on the VXLAN device).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedRoute {
    pub dst: IpNetwork,
    pub gw: IpAddr,
    pub oif: u32,
    pub onlink: bool,
}

impl OwnedRoute {
    /// Whether `k` is this route exactly, as holdfast would have added it.
    pub fn matches(&self, k: &KernelRoute) -> bool {
        k.proto == PROTO
            && k.dst == self.dst
            && k.gw == Some(self.gw)
            && k.oif == Some(self.oif)
            && k.onlink == self.onlink
    }
}

/// A route message the builder refused (a family mismatch: never from a well-formed table).
fn invalid<E: std::fmt::Display>(dst: IpNetwork) -> impl Fn(E) -> Error + Copy {
    move |e| Error::Internal(format!("route {dst}: {e}"))
}

fn owned_message(r: &OwnedRoute) -> Result<RouteMessage> {
    let dst = network_of(r.dst);
    let bad = invalid(dst);
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.ip(), dst.prefix())
        .map_err(bad)?
        .gateway(r.gw)
        .map_err(bad)?
        .output_interface(r.oif)
        .protocol(netlink_packet_route::route::RouteProtocol::from(PROTO));
    if r.onlink {
        b = b.onlink();
    }
    Ok(b.build())
}

/// Adds `r`, or replaces the route to the same destination and metric: the caller has made sure
/// that route, if any, is holdfast's own (see [`list_main`]).
pub async fn replace_owned(h: &Nl, r: &OwnedRoute) -> Result<()> {
    use netlink_packet_core::NLM_F_REPLACE;
    let msg = owned_message(r)?;
    let what = format!("replacing route {} via {} dev #{}", r.dst, r.gw, r.oif);
    super::request(
        h,
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
        &[],
        &what,
    )
    .await
}

/// Removes one of holdfast's routes. The protocol number is part of the request, so the kernel
/// itself refuses to match a route of anyone else's; one already gone is fine.
pub async fn delete_owned(h: &Nl, k: &KernelRoute) -> Result<()> {
    let dst = network_of(k.dst);
    let bad = invalid(dst);
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.ip(), dst.prefix())
        .map_err(bad)?
        .protocol(netlink_packet_route::route::RouteProtocol::from(PROTO))
        .priority(k.metric);
    if let Some(g) = k.gw {
        b = b.gateway(g).map_err(bad)?;
    }
    if let Some(o) = k.oif {
        b = b.output_interface(o);
    }
    super::request(
        h,
        RouteNetlinkMessage::DelRoute(b.build()),
        0,
        &[libc::ESRCH, libc::ENOENT],
        &format!("removing route {dst}"),
    )
    .await
}

/// Every unicast route of the main table, both families, with its protocol.
pub async fn list_main(h: &Nl) -> Result<Vec<KernelRoute>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let msgs = dump(h, v6).await?;
        out.extend(
            msgs.iter()
                .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
                .filter_map(|m| kernel_route(m, v6)),
        );
    }
    Ok(out)
}

fn kernel_route(m: &RouteMessage, v6: bool) -> Option<KernelRoute> {
    use netlink_packet_route::route::RouteFlags;
    let mut dst = None;
    let (mut gw, mut oif, mut metric) = (None, None, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => gw = route_ip(a),
            RouteAttribute::Via(RouteVia::Inet6(v)) => gw = Some(IpAddr::V6(*v)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    Some(KernelRoute {
        dst: IpNetwork::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
        oif,
        proto: u8::from(m.header.protocol),
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        metric,
    })
}

/// How the kernel reaches `ip` now: (output link, gateway if any); `None` when it has no route.
/// A peer whose route has no gateway is on-link.
pub async fn lookup(h: &Nl, ip: IpAddr) -> Result<Option<(Option<u32>, Option<IpAddr>)>> {
    let bits = if ip.is_ipv6() { 128 } else { 32 };
    let msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, bits)
        .map_err(|e| Error::Internal(format!("route lookup {ip}: {e}")))?
        .build();
    let found: std::result::Result<Vec<RouteMessage>, _> =
        h.0.route().get(msg).execute().try_collect().await;
    match found {
        Ok(msgs) => Ok(msgs
            .first()
            .and_then(|m| kernel_route(m, ip.is_ipv6()))
            .map(|k| (k.oif, k.gw))),
        Err(e)
            if matches!(
                super::errno(&e),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(super::nl_error(format!("looking up the route to {ip}"), &e)),
    }
}
