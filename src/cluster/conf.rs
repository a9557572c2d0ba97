//! The `kubernetes` section of holdfast's config (SPEC §7).

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeConf {
    pub kubeconfig: PathBuf,
    pub node_name: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    #[serde(default)]
    pub max_stale_seconds: u64,
    /// How long a server that did not answer is left alone before one ADD asks it again.
    #[serde(default = "default_outage_hold")]
    pub outage_hold_seconds: u64,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_refresh() -> u64 {
    60
}
fn default_outage_hold() -> u64 {
    10
}
