//! Files under stateDir, reached only through directory handles.
//!
//! Every directory below stateDir is opened `O_DIRECTORY|O_NOFOLLOW` from its parent's handle and
//! every file `O_NOFOLLOW` from its directory's, so a symlink planted anywhere under stateDir is
//! refused, never followed. stateDir itself is the operator's choice and may be a symlink.
//! Temporary files get an unpredictable name and `O_EXCL`, so nothing planted at a guessed name
//! is ever opened.

use crate::cni::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Temp files of a killed process older than this are anyone's to remove: no write takes so long.
pub const STALE_TEMP: Duration = Duration::from_secs(60);

/// Which fsyncs a write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// None: the file survives a crash of the process, not a power loss.
    None,
    /// The data, then the directory entry: the file survives power loss once the call returns.
    Full,
    /// Neither now: the caller fsyncs the directory later, for content whose loss in a power
    /// cut is harmless.
    Later,
}

/// An open directory, and the path it was opened by (for messages only).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// A name that stays in its directory: one non-empty component, not `.` or `..`.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Internal(format!("{name:?} is not a file name")));
    }
    Ok(())
}

/// Whether `name` is one of our temporary files.
pub fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// The prefix of every temporary file written for `target`.
pub fn temp_prefix(target: &str) -> String {
    format!(".{target}.")
}

/// 128 unpredictable bits, from std's per-process random SipHash keys: no `unsafe`, no extra
/// crate, no file to open.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(seq);
        h.write_u32(std::process::id());
        h.write_u128(nanos);
        h.finish()
    };
    format!("{:016x}{:016x}", word(1), word(2))
}

