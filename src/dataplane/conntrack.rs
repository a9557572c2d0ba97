//! Stale UDP conntrack entries of a hostPort, through ctnetlink (`NETLINK_NETFILTER`).
//!
//! A UDP flow to a hostPort keeps its conntrack entry, and with it the DNAT to the pod it first
//! reached, for as long as the client keeps sending: when the port moves to a new pod (a
//! DaemonSet's pod replaced), that client would talk to the old address forever. So, as the
//! reference portmap does, an ADD that forwards UDP ports deletes the entries whose original
//! destination port is one of them, once its rules are in place.

use crate::cni::{Error, Result};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use std::time::Duration;

/// A dump of a busy node's table is a few MB from the kernel's memory; a reply later than this
/// is none.
const REPLY_WAIT: Duration = Duration::from_secs(2);

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

fn socket() -> Result<Socket> {
    let fail = |what: &str, e: std::io::Error| Error::io(format!("conntrack: {what}"), e);
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(|e| fail("socket", e))?;
    s.bind_auto().map_err(|e| fail("bind", e))?;
    let tv = nix::sys::time::TimeVal::new(REPLY_WAIT.as_secs() as i64, 0);
    let fd = std::os::fd::AsFd::as_fd(&s);
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(|e| fail("timeout", e.into()))?;
    Ok(s)
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

/// Each message of a reply datagram, or the errno of an error message.
fn messages(buf: &[u8]) -> Vec<std::result::Result<NetlinkMessage<NetfilterMessage>, i32>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let Some(rest) = buf.get(off..).filter(|r| !r.is_empty()) {
        let Ok(nb) = NetlinkBuffer::new_checked(rest) else {
            break;
        };
        let len = nb.length() as usize;
        if nb.message_type() == netlink_packet_core::NLMSG_ERROR {
            let code = nb
                .payload()
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(i32::from_ne_bytes)
                .unwrap_or(0);
            out.push(Err(code));
        } else if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(rest) {
            out.push(Ok(m));
        }
        if len == 0 {
            break;
        }
        off = off.saturating_add((len + 3) & !3);
    }
    out
}

/// Deletes the UDP entries of family `v6` whose original destination port is in `ports`;
/// returns how many went.
pub fn forget_udp_to(ports: &[u16], v6: bool) -> Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let s = socket()?;
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
                Err(code) => {
                    return Err(Error::Netlink {
                        op: "conntrack dump".into(),
                        reason: std::io::Error::from_raw_os_error(code.saturating_abs())
                            .to_string(),
                    });
                }
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
            Some(Err(c)) => {
                return Err(Error::Netlink {
                    op: "conntrack delete".into(),
                    reason: std::io::Error::from_raw_os_error(c.saturating_abs()).to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(gone)
}
