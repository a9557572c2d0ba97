//! The `ipam` section of holdfast's config (SPEC §4), and the one place `usePodCidr` becomes the
//! node's real CIDRs, for the built-in allocator and a delegated plugin alike.

use crate::cni::{Error, Result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// The subnet that stands for the node's `spec.podCIDRs`.
pub const USE_POD_CIDR: &str = "usePodCidr";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// `None` or `holdfast`: the built-in allocator; anything else is a plugin in `CNI_PATH`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    /// A CIDR, or `usePodCidr` for the node's podCIDRs.
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RouteConf {
    pub dst: String,
    pub gw: Option<IpAddr>,
}

impl IpamConf {
    /// The delegated IPAM plugin's name, or `None` for the built-in allocator.
    pub fn delegate(&self) -> Option<&str> {
        match self.kind.as_deref() {
            None | Some("") | Some("holdfast") => None,
            Some(other) => Some(other),
        }
    }

    /// True when a range needs the node's podCIDRs (and so cluster info).
    pub fn uses_pod_cidr(&self) -> bool {
        self.ranges
            .iter()
            .flatten()
            .any(|r| r.subnet == USE_POD_CIDR)
    }

    /// The range sets with `usePodCidr` replaced by the node's CIDRs: one set per CIDR (so one
    /// address per family), keeping the set's other keys.
    pub fn expanded_ranges(&self, pod_cidrs: Option<&[IpNetwork]>) -> Result<Vec<Vec<RangeConf>>> {
        let mut out = Vec::new();
        for (i, set) in self.ranges.iter().enumerate() {
            let Some(first) = set.iter().find(|r| r.subnet == USE_POD_CIDR) else {
                out.push(set.clone());
                continue;
            };
            let cidrs = pod_cidrs.ok_or_else(|| {
                Error::config(format!(
                    "ipam.ranges[{i}] uses {USE_POD_CIDR} but the node's podCIDRs are unknown"
                ))
            })?;
            for c in cidrs {
                out.push(vec![RangeConf {
                    subnet: c.to_string(),
                    ..first.clone()
                }]);
            }
        }
        Ok(out)
    }

    /// The config to hand a delegated IPAM plugin: the runtime's config with `ipam.ranges`
    /// expanded, so the plugin never sees `usePodCidr`.
    pub fn delegate_stdin(&self, raw: &Value, pod_cidrs: Option<&[IpNetwork]>) -> Result<Vec<u8>> {
        let mut raw = raw.clone();
        if self.uses_pod_cidr()
            && let Some(ranges) = raw.pointer_mut("/ipam/ranges")
        {
            *ranges = serde_json::to_value(self.expanded_ranges(pod_cidrs)?)
                .map_err(|e| Error::Internal(format!("encoding ipam.ranges: {e}")))?;
        }
        serde_json::to_vec(&raw).map_err(|e| Error::Internal(format!("encoding IPAM config: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_expands_once_for_both_users() {
        let raw = serde_json::json!({"ipam": {"type": "host-local", "dataDir": "/d",
            "ranges": [[{"subnet": "usePodCidr", "gateway": "10.42.0.1"}], [{"subnet": "fd00::/64"}]]}});
        let ipam: IpamConf = serde_json::from_value(raw["ipam"].clone()).unwrap();
        assert!(ipam.uses_pod_cidr());
        let cidrs: Vec<IpNetwork> = vec!["10.42.0.0/24".parse().unwrap()];
        let sets = ipam.expanded_ranges(Some(&cidrs)).unwrap();
        assert_eq!(sets[0][0].subnet, "10.42.0.0/24");
        assert_eq!(sets[0][0].gateway, Some("10.42.0.1".parse().unwrap()));
        assert_eq!(sets[1][0].subnet, "fd00::/64");
        let stdin: Value =
            serde_json::from_slice(&ipam.delegate_stdin(&raw, Some(&cidrs)).unwrap()).unwrap();
        assert_eq!(stdin["ipam"]["ranges"][0][0]["subnet"], "10.42.0.0/24");
        assert_eq!(stdin["ipam"]["dataDir"], "/d");
        assert!(
            ipam.expanded_ranges(None)
                .unwrap_err()
                .to_string()
                .contains("unknown")
        );
    }
}
