//! ADD outcomes, counted for the agent's metrics and `doctor` without a daemon to tell: one byte
//! appended (`O_APPEND`, so concurrent ADDs never lose a count) to a file per outcome under
//! `stateDir/counters/`; a count is its file's size. Only the slow outcomes are counted (the
//! API was asked, the cache stood in, the ADD failed): an ADD that found a fresh cache does not
//! touch these files, so the common ADD costs nothing more.

use crate::cluster::served;
use crate::state::at::Dir;
use nix::fcntl::OFlag;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

const DIR: &str = "counters";
const FRESH: &str = "add-fresh";
const CACHE: &str = "add-cache";
const FAILED: &str = "add-failed";
const ASKED: &str = "add-asked";

/// ADDs since the node's stateDir was made, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddCounts {
    /// Got fresh cluster info from the API (asked it, or waited for the ADD that did).
    pub fresh: u64,
    /// Used the cached info because the API did not answer or another ADD was asking it.
    pub cache: u64,
    /// Failed, for any reason.
    pub failed: u64,
    /// Asked the API themselves (at most one per node at a time).
    pub asked: u64,
}

/// Counts this process's ADD, by what [`served`] says about it. Errors only cost the count.
pub fn count_add(state_dir: &Path, ok: bool) {
    let bits = served::get();
    let outcome = match (ok, bits) {
        (false, _) => Some(FAILED),
        (true, b) if b & served::CACHE != 0 => Some(CACHE),
        (true, b) if b & served::FRESH != 0 => Some(FRESH),
        _ => None,
    };
    let asked = (bits & served::ASKED != 0).then_some(ASKED);
    let names: Vec<&str> = outcome.into_iter().chain(asked).collect();
    if names.is_empty() {
        return;
    }
    let dir = match Dir::open_path(state_dir, &[DIR], true) {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("counting the ADD: {e}");
            return;
        }
    };
    for n in names {
        let appended = dir
            .open_file(n, OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT, 0o600)
            .and_then(|mut f| {
                f.write_all(b".")
                    .map_err(|e| crate::cni::Error::io(format!("appending to {n}"), e))
            });
        if let Err(e) = appended {
            tracing::debug!("counting the ADD: {e}");
        }
    }
}

/// The counts so far; a missing file is zero.
pub fn read(state_dir: &Path) -> AddCounts {
    let Ok(Some(dir)) = Dir::open_path(state_dir, &[DIR], false) else {
        return AddCounts::default();
    };
    let size = |n: &str| {
        dir.stat(n)
            .ok()
            .flatten()
            .and_then(|s| u64::try_from(s.st_size).ok())
            .unwrap_or(0)
    };
    AddCounts {
        fresh: size(FRESH),
        cache: size(CACHE),
        failed: size(FAILED),
        asked: size(ASKED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_file_sizes_and_a_fresh_add_writes_nothing() {
        let d = std::env::temp_dir().join(format!("hf-counters-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(read(&d), AddCounts::default());
        // Nothing served by the API or the cache: a fresh cache's ADD counts nothing.
        count_add(&d, true);
        assert!(!d.join(DIR).exists());
        count_add(&d, false);
        count_add(&d, false);
        served::set(served::ASKED | served::CACHE);
        count_add(&d, true);
        let c = read(&d);
        assert_eq!((c.fresh, c.cache, c.failed, c.asked), (0, 1, 2, 1));
        let _ = std::fs::remove_dir_all(&d);
    }
}
