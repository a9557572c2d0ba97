//! Finding holdfast's own config in a conflist (or a single-plugin conf) on disk, for the
//! subcommands that run outside a runtime.

use crate::cni::{Error, NetConf, Result};
use crate::plugin::conf::Conf;
use crate::state::at;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// A conflist is a few KiB; anything near this is not one, and is not read whole.
pub const MAX_CONF_BYTES: usize = 1 << 20;

/// Loads holdfast's plugin config from `path`, or from the first file in the CNI config
/// directory (sorted, as runtimes pick) that has one.
pub fn load(path: Option<&Path>) -> Result<(PathBuf, Conf)> {
    let candidates = match path {
        Some(p) => vec![p.to_path_buf()],
        None => candidates(Path::new(DEFAULT_CONF_DIR))?,
    };
    let mut last_err = None;
    for p in candidates {
        match from_file(&p) {
            Ok(c) => return Ok((p, c)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        Error::config(format!("no holdfast config found in {DEFAULT_CONF_DIR}"))
    }))
}

/// The files in `dir` a runtime considers, in the order it considers them (libcni's).
pub fn candidates(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Reads a config file: bounded and non-blocking, so a FIFO or a huge file in the conf dir
/// cannot hang or exhaust an install or the agent. A symlink is followed as libcni follows it;
/// it must still lead to a regular file.
pub fn read(p: &Path) -> Result<Vec<u8>> {
    at::read_following(p, MAX_CONF_BYTES)?.ok_or_else(|| {
        Error::io(
            format!("reading {}", p.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// Whether `bytes` is a network config a runtime would use: a conflist with a name and
/// plugins, or a single plugin's conf with a type.
pub fn is_network_config(bytes: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    let named = v
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let plugins = v
        .get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    named && (plugins || v.get("type").and_then(Value::as_str).is_some())
}

fn from_file(p: &Path) -> Result<Conf> {
    parse(&read(p)?, &p.display().to_string())
}

/// holdfast's plugin config in the conflist (or conf) `bytes`, read from `what`.
pub fn parse(bytes: &[u8], what: &str) -> Result<Conf> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::decode(what, e))?;
    let plugin = match v.get("plugins").and_then(Value::as_array) {
        Some(plugins) => {
            let mut pl = plugins
                .iter()
                .find(|pl| pl.get("type").and_then(Value::as_str) == Some("holdfast"))
                .cloned()
                .ok_or_else(|| Error::config(format!("{what}: no plugin of type holdfast")))?;
            // A conflist's name and version apply to each plugin, as libcni does it.
            for k in ["name", "cniVersion"] {
                if let Some(x) = v.get(k) {
                    pl[k] = x.clone();
                }
            }
            pl
        }
        None if v.get("type").and_then(Value::as_str) == Some("holdfast") => v,
        None => {
            return Err(Error::config(format!("{what}: not a holdfast config")));
        }
    };
    Conf::from_net(NetConf::from_value(plugin)?)
}
