//! Dead attachments (SPEC §4): an attachment whose netns is gone, or is now another namespace
//! than at ADD, can never carry traffic again. After a reboot every pod netns is gone, containerd
//! never sends GC and a runtime that lost its state never sends the DEL, so holdfast releases
//! them itself: when a range would otherwise be exhausted, and on the first locked verb after the
//! boot ID changed. A live attachment is never touched, nor one whose lock another invocation
//! holds (an ADD in progress). What was reclaimed is kept in a short journal for `doctor`.

use super::conf::Conf;
use crate::cni::{Error, Result};
use crate::dataplane::names::{self, Names};
use crate::dataplane::{Host, link};
use crate::ipam::store::{Owner, Store};
use crate::ipam::{self, delegate};
use crate::state::{self, Mode, Record, atomic};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The journal keeps this many entries, newest last.
const JOURNAL_LEN: usize = 200;
const MAX_JOURNAL: usize = 256 << 10;

/// One reclaimed attachment, as `doctor` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reclaimed {
    pub unix: u64,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    pub why: String,
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("reclaimed.json")
}

/// What was reclaimed, oldest first (empty when nothing ever was, or the journal is unreadable).
pub fn journal(state_dir: &Path) -> Vec<Reclaimed> {
    atomic::read(&journal_path(state_dir), MAX_JOURNAL)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn append(state_dir: &Path, new: Vec<Reclaimed>) {
    if new.is_empty() {
        return;
    }
    let mut all = journal(state_dir);
    all.extend(new);
    let skip = all.len().saturating_sub(JOURNAL_LEN);
    let kept: Vec<&Reclaimed> = all.iter().skip(skip).collect();
    let written = serde_json::to_vec_pretty(&kept)
        .map_err(|e| Error::Internal(e.to_string()))
        .and_then(|b| atomic::write(&journal_path(state_dir), &b, false));
    if let Err(e) = written {
        tracing::warn!("could not write the reclaim journal: {e}");
    }
}

/// Reclaims the network's dead attachments; with `orphans`, also built-in leases that no record
/// names and no invocation holds (a killed ADD's). Returns how many were reclaimed.
pub async fn dead(host: &Host, conf: &Conf, path: &[PathBuf], orphans: bool, why: &str) -> usize {
    let (records, _) = state::list(&conf.state_dir, conf.name());
    let mut done = Vec::new();
    for r in records.iter().filter(|r| !r.netns_alive()) {
        match one(host, conf, path, r).await {
            Ok(true) => done.push(entry(conf, &r.container_id, &r.ifname, r.ips.clone(), why)),
            Ok(false) => {}
            Err(e) => tracing::warn!("could not reclaim {}/{}: {e}", r.container_id, r.ifname),
        }
    }
    if orphans && conf.ipam.delegate().is_none() {
        done.extend(orphan_leases(host, conf, &records, why).await);
    }
    let n = done.len();
    if n > 0 {
        tracing::info!(
            "reclaimed {n} dead attachment(s) of network {} ({why})",
            conf.name()
        );
    }
    append(&conf.state_dir, done);
    n
}

fn entry(conf: &Conf, cid: &str, ifname: &str, ips: Vec<IpAddr>, why: &str) -> Reclaimed {
    Reclaimed {
        unix: state::now_unix(),
        network: conf.name().to_string(),
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
        ips,
        why: why.to_string(),
    }
}

/// Releases one dead attachment under its lock; `Ok(false)` when another invocation holds it or
/// it came back to life (a new ADD replaced it) meanwhile.
async fn one(host: &Host, conf: &Conf, path: &[PathBuf], seen: &Record) -> Result<bool> {
    let (cid, ifname) = (&seen.container_id, &seen.ifname);
    let Some(lock) = state::try_lock_attachment(&conf.state_dir, conf.name(), cid, ifname)? else {
        return Ok(false);
    };
    let Some(r) = state::read(&conf.state_dir, conf.name(), cid, ifname)? else {
        return Ok(false);
    };
    if r.netns_alive() {
        return Ok(false);
    }
    let n = Names::of(cid, ifname);
    let ours: Vec<&str> = match r.mode {
        Mode::Interface => vec![&n.host_veth, &n.ifb],
        Mode::Chained => vec![&n.ifb],
    };
    link::delete_group(host, n.group, &ours).await?;
    match (&r.ipam_delegate, r.mode) {
        (_, Mode::Chained) => {}
        (Some(d), _) => {
            delegate::exec_for(
                &d.plugin,
                path,
                "DEL",
                d.stdin.as_bytes(),
                Some((cid, ifname)),
            )
            .await?;
        }
        (None, _) => {
            ipam::release_owner(&conf.state_dir, conf.name(), &Owner::new(cid, ifname))?;
        }
    }
    state::remove(&conf.state_dir, conf.name(), cid, ifname)?;
    lock.remove()?;
    Ok(true)
}

/// Leases whose holder has no record and no lock held: a killed ADD's, which no DEL came for.
async fn orphan_leases(host: &Host, conf: &Conf, records: &[Record], why: &str) -> Vec<Reclaimed> {
    let leases = match Store::dir_of(&conf.state_dir, conf.name()).exists() {
        true => Store::open(&conf.state_dir, conf.name()).and_then(|s| s.leases()),
        false => Ok(Vec::new()),
    };
    let leases = leases.unwrap_or_else(|e| {
        tracing::warn!("reclaim: {e}");
        Vec::new()
    });
    let mut owners: Vec<Owner> = leases
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| {
            !records
                .iter()
                .any(|r| r.container_id == o.container_id && r.ifname == o.ifname)
        })
        .collect();
    owners.dedup();
    let mut done = Vec::new();
    for o in owners {
        match orphan(host, conf, &o).await {
            Ok(Some(ips)) => done.push(entry(conf, &o.container_id, &o.ifname, ips, why)),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "could not reclaim leases of {}/{}: {e}",
                o.container_id,
                o.ifname
            ),
        }
    }
    done
}

