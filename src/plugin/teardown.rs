//! One teardown of one attachment, for every path that removes one: DEL, the reclaim of dead
//! attachments and orphan leases, GC of stale ones, and a retried ADD clearing its earlier
//! attempt (netavark's single `teardown`, host-local's `ReleaseByID`). It undoes what the
//! attachment's record says; without a record, what the deterministic names and the lease
//! owners say. The caller holds the attachment's lock. `undo.rs` stays ADD's own undo: finer,
//! exact to the steps that one ADD completed.
//!
//! The callers rely on one invariant: links, leases and a record of an attachment exist only
//! while its lock file does. Each is made under the lock, whose file is created first, and the
//! file is removed only once a teardown (or a failed ADD's undo) left nothing.

use super::conf::Conf;
use crate::cni::config::AttachmentId;
use crate::cni::{Error, Result};
use crate::dataplane::Host;
use crate::dataplane::link::{self, Link};
use crate::dataplane::names::Names;
use crate::ipam::store::Store;
use crate::ipam::{Plan, Target, delegate};
use crate::state::{AttachmentLock, Mode, Record};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// Where attachments are torn down: the network, its host and `CNI_PATH` (for a delegate).
pub struct Net<'a> {
    pub host: &'a Host,
    pub conf: &'a Conf,
    pub path: &'a [PathBuf],
}

/// What a teardown of many attachments looks up once instead of once per attachment: the
/// host's links (which tell whether a foreign link shares an attachment's group) and the
/// built-in leases by owner. Costs one link dump and one read of every lease file, so releasing
/// an attachment then costs only what it owns. Both may be stale by the time an attachment is
/// locked: its own links are looked up again by name, and its record (read again under the
/// lock) names the leases an ADD took since.
#[derive(Default)]
pub struct Batch {
    links: Vec<Link>,
    pub leases: HashMap<AttachmentId, Vec<IpAddr>>,
    /// Lease files that name no owner (GC removes them).
    pub unreadable: Vec<(IpAddr, String)>,
}

impl Batch {
    pub async fn new(net: &Net<'_>) -> Result<Batch> {
        let conf = net.conf;
        let mut b = Batch {
            links: link::all(net.host).await?,
            ..Batch::default()
        };
        if conf.ipam.delegate().is_none() && Store::dir_of(&conf.state_dir, conf.name()).exists() {
            let scan = Store::open(&conf.state_dir, conf.name())?.scan()?;
            for (ip, o) in scan.held {
                b.leases.entry(o).or_default().push(ip);
            }
            b.unreadable = scan.unreadable;
        }
        Ok(b)
    }
}

/// Whose attachment it is, which says how its addresses go back when no record tells.
pub enum Whose<'a> {
    /// This invocation's own (DEL): a delegate runs with our environment; without a record,
    /// the configured IPAM releases by container ID and ifname.
    Own,
    /// A retried ADD's earlier attempt: without a record, this ADD's plan releases (a delegate
    /// gets the stdin this ADD would give it).
    EarlierAttempt(&'a Plan, &'a Target<'a>),
    /// A chained ADD's earlier attempt: no address is ours, and the veth is the earlier plugin's.
    EarlierChained,
    /// Another attachment (GC, reclaim), torn down with what its batch looked up.
    Other(&'a Batch),
}

impl Whose<'_> {
    fn chained(&self, record: Option<&Record>) -> bool {
        matches!(self, Whose::EarlierChained) || record.is_some_and(|r| r.mode == Mode::Chained)
    }
}

/// Tears `id` down: its host links and its addresses (both are tried), then, only when both
/// went, its record and, when given, its lock file (kept otherwise, so a retry knows what is
/// left). Returns the built-in addresses released.
pub async fn attachment(
    net: &Net<'_>,
    id: &AttachmentId,
    record: Option<&Record>,
    whose: Whose<'_>,
    lock: Option<AttachmentLock>,
) -> Result<Vec<IpAddr>> {
    let mut errors = Vec::new();
    // Its hostPorts first: nothing is forwarded to an address about to be given back.
    if let Err(e) = super::hostports::forget(&net.conf.state_dir, net.conf.name(), id) {
        errors.push(e);
    }
    if let Err(e) = links(net, id, record, &whose).await {
        errors.push(e);
    }
    let released = addresses(net, id, record, &whose)
        .await
        .unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        });
    if errors.is_empty() {
        let conf = net.conf;
        match whose {
            // Its batch listed the records (sweeping old temps) moments ago.
            Whose::Other(_) => conf.network().remove_listed(id)?,
            _ => conf.network().remove(id)?,
        }
        if let Some(l) = lock {
            l.remove()?;
        }
    }
    Error::all(format!("teardown of {id} incomplete"), errors).map(|()| released)
}

