//! hostPort forwarding in holdfast's own nftables tables, `ip holdfast-hostports` and
//! `ip6 holdfast-hostports`, through netlink (no `iptables` or `nft` process, so a pod's ADD
//! pays no extra exec for it, and the reference `portmap` plugin, a Go process per ADD and per
//! DEL, need not be in the chain).
//!
//! What the reference portmap does with `snat: true`, as nftables rules:
//! - `prerouting` and `output` (nat, priority dstnat -100): a packet to one of the node's own
//!   addresses (`fib daddr type local`, or the mapping's `hostIP`) with the mapped protocol and
//!   port is DNATed to the pod's address and `containerPort`; `output` is what makes the node's
//!   own processes (and hostNetwork pods) reach a hostPort, 127.0.0.1 included.
//! - `postrouting` (nat, priority srcnat 100): what was DNATed from 127.0.0.0/8 (no other packet
//!   from there reaches a pod) and a pod's hairpin to its own hostPort are masqueraded, so the
//!   pod's reply comes back through the node to be un-NATed. Reaching a pod from 127.0.0.1 also
//!   needs `route_localnet` on the pod's host veth, which the plugin sets.
//!
//! The tables are rebuilt whole in one transaction from every attachment's mappings, as
//! `nft.rs` does for masquerading: the kernel swaps the old rules for the new atomically, and
//! running it twice changes nothing.

use super::nft;
use crate::cni::Result;
use ipnetwork::IpNetwork;
use netlink_packet_core::{DefaultNla, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    Cmp, DataAttribute, Expressions, Immediate, InetHookNumber, Meta, MetaKey, Operator, Payload,
    Register,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub const TABLE: &str = "holdfast-hostports";
/// `dstnat`, where DNAT conventionally runs (before kube-proxy's own chains at the same hook
/// see the packet, their order between themselves does not matter: the ports differ).
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
// The `fib` expression (linux/netfilter/nf_tables.h): the route type of the destination.
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
// The `nat` expression.
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

/// A hostPort's protocol, as the runtime names it (`tcp` when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// One entry of `runtimeConfig.portMappings`, as holdfast keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Only packets to this node address; any of the node's addresses when absent (the runtime's
    /// forms, an empty `HostIP` among them, are read by `plugin::hostports`).
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

impl Mapping {
    /// Whether the mapping forwards to a pod address of `v6`'s family: one with a `hostIP` only
    /// to that family's.
    fn applies(&self, v6: bool) -> bool {
        self.host_ip.is_none_or(|h| h.is_ipv6() == v6)
    }
}

/// One pod address and the ports forwarded to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub pod: IpAddr,
    pub mappings: Vec<Mapping>,
}

fn be32(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

fn cmp_eq(data: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(data)),
    ])
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// `fib daddr type local`: the destination is one of this node's addresses.
fn to_local_address() -> Vec<Expressions> {
    vec![
        Expressions::Other {
            expression_type: "fib".into(),
            attributes: vec![
                be32(NFTA_FIB_DREG, NFT_REG_1),
                be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR),
            ],
        },
        // The route type is a host-order u32 in the register.
        cmp_eq(RTN_LOCAL.to_ne_bytes().to_vec()),
    ]
}

/// `meta l4proto P th dport PORT`.
fn to_port(p: Protocol, port: u16) -> Vec<Expressions> {
    vec![
        Expressions::Meta(vec![
            Meta::Key(MetaKey::L4Proto),
            Meta::DestinationRegister(Register::Reg1),
        ]),
        cmp_eq(vec![p.number()]),
        Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(NFT_PAYLOAD_TRANSPORT_HEADER),
            Payload::Offset(2),
            Payload::Len(2),
        ]),
        cmp_eq(port.to_be_bytes().to_vec()),
    ]
}

/// `dnat to POD:PORT`.
fn dnat(pod: IpAddr, port: u16) -> Vec<Expressions> {
    let family = if pod.is_ipv6() {
        NFPROTO_IPV6
    } else {
        NFPROTO_IPV4
    };
    vec![
        Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg1),
            Immediate::Data(DataAttribute::Value(ip_bytes(pod))),
        ]),
        Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg2),
            Immediate::Data(DataAttribute::Value(port.to_be_bytes().to_vec())),
        ]),
        Expressions::Other {
            expression_type: "nat".into(),
            attributes: vec![
                be32(NFTA_NAT_TYPE, NFT_NAT_DNAT),
                be32(NFTA_NAT_FAMILY, family),
                be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1),
                be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2),
                be32(
                    NFTA_NAT_FLAGS,
                    NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED,
                ),
            ],
        },
    ]
}

fn host(ip: IpAddr) -> IpNetwork {
    IpNetwork::from(ip)
}

