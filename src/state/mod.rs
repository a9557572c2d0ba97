//! Attachment records: what ADD did for one (container ID, ifname), so that DEL, CHECK, GC and
//! `doctor` know it without asking anyone.
//!
//! `stateDir/attachments/<network>/<containerID>@<ifname>.json`. The container ID cannot contain
//! `@`, so the name is unambiguous, and both parts are validated before they reach a path. An ID
//! too long for a readable name within NAME_MAX is shortened to its first 64 characters, `+` (which
//! no ID contains) and a hash of the whole ID; the full ID stays inside the record. A record is
//! validated when read, like the environment, and must sit at the name its content gives.

pub mod at;
pub mod atomic;
pub mod lock;

pub use lock::AttachmentLock;

use crate::cni::config::AttachmentId;
use crate::cni::{CniResult, Error, Result, Version};
use crate::dataplane::netns::{self, NetnsId};
use at::Dir;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A record larger than this is refused: real ones are a few KiB.
pub const MAX_RECORD: usize = 4 << 20;

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
    /// The identity of the netns at ADD: a later namespace at the same path is another pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<NetnsId>,
    /// The boot the attachment was made in (`/proc/sys/kernel/random/boot_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delegated {
    pub plugin: String,
    pub stdin: String,
}

impl Record {
    /// A record of what ADD returned; the IPs come from the result. Mode-specific fields (host
    /// interface, ifb, IPAM delegate) start empty, and so does the netns identity: the caller
    /// takes it from the fd it checked, not from the path again.
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
            netns_id: None,
            boot_id: boot_id(),
        }
    }

    /// Whether the attachment's netns may still exist. False when the recorded path is gone, is
    /// not a network namespace any more, or names another namespace than at ADD (a record without
    /// an identity is judged by the path alone). True when there is no netns path at all, or when
    /// it cannot be told (permission, fd limits): a live attachment is never reclaimed. The boot
    /// ID is not looked at: the caller decides what a new boot means.
    pub fn netns_alive(&self) -> bool {
        let Some(p) = self.netns.as_deref() else {
            return true;
        };
        match netns::probe(Path::new(p)) {
            netns::Probe::Gone | netns::Probe::NotNetns => false,
            netns::Probe::Unknown => true,
            netns::Probe::Netns(id) => self.netns_id.is_none_or(|want| want == id),
        }
    }

    /// Why this record, read from `file_name` in network `network`'s directory, cannot be
    /// trusted; `None` if it can. Its names are checked as the environment's are, and the names
    /// of links it would have GC or DEL delete must be ones holdfast makes.
    pub fn invalid(&self, network: &str, file_name: &str) -> Option<String> {
        use crate::cni::env::{validate_container_id, validate_ifname};
        use crate::dataplane::names::is_ours;
        if self.version == 0 || self.version > RECORD_VERSION {
            return Some(format!("unknown record version {}", self.version));
        }
        if self.network != network {
            return Some(format!("network {:?} is not {network:?}", self.network));
        }
        if let Err(e) = crate::cni::config::validate_network_name(&self.network)
            .and(validate_container_id(&self.container_id))
            .and(validate_ifname(&self.ifname))
        {
            return Some(e.to_string());
        }
        let want = file_name_of(&self.container_id, &self.ifname);
        if file_name != want
            && legacy_name(&self.container_id, &self.ifname).as_deref() != Some(file_name)
        {
            return Some(format!("its content belongs in {want}"));
        }
        let foreign = |n: &Option<String>| n.as_deref().is_some_and(|n| !is_ours(n));
        match self.mode {
            Mode::Interface if foreign(&self.host_ifname) => {
                return Some(format!(
                    "hostIfname {:?} is not a holdfast name",
                    self.host_ifname
                ));
            }
            Mode::Chained => {
                if let Some(Err(e)) = self.host_ifname.as_deref().map(validate_ifname) {
                    return Some(format!("hostIfname: {e}"));
                }
            }
            _ => {}
        }
        if foreign(&self.ifb) {
            return Some(format!("ifb {:?} is not a holdfast name", self.ifb));
        }
        if let Some(d) = &self.ipam_delegate
            && (d.plugin.is_empty() || d.plugin.contains('/') || d.plugin.starts_with('.'))
        {
            return Some(format!(
                "ipamDelegate.plugin {:?} is not a plugin name",
                d.plugin
            ));
        }
        None
    }
}

/// One network's state under `stateDir`: what the verbs address attachments through, so the
/// pair (stateDir, network name) is spelled once per verb, not at every call.
#[derive(Clone, Copy, Debug)]
pub struct Network<'a> {
    pub state_dir: &'a Path,
    pub name: &'a str,
}

