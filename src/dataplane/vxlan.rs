//! The VXLAN device that carries pod traffic to peers that are not on-link.

use super::link::{self, Link};
use super::{Nl, addr};
use crate::cni::Result;
use ipnetwork::IpNetwork;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkUnspec, LinkVxlan};
use std::net::IpAddr;

/// What the device must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// This node's underlay address: the outer source of every tunnelled packet.
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
}

/// What an existing device of that name is.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    vxlan: bool,
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<IpAddr>,
    learning: Option<bool>,
}

fn seen(m: &LinkMessage) -> Seen {
    let mut s = Seen::default();
    for a in &m.attributes {
        let LinkAttribute::LinkInfo(infos) = a else {
            continue;
        };
        for i in infos {
            let LinkInfo::Data(InfoData::Vxlan(v)) = i else {
                continue;
            };
            s.vxlan = true;
            for x in v {
                match x {
                    InfoVxlan::Id(id) => s.vni = Some(*id),
                    InfoVxlan::Port(p) => s.port = Some(*p),
                    InfoVxlan::Local(l) => s.local = Some(IpAddr::V4(*l)),
                    InfoVxlan::Local6(l) => s.local = Some(IpAddr::V6(*l)),
                    InfoVxlan::Learning(l) => s.learning = Some(*l),
                    _ => {}
                }
            }
        }
    }
    s
}

/// Makes the device exist as `spec` says, up, and returns it. A device of that name whose VNI,
/// port or local address differ (this node's address changed) is made anew; its MAC and MTU are
/// set in place. Address learning is off: every entry is programmed.
pub async fn ensure(h: &Nl, spec: &Spec) -> Result<Link> {
    if let Some(m) = link::message_by_name(h, &spec.name).await? {
        let s = seen(&m);
        let want = Seen {
            vxlan: true,
            vni: Some(spec.vni),
            port: Some(spec.port),
            local: Some(spec.local),
            learning: Some(false),
        };
        if s == want {
            return tune(h, spec, m.header.index).await;
        }
        tracing::info!("{} is not as configured ({s:?}), made anew", spec.name);
        link::delete_by_name(h, &spec.name).await?;
    }
    let mut b = LinkVxlan::new(&spec.name, spec.vni)
        .port(spec.port)
        .learning(false)
        .address(spec.mac.to_vec())
        .up();
    b = match spec.local {
        IpAddr::V4(v) => b.local(v),
        IpAddr::V6(v) => b.local6(v),
    };
    if let Some(mtu) = spec.mtu {
        b = b.mtu(mtu);
    }
    h.0.link()
        .add(b.build())
        .execute()
        .await
        .map_err(|e| super::nl_error(format!("creating VXLAN device {}", spec.name), &e))?;
    link::by_name(h, &spec.name).await?.ok_or_else(|| {
        crate::cni::Error::Internal(format!("{} vanished right after creation", spec.name))
    })
}

/// MAC, MTU and up on an existing device of the right kind.
async fn tune(h: &Nl, spec: &Spec, index: u32) -> Result<Link> {
    let l = link::by_index(h, index)
        .await?
        .ok_or_else(|| crate::cni::Error::Internal(format!("{} vanished", spec.name)))?;
    let mac = link::format_mac(&spec.mac);
    if l.mac.as_deref() != Some(mac.as_str()) || (spec.mtu.is_some() && l.mtu != spec.mtu) || !l.up
    {
        let mut b = LinkUnspec::new_with_index(index)
            .address(spec.mac.to_vec())
            .up();
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        h.0.link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| super::nl_error(format!("setting {}", spec.name), &e))?;
    }
    Ok(l)
}

/// Gives the device this node's VTEP addresses (host routes of their own: /32, /128), so traffic
/// the node itself sends to a peer's pods has a source the peer routes back.
pub async fn set_addresses(h: &Nl, index: u32, vteps: &[IpAddr], what: &str) -> Result<()> {
    let have = addr::list(h, index).await?;
    for ip in vteps {
        let bits = if ip.is_ipv6() { 128 } else { 32 };
        let want = IpNetwork::new(*ip, bits)
            .map_err(|e| crate::cni::Error::Internal(format!("VTEP address {ip}: {e}")))?;
        if !have.contains(&want) {
            addr::add(h, index, want, what).await?;
        }
    }
    Ok(())
}