/// The DNAT rule of one mapping to `pod`.
fn forward_rule(pod: IpAddr, m: &Mapping) -> Vec<Expressions> {
    let mut e = match m.host_ip {
        Some(h) => nft::matches(host(h), false),
        None => to_local_address(),
    };
    e.extend(to_port(m.protocol, m.host_port));
    e.extend(dnat(pod, m.container_port));
    e
}

/// The rules of `forwards` for one family: (chain, expressions) in order.
fn family_rules(v6: bool, forwards: &[Forward]) -> Vec<(&'static str, Vec<Expressions>)> {
    let mut out = Vec::new();
    let mine = || forwards.iter().filter(move |f| f.pod.is_ipv6() == v6);
    for f in mine() {
        for m in f.mappings.iter().filter(|m| m.applies(v6)) {
            let rule = forward_rule(f.pod, m);
            out.push(("prerouting", rule.clone()));
            out.push(("output", rule));
        }
    }
    for f in mine().filter(|f| f.mappings.iter().any(|m| m.applies(v6))) {
        // A pod reaching its own hostPort.
        let mut e = nft::matches(host(f.pod), true);
        e.extend(nft::matches(host(f.pod), false));
        e.push(nft::masquerade());
        out.push(("postrouting", e));
        // The node's own 127.0.0.1 (IPv6 has no route_localnet: ::1 never leaves the node).
        if !v6 && let Ok(lo) = IpNetwork::new(IpAddr::from([127, 0, 0, 0]), 8) {
            let mut e = nft::matches(lo, true);
            e.extend(nft::matches(host(f.pod), false));
            e.push(nft::masquerade());
            out.push(("postrouting", e));
        }
    }
    out
}

/// Makes the hostPort tables forward exactly `forwards`; a family with nothing to forward has
/// no table.
pub fn apply(forwards: &[Forward]) -> Result<()> {
    let mut body = Vec::new();
    for v6 in [false, true] {
        // Created (a no-op if it exists) then deleted: the delete never fails for want of it.
        body.push(nft::table_named(v6, TABLE, NLM_F_CREATE, false));
        body.push(nft::table_named(v6, TABLE, 0, true));
        let rules = family_rules(v6, forwards);
        if rules.is_empty() {
            continue;
        }
        body.push(nft::table_named(v6, TABLE, NLM_F_CREATE, false));
        for (chain, hook, prio) in [
            ("prerouting", InetHookNumber::PreRouting, DSTNAT),
            ("output", InetHookNumber::LocalOut, DSTNAT),
            ("postrouting", InetHookNumber::PostRouting, SRCNAT),
        ] {
            // The kernel reads the priority as a signed 32-bit number.
            body.push(nft::nat_chain(v6, TABLE, chain, hook, prio as u32));
        }
        for (chain, e) in rules {
            body.push(nft::rule_in(v6, TABLE, chain, e));
        }
    }
    nft::transact(TABLE, body)
}

/// A mapping in one line, for tests.
#[cfg(test)]
pub(crate) fn mapping(
    host_port: u16,
    container_port: u16,
    protocol: Protocol,
    host_ip: Option<&str>,
) -> Mapping {
    Mapping {
        host_port,
        container_port,
        protocol,
        host_ip: host_ip.map(|h| h.parse().expect("a test's hostIP")),
    }
}

#[cfg(test)]
mod tests {
    use super::mapping as m;
    use super::*;

    #[test]
    fn each_mapping_is_dnat_in_prerouting_and_output_then_hairpin_and_localhost_masquerade() {
        let f = vec![Forward {
            pod: "10.42.0.5".parse().unwrap(),
            mappings: vec![
                m(8080, 80, Protocol::Tcp, None),
                m(8443, 443, Protocol::Tcp, Some("192.168.1.2")),
                m(8080, 80, Protocol::Tcp, Some("fd00::1")),
            ],
        }];
        let v4 = family_rules(false, &f);
        let chains: Vec<&str> = v4.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            chains,
            [
                "prerouting",
                "output",
                "prerouting",
                "output",
                "postrouting",
                "postrouting"
            ]
        );
        let first = format!("{:?}", v4[0].1);
        assert!(first.contains("fib") && first.contains("nat"), "{first}");
        assert!(first.contains(&format!("{:?}", 8080u16.to_be_bytes().to_vec())));
        let second = format!("{:?}", v4[2].1);
        assert!(
            second.contains("[192, 168, 1, 2]") && !second.contains("fib"),
            "{second}"
        );
        assert!(format!("{:?}", v4[5].1).contains("[127, 0, 0, 0]"));
        // The IPv6 hostIP mapping has no IPv6 pod address to go to.
        assert!(family_rules(true, &f).is_empty());
    }

    #[test]
    fn a_pod_without_mappings_adds_no_rule() {
        let f = vec![Forward {
            pod: "10.42.0.5".parse().unwrap(),
            mappings: vec![],
        }];
        assert!(family_rules(false, &f).is_empty());
    }
}