impl Network<'_> {
    /// The attachment's lock, waiting for another verb's (code 11 after [`lock::LOCK_WAIT`]).
    pub fn lock(&self, id: &AttachmentId) -> Result<lock::AttachmentLock> {
        lock::lock_attachment(self.state_dir, self.name, id)
    }

    /// The attachment's lock if nobody holds it.
    pub fn try_lock(&self, id: &AttachmentId) -> Result<Option<lock::AttachmentLock>> {
        lock::try_lock_attachment(self.state_dir, self.name, id)
    }

    pub fn read(&self, id: &AttachmentId) -> Result<Option<Record>> {
        read(self.state_dir, self.name, id)
    }

    pub fn remove(&self, id: &AttachmentId) -> Result<()> {
        remove(self.state_dir, self.name, id)
    }

    pub fn remove_listed(&self, id: &AttachmentId) -> Result<()> {
        remove_listed(self.state_dir, self.name, id)
    }

    pub fn remove_unreadable(&self, path: &Path) -> Result<()> {
        remove_unreadable(self.state_dir, self.name, path)
    }

    pub fn list(&self) -> (Vec<Record>, Vec<(PathBuf, String)>) {
        list(self.state_dir, self.name)
    }
}

/// This boot's ID, if the kernel tells it (read once per process: it cannot change under one).
pub fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            let b = at::read_path(Path::new("/proc/sys/kernel/random/boot_id"), 128).ok()??;
            let s = String::from_utf8(b).ok()?;
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        })
        .clone()
}

/// What a boot is to holdfast: the kernel's boot ID and the identity of the network namespace
/// holdfast runs in (the node's). Everything it programs lives there, and a new kernel or a new
/// namespace (a node that is itself a container, as kind's are, or the cluster e2e's nodes) has
/// forgotten it alike: links, routes, neighbour and FDB entries, the pods' namespaces. The
/// first verb of a new boot reclaims dead attachments and re-applies the peer table.
pub fn boot_key() -> Option<String> {
    static KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let id = boot_id()?;
        Some(match netns::probe(Path::new("/proc/self/ns/net")) {
            netns::Probe::Netns(NetnsId { dev, ino }) => format!("{id} netns {dev}:{ino}"),
            _ => id,
        })
    })
    .clone()
}

/// Container IDs longer than this get a hashed file name.
const READABLE_ID: usize = 128;

