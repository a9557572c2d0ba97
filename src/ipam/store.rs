//! The lease store: host-local's on-disk layout, so operators can read it with `ls` and `cat`.
//!
//! `ipam/<network>/<ip>` holds `<containerID>\r\n<ifname>`; `last_reserved_ip.<set>` remembers
//! where round-robin continues; `lock` serialises every change. A lease file is created with
//! `O_EXCL` before its address is configured, so a crash leaves a lease that DEL or GC release,
//! never an address in use without a lease.

use crate::cni::{Error, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for another invocation holding the lock before giving up with code 11.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Owner {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    fn encode(&self) -> String {
        format!("{}\r\n{}", self.container_id, self.ifname)
    }

    fn decode(s: &str) -> Option<Owner> {
        let mut it = s.splitn(2, "\r\n");
        Some(Owner::new(
            it.next()?.trim(),
            it.next().unwrap_or("").trim(),
        ))
    }
}

/// The lease directory of one network, locked for as long as this value lives.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// The directory a network's leases live in.
    pub fn dir_of(state_dir: &Path, network: &str) -> PathBuf {
        state_dir.join("ipam").join(network)
    }

    /// Opens (creating) and locks the store of `network`.
    pub fn open(state_dir: &Path, network: &str) -> Result<Store> {
        let dir = Store::dir_of(state_dir, network);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((_, e)) => {
                    return Err(Error::TryAgainLater(format!(
                        "could not lock {} within {}s: {e}",
                        lock_path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
            }
        };
        Ok(Store { dir, _lock: lock })
    }

    fn lease_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Takes `ip` for `owner`; `Ok(false)` if someone holds it.
    pub fn reserve(&self, ip: IpAddr, owner: &Owner) -> Result<bool> {
        let path = self.lease_path(ip);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(owner.encode().as_bytes())
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }

    pub fn owner(&self, ip: IpAddr) -> Option<Owner> {
        Owner::decode(&std::fs::read_to_string(self.lease_path(ip)).ok()?)
    }

    /// Releases `ip` if `owner` holds it; `Ok(true)` if a lease was removed.
    pub fn release(&self, ip: IpAddr, owner: &Owner) -> Result<bool> {
        if self.owner(ip).as_ref() != Some(owner) {
            return Ok(false);
        }
        let path = self.lease_path(ip);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Every lease: address and holder.
    pub fn leases(&self) -> Result<Vec<(IpAddr, Owner)>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("reading {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            if let Some(o) = self.owner(ip) {
                out.push((ip, o));
            }
        }
        Ok(out)
    }

    /// Releases every lease `owner` holds (a crashed ADD leaves leases with no record).
    pub fn release_owner(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for (ip, o) in self.leases()? {
            if &o == owner && self.release(ip, owner)? {
                released.push(ip);
            }
        }
        Ok(released)
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        std::fs::read_to_string(self.dir.join(format!("last_reserved_ip.{set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(format!("last_reserved_ip.{set}"));
        std::fs::write(&path, ip.to_string())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}
