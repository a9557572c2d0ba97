//! holdfast's own configuration keys (SPEC §2-§8), typed once, on top of the protocol's
//! [`NetConf`]. Top-level keys are matched case-insensitively, as the reference plugins' Go
//! decoder does; the sections (`ipam`, `kubernetes`, `dns`) are typed by the modules that own them.

use super::bandwidth::BandwidthConf;
use crate::cluster::KubeConf;
use crate::cni::config::AttachmentId;
use crate::cni::result::Dns;
use crate::cni::{Error, NetConf, Result};
use crate::ipam::conf::IpamConf;
use serde::Deserialize;
use std::path::PathBuf;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/holdfast";

/// How much is logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
    Off,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
            LogLevel::Off => "off",
        }
    }
}

/// The whole plugin configuration of one invocation.
#[derive(Clone, Debug)]
pub struct Conf {
    pub net: NetConf,
    pub mtu: Option<u32>,
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    pub ipam: IpamConf,
    pub dns: Dns,
    pub kubernetes: Option<KubeConf>,
    pub bandwidth: BandwidthConf,
    pub routing: crate::routing::RoutingConf,
    /// GC's list of attachments to keep; `None` when the runtime sent none.
    pub valid_attachments: Option<Vec<AttachmentId>>,
}

#[derive(Deserialize)]
struct Wire {
    mtu: Option<u32>,
    #[serde(rename = "statedir")]
    state_dir: Option<PathBuf>,
    #[serde(rename = "logfile")]
    log_file: Option<PathBuf>,
    #[serde(rename = "loglevel", default)]
    log_level: LogLevel,
    #[serde(default)]
    ipam: Option<IpamConf>,
    #[serde(default)]
    dns: Option<Dns>,
    kubernetes: Option<KubeConf>,
    routing: Option<crate::routing::conf::Wire>,
    #[serde(flatten)]
    bandwidth: BandwidthConf,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<AttachmentId>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<AttachmentId>>,
}

impl Conf {
    /// holdfast's keys of a parsed config; a wrong value is code 7 naming the key.
    pub fn from_net(net: NetConf) -> Result<Conf> {
        let w: Wire = net.typed()?;
        if let Some(mtu) = w.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::config(format!("mtu {mtu} out of range 68..65535")));
        }
        let state_dir = w.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        if !state_dir.is_absolute() {
            return Err(Error::config(format!(
                "stateDir {} is not absolute",
                state_dir.display()
            )));
        }
        Ok(Conf {
            net,
            mtu: w.mtu,
            state_dir,
            log_file: w.log_file,
            log_level: w.log_level,
            ipam: w.ipam.unwrap_or_default(),
            dns: w.dns.unwrap_or_default(),
            kubernetes: w.kubernetes,
            bandwidth: w.bandwidth,
            routing: crate::routing::RoutingConf::resolve(w.routing, w.mtu)?,
            valid_attachments: w.valid_attachments.or(w.attachments),
        })
    }

    /// Parses a whole config from bytes.
    #[cfg(test)]
    pub fn parse(bytes: &[u8]) -> Result<Conf> {
        Conf::from_net(NetConf::parse(bytes)?)
    }

    pub fn name(&self) -> &str {
        &self.net.name
    }

    /// This network's state under `stateDir`.
    pub fn network(&self) -> crate::state::Network<'_> {
        crate::state::Network {
            state_dir: &self.state_dir,
            name: self.name(),
        }
    }

    /// The `kubernetes` section, required when a range is `usePodCidr`.
    pub fn kube(&self) -> Result<&KubeConf> {
        self.kubernetes.as_ref().ok_or_else(|| {
            Error::config(format!(
                "ipam uses {} but no \"kubernetes\" section is configured",
                crate::ipam::conf::USE_POD_CIDR
            ))
        })
    }

    /// The node's podCIDRs from the cache only, whatever its age: for the verbs that never
    /// contact the API.
    pub fn cached_pod_cidrs(&self) -> Option<Vec<ipnetwork::IpNetwork>> {
        crate::cluster::cached_pod_cidrs(self.kubernetes.as_ref()?, &self.state_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::Version;

    #[test]
    fn parses_full_config() {
        let c = Conf::parse(
            br#"{"cniVersion":"1.1.0","name":"pods","type":"holdfast","mtu":1400,
                 "ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]},
                 "dns":{"nameservers":["10.43.0.10"]}, "LogLevel":"debug",
                 "runtimeConfig":{"bandWidth":{"ingressRate":1000}},
                 "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}],
                 "kubernetes":{"kubeconfig":"/k"}}"#,
        )
        .unwrap();
        assert_eq!(c.net.version, Version::V1_1_0);
        assert_eq!(c.ipam.ranges[0][0].subnet, "10.1.0.0/24");
        assert!(c.ipam.delegate().is_none());
        assert_eq!(c.kubernetes.as_ref().unwrap().timeout_ms, 2000);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn errors_name_the_key() {
        let e = Conf::parse(br#"{"name":"n","cniVersion":"1.0.0","mtu":"big"}"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("mtu"), "{e}");
        let e = Conf::parse(br#"{"name":"n","cniVersion":"1.0.0","stateDir":"rel"}"#).unwrap_err();
        assert!(e.to_string().contains("stateDir"));
        let e = Conf::parse(br#"{"name":"n","cniVersion":"1.0.0","logLevel":"loud"}"#).unwrap_err();
        assert!(e.to_string().contains("logLevel"), "{e}");
        let e = Conf::parse(
            br#"{"name":"n","cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"x"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ifname"), "{e}");
    }
}