impl Dir {
    /// Opens `path` (following symlinks: it is the operator's), creating it 0700 if `create`;
    /// `None` if it does not exist and `create` is false.
    pub fn open(path: &Path, create: bool) -> Result<Option<Dir>> {
        let open = || {
            nix::fcntl::open(
                path,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        // Open first: on the hot path the directory exists, and a create is a wasted syscall.
        let opened = match open() {
            Err(Errno::ENOENT) if create => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                open()
            }
            other => other,
        };
        match opened {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: path.to_path_buf(),
            })),
            Err(Errno::ENOENT) if !create => Ok(None),
            Err(e) => Err(Error::io(format!("opening {}", path.display()), io_err(e))),
        }
    }

    /// Opens `root`, then each of `components` below it without following symlinks.
    pub fn open_path(root: &Path, components: &[&str], create: bool) -> Result<Option<Dir>> {
        let Some(mut d) = Dir::open(root, create)? else {
            return Ok(None);
        };
        for c in components {
            match d.sub(c, create)? {
                Some(s) => d = s,
                None => return Ok(None),
            }
        }
        Ok(Some(d))
    }

    /// The subdirectory `name`; a symlink or non-directory there is refused (code 5).
    pub fn sub(&self, name: &str, create: bool) -> Result<Option<Dir>> {
        check_name(name)?;
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = || nix::fcntl::openat(&self.fd, name, flags, Mode::empty());
        // Open first: on the hot path the directory exists.
        let opened = match open() {
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(Error::io(format!("creating {}", path.display()), io_err(e)));
                    }
                }
                open()
            }
            other => other,
        };
        match opened {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::ENOENT) if !create => Ok(None),
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => Err(Error::io(
                format!(
                    "refusing {}: not a directory (a symlink is never followed)",
                    path.display()
                ),
                io_err(e),
            )),
            Err(e) => Err(Error::io(format!("opening {}", path.display()), io_err(e))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` with `flags` plus `O_NOFOLLOW|O_CLOEXEC`.
    pub fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> Result<File> {
        self.open_raw(name, flags, mode)
            .map(File::from)
            .map_err(|e| self.refusal(name, e))
    }

    fn open_raw(&self, name: &str, flags: OFlag, mode: u32) -> std::result::Result<OwnedFd, Errno> {
        check_name(name).map_err(|_| Errno::EINVAL)?;
        nix::fcntl::openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
    }

    fn refusal(&self, name: &str, e: Errno) -> Error {
        let p = self.join(name);
        match e {
            Errno::ELOOP => Error::io(
                format!("refusing {}: a symlink is never followed", p.display()),
                io_err(e),
            ),
            _ => Error::io(format!("opening {}", p.display()), io_err(e)),
        }
    }

    /// `lstat` of `name`; `None` if there is nothing by that name.
    pub fn stat(&self, name: &str) -> Result<Option<FileStat>> {
        check_name(name)?;
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::io(
                format!("stat {}", self.join(name).display()),
                io_err(e),
            )),
        }
    }

    /// Reads the regular file `name`, at most `limit` bytes (more is an error); `None` if absent.
    /// Opened non-blocking, so a FIFO planted there cannot hang the read.
    pub fn read(&self, name: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let f = match self.open_raw(name, flags, 0) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.refusal(name, e)),
        };
        read_regular(f, &self.join(name), limit).map(Some)
    }

    /// Creates an empty temporary file for `target`, `O_EXCL` at a fresh random name.
    fn create_temp(&self, target: &str) -> Result<(String, File)> {
        check_name(target)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let mut last = Errno::EEXIST;
        // EEXIST at a 128-bit random name means someone planted it; a fresh name goes around it.
        for _ in 0..4 {
            let tmp = format!("{}{}.tmp", temp_prefix(target), random_hex());
            match self.open_raw(&tmp, flags, 0o600) {
                Ok(fd) => return Ok((tmp, File::from(fd))),
                Err(Errno::EEXIST) => last = Errno::EEXIST,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        Err(Error::io(
            format!(
                "creating a temporary file for {}",
                self.join(target).display()
            ),
            io_err(last),
        ))
    }

    /// Replaces `name` with `bytes` (temp file, rename), mode 0600; readers see the old or the
    /// new content. With `durable`, the data and the directory are fsynced before returning.
    pub fn write_atomic(&self, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
        let sync = if durable { Sync::Full } else { Sync::None };
        self.write_atomic_fp(name, bytes, sync, "temp-written")
    }

    /// [`Dir::write_atomic`] with a choice of fsyncs and a named crash point between the temp
    /// file and the rename.
    pub fn write_atomic_fp(
        &self,
        name: &str,
        bytes: &[u8],
        sync: Sync,
        failpoint: &str,
    ) -> Result<()> {
        let (tmp, mut f) = self.create_temp(name)?;
        let res = (|| -> std::io::Result<()> {
            f.write_all(bytes)?;
            if matches!(sync, Sync::Full) {
                f.sync_all()?;
            }
            crate::failpoint::hit(failpoint);
            nix::fcntl::renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(io_err)?;
            if matches!(sync, Sync::Full) {
                self.sync_raw()?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = nix::unistd::unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(Error::io(
                format!("writing {}", self.join(name).display()),
                e,
            ));
        }
        Ok(())
    }

    /// Puts `bytes` at `name` with permissions `mode`, owned by this process's user and group,
    /// unless the regular file there already is exactly that (`Ok(false)`). A file with the right
    /// bytes but a looser mode or a foreign owner is rewritten too: a token left 0644 must not
    /// stay readable. The content goes to a fresh temp file (fsynced, closed, so it can be
    /// exec'd), which `check` is given to judge before it is renamed over `name`; the directory
    /// is then fsynced. Temp files a killed writer left for `name` are swept first.
    pub fn write_atomic_checked(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        check: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<bool> {
        self.sweep_temps_of(name);
        if self.holds(name, bytes, mode) {
            return Ok(false);
        }
        let (tmp, mut f) = self.create_temp(name)?;
        let tmp_path = self.join(&tmp);
        let res = (|| -> Result<()> {
            use std::os::unix::fs::PermissionsExt;
            let wrote = f
                .write_all(bytes)
                // fchmod, not the open mode: that one is cut by the umask.
                .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
                .and_then(|()| f.sync_all());
            // Closed before `check`: a file open for writing cannot be exec'd (ETXTBSY).
            drop(f);
            wrote.map_err(|e| Error::io(format!("writing {}", tmp_path.display()), e))?;
            check(&tmp_path)?;
            nix::fcntl::renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(|e| {
                Error::io(
                    format!("renaming onto {}", self.join(name).display()),
                    io_err(e),
                )
            })?;
            self.sync()
        })();
        if res.is_err() {
            let _ = nix::unistd::unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        res.map(|()| true)
    }

    /// Whether `name` is a regular file holding exactly `bytes`, with permissions `mode`, owned
    /// by this process's user and group. Anything unreadable counts as "no".
    fn holds(&self, name: &str, bytes: &[u8], mode: u32) -> bool {
        let Ok(Some(st)) = self.stat(name) else {
            return false;
        };
        let regular = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
        let same = regular
            && st.st_mode & 0o7777 == mode
            && st.st_uid == nix::unistd::geteuid().as_raw()
            && st.st_gid == nix::unistd::getegid().as_raw()
            && u64::try_from(st.st_size).is_ok_and(|n| n == bytes.len() as u64);
        // The size matched, so this read is bounded by the new content's length.
        same && matches!(self.read(name, bytes.len()), Ok(Some(b)) if b == bytes)
    }

    /// Removes the temp files of `target` that a killed writer left over a minute ago.
    pub fn sweep_temps_of(&self, target: &str) {
        if let Ok(names) = self.entries() {
            let prefix = temp_prefix(target);
            let names: Vec<String> = names
                .into_iter()
                .map(|e| e.0)
                .filter(|n| n.starts_with(&prefix))
                .collect();
            self.sweep_temps(&names, |_| false);
        }
    }

    /// Writes `bytes` over the regular file `name` in place (creating it, mode 0600, if there is
    /// none), for a small hint whose torn content after a kill is harmless to its reader. Its
    /// inode is kept, so no block is freed: on a filesystem mounted with `discard`, each freed
    /// block is a synchronous discard that ADD would wait for (~0.2 ms per rename-over here).
    /// Anything else by that name (a planted symlink, a FIFO) is replaced atomically instead.
    pub fn overwrite(&self, name: &str, bytes: &[u8], failpoint: &str) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NONBLOCK;
        let in_place = self.open_raw(name, flags, 0o600).ok().map(File::from);
        let Some(f) = in_place.filter(|f| f.metadata().is_ok_and(|m| m.is_file())) else {
            return self.write_atomic_fp(name, bytes, Sync::Later, failpoint);
        };
        f.write_all_at(bytes, 0)
            .and_then(|()| f.set_len(bytes.len() as u64))
            .map_err(|e| Error::io(format!("writing {}", self.join(name).display()), e))
    }

    /// Creates `name` holding `bytes` only if nothing has that name (`Ok(None)` if it is taken):
    /// the content is written to a nameless inode (or under a temporary name) and then linked
    /// into place, so `name` never exists without its content (not on ENOSPC, not after a kill at
    /// any instant). The content is not fsynced here: the open file is returned for the caller to fsync, with the
    /// directory, before it reports anything durable.
    pub fn create_unsynced(&self, name: &str, bytes: &[u8]) -> Result<Option<File>> {
        self.link_new(name, bytes)
    }

    fn link_new(&self, name: &str, bytes: &[u8]) -> Result<Option<File>> {
        check_name(name)?;
        match self.link_anonymous(name, bytes) {
            Some(done) => done,
            None => self.link_named_temp(name, bytes),
        }
    }

    /// [`Dir::link_new`] through `O_TMPFILE`: the content goes to an inode without a name, which
    /// is then linked as `name`, so a kill at any instant leaves no temp file either, and there
    /// is no temp name to create and unlink. `None` where the filesystem (or the process's
    /// capabilities, for `AT_EMPTY_PATH`) does not allow it: the caller uses a named temp file.
    fn link_anonymous(&self, name: &str, bytes: &[u8]) -> Option<Result<Option<File>>> {
        let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, ".", flags, Mode::from_bits_truncate(0o600)).ok()?;
        let mut f = File::from(fd);
        if let Err(e) = f.write_all(bytes) {
            return Some(Err(Error::io(
                format!("creating {}", self.join(name).display()),
                e,
            )));
        }
        crate::failpoint::hit("ipam-lease-written");
        let linked = nix::unistd::linkat(&f, "", &self.fd, name, AtFlags::AT_EMPTY_PATH);
        crate::failpoint::hit("lease-linked");
        match linked {
            Ok(()) => Some(Ok(Some(f))),
            Err(Errno::EEXIST) => Some(Ok(None)),
            // No CAP_DAC_READ_SEARCH (a user namespace), or a filesystem that refuses.
            Err(_) => None,
        }
    }

    fn link_named_temp(&self, name: &str, bytes: &[u8]) -> Result<Option<File>> {
        let (tmp, mut f) = self.create_temp(name)?;
        let res = (|| -> std::io::Result<bool> {
            f.write_all(bytes)?;
            crate::failpoint::hit("ipam-lease-written");
            match nix::unistd::linkat(&self.fd, tmp.as_str(), &self.fd, name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::EEXIST) => Ok(false),
                Err(e) => Err(io_err(e)),
            }
        })();
        crate::failpoint::hit("lease-linked");
        let _ = nix::unistd::unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        match res {
            Ok(true) => Ok(Some(f)),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::io(
                format!("creating {}", self.join(name).display()),
                e,
            )),
        }
    }

    /// Removes the entry `name` (a symlink itself, never its target); `Ok(false)` if absent.
    pub fn remove(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(Error::io(
                format!("removing {}", self.join(name).display()),
                io_err(e),
            )),
        }
    }

    /// The names in this directory (UTF-8 only: we write no other), with their type as
    /// `readdir` reports it.
    pub fn entries(&self) -> Result<Vec<(String, Option<std::fs::FileType>)>> {
        use std::os::fd::AsRawFd;
        // The fd's /proc link leads to exactly the directory this handle holds, whatever its
        // path names now, so listing through it follows nothing planted.
        let via = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        // Without /proc (never so under a runtime) the path it was opened by has to do: DEL
        // must not fail for want of it.
        let rd = std::fs::read_dir(&via)
            .or_else(|_| std::fs::read_dir(&self.path))
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
            if let Ok(name) = e.file_name().into_string() {
                out.push((name, e.file_type().ok()));
            }
        }
        Ok(out)
    }

    /// Removes temporary files that `mine` claims, or that are older than [`STALE_TEMP`] (a
    /// killed writer's). Failures are only logged: a leftover costs a few bytes, not a verb.
    pub fn sweep_temps(&self, names: &[String], mine: impl Fn(&str) -> bool) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for n in names.iter().filter(|n| is_temp(n)) {
            let stale = || {
                self.stat(n).ok().flatten().is_some_and(|s| {
                    u64::try_from(s.st_mtime)
                        .is_ok_and(|m| now.saturating_sub(m) > STALE_TEMP.as_secs())
                })
            };
            if mine(n) || stale() {
                match self.remove(n) {
                    Ok(true) => tracing::info!("removed leftover {}", self.join(n).display()),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
    }

    fn sync_raw(&self) -> std::io::Result<()> {
        nix::unistd::fsync(&self.fd).map_err(io_err)
    }

    /// fsyncs the directory itself (its entries).
    pub fn sync(&self) -> Result<()> {
        self.sync_raw()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

/// Reads `r` to its end, at most `limit` bytes; more is a clear error naming `what` (code 5).
/// For stdin, caches and anything else that must not grow without bound.
pub fn read_capped(r: impl Read, limit: usize, what: &str) -> Result<Vec<u8>> {
    read_limited(r, limit).map_err(|e| match e {
        Limited::Io(e) => Error::io(format!("reading {what}"), e),
        Limited::Over => Error::io(
            format!("refusing {what}: larger than {limit} bytes"),
            std::io::Error::from(ErrorKind::FileTooLarge),
        ),
    })
}

enum Limited {
    Io(std::io::Error),
    Over,
}

fn read_limited(f: impl Read, limit: usize) -> std::result::Result<Vec<u8>, Limited> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    f.take(cap).read_to_end(&mut buf).map_err(Limited::Io)?;
    if buf.len() > limit {
        return Err(Limited::Over);
    }
    Ok(buf)
}

/// The rest of every bounded read: `f` must be a regular file (not a FIFO, device or
/// directory), and is read to at most `limit` bytes, more being an error (code 5).
fn read_regular(f: File, p: &Path, limit: usize) -> Result<Vec<u8>> {
    let st = nix::sys::stat::fstat(&f)
        .map_err(|e| Error::io(format!("stat {}", p.display()), io_err(e)))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Error::io(
            format!("refusing {}: not a regular file", p.display()),
            std::io::Error::from(ErrorKind::InvalidInput),
        ));
    }
    read_limited(f, limit).map_err(|e| match e {
        Limited::Io(e) => Error::io(format!("reading {}", p.display()), e),
        Limited::Over => too_big(p, limit),
    })
}

fn too_big(p: &Path, limit: usize) -> Error {
    Error::io(
        format!("refusing {}: larger than {limit} bytes", p.display()),
        std::io::Error::from(ErrorKind::FileTooLarge),
    )
}

/// Reads `path` (the last component not followed) up to `limit` bytes; `None` if absent.
pub fn read_path(path: &Path, limit: usize) -> Result<Option<Vec<u8>>> {
    let (parent, name) = split(path)?;
    match Dir::open(parent, false)? {
        Some(d) => d.read(name, limit),
        None => Ok(None),
    }
}

/// As [`read_path`], but a symlink at `path` is followed: for files outside stateDir that are
/// symlinks by design (a projected service-account token, a conflist kept by config
/// management), which the runtime and the kubelet follow too. Still non-blocking, regular files
/// only and bounded, so a FIFO or a link to /dev/zero is refused at once.
pub fn read_following(path: &Path, limit: usize) -> Result<Option<Vec<u8>>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    match nix::fcntl::open(path, flags, Mode::empty()) {
        Ok(fd) => read_regular(File::from(fd), path, limit).map(Some),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::io(format!("opening {}", path.display()), io_err(e))),
    }
}

/// The directory and the file name of `path`.
pub fn split(path: &Path) -> Result<(&Path, &str)> {
    let parent = path
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Internal(format!("{} has no file name", path.display())))?;
    Ok((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hf-at-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn symlinked_directories_and_files_are_refused() {
        let root = tmp("sym");
        let outside = root.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let sd = root.join("sd");
        std::fs::create_dir_all(sd.join("ipam")).unwrap();
        symlink(&outside, sd.join("ipam/net")).unwrap();
        let e = Dir::open_path(&sd, &["ipam", "net"], true).unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("ipam/net"), "{e}");
        let d = Dir::open_path(&sd, &["ipam"], false).unwrap().unwrap();
        symlink(outside.join("victim"), sd.join("ipam/f")).unwrap();
        assert_eq!(d.read("f", 10).unwrap_err().code(), 5);
        assert!(d.create_unsynced("f", b"x").unwrap().is_none());
        d.write_atomic("f", b"new", true).unwrap();
        assert_eq!(d.read("f", 10).unwrap().unwrap(), b"new");
        assert!(!outside.join("victim").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn create_with_is_exclusive_and_leaves_no_temp() {
        let root = tmp("excl");
        let d = Dir::open(&root, true).unwrap().unwrap();
        assert!(d.create_unsynced("a", b"one").unwrap().is_some());
        assert!(d.create_unsynced("a", b"two").unwrap().is_none());
        assert_eq!(d.read("a", 3).unwrap().unwrap(), b"one");
        assert_eq!(d.read("a", 2).unwrap_err().code(), 5);
        let names: Vec<String> = d.entries().unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["a"]);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn temp_names_are_unpredictable_and_swept() {
        let root = tmp("sweep");
        let d = Dir::open(&root, true).unwrap().unwrap();
        let a = d.create_temp("x").unwrap().0;
        let b = d.create_temp("x").unwrap().0;
        assert_ne!(a, b);
        assert!(a.len() < 60 && is_temp(&a) && a.starts_with(&temp_prefix("x")));
        std::fs::write(root.join(".other.tmp"), b"").unwrap();
        let names: Vec<String> = d.entries().unwrap().into_iter().map(|e| e.0).collect();
        d.sweep_temps(&names, |n| n.starts_with(&temp_prefix("x")));
        let left: Vec<String> = d.entries().unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(left, [".other.tmp"], "a fresh foreign temp stays");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_fifo_is_not_read() {
        let root = tmp("fifo");
        let d = Dir::open(&root, true).unwrap().unwrap();
        nix::unistd::mkfifo(&root.join("p"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = d.read("p", 10).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(root);
    }
}
