//! Links: the pod's veth pair and helper devices, found by name or index.

use crate::cni::error::netlink_errno;
use crate::cni::{Error, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};
use std::os::fd::RawFd;

/// What we need to know about a link.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub kind: Option<String>,
    pub up: bool,
    pub group: u32,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) => l.mac = Some(format_mac(a)),
                LinkAttribute::Mtu(m) => l.mtu = Some(*m),
                LinkAttribute::Link(p) => l.peer_index = Some(*p),
                LinkAttribute::Group(g) => l.group = *g,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(netlink_errno(e), Some(libc::ENODEV) | Some(libc::ENOENT))
}

pub async fn by_name(h: &Handle, name: &str) -> Result<Option<Link>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.as_ref().map(Link::from_message)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link {name}"), &e)),
    }
}

pub async fn by_index(h: &Handle, index: u32) -> Result<Option<Link>> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(m) => Ok(m.as_ref().map(Link::from_message)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link #{index}"), &e)),
    }
}

pub async fn all(h: &Handle) -> Result<Vec<Link>> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink("listing links", &e))?;
    Ok(msgs.iter().map(Link::from_message).collect())
}

/// Deletes a link by name; `Ok(false)` if there was none.
pub async fn delete_by_name(h: &Handle, name: &str) -> Result<bool> {
    let Some(l) = by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(l.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(Error::netlink(format!("deleting link {name}"), &e)),
    }
}

/// Deletes the links of `group` in one kernel batch when exactly the `expected` names carry it;
/// otherwise (another link shares the group: a hash collision, or someone else's) deletes the
/// expected names one by one. Either way only `expected` links go.
pub async fn delete_group(h: &Handle, group: u32, expected: &[&str]) -> Result<()> {
    // One dump tells what exists and who is in the group; no per-name lookups after it.
    let links = all(h).await?;
    let members: Vec<&Link> = links.iter().filter(|l| l.group == group).collect();
    let ours = !members.is_empty() && members.iter().all(|l| expected.contains(&l.name.as_str()));
    if ours {
        let mut msg = LinkMessageBuilder::<LinkUnspec>::default().build();
        msg.attributes.push(LinkAttribute::Group(group));
        match h.link().del_with_message(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => {
                return Err(Error::netlink(
                    format!("deleting link group {group:#x}"),
                    &e,
                ));
            }
        }
    }
    // Expected links the group did not cover (made without a group, or the fallback) go one by one.
    for l in links
        .iter()
        .filter(|l| expected.contains(&l.name.as_str()) && !(ours && l.group == group))
    {
        match h.link().del(l.index).execute().await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(Error::netlink(format!("deleting link {}", l.name), &e)),
        }
    }
    Ok(())
}

/// Outcome of creating a veth pair.
pub enum VethCreate {
    Created,
    /// A device of the peer's name already exists in the peer's namespace (or the host name is
    /// taken); nothing was created.
    Exists,
}

/// Creates a veth pair in one request: `host` here, `peer` directly inside the namespace
/// `peer_ns`, so the pod's name never collides with a host device, both with `mtu`.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    peer_ns: RawFd,
    mtu: Option<u32>,
    group: u32,
) -> Result<VethCreate> {
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::default()
        .name(peer.to_string())
        .setns_by_fd(peer_ns);
    let mut msg = LinkMessageBuilder::<LinkUnspec>::default().name(host.to_string());
    if let Some(mtu) = mtu {
        peer_msg = peer_msg.mtu(mtu);
        msg = msg.mtu(mtu);
    }
    let mut msg = msg.build();
    msg.attributes.push(LinkAttribute::Group(group));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        NlLinkInfo::Kind(InfoKind::Veth),
        NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg.build()))),
    ]));
    match h.link().add(msg).execute().await {
        Ok(()) => Ok(VethCreate::Created),
        Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(VethCreate::Exists),
        Err(e) => Err(Error::netlink(
            format!("creating veth {host} (peer {peer})"),
            &e,
        )),
    }
}

pub async fn set_up(h: &Handle, index: u32, what: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("setting {what} up"), &e))
}
