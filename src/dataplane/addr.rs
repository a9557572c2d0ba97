//! Interface addresses.

use super::Nl;
use crate::cni::Result;
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};

/// Adds `addr` (address with prefix length) to link `index`.
///
/// No DAD (the address is ours by allocation, and a tentative IPv6 address would make the pod
/// wait ~1 s) and no prefix route (routes are installed explicitly: this is a routed, point-to-point
/// link, so the subnet is reached via the gateway, not on-link).
pub async fn add(h: &Nl, index: u32, addr: IpNetwork, what: &str) -> Result<()> {
    let mut req = h.0.address().add(index, addr.ip(), addr.prefix());
    req.message_mut().attributes.push(AddressAttribute::Flags(
        AddressFlags::Nodad | AddressFlags::Noprefixroute,
    ));
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if super::errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(super::nl_error(
            format!("adding address {addr} to {what}"),
            &e,
        )),
    }
}

/// Addresses on link `index`.
pub async fn list(h: &Nl, index: u32) -> Result<Vec<IpNetwork>> {
    let msgs: Vec<AddressMessage> =
        h.0.address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| super::nl_error("listing addresses", &e))?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })?;
            IpNetwork::new(ip, m.header.prefix_len).ok()
        })
        .collect())
}
