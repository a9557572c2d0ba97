//! Deterministic device names, so that DEL finds what ADD made with no state at all.

use sha2::{Digest, Sha256};

fn digest_hex(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The names and link group of one attachment's host devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub host_veth: String,
    pub ifb: String,
    pub group: u32,
}

impl Names {
    pub fn of(container_id: &str, ifname: &str) -> Names {
        let hex = digest_hex(container_id, ifname);
        Names {
            host_veth: format!("hf{}", &hex[..11]),
            ifb: format!("hfi{}", &hex[..11]),
            group: group_of(&hex),
        }
    }
}

/// Host end of the pod's veth: `hf` + 11 hex characters.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    Names::of(container_id, ifname).host_veth
}

/// The pod's egress ifb: `hfi` + 11 hex characters (`i` is not hex, so never a veth name).
pub fn ifb(container_id: &str, ifname: &str) -> String {
    Names::of(container_id, ifname).ifb
}

/// The link group of the attachment's host devices (veth and ifb), so DEL can remove them in one
/// kernel batch: one RCU grace period instead of one per device. In [2^30, 2^31): clear of the
/// small numbers operators assign by hand, never 0 (the default group), and within what
/// iproute2 accepts, so `ip link show group N` works on it.
pub fn group(container_id: &str, ifname: &str) -> u32 {
    Names::of(container_id, ifname).group
}

fn group_of(hex: &str) -> u32 {
    (u32::from_str_radix(&hex[..8], 16).unwrap_or(0) & 0x3fff_ffff) | 0x4000_0000
}

/// True for names this plugin creates on the host.
pub fn is_ours(name: &str) -> bool {
    let hex = |s: &str| {
        s.len() == 11
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    name.strip_prefix("hfi").is_some_and(hex) || name.strip_prefix("hf").is_some_and(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_short() {
        let a = host_veth("abc", "eth0");
        assert_eq!(a, host_veth("abc", "eth0"));
        assert_ne!(a, host_veth("abc", "eth1"));
        assert_ne!(a, host_veth("abd", "eth0"));
        assert_eq!(a.len(), 13);
        assert_eq!(ifb("abc", "eth0").len(), 14);
        assert!(is_ours(&a));
        assert!(is_ours(&ifb("abc", "eth0")));
        assert!(!is_ours("eth0"));
        assert!(!is_ours("hfxyz"));
        // Not ambiguous when the first hex digit is the letter of a longer name.
        assert!(!is_ours("hf0123456789abc"));
        let g = group("abc", "eth0");
        assert_eq!(g, group("abc", "eth0"));
        assert_ne!(g, group("abc", "eth1"));
        assert!((0x4000_0000..0x8000_0000).contains(&g));
    }
}
