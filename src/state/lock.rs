//! File locks with a deadline, and the per-attachment lock.
//!
//! A contended lock is waited for with a blocking `flock` on a helper thread while the caller
//! waits on a channel with a timeout: the waiter wakes the moment the holder lets go (no polling,
//! no wakeups while it waits) and still gives up at the deadline. A helper that is still blocked
//! then is harmless: when it finally gets the lock it finds nobody listening and drops it at
//! once, and in the plugin the process exits first anyway.
//!
//! Lock order for every verb: the attachment lock first, then the IPAM store lock.

use super::at::Dir;
use crate::cni::config::AttachmentId;
use crate::cni::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a verb waits for another invocation's lock before giving up with code 11.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Locks `file` exclusively without waiting; `Ok(Err(file))` (the file back, to wait on later)
/// if someone else holds it.
pub fn try_flock(file: File, what: &Path) -> Result<std::result::Result<Flock<File>, File>> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Ok(l)),
        Err((f, Errno::EWOULDBLOCK)) => Ok(Err(f)),
        Err((_, e)) => Err(Error::io(
            format!("locking {}", what.display()),
            std::io::Error::from_raw_os_error(e as i32),
        )),
    }
}

/// The lock file `name` in directory `dir` (both made when missing, the file 0600), opened to be
/// locked: for node-wide single-flight work (a boot's sweep, the routes).
pub fn named_file(dir: &Path, name: &str) -> Result<(File, std::path::PathBuf)> {
    let d = Dir::open(dir, true)?
        .ok_or_else(|| Error::Internal(format!("{} vanished", dir.display())))?;
    let f = d.open_file(name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?;
    Ok((f, d.join(name)))
}

/// [`named_file`] locked without waiting: `None` while another invocation holds it.
pub fn try_named(dir: &Path, name: &str) -> Result<Option<Flock<File>>> {
    let (f, path) = named_file(dir, name)?;
    Ok(try_flock(f, &path)?.ok())
}

/// Locks `file` exclusively, waiting until `deadline` at most (then code 11).
pub fn flock_until(file: File, what: &Path, deadline: Instant) -> Result<Flock<File>> {
    let file = match try_flock(file, what)? {
        Ok(l) => return Ok(l),
        Err(f) => f,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("lock-wait".into())
        // It only sits in flock: a small stack keeps a storm of waiters cheap.
        .stack_size(64 << 10)
        .spawn(move || {
            let mut file = file;
            let res = loop {
                match Flock::lock(file, FlockArg::LockExclusive) {
                    Ok(l) => break Ok(l),
                    Err((f, Errno::EINTR)) => file = f,
                    Err((_, e)) => break Err(e),
                }
            };
            // Nobody listening (the caller gave up): dropping the lock here releases it.
            let _ = tx.send(res);
        })
        .map_err(|e| Error::Internal(format!("spawning a lock waiter: {e}")))?;
    let timeout = || {
        Error::TryAgainLater(format!(
            "could not lock {} within {}s",
            what.display(),
            LOCK_WAIT.as_secs()
        ))
    };
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(e)) => Err(Error::io(
            format!("locking {}", what.display()),
            std::io::Error::from_raw_os_error(e as i32),
        )),
        Err(_) => Err(timeout()),
    }
}

/// The exclusive lock on one attachment (network, container ID, ifname), held while it lives.
#[derive(Debug)]
pub struct AttachmentLock {
    lock: Flock<File>,
    dir: Dir,
    name: String,
    /// The lock file was there before: some verb locked the attachment and no DEL removed it
    /// since (a live attachment, or the leftovers of a killed ADD). A first ADD has nothing to
    /// clean up.
    pub existed: bool,
}

/// The lock file's name: the attachment's file stem (within NAME_MAX for any valid ID).
fn lock_name(container_id: &str, ifname: &str) -> String {
    format!("{}.lock", super::file_stem(container_id, ifname))
}

fn lock_dir(state_dir: &Path, network: &str) -> Result<Dir> {
    crate::cni::config::validate_network_name(network)?;
    Dir::open_path(state_dir, &["locks", network], true)?
        .ok_or_else(|| Error::Internal(format!("{}: no lock directory", state_dir.display())))
}

/// Locks the attachment, waiting [`LOCK_WAIT`] at most (then code 11).
pub fn lock_attachment(
    state_dir: &Path,
    network: &str,
    id: &AttachmentId,
) -> Result<AttachmentLock> {
    let deadline = Instant::now() + LOCK_WAIT;
    acquire(state_dir, network, id, Some(deadline))?
        .ok_or_else(|| Error::Internal("lock wait returned without the lock or an error".into()))
}

/// Locks the attachment if nobody holds it; `Ok(None)` if another invocation does (an ADD in
/// progress, as opposed to a crashed one's leftovers).
pub fn try_lock_attachment(
    state_dir: &Path,
    network: &str,
    id: &AttachmentId,
) -> Result<Option<AttachmentLock>> {
    acquire(state_dir, network, id, None)
}