/// The host veth (not in chained mode: it is the earlier plugin's) and the ifb, by their
/// deterministic names and as the record names them (checked to be holdfast's when read), in
/// one kernel batch.
async fn links(
    net: &Net<'_>,
    id: &AttachmentId,
    record: Option<&Record>,
    whose: &Whose<'_>,
) -> Result<bool> {
    let n = Names::of(&id.container_id, &id.ifname);
    let mut names: Vec<&str> = vec![&n.ifb];
    if !whose.chained(record) {
        names.push(&n.host_veth);
    }
    if let Some(r) = record {
        names.extend(r.ifb.as_deref());
        if r.mode == Mode::Interface {
            names.extend(r.host_ifname.as_deref());
        }
    }
    names.sort_unstable();
    names.dedup();
    match whose {
        Whose::Other(b) => link::delete_group_in(net.host, &b.links, n.group, &names).await,
        _ => link::delete_group(net.host, n.group, &names).await,
    }
}

/// Gives the addresses back: none in chained mode; the DEL a recorded delegate's ADD got;
/// built-in leases from the record (and the batch's scan, which also finds a killed ADD's);
/// without a record, the configuration (or ADD's plan) decides.
async fn addresses(
    net: &Net<'_>,
    id: &AttachmentId,
    record: Option<&Record>,
    whose: &Whose<'_>,
) -> Result<Vec<IpAddr>> {
    if whose.chained(record) {
        return Ok(Vec::new());
    }
    if let Some(d) = record.and_then(|r| r.ipam_delegate.as_ref()) {
        // Another attachment's DEL carries its IDs, not ours.
        let ids = match whose {
            Whose::Other(_) => Some((id.container_id.as_str(), id.ifname.as_str())),
            _ => None,
        };
        delegate::exec_for(&d.plugin, net.path, "DEL", d.stdin.as_bytes(), ids).await?;
        return Ok(Vec::new());
    }
    let known: Option<Vec<IpAddr>> = match (whose, record) {
        (Whose::Other(b), _) => {
            let mut ips: Vec<IpAddr> = record.map(|r| r.ips.clone()).unwrap_or_default();
            ips.extend(b.leases.get(id).into_iter().flatten());
            Some(ips)
        }
        (_, Some(r)) => Some(r.ips.clone()),
        (Whose::EarlierAttempt(plan @ Plan::Delegate { .. }, target), None) => {
            plan.undo(target).await?;
            return Ok(Vec::new());
        }
        (Whose::Own, None) if net.conf.ipam.delegate().is_some() => {
            return configured_delegate_del(net).await.map(|()| Vec::new());
        }
        _ => None,
    };
    builtin(net.conf, id, known.as_deref())
}

/// Releases `id`'s built-in leases: `ips` when known, else every one it holds (a read of every
/// lease file: only a killed ADD, which left no record, needs it).
fn builtin(conf: &Conf, id: &AttachmentId, ips: Option<&[IpAddr]>) -> Result<Vec<IpAddr>> {
    if ips.is_some_and(<[IpAddr]>::is_empty)
        || !Store::dir_of(&conf.state_dir, conf.name()).exists()
    {
        return Ok(Vec::new());
    }
    let store = Store::open(&conf.state_dir, conf.name())?;
    match ips {
        Some(ips) => store.release_all(ips, id),
        None => store.release_owner(id),
    }
}

/// The configured delegate's DEL, with this config: the plugin releases by container ID and
/// ifname whatever it gave.
async fn configured_delegate_del(net: &Net<'_>) -> Result<()> {
    let conf = net.conf;
    let Some(plugin) = conf.ipam.delegate() else {
        return Ok(());
    };
    match conf
        .ipam
        .delegate_stdin(&conf.net.raw, conf.cached_pod_cidrs().as_deref())
    {
        Ok(stdin) => delegate::exec(plugin, net.path, "DEL", &stdin)
            .await
            .map(|_| ()),
        // Without the node's podCIDRs no ADD can have given the plugin an address.
        Err(e) => {
            tracing::warn!("not asking {plugin} to release anything: {e}");
            Ok(())
        }
    }
}
