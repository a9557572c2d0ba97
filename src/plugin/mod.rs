//! The CNI verbs. Each takes the validated environment and config and returns what goes to
//! stdout (if anything); errors travel up to [`crate::cli`], which prints them once.

pub mod add;
pub mod bandwidth;
pub mod chained;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use crate::cni::version::{LATEST, SUPPORTED};
use crate::cni::{Command, Env, Error, NetConf, Result, Version};
use serde_json::{Value, json};

/// Runs one verb. `stdin` is the raw config (unused for VERSION).
pub fn dispatch(env: &Env, conf: Option<&NetConf>) -> Result<Option<Value>> {
    let need = || conf.ok_or_else(|| Error::Internal("no config".into()));
    match env.command {
        Command::Version => Ok(Some(version_json(conf.map(|c| c.version)))),
        Command::Add => add::add(env, need()?).map(Some),
        Command::Del => del::del(env, need()?).map(|_| None),
        Command::Check => {
            require(need()?.version, Version::V0_4_0, "CHECK")?;
            check::check(env, need()?).map(|_| None)
        }
        Command::Status => {
            require(need()?.version, Version::V1_1_0, "STATUS")?;
            status::status(env, need()?).map(|_| None)
        }
        Command::Gc => {
            require(need()?.version, Version::V1_1_0, "GC")?;
            gc::gc(env, need()?).map(|_| None)
        }
    }
}

fn require(have: Version, min: Version, verb: &str) -> Result<()> {
    if have < min {
        return Err(Error::IncompatibleVersion(format!(
            "config version {have} does not allow {verb} (needs {min} or later)"
        )));
    }
    Ok(())
}

/// The VERSION answer.
pub fn version_json(v: Option<Version>) -> Value {
    json!({
        "cniVersion": v.map(|v| v.to_string()).unwrap_or_else(|| LATEST.to_string()),
        "supportedVersions": SUPPORTED,
    })
}
