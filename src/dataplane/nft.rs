//! nftables through netlink (`NETLINK_NETFILTER`): holdfast's own tables of masquerade rules,
//! `ip holdfast` and `ip6 holdfast`. Each change is one nftables transaction that (re)creates the
//! tables whole, so the kernel swaps the old rules for the new ones atomically, and running it
//! twice changes nothing. No `nft` binary is involved (none exists on the nodes).

use crate::cni::{Error, Result};
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, Immediate,
    InetHookNumber, NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage,
    TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use std::time::Duration;

pub const TABLE: &str = "holdfast";
const CHAIN: &str = "postrouting";
/// `srcnat`: where nat postrouting chains conventionally run.
const SRCNAT: u32 = 100;
/// NFNL_SUBSYS_NFTABLES: the subsystem a batch is addressed to.
const SUBSYS_NFTABLES: u16 = 10;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
/// The whole transaction is the kernel's work of microseconds; a reply later than this is none.
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// What is masqueraded: traffic from `local` (this node's pod CIDRs) to anything outside
/// `cluster` (every known pod CIDR, this node's included).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Masquerade {
    pub local: Vec<IpNetwork>,
    pub cluster: Vec<IpNetwork>,
}

fn family(v6: bool) -> NetfilterProtoFamily {
    if v6 {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    }
}

pub(crate) fn msg(v6: bool, m: NfTablesMessage, flags: u16) -> NetlinkMessage<NetfilterMessage> {
    let mut n = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(family(v6), 0, 0),
        m,
    ));
    n.header.flags = NLM_F_REQUEST | flags;
    n
}

fn table(v6: bool, flags: u16, delete: bool) -> NetlinkMessage<NetfilterMessage> {
    table_named(v6, TABLE, flags, delete)
}

/// A table's creation (`NLM_F_CREATE`: a no-op when it exists) or deletion.
pub(crate) fn table_named(
    v6: bool,
    name: &str,
    flags: u16,
    delete: bool,
) -> NetlinkMessage<NetfilterMessage> {
    let t = TableMessage {
        attributes: vec![TableAttribute::Name(name.into())],
    };
    let m = if delete {
        NfTablesMessage::DeleteTable(t)
    } else {
        NfTablesMessage::NewTable(t)
    };
    msg(v6, m, flags)
}

/// Loads the source (`src`) or destination address into register 1 and compares it with `net`.
pub(crate) fn matches(net: IpNetwork, src: bool) -> Vec<Expressions> {
    let v6 = net.is_ipv6();
    let (offset, len) = match (v6, src) {
        (false, true) => (12, 4),
        (false, false) => (16, 4),
        (true, true) => (8, 16),
        (true, false) => (24, 16),
    };
    let bytes = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v) => v.octets().to_vec(),
        std::net::IpAddr::V6(v) => v.octets().to_vec(),
    };
    let mut e = vec![Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(NFT_PAYLOAD_NETWORK_HEADER),
        Payload::Offset(offset),
        Payload::Len(len),
    ])];
    if u32::from(net.prefix()) < len * 8 {
        e.push(Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(len),
            Bitwise::Mask(DataAttribute::Value(bytes(net.mask()))),
            Bitwise::Xor(DataAttribute::Value(vec![0; len as usize])),
        ]));
    }
    e.push(Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(bytes(net.network()))),
    ]));
    e
}

fn rule(v6: bool, exprs: Vec<Expressions>) -> NetlinkMessage<NetfilterMessage> {
    rule_in(v6, TABLE, CHAIN, exprs)
}

/// A rule appended to `table`'s `chain`.
pub(crate) fn rule_in(
    v6: bool,
    table: &str,
    chain: &str,
    exprs: Vec<Expressions>,
) -> NetlinkMessage<NetfilterMessage> {
    let m = NfTablesMessage::NewRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(table.into()),
            RuleAttribute::Chain(chain.into()),
            RuleAttribute::Expressions(exprs.into_iter().map(Into::into).collect()),
        ],
    });
    msg(v6, m, NLM_F_CREATE | NLM_F_APPEND)
}

