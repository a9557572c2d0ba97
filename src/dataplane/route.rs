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

/// Routes of one family in the main table.
pub async fn list(h: &Nl, v6: bool) -> Result<Vec<RouteEntry>> {
    let msg = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let msgs: Vec<RouteMessage> =
        h.0.route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|e| super::nl_error("listing routes", &e))?;
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
