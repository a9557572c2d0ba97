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

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` and checks that it is a namespace and not the plugin's own.
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path)
            .map_err(|e| Error::InvalidEnv(format!("CNI_NETNS {}: {e}", path.display())))?;
        let fs = nix::sys::statfs::fstatfs(file.as_fd())
            .map_err(|e| Error::InvalidEnv(format!("CNI_NETNS {}: {e}", path.display())))?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is not a network namespace",
                path.display()
            )));
        }
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

    /// A netlink handle whose socket lives in this namespace, driven by the caller's runtime.
    ///
    /// Only the socket is made on a short-lived thread that `setns`es first: a netlink socket
    /// belongs to the namespace it was created in for its whole life, so all the work then runs
    /// on the caller's runtime, concurrently with work in the plugin's own namespace, and the
    /// caller's thread never leaves its namespace.
    pub fn connect(&self) -> Result<Pod> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io(format!("dup {}", self.path.display()), e))?;
        let path = self.path.clone();
        let socket = std::thread::Builder::new()
            .name("netns-socket".into())
            .spawn(move || -> Result<rtnetlink::sys::Socket> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Internal(format!("setns into {}: {e}", path.display())))?;
                rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
                    .map_err(|e| Error::io("opening a netlink socket in the pod netns", e))
            })
            .map_err(|e| Error::Internal(format!("spawning netns thread: {e}")))?
            .join()
            .map_err(|_| Error::Internal("netns socket thread panicked".into()))??;
        // SAFETY: the fd was just created by the thread above and ownership moves here whole.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Pod(Nl(handle)))
    }
}