/// The messages that make one family's table: a nat chain at postrouting whose rules return
/// for every cluster destination, then masquerade what comes from a local pod CIDR.
fn family_table(v6: bool, m: &Masquerade) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let mut out = vec![table(v6, NLM_F_CREATE, false)];
    out.push(nat_chain(
        v6,
        TABLE,
        CHAIN,
        InetHookNumber::PostRouting,
        SRCNAT,
    ));
    for c in m.cluster.iter().filter(|c| c.is_ipv6() == v6) {
        let mut e = matches(*c, false);
        e.push(Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                Verdict::Return,
            )])),
        ]));
        out.push(rule(v6, e));
    }
    for l in m.local.iter().filter(|c| c.is_ipv6() == v6) {
        let mut e = matches(*l, true);
        e.push(masquerade());
        out.push(rule(v6, e));
    }
    out
}

/// A base chain of type nat at `hook` with `priority` (two's complement for a negative one, as
/// the kernel reads it), policy accept.
pub(crate) fn nat_chain(
    v6: bool,
    table: &str,
    name: &str,
    hook: InetHookNumber,
    priority: u32,
) -> NetlinkMessage<NetfilterMessage> {
    msg(
        v6,
        NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(table.into()),
                ChainAttribute::Name(name.into()),
                ChainAttribute::Type("nat".into()),
                ChainAttribute::Hook(vec![Hook::Number(hook.into()), Hook::Priority(priority)]),
                ChainAttribute::Policy(1),
            ],
        }),
        NLM_F_CREATE,
    )
}

/// The `masq` expression: the source becomes the outgoing interface's address.
pub(crate) fn masquerade() -> Expressions {
    Expressions::Other {
        expression_type: "masq".into(),
        attributes: vec![],
    }
}

/// Makes holdfast's tables say `m` (a family without local pod CIDRs has no table); `None`
/// removes both.
pub fn apply(m: Option<&Masquerade>) -> Result<()> {
    let mut body = Vec::new();
    for v6 in [false, true] {
        // Created (a no-op if it exists) then deleted: the delete never fails for want of it.
        body.push(table(v6, NLM_F_CREATE, false));
        body.push(table(v6, 0, true));
        if let Some(m) = m.filter(|m| m.local.iter().any(|l| l.is_ipv6() == v6)) {
            body.extend(family_table(v6, m));
        }
    }
    transact(TABLE, body)
}

fn control(m: ControlMessage) -> NetlinkMessage<NetfilterMessage> {
    let mut n = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, SUBSYS_NFTABLES),
        m,
    ));
    n.header.flags = NLM_F_REQUEST;
    n
}

/// Sends `body` as one batch and waits for the kernel's verdict on it: the ack of its last
/// message, or the first error.
pub(crate) fn transact(table: &str, body: Vec<NetlinkMessage<NetfilterMessage>>) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| Error::io(format!("nftables: {what}"), e);
    let mut all = vec![control(ControlMessage::BatchBegin)];
    all.extend(body);
    all.push(control(ControlMessage::BatchEnd));
    let last = u32::try_from(all.len().saturating_sub(2))
        .map_err(|_| Error::Internal("nftables batch too large".into()))?;
    let mut bytes = Vec::new();
    for (seq, mut m) in (0u32..).zip(all) {
        m.header.sequence_number = seq;
        if seq == last {
            m.header.flags |= NLM_F_ACK;
        }
        m.finalize();
        let at = bytes.len();
        bytes.resize(at + m.buffer_len(), 0);
        m.serialize(&mut bytes[at..]);
    }
    let s = socket("nftables")?;
    // A batch of thousands of rules is larger than the default send buffer.
    let _ = nix::sys::socket::setsockopt(
        &std::os::fd::AsFd::as_fd(&s),
        nix::sys::socket::sockopt::SndBufForce,
        &(bytes.len() + 4096),
    );
    s.send(&bytes, 0)
        .map_err(|e| fail("sending the batch", e))?;
    wait_ack(&s, last, table)
}

