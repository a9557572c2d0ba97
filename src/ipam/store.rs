//! The lease store: host-local's on-disk layout, so operators can read it with `ls` and `cat`.
//!
//! `ipam/<network>/<ip>` holds `<containerID>\r\n<ifname>`; `last_reserved_ip.<set>` remembers
//! where round-robin continues; `lock` serialises every change. A lease's owner is written to a
//! nameless file (or a temporary name) and then linked to the address's name, so a lease never
//! exists without its owner, and it is on disk (file and directory fsynced) before ADD answers:
//! a crash leaves a lease that DEL or GC release, never an address in use without a lease.
//! Everything is reached through directory handles without following symlinks.

use crate::cni::{Error, Result};
use crate::state::at::{self, Dir};
use crate::state::lock;
use nix::fcntl::{Flock, OFlag};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A lease file larger than this is not one of ours.
const MAX_LEASE: usize = 4096;

/// Who holds a lease: the attachment (`doctor` still says `Owner`).
pub use crate::cni::config::AttachmentId as Owner;

/// A lease's content: host-local's `<containerID>\r\n<ifname>`.
fn encode(o: &Owner) -> String {
    format!("{}\r\n{}", o.container_id, o.ifname)
}

/// The owner in a lease's content; `None` unless both parts are valid names (an empty or
/// garbled lease holds no owner anybody could release it as).
fn decode(s: &str) -> Option<Owner> {
    let (id, ifname) = s.split_once("\r\n")?;
    let o = Owner::new(id.trim(), ifname.trim());
    crate::cni::env::validate_container_id(&o.container_id).ok()?;
    crate::cni::env::validate_ifname(&o.ifname).ok()?;
    Some(o)
}

/// Every lease file of a store: those held by an owner, and those that are not readable as one
/// (empty, garbled, oversized, a symlink), with the reason, for DEL and GC to decide about.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub held: Vec<(IpAddr, Owner)>,
    pub unreadable: Vec<(IpAddr, String)>,
}

/// The lease directory of one network, locked for as long as this value lives.
///
/// New entries (leases, `last_reserved_ip`) share one directory fsync: [`Store::sync`], or at the
/// latest when the store is dropped, before its lock is released.
pub struct Store {
    dir: Dir,
    /// Entries were added since the directory was last fsynced.
    dirty: AtomicBool,
    /// Leases whose content is not fsynced yet.
    unsynced: Mutex<Vec<File>>,
    _lock: Flock<File>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!("{e}");
        }
    }
}

impl Store {
    /// The directory a network's leases live in.
    pub fn dir_of(state_dir: &Path, network: &str) -> PathBuf {
        state_dir.join("ipam").join(network)
    }

