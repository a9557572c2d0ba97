//! The CNI verbs. [`Request::new`] turns the validated environment and config into one typed
//! request per verb, carrying exactly what that verb needs; [`run`] dispatches it, deciding
//! interface or chained mode for ADD. Errors travel up to [`crate::cli`], which prints them once.

pub mod add;
pub mod bandwidth;
pub mod chained;
pub mod check;
pub mod conf;
pub mod del;
pub mod gc;
pub mod hostports;
pub mod reclaim;
pub mod status;
pub mod teardown;
mod undo;

use crate::cni::config::AttachmentId;
use crate::cni::version::{LATEST, SUPPORTED};
use crate::cni::{CniResult, Command, Env, Error, Result, Version};
use conf::Conf;
use serde_json::{Value, json};
use std::path::PathBuf;

/// ADD: `CNI_NETNS` is required, `prevResult` is what earlier plugins of the chain did.
#[derive(Debug)]
pub struct Add {
    pub att: AttachmentId,
    pub netns: PathBuf,
    pub path: Vec<PathBuf>,
    pub conf: Conf,
    pub prev: Option<CniResult>,
}

/// DEL: needs no netns (it may be gone, or never be sent: `ctr run --cni`, the CRI's second
/// DEL); everything it removes is found by name or from local records.
#[derive(Debug)]
pub struct Del {
    pub att: AttachmentId,
    pub path: Vec<PathBuf>,
    pub conf: Conf,
}

/// CHECK: what the attachment should look like is `prev`.
#[derive(Debug)]
pub struct Check {
    pub att: AttachmentId,
    pub netns: PathBuf,
    pub conf: Conf,
    pub prev: CniResult,
}

/// STATUS: about the whole network.
#[derive(Debug)]
pub struct Status {
    pub path: Vec<PathBuf>,
    pub conf: Conf,
}

/// GC: `valid` is the runtime's list of attachments to keep (`None`: it sent none).
#[derive(Debug)]
pub struct Gc {
    pub path: Vec<PathBuf>,
    pub conf: Conf,
    pub valid: Option<Vec<AttachmentId>>,
}

/// One invocation, typed by verb.
#[derive(Debug)]
pub enum Request {
    Version(Option<Version>),
    Add(Box<Add>),
    Del(Box<Del>),
    Check(Box<Check>),
    Status(Box<Status>),
    Gc(Box<Gc>),
}

impl Request {
    /// The request of `env.command` (VERSION, which needs no config, is built by the caller);
    /// the environment's required variables per verb were checked when `env` was read, the
    /// verb's minimum config version is checked here.
    pub fn new(env: Env, conf: Conf) -> Result<Request> {
        let att = AttachmentId {
            container_id: env.container_id,
            ifname: env.ifname,
        };
        let path = env.path;
        let missing_netns =
            || Error::InvalidEnv("required env variables [CNI_NETNS] missing".into());
        Ok(match env.command {
            Command::Version => Request::Version(Some(conf.net.version)),
            Command::Add => Request::Add(Box::new(Add {
                att,
                netns: env.netns.ok_or_else(missing_netns)?,
                path,
                prev: conf.net.prev_result.clone(),
                conf,
            })),
            Command::Del => Request::Del(Box::new(Del { att, path, conf })),
            Command::Check => {
                require(conf.net.version, Version::V0_4_0, "CHECK")?;
                Request::Check(Box::new(Check {
                    att,
                    netns: env.netns.ok_or_else(missing_netns)?,
                    prev: conf
                        .net
                        .prev_result
                        .clone()
                        .ok_or_else(|| Error::config("CHECK needs prevResult"))?,
                    conf,
                }))
            }
            Command::Status => {
                require(conf.net.version, Version::V1_1_0, "STATUS")?;
                Request::Status(Box::new(Status { path, conf }))
            }
            Command::Gc => {
                require(conf.net.version, Version::V1_1_0, "GC")?;
                Request::Gc(Box::new(Gc {
                    path,
                    valid: conf.valid_attachments.clone(),
                    conf,
                }))
            }
        })
    }
}

/// Runs one request; returns what goes to stdout, if anything.
pub async fn run(req: Request) -> Result<Option<Value>> {
    match req {
        Request::Version(v) => Ok(Some(version_json(v))),
        Request::Add(a) => {
            let version = a.conf.net.version;
            let result = match chained::earlier_interface(&a) {
                true => chained::add(&a).await?,
                false => add::add(&a).await?,
            };
            Ok(Some(result.to_value(version)))
        }
        Request::Del(d) => del::del(&d).await.map(|_| None),
        Request::Check(c) => check::check(&c).await.map(|_| None),
        Request::Status(s) => status::status(&s).await.map(|_| None),
        Request::Gc(g) => gc::gc(&g).await.map(|_| None),
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
