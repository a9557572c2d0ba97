//! GC: remove this network's attachments that the runtime no longer knows.
//!
//! With a delegated IPAM plugin, each stale attachment's lease is released by the DEL its ADD
//! recorded (any IPAM plugin understands DEL; Debian's host-local 1.1.1 has no GC), and then GC
//! itself is passed on to a plugin that speaks 1.1.0, as the reference plugins do, for leases no
//! record knows of. GC never asks the API: `usePodCidr` comes from the cache.

use super::Gc;
use crate::cni::config::AttachmentId;
use crate::cni::{Error, Result};
use crate::dataplane::names::{self, Names};
use crate::dataplane::{Host, link};
use crate::ipam::store::{Owner, Store};
use crate::ipam::{self, delegate};
use crate::state::{self, Mode, Record};

pub async fn gc(req: &Gc) -> Result<()> {
    let Some(valid) = &req.valid else {
        tracing::info!("GC without a list of valid attachments: removing nothing");
        return Ok(());
    };
    let conf = &req.conf;
    let mut errors: Vec<Error> = Vec::new();
    let host = Host::connect()?;
    super::reclaim::after_reboot(&host, conf, &req.path).await;
    let released = stale_records(req, valid, &mut errors).await;
    let stale_leases = match conf.ipam.delegate() {
        Some(_) => Vec::new(),
        None => stale_leases(req, valid, &mut errors),
    };
    let records: Vec<Record> = released.iter().map(|(r, _)| r.clone()).collect();
    delete_links(&host, &records, &stale_leases, &mut errors).await;
    release_leases(req, &stale_leases, &mut errors);
    if let Some(plugin) = conf.ipam.delegate()
        && let Err(e) = pass_on(req, plugin).await
    {
        errors.push(e);
    }
    let removed = released.len();
    for (r, lock) in released {
        if let Err(e) = state::remove(&conf.state_dir, conf.name(), &r.container_id, &r.ifname)
            .and_then(|()| lock.remove())
        {
            errors.push(e);
        }
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

/// The records of attachments the runtime did not list, locked, with their delegated leases
/// released. One that another invocation holds (an ADD in progress) is left alone; one whose
/// delegated lease could not be released stays, so the next GC retries it. A record that cannot
/// be read or trusted names no attachment the runtime could list: it goes, and is never used to
/// build a path or name a link.
async fn stale_records(
    req: &Gc,
    valid: &[AttachmentId],
    errors: &mut Vec<Error>,
) -> Vec<(Record, state::AttachmentLock)> {
    let conf = &req.conf;
    let (records, unreadable) = state::list(&conf.state_dir, conf.name());
    for (p, why) in unreadable {
        tracing::warn!(
            "GC removes untrusted attachment record {}: {why}",
            p.display()
        );
        if let Err(e) = state::remove_unreadable(&conf.state_dir, conf.name(), &p) {
            errors.push(e);
        }
    }
    let mut out = Vec::new();
    for r in records.into_iter().filter(|r| {
        !valid
            .iter()
            .any(|a| a.container_id == r.container_id && a.ifname == r.ifname)
    }) {
        let locked =
            state::try_lock_attachment(&conf.state_dir, conf.name(), &r.container_id, &r.ifname);
        let lock = match locked {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match release_delegated(req, &r).await {
            Ok(()) => out.push((r, lock)),
            Err(e) => errors.push(e),
        }
    }
    out
}

/// The DEL a stale interface-mode attachment's delegated ADD recorded, with its own IDs.
async fn release_delegated(req: &Gc, r: &Record) -> Result<()> {
    match &r.ipam_delegate {
        Some(d) if r.mode == Mode::Interface => delegate::exec_for(
            &d.plugin,
            &req.path,
            "DEL",
            d.stdin.as_bytes(),
            Some((&r.container_id, &r.ifname)),
        )
        .await
        .map(|_| ()),
        _ => Ok(()),
    }
}

/// Built-in leases whose holder is not in the runtime's list, record or not (an ADD killed before
/// its record leaves a lease only).
fn stale_leases(
    req: &Gc,
    valid: &[AttachmentId],
    errors: &mut Vec<Error>,
) -> Vec<(std::net::IpAddr, Owner)> {
    let conf = &req.conf;
    if !Store::dir_of(&conf.state_dir, conf.name()).exists() {
        return Vec::new();
    }
    let scan = Store::open(&conf.state_dir, conf.name()).and_then(|s| {
        let scan = s.scan()?;
        // A lease file that holds no owner can be nobody's: it goes.
        for (ip, why) in &scan.unreadable {
            tracing::warn!("GC removes unreadable lease {ip}: {why}");
            if let Err(e) = s.discard(*ip) {
                errors.push(e);
            }
        }
        Ok(scan.held)
    });
    match scan {
        Ok(leases) => leases
            .into_iter()
            .filter(|(_, o)| {
                !valid
                    .iter()
                    .any(|a| a.container_id == o.container_id && a.ifname == o.ifname)
            })
            .collect(),
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    }
}

/// The host links of stale attachments: what their records name (only names holdfast makes:
/// a record is a file, and a file can be wrong) and the deterministic names of every stale lease
/// holder (a killed ADD leaves links and a lease but no record).
async fn delete_links(
    host: &Host,
    records: &[Record],
    leases: &[(std::net::IpAddr, Owner)],
    errors: &mut Vec<Error>,
) {
    let mut doomed: Vec<String> = records
        .iter()
        .filter(|r| r.mode == Mode::Interface)
        .filter_map(|r| r.host_ifname.clone())
        .chain(records.iter().filter_map(|r| r.ifb.clone()))
        .filter(|n| names::is_ours(n))
        .collect();
    for (_, o) in leases {
        let n = Names::of(&o.container_id, &o.ifname);
        doomed.extend([n.host_veth, n.ifb]);
    }
    doomed.sort();
    doomed.dedup();
    for name in doomed {
        if let Err(e) = link::delete_by_name(host, &name).await {
            errors.push(e);
        }
    }
}

fn release_leases(req: &Gc, leases: &[(std::net::IpAddr, Owner)], errors: &mut Vec<Error>) {
    if leases.is_empty() {
        return;
    }
    let conf = &req.conf;
    match Store::open(&conf.state_dir, conf.name()) {
        Ok(s) => {
            for (ip, owner) in leases {
                if let Err(e) = s.release(*ip, owner) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
}