    /// Opens (creating) and locks the store of `network`, waiting 10 s at most (then code 11).
    /// A symlink at `ipam`, `ipam/<network>` or the lock is refused (code 5).
    pub fn open(state_dir: &Path, network: &str) -> Result<Store> {
        let deadline = Instant::now() + lock::LOCK_WAIT;
        crate::cni::config::validate_network_name(network)?;
        let dir = Dir::open_path(state_dir, &["ipam", network], true)?.ok_or_else(|| {
            Error::Internal(format!("{}: no lease directory", state_dir.display()))
        })?;
        let file = dir.open_file("lock", OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?;
        let lock = lock::flock_until(file, &dir.join("lock"), deadline)?;
        Ok(Store {
            dir,
            dirty: AtomicBool::new(false),
            unsynced: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    /// Takes `ip` for `owner`; `Ok(false)` if someone holds it (or anything else has its name).
    /// On `Ok(true)` the lease exists with its owner; it is on disk once the store is synced
    /// ([`Store::sync`], or dropped).
    pub fn reserve(&self, ip: IpAddr, owner: &Owner) -> Result<bool> {
        let name = ip.to_string();
        // Under the lock nobody else adds leases, so a name seen taken stays taken: skipping it
        // spares a temp file and an fsync per taken address while round-robin searches.
        if self.dir.stat(&name)?.is_some() {
            return Ok(false);
        }
        match self.dir.create_unsynced(&name, encode(owner).as_bytes())? {
            Some(f) => {
                self.unsynced.lock().map_err(|_| poisoned())?.push(f);
                self.dirty.store(true, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// fsyncs the lease directory if entries were added since the last time: after this, every
    /// lease reserved through this store survives power loss.
    pub fn sync(&self) -> Result<()> {
        let files = std::mem::take(&mut *self.unsynced.lock().map_err(|_| poisoned())?);
        for f in &files {
            f.sync_all().map_err(|e| {
                Error::io(
                    format!("syncing a lease in {}", self.dir.path().display()),
                    e,
                )
            })?;
        }
        if self.dirty.swap(false, Ordering::Relaxed)
            && let Err(e) = self.dir.sync()
        {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    /// The owner of `ip`'s lease; `None` if there is none or it is unreadable.
    pub fn owner(&self, ip: IpAddr) -> Option<Owner> {
        self.read_owner(ip).ok().flatten()
    }

    /// `Ok(None)`: no lease; `Err(why)`: a lease file that holds no readable owner.
    fn read_owner(&self, ip: IpAddr) -> std::result::Result<Option<Owner>, String> {
        let bytes = match self.dir.read(&ip.to_string(), MAX_LEASE) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        match decode(&text) {
            Some(o) => Ok(Some(o)),
            None if text.is_empty() => Err("empty".into()),
            None => Err(format!("no valid owner in {text:?}")),
        }
    }

    /// Releases `ip` if `owner` holds it; `Ok(true)` if a lease was removed.
    pub fn release(&self, ip: IpAddr, owner: &Owner) -> Result<bool> {
        if self.owner(ip).as_ref() != Some(owner) {
            return Ok(false);
        }
        self.dir.remove(&ip.to_string())
    }

    /// Removes `ip`'s lease file whoever or whatever it holds (for an unreadable one that DEL or
    /// GC decided to drop); `Ok(true)` if there was one.
    /// A directory at the name is not a lease anybody wrote: it is left alone (and keeps its
    /// address from being handed out), with a warning, rather than failing every GC.
    pub fn discard(&self, ip: IpAddr) -> Result<bool> {
        use nix::sys::stat::SFlag;
        let name = ip.to_string();
        let is_dir = self.dir.stat(&name)?.is_some_and(|s| {
            SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
        });
        if is_dir {
            tracing::warn!(
                "{} is a directory, not a lease: left alone",
                self.dir.join(&name).display()
            );
            return Ok(false);
        }
        self.dir.remove(&name)
    }

    /// Every lease file, readable or not. Temp files found here are a killed writer's (every
    /// writer holds the lock we hold) and are removed.
    pub fn scan(&self) -> Result<Scan> {
        let names = self.dir.entries()?;
        let mut out = Scan::default();
        let mut temps = Vec::new();
        for (name, _) in names {
            if at::is_temp(&name) {
                temps.push(name);
                continue;
            }
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            match self.read_owner(ip) {
                Ok(Some(o)) => out.held.push((ip, o)),
                Ok(None) => {}
                Err(why) => out.unreadable.push((ip, why)),
            }
        }
        self.dir.sweep_temps(&temps, |_| true);
        Ok(out)
    }

    /// Every readable lease: address and holder. Unreadable ones are only logged; see [`scan`].
    ///
    /// [`scan`]: Store::scan
    pub fn leases(&self) -> Result<Vec<(IpAddr, Owner)>> {
        let s = self.scan()?;
        for (ip, why) in &s.unreadable {
            tracing::warn!(
                "lease {} is unreadable: {why}",
                self.dir.join(&ip.to_string()).display()
            );
        }
        Ok(s.held)
    }

    /// Releases every lease `owner` holds (a crashed ADD leaves leases with no record): reads
    /// every lease file, so a caller that knows the addresses uses [`Store::release_all`].
    pub fn release_owner(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let ips: Vec<IpAddr> = self
            .scan()?
            .held
            .into_iter()
            .filter(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
            .collect();
        self.release_all(&ips, owner)
    }

    /// Releases those of `ips` that `owner` holds; returns them.
    pub fn release_all(&self, ips: &[IpAddr], owner: &Owner) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for ip in ips {
            if self.release(*ip, owner)? {
                released.push(*ip);
            }
        }
        Ok(released)
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let b = self
            .dir
            .read(&format!("last_reserved_ip.{set}"), 64)
            .ok()??;
        String::from_utf8(b).ok()?.trim().parse().ok()
    }

    /// Records where round-robin continues, in place (see [`Dir::overwrite`]); [`Store::sync`]
    /// makes a new entry durable together with the lease just reserved: one directory fsync for
    /// both. Its content is not fsynced on its own: torn by a kill or lost in a power cut, it
    /// reads as absent (or as another address of the range) and round-robin starts elsewhere,
    /// which is harmless.
    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        self.dir.overwrite(
            &format!("last_reserved_ip.{set}"),
            ip.to_string().as_bytes(),
            "last-reserved-temp-written",
        )?;
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::Internal("lease store state poisoned by a panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hf-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_lease_holds_its_owner_and_leaves_no_temp() {
        let sd = tmp("owner");
        let s = Store::open(&sd, "net").unwrap();
        let o = Owner::new("c1", "eth0");
        assert!(s.reserve(ip("10.0.0.2"), &o).unwrap());
        assert!(
            !s.reserve(ip("10.0.0.2"), &Owner::new("c2", "eth0"))
                .unwrap()
        );
        let dir = Store::dir_of(&sd, "net");
        assert_eq!(std::fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["10.0.0.2", "lock"]);
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn unreadable_leases_are_reported_and_temps_swept() {
        let sd = tmp("scan");
        let s = Store::open(&sd, "net").unwrap();
        let dir = Store::dir_of(&sd, "net");
        let o = Owner::new("c1", "eth0");
        assert!(s.reserve(ip("10.0.0.2"), &o).unwrap());
        assert!(s.reserve(ip("10.0.0.3"), &o).unwrap());
        std::fs::write(dir.join("10.0.0.4"), b"").unwrap();
        std::fs::write(dir.join("10.0.0.5"), b"garbage").unwrap();
        std::fs::write(dir.join("10.0.0.6"), vec![b'a'; MAX_LEASE + 1]).unwrap();
        std::fs::write(dir.join(".10.0.0.7.0123.tmp"), b"c9\r\neth0").unwrap();
        let scan = s.scan().unwrap();
        assert_eq!(scan.held.len(), 2);
        let mut bad: Vec<String> = scan.unreadable.iter().map(|(i, _)| i.to_string()).collect();
        bad.sort();
        assert_eq!(bad, ["10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert!(
            !dir.join(".10.0.0.7.0123.tmp").exists(),
            "a dead writer's temp stays"
        );
        assert_eq!(s.release_owner(&o).unwrap().len(), 2);
        assert!(s.discard(ip("10.0.0.4")).unwrap());
        assert_eq!(s.leases().unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn symlinks_in_the_store_are_never_followed() {
        let sd = tmp("sym");
        let outside = sd.with_extension("outside");
        let _ = std::fs::remove_dir_all(&outside);
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        let s = Store::open(&sd, "net").unwrap();
        let dir = Store::dir_of(&sd, "net");
        symlink(outside.join("victim"), dir.join("10.0.0.2")).unwrap();
        symlink(outside.join("victim"), dir.join("last_reserved_ip.0")).unwrap();
        assert!(!s.reserve(ip("10.0.0.2"), &Owner::new("c", "eth0")).unwrap());
        assert_eq!(s.scan().unwrap().unreadable.len(), 1);
        assert_eq!(s.last_reserved(0), None);
        s.set_last_reserved(0, ip("10.0.0.3")).unwrap();
        assert_eq!(s.last_reserved(0), Some(ip("10.0.0.3")));
        drop(s);
        // A dangling symlink at the lock, and a symlinked network directory.
        std::fs::create_dir_all(sd.join("ipam")).unwrap();
        std::fs::create_dir_all(sd.join("ipam/n2")).unwrap();
        symlink(outside.join("lock-made"), sd.join("ipam/n2/lock")).unwrap();
        assert_eq!(Store::open(&sd, "n2").err().unwrap().code(), 5);
        symlink(&outside, sd.join("ipam/n3")).unwrap();
        let e = Store::open(&sd, "n3").err().unwrap();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("ipam/n3"), "{e}");
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(sd);
        let _ = std::fs::remove_dir_all(outside);
    }

    #[test]
    fn owners_must_be_valid_names() {
        assert_eq!(decode("c1\r\neth0"), Some(Owner::new("c1", "eth0")));
        assert_eq!(decode(""), None);
        assert_eq!(decode("c1"), None);
        assert_eq!(decode("../x\r\neth0"), None);
        assert_eq!(decode("c1\r\na/b"), None);
    }
}
