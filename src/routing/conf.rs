//! The `routing` section of holdfast's config (SPEC §9): how pod traffic reaches other nodes.

use crate::cni::{Error, Result};
use serde::Deserialize;

/// VXLAN over IPv4 adds 50 bytes to every frame (outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14;
/// over an IPv6 underlay, 70). The pod MTU must leave that much room below the underlay's.
pub const VXLAN_OVERHEAD_V4: u32 = 50;

/// Defaults: VNI 4097 (not flannel's 1, so both can share a host during a migration) and the
/// Linux kernel's historical VXLAN port 8472 (what flannel and Cilium use, and what firewall rules
/// for Kubernetes overlays already open).
pub const DEFAULT_VNI: u32 = 4097;
pub const DEFAULT_PORT: u16 = 8472;

/// How the peers' pod CIDRs are reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Someone else routes the pod CIDRs (a cloud route table): holdfast programs nothing.
    #[default]
    None,
    /// Each peer's pod CIDRs via its InternalIP: all nodes on one L2 segment.
    Direct,
    /// Through the in-kernel VXLAN device to each peer.
    Vxlan,
    /// Direct where the peer is on-link, VXLAN otherwise.
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Direct => "direct",
            Mode::Vxlan => "vxlan",
            Mode::Auto => "auto",
        }
    }

    /// Whether this mode may send through the VXLAN device.
    pub fn uses_vxlan(self) -> bool {
        matches!(self, Mode::Vxlan | Mode::Auto)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vxlan {
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_port")]
    pub port: u16,
}

impl Default for Vxlan {
    fn default() -> Self {
        Vxlan {
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
        }
    }
}

fn default_vni() -> u32 {
    DEFAULT_VNI
}
fn default_port() -> u16 {
    DEFAULT_PORT
}

/// The section as written: `masquerade`'s default depends on `mode`, so it is resolved later.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wire {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    vxlan: Vxlan,
    masquerade: Option<bool>,
}

/// The resolved section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutingConf {
    pub mode: Mode,
    pub vxlan: Vxlan,
    pub masquerade: bool,
    /// The pod MTU, which is also the VXLAN device's (the kernel adds the header below it).
    pub mtu: Option<u32>,
}

impl RoutingConf {
    /// Checks the section against the pod MTU (`mtu`, the plugin's key): code 7 naming the key.
    ///
    /// Under `vxlan` and `auto` the pod MTU must be set explicitly, since the veth default of
    /// 1500 leaves no room for the header on the usual 1500-byte network, and must itself leave
    /// room for it below the largest MTU.
    pub fn resolve(wire: Option<Wire>, mtu: Option<u32>) -> Result<RoutingConf> {
        let w = wire.unwrap_or_default();
        if w.vxlan.vni == 0 || w.vxlan.vni >= 1 << 24 {
            return Err(Error::config(format!(
                "routing.vxlan.vni {} out of range 1..16777215",
                w.vxlan.vni
            )));
        }
        if w.vxlan.port == 0 {
            return Err(Error::config("routing.vxlan.port must not be 0"));
        }
        if w.mode.uses_vxlan() {
            match mtu {
                None => {
                    return Err(Error::config(format!(
                        "routing mode {} needs \"mtu\" set with room for the {VXLAN_OVERHEAD_V4}-byte \
                         VXLAN header (e.g. 1450 on a 1500-byte network)",
                        w.mode.as_str()
                    )));
                }
                Some(m) if m.saturating_add(VXLAN_OVERHEAD_V4) > 65535 => {
                    return Err(Error::config(format!(
                        "mtu {m} leaves no room for the {VXLAN_OVERHEAD_V4}-byte VXLAN header of \
                         routing mode {}",
                        w.mode.as_str()
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(RoutingConf {
            mode: w.mode,
            vxlan: w.vxlan,
            masquerade: w.masquerade.unwrap_or(w.mode != Mode::None),
            mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str, mtu: Option<u32>) -> Result<RoutingConf> {
        let w: Wire = serde_json::from_str(j).unwrap();
        RoutingConf::resolve(Some(w), mtu)
    }

    #[test]
    fn defaults_and_masquerade_follow_the_mode() {
        let none = RoutingConf::resolve(None, None).unwrap();
        assert_eq!(none.mode, Mode::None);
        assert!(!none.masquerade);
        let d = parse(r#"{"mode":"direct"}"#, None).unwrap();
        assert!(d.masquerade);
        assert_eq!(
            d.vxlan,
            Vxlan {
                vni: 4097,
                port: 8472
            }
        );
        let v = parse(
            r#"{"mode":"vxlan","vxlan":{"vni":7},"masquerade":false}"#,
            Some(1450),
        );
        let v = v.unwrap();
        assert_eq!((v.vxlan.vni, v.vxlan.port, v.masquerade), (7, 8472, false));
    }

    #[test]
    fn vxlan_without_mtu_room_is_error_7() {
        for mode in ["vxlan", "auto"] {
            let e = parse(&format!(r#"{{"mode":"{mode}"}}"#), None).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains("mtu"), "{e}");
            let e = parse(&format!(r#"{{"mode":"{mode}"}}"#), Some(65500)).unwrap_err();
            assert_eq!(e.code(), 7);
        }
        assert!(parse(r#"{"mode":"direct"}"#, None).is_ok());
        let e = parse(r#"{"mode":"vxlan","vxlan":{"vni":16777216}}"#, Some(1450)).unwrap_err();
        assert!(e.to_string().contains("vni"), "{e}");
        let e = parse(r#"{"mode":"vxlan","vxlan":{"port":0}}"#, Some(1450)).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
    }
}
