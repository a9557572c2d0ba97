//! Links: the pod's veth pair and helper devices, found by name or index.

use super::{Host, Nl};
use crate::cni::Result;
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{LinkIfb, LinkMessageBuilder, LinkUnspec};
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
    matches!(super::errno(e), Some(libc::ENODEV) | Some(libc::ENOENT))
}

pub async fn by_name(h: &Nl, name: &str) -> Result<Option<Link>> {
    Ok(message_by_name(h, name)
        .await?
        .as_ref()
        .map(Link::from_message))
}

/// The kernel's whole message about link `name` (its attributes: for a VXLAN device, its VNI,
/// port and local address); `None` when there is no such link.
pub async fn message_by_name(h: &Nl, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .0
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(super::nl_error(format!("looking up link {name}"), &e)),
    }
}

pub async fn by_index(h: &Nl, index: u32) -> Result<Option<Link>> {
    match h
        .0
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.as_ref().map(Link::from_message)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(super::nl_error(format!("looking up link #{index}"), &e)),
    }
}

pub async fn all(h: &Nl) -> Result<Vec<Link>> {
    let msgs: Vec<LinkMessage> =
        h.0.link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| super::nl_error("listing links", &e))?;
    Ok(msgs.iter().map(Link::from_message).collect())
}

/// Deletes a link by name; `Ok(false)` if there was none.
pub async fn delete_by_name(h: &Nl, name: &str) -> Result<bool> {
    let Some(l) = by_name(h, name).await? else {
        return Ok(false);
    };
    match h.0.link().del(l.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(super::nl_error(format!("deleting link {name}"), &e)),
    }
}

/// Deletes the links of `group` in one kernel batch when exactly the `expected` names carry it;
/// otherwise (another link shares the group: a hash collision, or someone else's) deletes the
/// expected names one by one. Either way only `expected` links go. `Ok(true)` if any existed.
pub async fn delete_group(h: &Nl, group: u32, expected: &[&str]) -> Result<bool> {
    // One dump tells what exists and who is in the group; no per-name lookups after it.
    let links = all(h).await?;
    let found: Vec<&Link> = links
        .iter()
        .filter(|l| expected.contains(&l.name.as_str()))
        .collect();
    delete_found(h, &found, group, !foreign_in_group(&links, group, expected)).await
}

/// As [`delete_group`] for one of many attachments torn down together: `dump` is a dump of
/// every link taken once for all of them, which tells whether a foreign link carries the group.
/// The expected names themselves are looked up now (an ADD may have made them since the dump).
pub async fn delete_group_in(h: &Nl, dump: &[Link], group: u32, expected: &[&str]) -> Result<bool> {
    let mut found = Vec::new();
    for name in expected {
        found.extend(by_name(h, name).await?);
    }
    let found: Vec<&Link> = found.iter().collect();
    delete_found(h, &found, group, !foreign_in_group(dump, group, expected)).await
}

fn foreign_in_group(links: &[Link], group: u32, expected: &[&str]) -> bool {
    links
        .iter()
        .any(|l| l.group == group && !expected.contains(&l.name.as_str()))
}

/// Deletes `found` (the expected links that exist): in one group batch when `group_is_ours`,
/// the rest (made without the group, or all of them otherwise) one by one.
async fn delete_found(h: &Nl, found: &[&Link], group: u32, group_is_ours: bool) -> Result<bool> {
    let batch = group_is_ours && found.iter().any(|l| l.group == group);
    if batch {
        let mut msg = LinkMessageBuilder::<LinkUnspec>::default().build();
        msg.attributes.push(LinkAttribute::Group(group));
        match h.0.link().del_with_message(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => {
                return Err(super::nl_error(
                    format!("deleting link group {group:#x}"),
                    &e,
                ));
            }
        }
    }
    for l in found.iter().filter(|l| !(batch && l.group == group)) {
        match h.0.link().del(l.index).execute().await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(super::nl_error(format!("deleting link {}", l.name), &e)),
        }
    }
    Ok(!found.is_empty())
}

/// Outcome of creating a veth pair.
pub enum VethCreate {
    /// Made; the host end as the kernel echoed it, where the kernel echoes.
    Created(Option<Link>),
    /// A device of the peer's name already exists in the peer's namespace (or the host name is
    /// taken); nothing was created.
    Exists,
}

/// Creates a veth pair in one request: `host` here, `peer` directly inside the namespace
/// `peer_ns`, so the pod's name never collides with a host device, both with `mtu`. The host end
/// is created up (one request fewer); the pod end is brought up once it has its addresses.
pub async fn create_veth(
    h: &Host,
    host: &str,
    peer: &str,
    peer_ns: RawFd,
    mtu: Option<u32>,
    group: u32,
) -> Result<VethCreate> {
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::default()
        .name(peer.to_string())
        .setns_by_fd(peer_ns);
    let mut msg = LinkMessageBuilder::<LinkUnspec>::default()
        .name(host.to_string())
        .up();
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
    match create_echoed(h, msg, host).await {
        Ok(echoed) => Ok(VethCreate::Created(echoed)),
        Err(e) if super::errno(&e) == Some(libc::EEXIST) => Ok(VethCreate::Exists),
        Err(e) => Err(super::nl_error(
            format!("creating veth {host} (peer {peer})"),
            &e,
        )),
    }
}

/// Creates a link with `NLM_F_ECHO`, so the kernel answers with the link it made (Linux 6.2 and
/// later) and no lookup has to follow; `Ok(None)` from a kernel that only acknowledges. Only an
/// echo of `name` counts (a veth's peer is in another namespace, but that is the kernel's call).
async fn create_echoed(
    h: &Nl,
    msg: LinkMessage,
    name: &str,
) -> std::result::Result<Option<Link>, rtnetlink::Error> {
    use netlink_packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
    use netlink_packet_route::RouteNetlinkMessage;
    let flags = NLM_F_EXCL | NLM_F_CREATE | NLM_F_ECHO;
    let answers = super::exchange(h, RouteNetlinkMessage::NewLink(msg), flags).await?;
    Ok(answers.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)).filter(|l| l.name == name),
        _ => None,
    }))
}

pub async fn set_up(h: &Nl, index: u32, what: &str) -> Result<()> {
    h.0.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| super::nl_error(format!("setting {what} up"), &e))
}

/// Creates an ifb named `name`, up, with `mtu`, in the attachment's link `group` (so DEL removes
/// it and the veth in one kernel batch), and returns it.
pub async fn create_ifb(h: &Host, name: &str, mtu: Option<u32>, group: u32) -> Result<Link> {
    let mut b = LinkIfb::new(name)
        .up()
        .append_extra_attribute(LinkAttribute::Group(group));
    if let Some(mtu) = mtu {
        b = b.mtu(mtu);
    }
    let echoed = create_echoed(h, b.build(), name)
        .await
        .map_err(|e| super::nl_error(format!("creating ifb {name}"), &e))?;
    match echoed {
        Some(l) => Ok(l),
        None => by_name(h, name).await?.ok_or_else(|| {
            crate::cni::Error::Internal(format!("{name} vanished right after creation"))
        }),
    }
}
