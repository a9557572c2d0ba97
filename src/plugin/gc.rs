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
    let keep = |cid: &str, ifn: &str| {
        valid
            .iter()
            .any(|a| a.container_id == cid && a.ifname == ifn)
    };
    let mut errors: Vec<Error> = Vec::new();

    let (records, unreadable) = state::list(&conf.state_dir, conf.name());
    for (p, e) in unreadable {
        errors.push(Error::decode(
            format!("attachment record {}", p.display()),
            e,
        ));
    }
    let stale: Vec<Record> = records
        .into_iter()
        .filter(|r| !keep(&r.container_id, &r.ifname))
        .collect();
    // A record whose delegated lease could not be released stays, so the next GC retries it.
    let mut released = Vec::new();
    for r in stale {
        match release_delegated(req, &r).await {
            Ok(()) => released.push(r),
            Err(e) => errors.push(e),
        }
    }
    let stale_leases = match conf.ipam.delegate() {
        Some(_) => Vec::new(),
        None => stale_leases(req, valid, &mut errors),
    };
    let host = Host::connect()?;
    delete_links(&host, &released, &stale_leases, &mut errors).await;
    release_leases(req, &stale_leases, &mut errors);
    if let Some(plugin) = conf.ipam.delegate() {
        let pass = match conf
            .ipam
            .delegate_stdin(&conf.net.raw, conf.cached_pod_cidrs().as_deref())
        {
            Ok(stdin) => {
                ipam::pass_on(
                    plugin,
                    &req.path,
                    &conf.net.version.to_string(),
                    "GC",
                    &stdin,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = pass {
            errors.push(e);
        }
    }
    for r in &released {
        if let Err(e) = state::remove(&conf.state_dir, conf.name(), &r.container_id, &r.ifname) {
            errors.push(e);
        }
    }
    tracing::info!(removed = released.len(), errors = errors.len(), "GC done");
    Error::all("GC finished with errors", errors)
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
    match Store::open(&conf.state_dir, conf.name()).and_then(|s| s.leases()) {
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