fn acquire(
    state_dir: &Path,
    network: &str,
    id: &AttachmentId,
    deadline: Option<Instant>,
) -> Result<Option<AttachmentLock>> {
    let (container_id, ifname) = (id.container_id.as_str(), id.ifname.as_str());
    crate::cni::env::validate_container_id(container_id)?;
    crate::cni::env::validate_ifname(ifname)?;
    let dir = lock_dir(state_dir, network)?;
    let name = lock_name(container_id, ifname);
    let what = dir.join(&name);
    // A few rounds at most without a deadline: each lost round means a holder removed the file.
    let mut rounds = 0u32;
    loop {
        // O_EXCL first: whether the file was there tells a retried ADD from a first one.
        let (file, created) =
            match dir.open_file(&name, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL, 0o600) {
                Ok(f) => (f, true),
                Err(Error::Io { source, .. })
                    if source.raw_os_error() == Some(nix::errno::Errno::EEXIST as i32) =>
                {
                    (
                        dir.open_file(&name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?,
                        false,
                    )
                }
                Err(e) => return Err(e),
            };
        let lock = match deadline {
            Some(d) => flock_until(file, &what, d)?,
            None => match try_flock(file, &what)? {
                Ok(l) => l,
                Err(_) => return Ok(None),
            },
        };
        if still_named(&dir, &name, &lock)? {
            return Ok(Some(AttachmentLock {
                lock,
                dir,
                name,
                existed: !created,
            }));
        }
        // The holder removed the file while we waited: our lock is on an orphan inode that
        // nobody else will ever lock, so it protects nothing. Start again on the current file.
        drop(lock);
        rounds = rounds.saturating_add(1);
        if deadline.is_some_and(|d| Instant::now() >= d) || (deadline.is_none() && rounds > 8) {
            return Err(Error::TryAgainLater(format!(
                "could not lock {}: it keeps being removed",
                what.display()
            )));
        }
    }
}

/// Whether `name` still names the file `lock` is on.
fn still_named(dir: &Dir, name: &str, lock: &Flock<File>) -> Result<bool> {
    let held = lock
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", dir.join(name).display()), e))?;
    Ok(dir
        .stat(name)?
        .is_some_and(|s| s.st_dev == held.dev() && s.st_ino == held.ino()))
}

impl AttachmentLock {
    /// Where the lock file is.
    #[cfg(test)]
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.join(&self.name)
    }

    /// Removes the lock file while still holding the lock, then lets go. A waiter that gets the
    /// lock on the removed file notices (the name no longer leads to it) and starts again, so
    /// two processes never both believe they hold the attachment.
    pub fn remove(self) -> Result<()> {
        self.dir.remove(&self.name)?;
        drop(self.lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hf-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn exclusive_and_try_says_none() {
        let sd = tmp("excl");
        let a = lock_attachment(&sd, "net", &AttachmentId::new("c1", "eth0")).unwrap();
        assert!(
            try_lock_attachment(&sd, "net", &AttachmentId::new("c1", "eth0"))
                .unwrap()
                .is_none()
        );
        let other = try_lock_attachment(&sd, "net", &AttachmentId::new("c1", "eth1")).unwrap();
        assert!(other.is_some(), "another ifname is another attachment");
        drop(a);
        assert!(
            try_lock_attachment(&sd, "net", &AttachmentId::new("c1", "eth0"))
                .unwrap()
                .is_some()
        );
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn a_waiter_gets_it_when_the_holder_lets_go() {
        let sd = tmp("wait");
        let a = lock_attachment(&sd, "net", &AttachmentId::new("c1", "eth0")).unwrap();
        let sd2 = sd.clone();
        let t = std::thread::spawn(move || {
            lock_attachment(&sd2, "net", &AttachmentId::new("c1", "eth0")).map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(a);
        t.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn remove_makes_a_waiter_start_again_on_a_new_file() {
        let sd = tmp("remove");
        let a = lock_attachment(&sd, "net", &AttachmentId::new("c1", "eth0")).unwrap();
        let sd2 = sd.clone();
        let t = std::thread::spawn(move || {
            lock_attachment(&sd2, "net", &AttachmentId::new("c1", "eth0")).unwrap()
        });
        std::thread::sleep(Duration::from_millis(50));
        a.remove().unwrap();
        let l = t.join().unwrap();
        // Had the waiter kept its lock on the removed file, a newcomer would lock a new file at
        // the name and both would believe they hold the attachment.
        assert!(
            try_lock_attachment(&sd, "net", &AttachmentId::new("c1", "eth0"))
                .unwrap()
                .is_none()
        );
        assert!(l.path().exists());
        drop(l);
        let _ = std::fs::remove_dir_all(sd);
    }

    #[test]
    fn long_ids_fit_and_bad_names_are_refused() {
        let sd = tmp("names");
        let id = "a".repeat(256);
        let l = lock_attachment(&sd, "net", &AttachmentId::new(&id, "eth0")).unwrap();
        assert!(l.path().file_name().unwrap().len() <= 255);
        assert_eq!(
            lock_attachment(&sd, "net", &AttachmentId::new("../x", "eth0"))
                .unwrap_err()
                .code(),
            4
        );
        assert_eq!(
            lock_attachment(&sd, "../n", &AttachmentId::new("c", "eth0"))
                .unwrap_err()
                .code(),
            7
        );
        let _ = std::fs::remove_dir_all(sd);
    }
}

#[cfg(test)]
mod deadline {
    use super::*;

    #[test]
    fn a_held_lock_times_out_with_code_11() {
        let d = std::env::temp_dir().join(format!("hf-lock-deadline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("lock");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
                .unwrap()
        };
        let held = flock_until(open(), &p, Instant::now()).unwrap();
        let t0 = Instant::now();
        let e = flock_until(open(), &p, Instant::now() + Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(t0.elapsed() >= Duration::from_millis(200));
        drop(held);
        let _ = std::fs::remove_dir_all(d);
    }
}
