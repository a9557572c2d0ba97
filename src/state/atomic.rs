//! Atomic file replacement: readers see the old file or the new one, never a torn one.

use super::at::{self, Dir};
use crate::cni::Result;
use std::path::Path;

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename, mode 0600.
/// The directory is created if missing; the file itself is never followed through a symlink,
/// and the temp file has an unpredictable name and is created `O_EXCL`. With `durable`, the data
/// and the directory entry are fsynced, so the file survives power loss. Temp files a killed
/// writer left for `path` more than a minute ago are removed.
pub fn write(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let (parent, name) = at::split(path)?;
    let dir = Dir::open(parent, true)?
        .ok_or_else(|| crate::cni::Error::Internal(format!("{} vanished", parent.display())))?;
    dir.write_atomic(name, bytes, durable)?;
    dir.sweep_temps_of(name);
    Ok(())
}

/// Reads `path` (not followed if it is a symlink, not blocking if it is a FIFO), at most `limit`
/// bytes, more being an error (code 5); `None` if it does not exist.
pub fn read(path: &Path, limit: usize) -> Result<Option<Vec<u8>>> {
    at::read_path(path, limit)
}

/// Makes `path` hold exactly `bytes` with permissions `mode` (see [`Dir::write_atomic_checked`]):
/// for the files other programs run or read, in the host's CNI bin and conf dirs. `check` judges
/// the new content at its temporary path before it replaces anything. The directory is created
/// 0755 if missing (the runtime reads it). Returns whether the file was written.
pub fn replace_checked(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    let (parent, name) = at::split(path)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| crate::cni::Error::io(format!("creating {}", parent.display()), e))?;
    let dir = Dir::open(parent, false)?
        .ok_or_else(|| crate::cni::Error::Internal(format!("{} vanished", parent.display())))?;
    dir.write_atomic_checked(name, bytes, mode, check)
}