async fn orphan(host: &Host, conf: &Conf, o: &Owner) -> Result<Option<Vec<IpAddr>>> {
    let (cid, ifname) = (&o.container_id, &o.ifname);
    if crate::cni::env::validate_container_id(cid).is_err()
        || crate::cni::env::validate_ifname(ifname).is_err()
    {
        return Ok(None);
    }
    let Some(lock) = state::try_lock_attachment(&conf.state_dir, conf.name(), cid, ifname)? else {
        return Ok(None);
    };
    if state::read(&conf.state_dir, conf.name(), cid, ifname)?.is_some() {
        return Ok(None);
    }
    let n = Names::of(cid, ifname);
    if names::is_ours(&n.host_veth) {
        link::delete_group(host, n.group, &[&n.host_veth, &n.ifb]).await?;
    }
    let ips = ipam::release_owner(&conf.state_dir, conf.name(), o)?;
    lock.remove()?;
    Ok(Some(ips))
}

/// On the first locked verb of a new boot (or the first ever), reclaims every dead attachment
/// and every orphan lease (nothing of an earlier boot can be in progress), then remembers the
/// boot. Cheap otherwise: one small file read.
pub async fn after_reboot(host: &Host, conf: &Conf, path: &[PathBuf]) {
    let Some(now) = state::boot_id() else { return };
    let file = conf.state_dir.join("boot").join(conf.name());
    let seen = atomic::read(&file, 256).ok().flatten();
    if seen.as_deref() == Some(now.as_bytes()) {
        return;
    }
    dead(host, conf, path, true, "the node rebooted").await;
    if let Err(e) = atomic::write(&file, now.as_bytes(), true) {
        tracing::warn!("could not remember the boot ID: {e}");
    }
}

/// The owners whose attachments are dead (for STATUS, which counts their addresses as free).
pub fn dead_owners(conf: &Conf) -> Vec<Owner> {
    let (records, _) = state::list(&conf.state_dir, conf.name());
    records
        .iter()
        .filter(|r| !r.netns_alive())
        .map(|r| Owner::new(&r.container_id, &r.ifname))
        .collect()
}
