//! Neighbour (ARP/NDP) and bridge forwarding (FDB) entries, for the VXLAN device: a peer's VTEP
//! address resolves to its VTEP MAC, and that MAC is sent to the peer's node address.

use super::Nl;
use crate::cni::Result;
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use std::net::IpAddr;

/// `NUD_PERMANENT` from `linux/neighbour.h`.
const NUD_PERMANENT: u16 = 0x80;

/// A permanent entry on one link: `ip` -> `mac` (a neighbour), or `mac` -> `ip` (an FDB entry:
/// frames for `mac` are tunnelled to the node at `ip`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

fn address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v) => NeighbourAddress::Inet(v),
        IpAddr::V6(v) => NeighbourAddress::Inet6(v),
    }
}

/// Sets the neighbour `e.ip` -> `e.mac` on link `index`, permanent (never aged out or probed).
pub async fn replace(h: &Nl, index: u32, e: &Entry) -> Result<()> {
    h.0.neighbours()
        .add(index, e.ip)
        .link_layer_address(&e.mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(|err| super::nl_error(format!("setting neighbour {} on #{index}", e.ip), &err))
}

/// Sets the FDB entry `e.mac` -> `e.ip` on the VXLAN link `index`.
pub async fn replace_fdb(h: &Nl, index: u32, e: &Entry) -> Result<()> {
    h.0.neighbours()
        .add_bridge(index, &e.mac)
        .destination(e.ip)
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(|err| super::nl_error(format!("setting FDB entry to {} on #{index}", e.ip), &err))
}

/// The permanent neighbours on link `index` (both families).
pub async fn list(h: &Nl, index: u32) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        out.extend(dump(h, index, family).await?);
    }
    Ok(out)
}

/// The permanent FDB entries with a destination on link `index`.
pub async fn list_fdb(h: &Nl, index: u32) -> Result<Vec<Entry>> {
    dump(h, index, AddressFamily::Bridge).await
}

async fn dump(h: &Nl, index: u32, family: AddressFamily) -> Result<Vec<Entry>> {
    let msgs: Vec<NeighbourMessage> =
        h.0.neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| super::nl_error("listing neighbours", &e))?;
    Ok(msgs
        .iter()
        // Permanent, whatever other state bits come with it (a combination is no single state
        // to compare with).
        .filter(|m| m.header.ifindex == index && u16::from(m.header.state) & NUD_PERMANENT != 0)
        .filter_map(entry)
        .collect())
}

fn entry(m: &NeighbourMessage) -> Option<Entry> {
    let (mut ip, mut mac) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(IpAddr::V4(*v)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                ip = Some(IpAddr::V6(*v))
            }
            // In a bridge-family (FDB) dump the destination comes back as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = <[u8; 4]>::try_from(b.as_slice())
                    .map(IpAddr::from)
                    .or_else(|_| <[u8; 16]>::try_from(b.as_slice()).map(IpAddr::from))
                    .ok()
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Entry { ip: ip?, mac: mac? })
}

/// Removes a neighbour (or, with `fdb`, an FDB entry) from link `index`; one already gone is fine.
pub async fn delete(h: &Nl, index: u32, e: &Entry, fdb: bool) -> Result<()> {
    let mut m = NeighbourMessage::default();
    m.header.ifindex = index;
    if fdb {
        m.header.family = AddressFamily::Bridge;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(address(e.ip)));
    } else {
        m.header.family = if e.ip.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.attributes
            .push(NeighbourAttribute::Destination(address(e.ip)));
    }
    match h.0.neighbours().del(m).execute().await {
        Ok(()) => Ok(()),
        Err(err) if matches!(super::errno(&err), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
        Err(err) => Err(super::nl_error(
            format!("removing neighbour {} from #{index}", e.ip),
            &err,
        )),
    }
}
