//! Network namespaces: opening them safely and running netlink work inside one.
//!
//! The main thread never leaves the plugin's own netns. Work in a pod's netns runs on a
//! dedicated thread that `setns`es first and only then opens its netlink socket, so the socket
//! belongs to the target namespace for its whole life.

use crate::cni::{Error, Result};
use rtnetlink::Handle;
use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, RawFd};
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

    /// Opens `path` if it still exists as a namespace; `None` when it is gone (DEL after the pod
    /// netns was removed).
    pub fn open_if_present(path: Option<&Path>) -> Option<Netns> {
        Netns::open(path?).ok()
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

    /// Runs `f` with a netlink handle inside this namespace, on its own thread.
    pub fn spawn<T, F, Fut>(&self, f: F) -> Result<NetnsTask<T>>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io(format!("dup {}", self.path.display()), e))?;
        let path = self.path.clone();
        let join = std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || -> Result<T> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Internal(format!("setns into {}: {e}", path.display())))?;
                block_on_netlink(f)
            })
            .map_err(|e| Error::Internal(format!("spawning netns thread: {e}")))?;
        Ok(NetnsTask(join))
    }

    /// [`Netns::spawn`] and wait.
    pub fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        self.spawn(f)?.join()
    }
}

/// Work running in another namespace.
pub struct NetnsTask<T>(std::thread::JoinHandle<Result<T>>);

impl<T> NetnsTask<T> {
    pub fn join(self) -> Result<T> {
        self.0.join().map_err(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Error::Internal(format!("netns thread panicked: {msg}"))
        })?
    }
}

/// A current-thread runtime with a netlink connection in the calling thread's netns.
pub fn block_on_netlink<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let handle = connect()?;
        f(handle).await
    })
}

/// Opens a netlink connection in the current thread's netns; needs a running runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}
