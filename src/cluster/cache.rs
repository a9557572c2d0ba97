//! The cluster-info cache: `stateDir/cluster-info.json`, versioned JSON, written atomically and
//! durably (it is what keeps pods starting while the API is down, so it must survive a power cut).

use super::ClusterInfo;
use crate::cni::Result;
use crate::state::{at, atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CACHE_VERSION: u32 = 1;
pub const FILE: &str = "cluster-info.json";
/// A real cache is a few hundred bytes; anything near this is not one.
const MAX_BYTES: u64 = 1 << 20;

/// Reads a state file through the state layer's reader: a symlink at `path` is refused, a FIFO
/// cannot block (ADD and STATUS read this), only a regular file of at most `max` bytes is read.
/// A missing file is `NotFound`; any other refusal is an error naming the file.
pub fn read_state_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match at::read_path(path, limit) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnDisk {
    version: u32,
    #[serde(flatten)]
    info: ClusterInfo,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Why there is no usable cache.
#[derive(Debug, PartialEq)]
pub enum Unusable {
    Missing,
    Corrupt(String),
    ForeignNode(String),
    /// It parses, but it has no podCIDRs: an ADD with it would give the pod no address.
    NoPodCidrs,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Missing => write!(f, "no cache yet"),
            Unusable::Corrupt(e) => write!(f, "cache is corrupt ({e}), ignored"),
            Unusable::ForeignNode(n) => write!(f, "cache belongs to node {n:?}, ignored"),
            Unusable::NoPodCidrs => write!(f, "cache holds no podCIDRs, ignored"),
        }
    }
}

/// Loads the cache of `node`. A corrupt, empty or foreign cache is reported, never fatal.
pub fn load(state_dir: &Path, node: &str) -> std::result::Result<ClusterInfo, Unusable> {
    let p = path(state_dir);
    let bytes = match read_state_file(&p, MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unusable::Missing),
        Err(e) => return Err(Unusable::Corrupt(e.to_string())),
    };
    let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| Unusable::Corrupt(e.to_string()))?;
    if d.version != CACHE_VERSION {
        return Err(Unusable::Corrupt(format!("unknown version {}", d.version)));
    }
    if d.info.node_name != node {
        return Err(Unusable::ForeignNode(d.info.node_name));
    }
    if d.info.pod_cidrs.is_empty() {
        return Err(Unusable::NoPodCidrs);
    }
    Ok(d.info)
}

pub fn store(state_dir: &Path, info: &ClusterInfo) -> Result<()> {
    let d = OnDisk {
        version: CACHE_VERSION,
        info: info.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&d)
        .map_err(|e| crate::cni::Error::Internal(format!("encoding cluster info: {e}")))?;
    atomic::write(&path(state_dir), &bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_mode_corrupt_foreign() {
        let dir = std::env::temp_dir().join(format!("hf-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&dir, "n1").unwrap_err(), Unusable::Missing);
        let info = ClusterInfo {
            node_name: "n1".into(),
            node_uid: "uid".into(),
            pod_cidrs: vec!["10.42.0.0/24".parse().unwrap()],
            api_endpoints: vec!["192.0.2.10:6443".parse().unwrap()],
            fetched_unix: 1000,
            fetched_from: "10.43.0.1:443".into(),
        };
        store(&dir, &info).unwrap();
        assert_eq!(load(&dir, "n1").unwrap(), info);
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(load(&dir, "n2"), Err(Unusable::ForeignNode(n)) if n == "n1"));
        std::fs::write(path(&dir), b"{\"version\":1,").unwrap();
        assert!(matches!(load(&dir, "n1"), Err(Unusable::Corrupt(_))));
        store(
            &dir,
            &ClusterInfo {
                pod_cidrs: vec![],
                ..info.clone()
            },
        )
        .unwrap();
        assert_eq!(load(&dir, "n1").unwrap_err(), Unusable::NoPodCidrs);
        // Never read through a symlink.
        store(&dir, &info).unwrap();
        let link = dir.join("elsewhere");
        std::fs::rename(path(&dir), &link).unwrap();
        std::os::unix::fs::symlink(&link, path(&dir)).unwrap();
        assert!(matches!(load(&dir, "n1"), Err(Unusable::Corrupt(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Runs `f` on a thread; `None` if it has not returned within 5 s (a hang is the failure).
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
    }

    #[test]
    fn a_fifo_at_the_cache_or_the_health_file_is_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("hf-cache-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in [FILE, "api-health.json"] {
            let p = dir.join(name);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let e = within_5s(move || read_state_file(&p, MAX_BYTES))
                .unwrap_or_else(|| panic!("reading a FIFO at {name} hung"))
                .unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let d = dir.clone();
        let got = within_5s(move || load(&d, "n1")).expect("load hung on a FIFO");
        assert!(matches!(got, Err(Unusable::Corrupt(_))), "{got:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
