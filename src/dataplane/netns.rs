//! Network namespaces: opening them safely and talking netlink inside one.
//!
//! The plugin's threads never leave their own netns. A socket for a pod's netns is created on a
//! short-lived thread that `setns`es first; the socket stays in that namespace for its whole life
//! and is driven from the caller's runtime, so pod-side and host-side work run concurrently
//! without a second runtime.

use super::{Nl, Pod};
use crate::cni::{Error, Result};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `NSFS_MAGIC` from `linux/magic.h`: what `statfs` reports for a namespace file.
const NSFS_MAGIC: i64 = 0x6e73_6673;

// NS_GET_NSTYPE from `linux/nsfs.h`: _IO(0xb7, 0x3), the CLONE_NEW* type of a namespace fd.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// What names one namespace while it exists: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// What a path turned out to be.
#[derive(Debug)]
pub enum Probe {
    /// Nothing there (or a path component is not a directory).
    Gone,
    /// Something that is not a network namespace.
    NotNetns,
    /// A network namespace with this identity.
    Netns(NetnsId),
    /// It could not be told (permission, fd limits, ...).
    Unknown,
}

enum Refused {
    Open(std::io::Error),
    NotNetns,
}

/// Opens `path` without blocking (a FIFO answers at once) or becoming a controlling terminal,
/// and checks that it is a network namespace: nsfs, and NS_GET_NSTYPE says CLONE_NEWNET (mnt, uts
/// and other namespace files are nsfs too).
fn open_netns_file(path: &Path) -> std::result::Result<(File, NetnsId), Refused> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Refused::Open)?;
    let fs = nix::sys::statfs::fstatfs(file.as_fd())
        .map_err(|e| Refused::Open(std::io::Error::from_raw_os_error(e as i32)))?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(Refused::NotNetns);
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which `file` owns and keeps
    // open for the duration of the call.
    let nstype = unsafe { ns_get_nstype(file.as_raw_fd()) };
    if nstype != Ok(libc::CLONE_NEWNET) {
        return Err(Refused::NotNetns);
    }
    let md = file.metadata().map_err(Refused::Open)?;
    let id = NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    };
    Ok((file, id))
}

/// The identity of the network namespace at `path`; `None` if it is not one (or is not there).
pub fn identity(path: &Path) -> Option<NetnsId> {
    open_netns_file(path).ok().map(|(_, id)| id)
}

/// What `path` is now: gone, not a network namespace, one with this identity, or unknown.
pub fn probe(path: &Path) -> Probe {
    match open_netns_file(path) {
        Ok((_, id)) => Probe::Netns(id),
        Err(Refused::NotNetns) => Probe::NotNetns,
        Err(Refused::Open(e)) => match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => Probe::Gone,
            // What opening a socket or a device with no driver says: not a namespace.
            Some(libc::ENXIO | libc::ENODEV | libc::ELOOP) => Probe::NotNetns,
            _ => Probe::Unknown,
        },
    }
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace and not the plugin's own (code 4
    /// otherwise), before anything is changed. A FIFO or device does not block the open.
    pub fn open(path: &Path) -> Result<Netns> {
        let file = match open_netns_file(path) {
            Ok((file, _)) => file,
            Err(Refused::Open(e)) => {
                return Err(Error::InvalidEnv(format!(
                    "CNI_NETNS {}: {e}",
                    path.display()
                )));
            }
            Err(Refused::NotNetns) => {
                return Err(Error::InvalidEnv(format!(
                    "CNI_NETNS {} is not a network namespace",
                    path.display()
                )));
            }
        };
        let ns = Netns {
            file,
            path: path.to_path_buf(),
        };
        if ns.is_current()? {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is the plugin's own network namespace",
                path.display()
            )));
        }
        Ok(ns)
    }

    /// The identity of this namespace, for the record (from the open fd, so it is the namespace
    /// that was checked, whatever the path names meanwhile).
    pub fn identity(&self) -> Option<NetnsId> {
        let md = self.file.metadata().ok()?;
        Some(NetnsId {
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn is_current(&self) -> Result<bool> {
        let own = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("reading /proc/thread-self/ns/net", e))?;
        let this = self
            .file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", self.path.display()), e))?;
        Ok(own.dev() == this.dev() && own.ino() == this.ino())
    }

    /// Starts making a netlink handle whose socket lives in this namespace, driven by the
    /// caller's runtime; the caller goes on with other work meanwhile, and
    /// [`Connecting::finish`] waits for it.
    ///
    /// Only the socket is made on a short-lived thread that `setns`es first: a netlink socket
    /// belongs to the namespace it was created in for its whole life, so all the work then runs
    /// on the caller's runtime, concurrently with work in the plugin's own namespace, and the
    /// caller's thread never leaves its namespace.
    pub fn start_connect(&self) -> Result<Connecting> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io(format!("dup {}", self.path.display()), e))?;
        let path = self.path.clone();
        let thread = std::thread::Builder::new()
            .name("netns-socket".into())
            .spawn(move || -> Result<rtnetlink::sys::Socket> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Internal(format!("setns into {}: {e}", path.display())))?;
                rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
                    .map_err(|e| Error::io("opening a netlink socket in the pod netns", e))
            })
            .map_err(|e| Error::Internal(format!("spawning netns thread: {e}")))?;
        Ok(Connecting(thread))
    }
}

/// A pod-netns socket being made (see [`Netns::start_connect`]).
pub struct Connecting(std::thread::JoinHandle<Result<rtnetlink::sys::Socket>>);

impl Connecting {
    /// Waits for the socket (the thread's only work is `setns` and `socket`) and connects it to
    /// the caller's runtime.
    pub fn finish(self) -> Result<Pod> {
        let socket = self
            .0
            .join()
            .map_err(|_| Error::Internal("netns socket thread panicked".into()))??;
        // SAFETY: the fd was just created by the thread above and ownership moves here whole.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Pod(Nl(handle)))
    }
}
