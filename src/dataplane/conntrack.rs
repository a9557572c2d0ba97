//! Stale UDP conntrack entries of a hostPort, through ctnetlink (`NETLINK_NETFILTER`).
//!
//! A UDP flow to a hostPort keeps its conntrack entry, and with it the DNAT to the pod it first
//! reached, for as long as the client keeps sending: when the port moves to a new pod (a
//! DaemonSet's pod replaced), that client would talk to the old address forever. So, as the
//! reference portmap does, an ADD that forwards UDP ports deletes the entries whose original
//! destination port is one of them, once its rules are in place.

use super::nft;
use crate::cni::{Error, Result};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

fn request(v6: bool, m: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let family = if v6 {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    };
    let mut n = NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), m));
    n.header.flags = NLM_F_REQUEST | flags;
    n.header.sequence_number = seq;
    n.finalize();
    let mut bytes = vec![0; n.buffer_len()];
    n.serialize(&mut bytes);
    bytes
}

/// The original tuple of `attrs` when it is UDP to one of `ports`.
fn udp_to(attrs: &[ConntrackAttribute], ports: &[u16]) -> Option<Vec<Tuple>> {
    let orig = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) => Some(t),
        _ => None,
    })?;
    let proto = orig.iter().find_map(|t| match t {
        Tuple::Proto(p) => Some(p),
        _ => None,
    })?;
    let udp = proto
        .iter()
        .any(|p| matches!(p, ProtoTuple::Protocol(Protocol::Udp)));
    let port = proto.iter().find_map(|p| match p {
        ProtoTuple::DestinationPort(d) => Some(*d),
        _ => None,
    })?;
    (udp && ports.contains(&port)).then(|| orig.clone())
}

/// Each message of a reply datagram, or the errno of an error message (0: an ack).
fn messages(buf: &[u8]) -> Vec<std::result::Result<NetlinkMessage<NetfilterMessage>, i32>> {
    nft::replies(buf)
        .into_iter()
        .filter_map(|nb| match nft::errno(&nb) {
            Some(code) => Some(Err(code)),
            None => NetlinkMessage::<NetfilterMessage>::deserialize(nb.into_inner())
                .ok()
                .map(Ok),
        })
        .collect()
}

/// Deletes the UDP entries of family `v6` whose original destination port is in `ports`;
/// returns how many went.
pub fn forget_udp_to(ports: &[u16], v6: bool) -> Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let s = nft::socket("conntrack")?;
    let io = |what: &str, e: std::io::Error| Error::io(format!("conntrack: {what}"), e);
    s.send(
        &request(v6, ConntrackMessage::Get(vec![]), NLM_F_DUMP, 1),
        0,
    )
    .map_err(|e| io("asking for the table", e))?;
    let mut stale = Vec::new();
    'dump: loop {
        let (buf, _) = s.recv_from_full().map_err(|e| io("reading the table", e))?;
        if buf.is_empty() {
            break;
        }
        for m in messages(&buf) {
            match m {
                Ok(m) => match m.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                        ..
                    }) => stale.extend(udp_to(&attrs, ports)),
                    _ => {}
                },
                Err(0) => {}
                Err(code) => return Err(nft::refused("conntrack dump".into(), code)),
            }
        }
    }
    let mut gone = 0usize;
    for (seq, tuple) in (2u32..).zip(stale) {
        let del = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]);
        s.send(&request(v6, del, NLM_F_ACK, seq), 0)
            .map_err(|e| io("deleting an entry", e))?;
        let (buf, _) = s.recv_from_full().map_err(|e| io("deleting an entry", e))?;
        // ENOENT: it expired meanwhile.
        match messages(&buf).first() {
            Some(Err(0)) => gone = gone.saturating_add(1),
            Some(Err(c)) if c.saturating_abs() == libc::ENOENT => {}
            Some(Err(c)) => return Err(nft::refused("conntrack delete".into(), *c)),
            _ => {}
        }
    }
    Ok(gone)
}
