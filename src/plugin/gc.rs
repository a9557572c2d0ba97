//! GC: remove this network's attachments that the runtime no longer knows.
//!
//! Each stale attachment (a record, or built-in leases, of an attachment the runtime did not
//! list) is torn down by [`super::teardown`] under its lock; one whose lock another invocation
//! holds (an ADD in flight, which the runtime's list may predate) is left alone, leases and links
//! included. With a delegated IPAM plugin, a stale attachment's lease is released by the DEL its
//! ADD recorded (any IPAM plugin understands DEL; Debian's host-local 1.1.1 has no GC), and then
//! GC itself is passed on to a plugin that speaks 1.1.0, as the reference plugins do, for leases
//! no record knows of. GC never asks the API: `usePodCidr` comes from the cache.

use super::Gc;
use super::teardown::{self, Batch, Net, Whose};
use crate::cni::config::AttachmentId;
use crate::cni::{Error, Result};
use crate::dataplane::Host;
use crate::ipam::{self, store::Store};
use std::collections::{BTreeSet, HashSet};

pub async fn gc(req: &Gc) -> Result<()> {
    let Some(valid) = &req.valid else {
        tracing::info!("GC without a list of valid attachments: removing nothing");
        return Ok(());
    };
    let conf = &req.conf;
    let mut errors: Vec<Error> = Vec::new();
    let host = Host::connect()?;
    super::reclaim::after_reboot(&host, conf, &req.path).await;
    let net = Net {
        host: &host,
        conf,
        path: &req.path,
    };
    let valid: HashSet<&AttachmentId> = valid.iter().collect();
    let batch = Batch::new(&net).await?;
    discard_unreadable(req, &batch, &mut errors);
    let forwarding = hostport_owners(req, &mut errors);
    let mut removed = 0usize;
    for id in stale(req, &valid, &batch, forwarding, &mut errors) {
        match stale_one(&net, &batch, &id).await {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Some(plugin) = conf.ipam.delegate()
        && let Err(e) = pass_on(req, plugin).await
    {
        errors.push(e);
    }
    tracing::info!(removed, errors = errors.len(), "GC done");
    Error::all("GC finished with errors", errors)
}

/// GC itself, for leases no record knows of, to a delegate that speaks the config's version.
async fn pass_on(req: &Gc, plugin: &str) -> Result<()> {
    let conf = &req.conf;
    let stdin = conf
        .ipam
        .delegate_stdin(&conf.net.raw, conf.cached_pod_cidrs().as_deref())?;
    let version = conf.net.version.to_string();
    ipam::pass_on(plugin, &req.path, &version, "GC", &stdin)
        .await
        .map(|_| ())
}

/// The attachments the runtime did not list that have a record, built-in leases or hostPorts
/// (`forwarding`), in a stable order. A record that cannot be read or trusted names no attachment the runtime could list:
/// it goes, and is never used to build a path or name a link.
fn stale(
    req: &Gc,
    valid: &HashSet<&AttachmentId>,
    batch: &Batch,
    forwarding: Vec<AttachmentId>,
    errors: &mut Vec<Error>,
) -> BTreeSet<AttachmentId> {
    let conf = &req.conf;
    let (records, unreadable) = conf.network().list();
    for (p, why) in unreadable {
        tracing::warn!(
            "GC removes untrusted attachment record {}: {why}",
            p.display()
        );
        if let Err(e) = conf.network().remove_unreadable(&p) {
            errors.push(e);
        }
    }
    records
        .iter()
        .map(|r| AttachmentId::new(&r.container_id, &r.ifname))
        .chain(batch.leases.keys().cloned())
        .chain(forwarding)
        .filter(|id| !valid.contains(id))
        .collect()
}

/// Tears one stale attachment down under its lock; `Ok(false)` when another invocation holds
/// it. Its record is read again under the lock: the listing may predate an ADD or DEL.
async fn stale_one(net: &Net<'_>, batch: &Batch, id: &AttachmentId) -> Result<bool> {
    let conf = net.conf;
    let Some(lock) = conf.network().try_lock(id)? else {
        return Ok(false);
    };
    let record = match conf.network().read(id) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("GC ignores an unreadable attachment record: {e}");
            None
        }
    };
    teardown::attachment(net, id, record.as_ref(), Whose::Other(batch), Some(lock)).await?;
    Ok(true)
}

/// A lease file that holds no owner can be nobody's: it goes.
fn discard_unreadable(req: &Gc, batch: &Batch, errors: &mut Vec<Error>) {
    if batch.unreadable.is_empty() {
        return;
    }
    let conf = &req.conf;
    let store = match Store::open(&conf.state_dir, conf.name()) {
        Ok(s) => s,
        Err(e) => return errors.push(e),
    };
    for (ip, why) in &batch.unreadable {
        tracing::warn!("GC removes unreadable lease {ip}: {why}");
        if let Err(e) = store.discard(*ip) {
            errors.push(e);
        }
    }
}

/// The attachments of this network with hostPorts: with no record or lease (an ADD killed at
/// its last step, whose lease a GC took since) they still forward to their addresses. An entry
/// that cannot be read forwards nothing (the tables leave it out): it goes.
fn hostport_owners(req: &Gc, errors: &mut Vec<Error>) -> Vec<AttachmentId> {
    let conf = &req.conf;
    let (forwarded, bad) = match super::hostports::listed(&conf.state_dir) {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    for b in bad.iter().filter(|b| b.network == conf.name()) {
        tracing::warn!(
            "GC removes unreadable hostPort entry {}: {}",
            b.path.display(),
            b.why
        );
        if let Err(e) = super::hostports::discard(&conf.state_dir, b) {
            errors.push(e);
        }
    }
    forwarded
        .into_iter()
        .filter(|f| f.network == conf.name())
        .map(|f| AttachmentId::new(&f.container_id, &f.ifname))
        .collect()
}