/// A `NETLINK_NETFILTER` socket whose every reply is waited for at most `REPLY_WAIT`; `user`
/// names it in errors (nftables, conntrack).
pub(crate) fn socket(user: &str) -> Result<Socket> {
    let fail = |what: &str, e: std::io::Error| Error::io(format!("{user}: {what}"), e);
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(|e| fail("socket", e))?;
    s.bind_auto().map_err(|e| fail("bind", e))?;
    let tv = nix::sys::time::TimeVal::new(REPLY_WAIT.as_secs() as i64, 0);
    nix::sys::socket::setsockopt(
        &std::os::fd::AsFd::as_fd(&s),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &tv,
    )
    .map_err(|e| fail("timeout", e.into()))?;
    Ok(s)
}

/// The messages of one reply datagram, as far as they are whole.
pub(crate) fn replies(buf: &[u8]) -> Vec<NetlinkBuffer<&[u8]>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let Some(nb) = buf
        .get(off..)
        .and_then(|r| NetlinkBuffer::new_checked(r).ok())
    {
        let len = nb.length() as usize;
        out.push(nb);
        if len == 0 {
            break;
        }
        off = off.saturating_add((len + 3) & !3);
    }
    out
}

/// The errno of an error message (0: an ack), `None` for any other message.
pub(crate) fn errno(nb: &NetlinkBuffer<&[u8]>) -> Option<i32> {
    (nb.message_type() == netlink_packet_core::NLMSG_ERROR).then(|| {
        nb.payload()
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_ne_bytes)
            .unwrap_or(0)
    })
}

/// The kernel's refusal `code` of `op`, as an error.
pub(crate) fn refused(op: String, code: i32) -> Error {
    Error::Netlink {
        op,
        reason: std::io::Error::from_raw_os_error(code.saturating_abs()).to_string(),
    }
}

/// Reads replies until the ack of `last` (done) or an error (the batch was refused whole).
fn wait_ack(s: &Socket, last: u32, table: &str) -> Result<()> {
    loop {
        let (buf, _) = s
            .recv_from_full()
            .map_err(|e| Error::io("nftables: no reply", e))?;
        for nb in replies(&buf) {
            match errno(&nb) {
                Some(0) if nb.sequence_number() == last => return Ok(()),
                Some(0) | None => {}
                Some(code) => {
                    let op = format!("nftables table {table} (message {})", nb.sequence_number());
                    return Err(refused(op, code));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_return_per_cluster_cidr_then_masq_per_local_cidr() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        let m = Masquerade {
            local: vec![n("10.1.0.0/24"), n("fd00:1::/64")],
            cluster: vec![n("10.1.0.0/24"), n("10.2.0.0/24"), n("fd00:1::/64")],
        };
        let v4 = family_table(false, &m);
        // table, chain, 2 returns, 1 masq
        assert_eq!(v4.len(), 5);
        let v6 = family_table(true, &m);
        assert_eq!(v6.len(), 4);
        let last = format!("{:?}", v4[4]);
        assert!(
            last.contains("masq") && last.contains("Offset(12)"),
            "{last}"
        );
        let ret = format!("{:?}", v4[3]);
        assert!(
            ret.contains("Return") && ret.contains("Offset(16)"),
            "{ret}"
        );
        // A /32 needs no mask; a /24 does.
        assert!(!format!("{:?}", matches(n("10.9.9.9/32"), false)).contains("Bitwise"));
        assert!(format!("{:?}", matches(n("10.9.9.0/24"), false)).contains("Bitwise"));
    }
}
