//! Dead attachments (SPEC §4): an attachment whose netns is gone, or is now another namespace
//! than at ADD, can never carry traffic again. After a reboot every pod netns is gone, containerd
//! never sends GC and a runtime that lost its state never sends the DEL, so holdfast releases
//! them itself: when a range would otherwise be exhausted, and on the first locked verb after the
//! boot ID changed. A live attachment is never touched, nor one whose lock another invocation
//! holds (an ADD in progress). What was reclaimed is kept in a short journal for `doctor`.

use super::conf::Conf;
use super::teardown::{self, Batch, Net, Whose};
use crate::cni::config::AttachmentId;
use crate::cni::{Error, Result};
use crate::dataplane::Host;
use crate::state::{self, Record, atomic};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
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
/// names and no invocation holds (a killed ADD's). Returns how many were reclaimed. The links
/// and leases are looked up once for all of them, so each costs only what it owns.
pub async fn dead(host: &Host, conf: &Conf, path: &[PathBuf], orphans: bool, why: &str) -> usize {
    let (records, _) = conf.network().list();
    let dead: Vec<&Record> = records.iter().filter(|r| !r.netns_alive()).collect();
    let want_orphans = orphans && conf.ipam.delegate().is_none();
    if dead.is_empty() && !want_orphans {
        return 0;
    }
    let net = Net { host, conf, path };
    let batch = match Batch::new(&net).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("reclaim: {e}");
            return 0;
        }
    };
    let mut done = Vec::new();
    for r in dead {
        let id = AttachmentId::new(&r.container_id, &r.ifname);
        match one(&net, &batch, &id).await {
            Ok(true) => done.push(entry(conf, &id, r.ips.clone(), why)),
            Ok(false) => {}
            Err(e) => tracing::warn!("could not reclaim {id}: {e}"),
        }
    }
    if want_orphans {
        let recorded: HashSet<AttachmentId> = records
            .iter()
            .map(|r| AttachmentId::new(&r.container_id, &r.ifname))
            .collect();
        for id in batch.leases.keys().filter(|o| !recorded.contains(*o)) {
            match orphan(&net, &batch, id).await {
                Ok(Some(ips)) => done.push(entry(conf, id, ips, why)),
                Ok(None) => {}
                Err(e) => tracing::warn!("could not reclaim leases of {id}: {e}"),
            }
        }
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

fn entry(conf: &Conf, id: &AttachmentId, ips: Vec<IpAddr>, why: &str) -> Reclaimed {
    Reclaimed {
        unix: state::now_unix(),
        network: conf.name().to_string(),
        container_id: id.container_id.clone(),
        ifname: id.ifname.clone(),
        ips,
        why: why.to_string(),
    }
}

/// Releases one dead attachment under its lock; `Ok(false)` when another invocation holds it or
/// it came back to life (a new ADD replaced it) meanwhile.
async fn one(net: &Net<'_>, batch: &Batch, id: &AttachmentId) -> Result<bool> {
    let conf = net.conf;
    let Some(lock) = conf.network().try_lock(id)? else {
        return Ok(false);
    };
    let Some(r) = conf.network().read(id)? else {
        return Ok(false);
    };
    if r.netns_alive() {
        return Ok(false);
    }
    teardown::attachment(net, id, Some(&r), Whose::Other(batch), Some(lock)).await?;
    Ok(true)
}

/// Releases the leases of a holder with no record and no lock held: a killed ADD's, which no
/// DEL came for; `Ok(None)` when an invocation holds it or it has a record by now.
async fn orphan(net: &Net<'_>, batch: &Batch, id: &AttachmentId) -> Result<Option<Vec<IpAddr>>> {
    let conf = net.conf;
    let Some(lock) = conf.network().try_lock(id)? else {
        return Ok(None);
    };
    if conf.network().read(id)?.is_some() {
        return Ok(None);
    }
    teardown::attachment(net, id, None, Whose::Other(batch), Some(lock))
        .await
        .map(Some)
}

/// On the first locked verb of a new boot (or the first ever), reclaims every dead attachment
/// and every orphan lease (nothing of an earlier boot can be in progress), then remembers the
/// boot. Cheap otherwise: one small file read.
pub async fn after_reboot(host: &Host, conf: &Conf, path: &[PathBuf]) {
    let Some(now) = state::boot_key() else { return };
    let file = conf.state_dir.join("boot").join(conf.name());
    let seen = atomic::read(&file, 256).ok().flatten();
    if seen.as_deref() == Some(now.as_bytes()) {
        return;
    }
    // A boot's pods come all at once: one of them sweeps, the others go on at once (their own
    // attachments are new, and a full range reclaims on its own path). Should the sweeper die,
    // the boot is not remembered and the next verb sweeps.
    let sweep = state::lock::try_named(
        &conf.state_dir.join("boot"),
        &format!("{}.lock", conf.name()),
    );
    let _sweep = match sweep {
        Ok(Some(l)) => Some(l),
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("sweeping without the boot lock: {e}");
            None
        }
    };
    if atomic::read(&file, 256).ok().flatten().as_deref() == Some(now.as_bytes()) {
        return; // swept by another invocation just before
    }
    dead(host, conf, path, true, "the node rebooted").await;
    if let Err(e) = atomic::write(&file, now.as_bytes(), true) {
        tracing::warn!("could not remember the boot ID: {e}");
    }
}
