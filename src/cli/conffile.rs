//! Finding holdfast's own config in a conflist (or a single-plugin conf) on disk, for the
//! subcommands that run outside a runtime.

use crate::cni::{Error, NetConf, Result};
use crate::plugin::conf::Conf;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// Loads holdfast's plugin config from `path`, or from the first file in the CNI config
/// directory (sorted, as runtimes pick) that has one.
pub fn load(path: Option<&Path>) -> Result<(PathBuf, Conf)> {
    let candidates: Vec<PathBuf> = match path {
        Some(p) => vec![p.to_path_buf()],
        None => {
            let mut v: Vec<PathBuf> = std::fs::read_dir(DEFAULT_CONF_DIR)
                .map_err(|e| Error::io(format!("reading {DEFAULT_CONF_DIR}"), e))?
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
            v
        }
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

fn from_file(p: &Path) -> Result<Conf> {
    let bytes = std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::decode(p.display().to_string(), e))?;
    let plugin = match v.get("plugins").and_then(Value::as_array) {
        Some(plugins) => {
            let mut pl = plugins
                .iter()
                .find(|pl| pl.get("type").and_then(Value::as_str) == Some("holdfast"))
                .cloned()
                .ok_or_else(|| {
                    Error::config(format!("{}: no plugin of type holdfast", p.display()))
                })?;
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
            return Err(Error::config(format!(
                "{}: not a holdfast config",
                p.display()
            )));
        }
    };
    Conf::from_net(NetConf::from_value(plugin)?)
}
