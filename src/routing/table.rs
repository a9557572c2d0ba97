//! The peer table: what holdfast knows of every node, this one included, persisted as
//! `stateDir/peers.json` so that a cold boot re-applies it without the API (SPEC §9).
//!
//! Only the fields routing needs are kept: a Node is tens of KiB, a peer a few hundred bytes.

use crate::cni::{Error, Result};
use crate::state::atomic;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const FILE: &str = "peers.json";
pub const TABLE_VERSION: u32 = 1;
/// 5,000 peers are about 1.5 MiB; a file past this is not a table of ours.
const MAX_BYTES: usize = 32 << 20;

/// One node, as routing sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub name: String,
    pub uid: String,
    #[serde(rename = "internalIPs")]
    pub internal_ips: Vec<IpAddr>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNetwork>,
}

impl Peer {
    /// The node's address of `family` (v4 when `v6` is false) that carries its traffic: its
    /// first InternalIP of that family.
    pub fn address(&self, v6: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|a| a.is_ipv6() == v6)
    }

    /// The underlay address VXLAN uses: the first IPv4 InternalIP, else the first IPv6 one. Both
    /// ends apply the same rule, so each derives the other's VTEP MAC from the same address.
    pub fn underlay(&self) -> Option<IpAddr> {
        self.address(false).or_else(|| self.address(true))
    }
}

/// The whole table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Table {
    pub version: u32,
    /// This node's name: its own entry is `local`, never a peer.
    pub node: String,
    /// When the table last matched a full list of Nodes (unix seconds).
    #[serde(default)]
    pub synced_unix: u64,
    /// This node itself (its underlay address and pod CIDRs), if the list had it.
    #[serde(default)]
    pub local: Option<Peer>,
    /// Every other node, by name.
    #[serde(default)]
    pub peers: BTreeMap<String, Peer>,
}

impl Table {
    pub fn new(node: &str) -> Table {
        Table {
            version: TABLE_VERSION,
            node: node.to_string(),
            ..Default::default()
        }
    }

    /// A table built from a complete list of nodes: the caller vouches that `nodes` is the
    /// whole cluster (a failed or partial list must never come here, or peers would be pruned).
    pub fn from_full_list(node: &str, nodes: impl IntoIterator<Item = Peer>, now: u64) -> Table {
        let mut t = Table::new(node);
        for p in nodes {
            t.upsert(p);
        }
        t.synced_unix = now;
        t
    }

    /// Adds or replaces one node (this one goes to `local`).
    pub fn upsert(&mut self, p: Peer) {
        if p.name == self.node {
            self.local = Some(p);
        } else {
            self.peers.insert(p.name.clone(), p);
        }
    }

    /// Removes one node; `true` if it was known.
    pub fn remove(&mut self, name: &str) -> bool {
        if name == self.node {
            return self.local.take().is_some();
        }
        self.peers.remove(name).is_some()
    }

    /// Seconds since the last full list; `None` when never synced or dated in the future.
    pub fn age_secs(&self, now: u64) -> Option<u64> {
        (self.synced_unix > 0).then(|| now.checked_sub(self.synced_unix))?
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The persisted table; `None` when there is none yet. A table of another version, or of
/// another node (a state dir copied between machines), is an error: never routes from it.
pub fn load(state_dir: &Path, node: &str) -> Result<Option<Table>> {
    let p = path(state_dir);
    let Some(bytes) = atomic::read(&p, MAX_BYTES)? else {
        return Ok(None);
    };
    let t: Table =
        serde_json::from_slice(&bytes).map_err(|e| Error::decode(p.display().to_string(), e))?;
    if t.version != TABLE_VERSION {
        return Err(Error::decode(
            p.display().to_string(),
            format!("unknown version {}", t.version),
        ));
    }
    if t.node != node {
        return Err(Error::decode(
            p.display().to_string(),
            format!("the table is node {:?}'s, this is {node:?}", t.node),
        ));
    }
    Ok(Some(t))
}

/// Writes the table atomically and durably (it is what routes come back from after a power cut).
pub fn store(state_dir: &Path, t: &Table) -> Result<()> {
    let bytes =
        serde_json::to_vec(t).map_err(|e| Error::Internal(format!("encoding peers: {e}")))?;
    atomic::write(&path(state_dir), &bytes, true)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub fn peer(name: &str, ip: &str, cidrs: &[&str]) -> Peer {
        Peer {
            name: name.into(),
            uid: format!("uid-{name}"),
            internal_ips: vec![ip.parse().unwrap()],
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn upsert_remove_and_local() {
        let mut t = Table::from_full_list(
            "a",
            [
                peer("a", "192.0.2.1", &["10.1.0.0/24"]),
                peer("b", "192.0.2.2", &[]),
            ],
            100,
        );
        assert_eq!(t.local.as_ref().unwrap().name, "a");
        assert_eq!(t.peers.keys().collect::<Vec<_>>(), ["b"]);
        t.upsert(peer("b", "192.0.2.9", &["10.2.0.0/24"]));
        assert_eq!(t.peers["b"].internal_ips[0].to_string(), "192.0.2.9");
        assert!(t.remove("b") && !t.remove("b"));
        assert_eq!(t.age_secs(150), Some(50));
        assert_eq!(t.age_secs(50), None, "dated in the future");
        assert_eq!(Table::new("a").age_secs(50), None, "never synced");
    }

    #[test]
    fn underlay_prefers_v4() {
        let mut p = peer("b", "2001:db8::2", &[]);
        assert_eq!(p.underlay().unwrap().to_string(), "2001:db8::2");
        p.internal_ips.push("192.0.2.2".parse().unwrap());
        assert_eq!(p.underlay().unwrap().to_string(), "192.0.2.2");
        assert_eq!(p.address(true).unwrap().to_string(), "2001:db8::2");
    }

    #[test]
    fn persisted_0600_versioned_and_never_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("hf-peers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&dir, "a").unwrap(), None);
        let t = Table::from_full_list("a", [peer("b", "192.0.2.2", &["10.2.0.0/24"])], 7);
        store(&dir, &t).unwrap();
        assert_eq!(load(&dir, "a").unwrap(), Some(t.clone()));
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(load(&dir, "other").is_err(), "another node's table");
        std::fs::write(path(&dir), br#"{"version":2,"node":"a"}"#).unwrap();
        assert!(load(&dir, "a").unwrap_err().to_string().contains("version"));
        std::fs::write(path(&dir), b"{").unwrap();
        assert!(load(&dir, "a").is_err());
        store(&dir, &t).unwrap();
        std::fs::rename(path(&dir), dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), path(&dir)).unwrap();
        assert_eq!(load(&dir, "a").unwrap_err().code(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
