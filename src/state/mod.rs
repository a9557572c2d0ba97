//! Attachment records: what ADD did for one (container ID, ifname), so that DEL, CHECK, GC and
//! `doctor` know it without asking anyone.
//!
//! `stateDir/attachments/<network>/<containerID>@<ifname>.json`. The container ID cannot contain
//! `@`, so the name is unambiguous, and both parts are validated before they reach a path.

pub mod atomic;

use crate::cni::{CniResult, Error, Result, Version};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const RECORD_VERSION: u32 = 1;

/// How holdfast took part in the attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// holdfast created the veth pair.
    Interface,
    /// Another plugin created the interface; holdfast shaped it.
    Chained,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub version: u32,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub mode: Mode,
    pub netns: Option<String>,
    /// The host end of the veth (ours in interface mode, the earlier plugin's when chained).
    pub host_ifname: Option<String>,
    pub ifb: Option<String>,
    pub ips: Vec<IpAddr>,
    /// The delegated IPAM plugin and the exact stdin it got, so DEL can repeat it offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_delegate: Option<Delegated>,
    /// The result ADD returned, in 1.1.0 form.
    pub result: Value,
    pub created_unix: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delegated {
    pub plugin: String,
    pub stdin: String,
}

impl Record {
    /// A record of what ADD returned; the IPs come from the result. Mode-specific fields (host
    /// interface, ifb, IPAM delegate) start empty.
    pub fn new(
        network: &str,
        container_id: &str,
        ifname: &str,
        mode: Mode,
        netns: &Path,
        result: &CniResult,
    ) -> Record {
        Record {
            version: RECORD_VERSION,
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            mode,
            netns: Some(netns.display().to_string()),
            host_ifname: None,
            ifb: None,
            ips: result.ips.iter().map(|i| i.address.ip()).collect(),
            ipam_delegate: None,
            result: result.to_value(Version::V1_1_0),
            created_unix: now_unix(),
        }
    }
}

pub fn dir(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join("attachments").join(network)
}

pub fn path(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    dir(state_dir, network).join(format!("{container_id}@{ifname}.json"))
}

/// Writes a record atomically.
pub fn write(state_dir: &Path, r: &Record) -> Result<()> {
    let p = path(state_dir, &r.network, &r.container_id, &r.ifname);
    let bytes = serde_json::to_vec_pretty(r)
        .map_err(|e| Error::Internal(format!("encoding record: {e}")))?;
    atomic::write(&p, &bytes, false)
}

/// Reads a record; a missing one is `Ok(None)`, an unreadable one an error.
pub fn read(
    state_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Record>> {
    let p = path(state_dir, network, container_id, ifname);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::decode(format!("attachment record {}", p.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

pub fn remove(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<()> {
    let p = path(state_dir, network, container_id, ifname);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
    }
}

/// Every record of a network, with the paths of those that could not be read.
pub fn list(state_dir: &Path, network: &str) -> (Vec<Record>, Vec<(PathBuf, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir(state_dir, network)) else {
        return (ok, bad);
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => ok.push(r),
            Err(e) => bad.push((p, e)),
        }
    }
    (ok, bad)
}

/// Networks that have records.
pub fn networks(state_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(state_dir.join("attachments")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