/// The file name stem of an attachment, `<containerID>@<ifname>`, within NAME_MAX with room for a
/// suffix and a temp name: at most 64 + 1 + 32 + 1 + 15 = 113 bytes for a long ID.
pub fn file_stem(container_id: &str, ifname: &str) -> String {
    if container_id.len() <= READABLE_ID {
        return format!("{container_id}@{ifname}");
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(container_id.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let head = container_id.get(..64).unwrap_or("");
    format!("{head}+{hash}@{ifname}")
}

fn file_name_of(container_id: &str, ifname: &str) -> String {
    format!("{}.json", file_stem(container_id, ifname))
}

/// The name earlier versions gave the record of an ID that is now hashed, where it fit NAME_MAX:
/// such records are still found, trusted and removed.
fn legacy_name(container_id: &str, ifname: &str) -> Option<String> {
    let n = format!("{container_id}@{ifname}.json");
    (container_id.len() > READABLE_ID && n.len() <= 255).then_some(n)
}

pub fn dir(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join("attachments").join(network)
}

/// The names that build a path, checked before they do.
fn check(network: &str, container_id: &str, ifname: &str) -> Result<()> {
    crate::cni::config::validate_network_name(network)?;
    crate::cni::env::validate_container_id(container_id)?;
    crate::cni::env::validate_ifname(ifname)
}

/// The records directory of `network`; a symlink there is refused (code 5).
fn open_dir(state_dir: &Path, network: &str, create: bool) -> Result<Option<Dir>> {
    Dir::open_path(state_dir, &["attachments", network], create)
}

/// Writes a record atomically and durably (data and directory fsynced before it returns).
pub fn write(state_dir: &Path, r: &Record) -> Result<()> {
    check(&r.network, &r.container_id, &r.ifname)?;
    let bytes = serde_json::to_vec_pretty(r)
        .map_err(|e| Error::Internal(format!("encoding record: {e}")))?;
    if bytes.len() > MAX_RECORD {
        return Err(Error::Internal(format!(
            "record of {}@{} would be larger than {MAX_RECORD} bytes",
            r.container_id, r.ifname
        )));
    }
    let d = open_dir(state_dir, &r.network, true)?
        .ok_or_else(|| Error::Internal("records directory vanished".into()))?;
    d.write_atomic_fp(
        &file_name_of(&r.container_id, &r.ifname),
        &bytes,
        at::Sync::Full,
        "record-temp",
    )
}

/// Parses and validates the record in `d`'s file `name`.
fn parse(d: &Dir, network: &str, name: &str, bytes: &[u8]) -> Result<Record> {
    let p = d.join(name);
    let r: Record = serde_json::from_slice(bytes)
        .map_err(|e| Error::decode(format!("attachment record {}", p.display()), e))?;
    match r.invalid(network, name) {
        Some(why) => Err(Error::decode(
            format!("attachment record {}", p.display()),
            format!("not trusted: {why}"),
        )),
        None => Ok(r),
    }
}

/// Reads a record; a missing one is `Ok(None)`, an unreadable or untrustworthy one an error.
pub fn read(state_dir: &Path, network: &str, id: &AttachmentId) -> Result<Option<Record>> {
    let (container_id, ifname) = (id.container_id.as_str(), id.ifname.as_str());
    check(network, container_id, ifname)?;
    let Some(d) = open_dir(state_dir, network, false)? else {
        return Ok(None);
    };
    let names = std::iter::once(file_name_of(container_id, ifname))
        .chain(legacy_name(container_id, ifname));
    for name in names {
        if let Some(b) = d.read(&name, MAX_RECORD)? {
            return parse(&d, network, &name, &b).map(Some);
        }
    }
    Ok(None)
}

/// Removes a record (a symlink there is removed, never followed), and the temp files of its
/// writes that a killed ADD left (the caller holds the attachment lock, so none is in flight).
/// Finding them costs a listing of every record.
pub fn remove(state_dir: &Path, network: &str, id: &AttachmentId) -> Result<()> {
    remove_record(state_dir, network, id, true)
}

/// As [`remove`], for a caller that [`list`]ed the records moments ago (which swept temps older
/// than a minute): temps are looked for only when no record was there. A record is written once
/// per ADD, after that ADD removed the earlier one, so a killed write's temp is left next to no
/// record (unless planted).
pub fn remove_listed(state_dir: &Path, network: &str, id: &AttachmentId) -> Result<()> {
    remove_record(state_dir, network, id, false)
}

fn remove_record(
    state_dir: &Path,
    network: &str,
    id: &AttachmentId,
    always_sweep: bool,
) -> Result<()> {
    let (container_id, ifname) = (id.container_id.as_str(), id.ifname.as_str());
    check(network, container_id, ifname)?;
    let Some(d) = open_dir(state_dir, network, false)? else {
        return Ok(());
    };
    let name = file_name_of(container_id, ifname);
    let mut removed = d.remove(&name)?;
    if let Some(old) = legacy_name(container_id, ifname) {
        removed |= d.remove(&old)?;
    }
    if removed && !always_sweep {
        return Ok(());
    }
    let prefix = at::temp_prefix(&name);
    if let Ok(names) = d.entries() {
        d.sweep_temps(&names.into_iter().map(|e| e.0).collect::<Vec<_>>(), |n| {
            n.starts_with(&prefix)
        });
    }
    Ok(())
}

/// Removes the file at `path` from `network`'s records directory whatever it holds: for a record
/// [`list`] reported as unreadable. `path` must be an entry of that directory.
pub fn remove_unreadable(state_dir: &Path, network: &str, path: &Path) -> Result<()> {
    crate::cni::config::validate_network_name(network)?;
    let (parent, name) = at::split(path)?;
    if parent != dir(state_dir, network) {
        return Err(Error::Internal(format!(
            "{} is not in {}",
            path.display(),
            dir(state_dir, network).display()
        )));
    }
    if let Some(d) = open_dir(state_dir, network, false)? {
        d.remove(name)?;
    }
    Ok(())
}

/// Every record of a network, with the paths of those that could not be read or trusted (a
/// symlinked records directory is one such path). Temp files older than a minute are removed.
pub fn list(state_dir: &Path, network: &str) -> (Vec<Record>, Vec<(PathBuf, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let d = match open_dir(state_dir, network, false) {
        Ok(Some(d)) => d,
        Ok(None) => return (ok, bad),
        Err(e) => {
            bad.push((dir(state_dir, network), e.to_string()));
            return (ok, bad);
        }
    };
    let names = match d.entries() {
        Ok(n) => n,
        Err(e) => {
            bad.push((d.path().to_path_buf(), e.to_string()));
            return (ok, bad);
        }
    };
    for (name, _) in &names {
        if at::is_temp(name) || !name.ends_with(".json") {
            continue;
        }
        // A record removed since the listing (a DEL meanwhile) is simply not there.
        match d.read(name, MAX_RECORD) {
            Ok(None) => {}
            Ok(Some(b)) => match parse(&d, network, name, &b) {
                Ok(r) => ok.push(r),
                Err(e) => bad.push((d.join(name), e.to_string())),
            },
            Err(e) => bad.push((d.join(name), e.to_string())),
        }
    }
    d.sweep_temps(&names.into_iter().map(|e| e.0).collect::<Vec<_>>(), |_| {
        false
    });
    (ok, bad)
}

/// Networks that have a records directory (real directories with valid names only).
pub fn networks(state_dir: &Path) -> Vec<String> {
    let Ok(Some(d)) = Dir::open_path(state_dir, &["attachments"], false) else {
        return Vec::new();
    };
    d.entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|(n, _)| crate::cni::config::validate_network_name(n).is_ok())
        .filter(|(n, _)| {
            d.stat(n).ok().flatten().is_some_and(|s| {
                nix::sys::stat::SFlag::from_bits_truncate(s.st_mode) & nix::sys::stat::SFlag::S_IFMT
                    == nix::sys::stat::SFlag::S_IFDIR
            })
        })
        .map(|(n, _)| n)
        .collect()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hf-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn record(cid: &str, ifname: &str) -> Record {
        Record {
            version: RECORD_VERSION,
            network: "net".into(),
            container_id: cid.into(),
            ifname: ifname.into(),
            mode: Mode::Interface,
            netns: None,
            host_ifname: Some(crate::dataplane::names::host_veth(cid, ifname)),
            ifb: None,
            ips: vec!["10.0.0.2".parse().unwrap()],
            ipam_delegate: None,
            result: serde_json::json!({}),
            created_unix: 1,
            netns_id: None,
            boot_id: None,
        }
    }

    #[test]
    fn names_fit_name_max_and_stay_readable_for_ordinary_ids() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(file_stem(&hex, "eth0"), format!("{hex}@eth0"));
        let long = "a".repeat(256);
        let stem = file_stem(&long, "abcdefghijklmno");
        assert!(stem.len() + ".json".len() + 38 <= 255, "{}", stem.len());
        assert_ne!(
            stem,
            file_stem(&format!("{}b", "a".repeat(255)), "abcdefghijklmno")
        );
        assert!(stem.starts_with(&"a".repeat(64)));
    }

    #[test]
    fn a_256_character_id_writes_reads_and_removes() {
        let sd = tmp("long");
        let id = "b".repeat(256);
        remove(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap();
        assert_eq!(
            read(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap(),
            None
        );
        let r = record(&id, "eth0");
        write(&sd, &r).unwrap();
        assert_eq!(
            read(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap(),
            Some(r.clone())
        );
        assert_eq!(list(&sd, "net").0, vec![r]);
        remove(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap();
        assert_eq!(
            read(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap(),
            None
        );
        assert_eq!(networks(&sd), ["net"]);
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn records_under_the_names_of_earlier_versions_are_still_found() {
        let sd = tmp("legacy");
        let id = "c".repeat(200);
        let r = record(&id, "eth0");
        let d = dir(&sd, "net");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(format!("{id}@eth0.json")),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
        assert_eq!(
            read(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap(),
            Some(r.clone())
        );
        assert_eq!(list(&sd, "net"), (vec![r], vec![]));
        remove(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap();
        assert_eq!(
            read(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap(),
            None
        );
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn planted_records_are_reported_never_used() {
        let sd = tmp("planted");
        write(&sd, &record("good", "eth0")).unwrap();
        let d = dir(&sd, "net");
        let mut escape = record("good", "eth0");
        escape.container_id = "../../outside/victim".into();
        std::fs::write(d.join("planted.json"), serde_json::to_vec(&escape).unwrap()).unwrap();
        let mut foreign = record("c2", "eth0");
        foreign.host_ifname = Some("victim0".into());
        std::fs::write(
            d.join("c2@eth0.json"),
            serde_json::to_vec(&foreign).unwrap(),
        )
        .unwrap();
        // Right content, wrong place: it is not the record of c3.
        std::fs::write(
            d.join("c3@eth0.json"),
            serde_json::to_vec(&record("c4", "eth0")).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("big@eth0.json"), vec![b' '; MAX_RECORD + 1]).unwrap();
        let mut future = record("v9", "eth0");
        future.version = RECORD_VERSION + 1;
        std::fs::write(d.join("v9@eth0.json"), serde_json::to_vec(&future).unwrap()).unwrap();
        let (ok, bad) = list(&sd, "net");
        assert_eq!(ok, vec![record("good", "eth0")]);
        let mut bad: Vec<String> = bad
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        bad.sort();
        assert_eq!(
            bad,
            [
                "big@eth0.json",
                "c2@eth0.json",
                "c3@eth0.json",
                "planted.json",
                "v9@eth0.json"
            ]
        );
        let e = read(&sd, "net", &AttachmentId::new("c2", "eth0")).unwrap_err();
        assert!(e.to_string().contains("victim0"), "{e}");
        assert!(read(&sd, "net", &AttachmentId::new("c3", "eth0")).is_err());
        assert_eq!(
            read(&sd, "net", &AttachmentId::new("big", "eth0"))
                .unwrap_err()
                .code(),
            5
        );
        remove_unreadable(&sd, "net", &d.join("planted.json")).unwrap();
        assert!(!d.join("planted.json").exists());
        assert!(remove_unreadable(&sd, "net", &sd.join("x.json")).is_err());
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn symlinks_at_records_and_directories_are_not_followed() {
        let sd = tmp("sym");
        let outside = sd.with_extension("outside");
        let _ = std::fs::remove_dir_all(&outside);
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        write(&sd, &record("a", "eth0")).unwrap();
        let d = dir(&sd, "net");
        symlink(outside.join("victim"), d.join("s1@eth0.json")).unwrap();
        assert_eq!(
            read(&sd, "net", &AttachmentId::new("s1", "eth0"))
                .unwrap_err()
                .code(),
            5
        );
        write(&sd, &record("s1", "eth0")).unwrap();
        assert!(
            !std::fs::symlink_metadata(d.join("s1@eth0.json"))
                .unwrap()
                .is_symlink()
        );
        remove(&sd, "net", &AttachmentId::new("s1", "eth0")).unwrap();
        std::fs::create_dir_all(sd.join("attachments")).unwrap();
        symlink(&outside, sd.join("attachments/n2")).unwrap();
        let mut r = record("a", "eth0");
        r.network = "n2".into();
        let e = write(&sd, &r).unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("attachments/n2"), "{e}");
        assert_eq!(
            read(&sd, "n2", &AttachmentId::new("a", "eth0"))
                .unwrap_err()
                .code(),
            5
        );
        assert_eq!(list(&sd, "n2").1.len(), 1);
        assert!(!networks(&sd).contains(&"n2".to_string()));
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(sd);
        let _ = std::fs::remove_dir_all(outside);
    }

    #[test]
    fn old_records_without_identity_still_read() {
        let sd = tmp("old");
        let mut v = serde_json::to_value(record("a", "eth0")).unwrap();
        v.as_object_mut().unwrap().remove("netnsId");
        v.as_object_mut().unwrap().remove("bootId");
        let d = dir(&sd, "net");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a@eth0.json"), v.to_string()).unwrap();
        let r = read(&sd, "net", &AttachmentId::new("a", "eth0"))
            .unwrap()
            .unwrap();
        assert_eq!((r.netns_id, r.boot_id), (None, None));
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn netns_liveness() {
        let mut r = record("a", "eth0");
        assert!(r.netns_alive(), "no path: cannot tell, never reclaim");
        r.netns = Some("/nonexistent/netns".into());
        assert!(!r.netns_alive());
        r.netns = Some("/proc/self/ns/uts".into());
        assert!(!r.netns_alive(), "not a network namespace");
        r.netns = Some("/proc/self/ns/net".into());
        assert!(r.netns_alive(), "no identity: the path alone");
        let id = netns::identity(Path::new("/proc/self/ns/net")).unwrap();
        r.netns_id = Some(id);
        assert!(r.netns_alive());
        r.netns_id = Some(NetnsId {
            dev: id.dev,
            ino: id.ino.wrapping_add(1),
        });
        assert!(!r.netns_alive(), "another namespace at the same path");
        assert_eq!(netns::identity(Path::new("/proc/self/ns/mnt")), None);
    }

    #[test]
    fn a_boot_is_the_kernel_boot_and_the_node_netns() {
        let (id, key) = (boot_id().unwrap(), boot_key().unwrap());
        assert!(key.starts_with(&id) && key.contains(" netns "), "{key}");
    }

    #[test]
    fn the_boot_id_is_read() {
        let b = boot_id().unwrap();
        assert_eq!(b.len(), 36, "{b}");
    }
}
