//! Address ranges as host-local defines them, checked and with defaults filled in.

use super::conf::{RangeConf, USE_POD_CIDR};
use crate::cni::{Error, Result};
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One allocatable range inside a subnet.
#[derive(Clone, Debug, PartialEq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// The ranges an interface gets one address from.
pub type RangeSet = Vec<Range>;

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

impl Range {
    /// Checks a configured range against its subnet; `subnet` is already resolved (no
    /// `usePodCidr`).
    pub fn new(subnet: IpNetwork, conf: &RangeConf) -> Result<Range> {
        let v6 = subnet.is_ipv6();
        let net = to_u128(subnet.network());
        let size_bits = if v6 { 128 } else { 32 } - subnet.prefix() as u32;
        if size_bits < 2 {
            return Err(Error::config(format!(
                "ipam subnet {subnet} is too small: it needs at least 4 addresses"
            )));
        }
        let host_mask = if size_bits == 128 {
            u128::MAX
        } else {
            (1u128 << size_bits) - 1
        };
        let last = net | host_mask;
        // v4 excludes the broadcast address; v6 has none, but host-local leaves the last one out
        // too, and operators expect the same range from both.
        let last_usable = last - 1;
        let inside = |ip: IpAddr, key: &str| -> Result<u128> {
            if ip.is_ipv6() != v6 || !subnet.contains(ip) {
                return Err(Error::config(format!(
                    "ipam {key} {ip} is not inside subnet {subnet}"
                )));
            }
            Ok(to_u128(ip))
        };
        let gateway = match conf.gateway {
            Some(g) => inside(g, "gateway")?,
            None => net + 1,
        };
        let start = match conf.range_start {
            Some(s) => inside(s, "rangeStart")?.max(net + 1),
            None => net + 1,
        };
        let end = match conf.range_end {
            Some(e) => inside(e, "rangeEnd")?.min(last_usable),
            None => last_usable,
        };
        if start > end {
            return Err(Error::config(format!(
                "ipam rangeStart {} is after rangeEnd {} in {subnet}",
                from_u128(start, v6),
                from_u128(end, v6)
            )));
        }
        Ok(Range {
            subnet: IpNetwork::new(subnet.network(), subnet.prefix()).unwrap_or(subnet),
            start: from_u128(start, v6),
            end: from_u128(end, v6),
            gateway: from_u128(gateway, v6),
        })
    }

    pub fn is_v6(&self) -> bool {
        self.subnet.is_ipv6()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_v6()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// Addresses this range can hand out (the gateway excluded).
    pub fn capacity(&self) -> u128 {
        let n = to_u128(self.end) - to_u128(self.start) + 1;
        if self.contains(self.gateway) {
            n - 1
        } else {
            n
        }
    }

    pub fn describe(&self) -> String {
        format!("{} ({}-{})", self.subnet, self.start, self.end)
    }
}

/// Resolves range sets whose `usePodCidr` is already expanded ([`super::conf::IpamConf::expanded_ranges`]).
pub fn resolve(conf: &[Vec<RangeConf>]) -> Result<Vec<RangeSet>> {
    if conf.is_empty() {
        return Err(Error::config(
            "ipam.ranges is empty: configure at least one range",
        ));
    }
    let mut sets = Vec::new();
    for (i, set) in conf.iter().enumerate() {
        if set.is_empty() {
            return Err(Error::config(format!("ipam.ranges[{i}] is empty")));
        }
        if set.iter().any(|r| r.subnet == USE_POD_CIDR) {
            return Err(Error::Internal(format!(
                "ipam.ranges[{i}]: {USE_POD_CIDR} was not expanded"
            )));
        }
        let mut rs = Vec::new();
        for r in set {
            let subnet: IpNetwork = r.subnet.parse().map_err(|e| {
                Error::config(format!("ipam.ranges[{i}] subnet {:?}: {e}", r.subnet))
            })?;
            if subnet.ip() != subnet.network() {
                return Err(Error::config(format!(
                    "ipam.ranges[{i}] subnet {subnet} has host bits set (did you mean {}/{}?)",
                    subnet.network(),
                    subnet.prefix()
                )));
            }
            rs.push(Range::new(subnet, r)?);
        }
        if rs.iter().any(|r| r.is_v6() != rs[0].is_v6()) {
            return Err(Error::config(format!(
                "ipam.ranges[{i}] mixes IPv4 and IPv6"
            )));
        }
        sets.push(rs);
    }
    let all: Vec<&Range> = sets.iter().flatten().collect();
    for (a, ra) in all.iter().enumerate() {
        for rb in &all[a + 1..] {
            if ra.contains(rb.start) || ra.contains(rb.end) || rb.contains(ra.start) {
                return Err(Error::config(format!(
                    "ipam ranges {} and {} overlap",
                    ra.describe(),
                    rb.describe()
                )));
            }
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(subnet: &str) -> RangeConf {
        RangeConf {
            subnet: subnet.into(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    #[test]
    fn defaults_like_host_local() {
        let r = Range::new("10.1.0.0/29".parse().unwrap(), &rc("x")).unwrap();
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.0.6");
        assert_eq!(r.capacity(), 5);
        let r6 = Range::new("fd00::/64".parse().unwrap(), &rc("x")).unwrap();
        assert_eq!(r6.end.to_string(), "fd00::ffff:ffff:ffff:fffe");
        let full = Range::new("::/0".parse().unwrap(), &rc("x")).unwrap();
        assert_eq!(
            full.end.to_string(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        );
    }

    #[test]
    fn rejects_bad_ranges() {
        let mut c = rc("x");
        c.range_start = Some("10.2.0.5".parse().unwrap());
        let e = Range::new("10.1.0.0/24".parse().unwrap(), &c).unwrap_err();
        assert!(e.to_string().contains("rangeStart"));
        assert!(Range::new("10.1.0.0/31".parse().unwrap(), &rc("x")).is_err());
        let mut c = rc("x");
        c.range_start = Some("10.1.0.9".parse().unwrap());
        c.range_end = Some("10.1.0.3".parse().unwrap());
        assert!(Range::new("10.1.0.0/24".parse().unwrap(), &c).is_err());
    }

    #[test]
    fn resolve_checks_sets() {
        assert!(
            resolve(&[vec![rc("10.1.0.5/24")]])
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
        assert!(resolve(&[vec![rc("10.1.0.0/24"), rc("fd00::/64")]]).is_err());
        assert!(
            resolve(&[vec![rc("10.1.0.0/24")], vec![rc("10.1.0.0/25")]])
                .unwrap_err()
                .to_string()
                .contains("overlap")
        );
        assert_eq!(resolve(&[vec![rc("usePodCidr")]]).unwrap_err().code(), 999);
        let sets = resolve(&[vec![rc("10.42.3.0/24")], vec![rc("fd42:3::/64")]]).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[1][0].subnet.to_string(), "fd42:3::/64");
        assert!(resolve(&[]).is_err());
    }
}
