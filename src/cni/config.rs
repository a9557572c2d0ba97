//! The network configuration a runtime sends on stdin.

use super::error::{Error, Result};
use super::result::{CniResult, Dns};
use super::version::Version;
// Temporary upward import: holdfast's own schema leaves cni/ (issue 8, typed configuration).
use crate::cluster::conf::KubeConf;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/holdfast";

/// The plugin's configuration, parsed and checked.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub mtu: Option<u32>,
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    pub ipam: IpamConf,
    pub dns: Dns,
    pub kubernetes: Option<KubeConf>,
    pub prev_result: Option<CniResult>,
    /// The config exactly as received, for delegation and for keys read case-insensitively.
    pub raw: Value,
}

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

impl IpamConf {
    /// The delegated IPAM plugin's name, or `None` for the built-in allocator.
    pub fn delegate(&self) -> Option<&str> {
        match self.kind.as_deref() {
            None | Some("") | Some("holdfast") => None,
            Some(other) => Some(other),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    /// A CIDR, or `usePodCidr` for the node's podCIDRs.
    pub subnet: String,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

pub const USE_POD_CIDR: &str = "usePodCidr";

#[derive(Clone, Debug, Deserialize)]
pub struct RouteConf {
    pub dst: String,
    pub gw: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(rename = "type", default)]
    plugin_type: String,
    mtu: Option<u32>,
    state_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    #[serde(default)]
    ipam: Option<IpamConf>,
    #[serde(default)]
    dns: Option<Dns>,
    kubernetes: Option<KubeConf>,
}

impl NetConf {
    /// Parses stdin. Checks, in the order libcni's skel does: JSON (6), name (7),
    /// version (1), then every key (7, naming it).
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        let raw: Value =
            serde_json::from_slice(bytes).map_err(|e| Error::decode("network config", e))?;
        if !raw.is_object() {
            return Err(Error::decode("network config", "not a JSON object"));
        }
        let name = match raw.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(Error::config("missing network name (key \"name\")")),
        };
        validate_network_name(&name)?;
        let version = config_version(&raw)?;
        let wire: Wire = serde_path_to_error::deserialize(&raw)
            .map_err(|e| Error::config(format!("key {:?}: {}", e.path().to_string(), e.inner())))?;
        if let Some(mtu) = wire.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::config(format!("mtu {mtu} out of range 68..65535")));
        }
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                CniResult::from_value(v).map_err(|e| Error::config(format!("prevResult: {e}")))?,
            ),
        };
        let log_level = wire.log_level.unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&log_level.as_str()) {
            return Err(Error::config(format!(
                "logLevel {log_level:?} is not one of error, warn, info, debug, trace, off"
            )));
        }
        let state_dir = wire.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        if !state_dir.is_absolute() {
            return Err(Error::config(format!(
                "stateDir {} is not absolute",
                state_dir.display()
            )));
        }
        Ok(NetConf {
            version,
            name,
            plugin_type: wire.plugin_type,
            mtu: wire.mtu,
            state_dir,
            log_file: wire.log_file,
            log_level,
            ipam: wire.ipam.unwrap_or_default(),
            dns: wire.dns.unwrap_or_default(),
            kubernetes: wire.kubernetes,
            prev_result,
            raw,
        })
    }

    /// A top-level key, matched case-insensitively as Go's decoder does.
    pub fn get_ci(&self, key: &str) -> Option<&Value> {
        get_ci(&self.raw, key)
    }

    /// `runtimeConfig.<key>`, both matched case-insensitively.
    pub fn runtime_config(&self, key: &str) -> Option<&Value> {
        get_ci(self.get_ci("runtimeConfig")?, key)
    }
}

/// Looks `key` up in a JSON object: exact match first, then case-insensitive.
pub fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let m = v.as_object()?;
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The config's `cniVersion`: missing means 0.1.0 to libcni, which we do not speak.
pub fn config_version(raw: &Value) -> Result<Version> {
    let s = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0");
    let v = Version::parse(s)
        .ok_or_else(|| Error::decode("cniVersion", format!("{s:?} is not a version")))?;
    if !v.is_supported() {
        return Err(Error::IncompatibleVersion(format!(
            "config version {s} is not one of {}",
            super::version::SUPPORTED.join(", ")
        )));
    }
    Ok(v)
}

/// libcni's rule for network names; also what makes the name safe as a directory under `stateDir`.
pub fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(Error::config(format!(
            "network name {name:?} is invalid: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_in_skel_order() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"name":"n","cniVersion":"0.2.0"}"#)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(NetConf::parse(br#"{"name":"n"}"#).unwrap_err().code(), 1);
        assert_eq!(
            NetConf::parse(br#"{"name":"../x","cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code(),
            7
        );
        let e = NetConf::parse(br#"{"name":"n","cniVersion":"1.0.0","mtu":"big"}"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("mtu"), "{e}");
        let e =
            NetConf::parse(br#"{"name":"n","cniVersion":"1.0.0","stateDir":"rel"}"#).unwrap_err();
        assert!(e.to_string().contains("stateDir"));
    }

    #[test]
    fn parses_full_config() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"pods","type":"holdfast","mtu":1400,
                 "ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]},
                 "dns":{"nameservers":["10.43.0.10"]},
                 "runtimeConfig":{"bandWidth":{"ingressRate":1000}},
                 "kubernetes":{"kubeconfig":"/k"}}"#,
        )
        .unwrap();
        assert_eq!(c.version, Version::V1_1_0);
        assert_eq!(c.ipam.ranges[0][0].subnet, "10.1.0.0/24");
        assert!(c.ipam.delegate().is_none());
        assert_eq!(c.kubernetes.as_ref().unwrap().timeout_ms, 2000);
        assert!(c.runtime_config("bandwidth").is_some());
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }
}
