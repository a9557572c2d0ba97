//! GC: remove this network's attachments that the runtime no longer knows.
//!
//! With a delegated IPAM plugin, each stale attachment's lease is released by the DEL its ADD
//! recorded (any IPAM plugin understands DEL; Debian's host-local 1.1.1 has no GC), and then GC
//! itself is passed on to a plugin that speaks 1.1.0, as the reference plugins do, for leases no
//! record knows of.

use crate::cni::{Env, Error, NetConf, Result};
use crate::dataplane::link;
use crate::dataplane::netns::block_on_netlink;
use crate::ipam::store::{Owner, Store};
use crate::ipam::{self, delegate};
use crate::state;
use serde_json::Value;

/// The runtime's list of attachments to keep; `None` when it sent none (then nothing is removed).
fn valid_attachments(conf: &NetConf) -> Result<Option<Vec<Owner>>> {
    let list = conf
        .raw
        .get("cni.dev/valid-attachments")
        .or_else(|| conf.raw.get("cni.dev/attachments"));
    let Some(list) = list else { return Ok(None) };
    let arr = list
        .as_array()
        .ok_or_else(|| Error::config("cni.dev/valid-attachments is not a list"))?;
    let mut out = Vec::new();
    for (i, a) in arr.iter().enumerate() {
        let cid = a.get("containerID").and_then(Value::as_str);
        let ifn = a.get("ifname").and_then(Value::as_str);
        match (cid, ifn) {
            (Some(c), Some(i)) => out.push(Owner::new(c, i)),
            _ => {
                return Err(Error::config(format!(
                    "cni.dev/valid-attachments[{i}] needs containerID and ifname"
                )));
            }
        }
    }
    Ok(Some(out))
}

pub fn gc(env: &Env, conf: &NetConf) -> Result<()> {
    let Some(valid) = valid_attachments(conf)? else {
        tracing::info!("GC without a list of valid attachments: removing nothing");
        return Ok(());
    };
    let keep = |cid: &str, ifn: &str| {
        valid
            .iter()
            .any(|o| o.container_id == cid && o.ifname == ifn)
    };
    let mut errors: Vec<String> = Vec::new();

    let (records, unreadable) = state::list(&conf.state_dir, &conf.name);
    for (p, e) in unreadable {
        errors.push(format!("unreadable record {}: {e}", p.display()));
    }
    let mut stale: Vec<state::Record> = records
        .into_iter()
        .filter(|r| !keep(&r.container_id, &r.ifname))
        .collect();
    // A record whose delegated lease could not be released stays, so the next GC retries it.
    stale.retain(|r| match &r.ipam_delegate {
        Some(d) if r.mode == state::Mode::Interface => {
            let released = crate::runtime::block_on(delegate::exec_for(
                &d.plugin,
                env,
                "DEL",
                d.stdin.as_bytes(),
                Some((&r.container_id, &r.ifname)),
            ));
            match released {
                Ok(_) => true,
                Err(e) => {
                    errors.push(e.to_string());
                    false
                }
            }
        }
        _ => true,
    });
    let links: Vec<String> = stale
        .iter()
        .filter(|r| r.mode == state::Mode::Interface)
        .filter_map(|r| r.host_ifname.clone())
        .chain(stale.iter().filter_map(|r| r.ifb.clone()))
        .collect();
    if !links.is_empty() {
        let errs = block_on_netlink(|h| async move {
            let mut errs = Vec::new();
            for name in links {
                if let Err(e) = link::delete_by_name(&h, &name).await {
                    errs.push(e.to_string());
                }
            }
            Ok(errs)
        })?;
        errors.extend(errs);
    }

    if conf.ipam.delegate().is_none() && Store::dir_of(&conf.state_dir, &conf.name).exists() {
        match Store::open(&conf.state_dir, &conf.name).and_then(|s| {
            let mut errs = Vec::new();
            for (ip, owner) in s.leases()? {
                if !keep(&owner.container_id, &owner.ifname)
                    && let Err(e) = s.release(ip, &owner)
                {
                    errs.push(e.to_string());
                }
            }
            Ok(errs)
        }) {
            Ok(errs) => errors.extend(errs),
            Err(e) => errors.push(e.to_string()),
        }
    }

    // GC never asks the API: `usePodCidr` comes from the cache.
    if let Some(plugin) = conf.ipam.delegate() {
        let cidrs = conf
            .kubernetes
            .as_ref()
            .and_then(|k| crate::cluster::cached_pod_cidrs(k, &conf.state_dir));
        if let Err(e) = ipam::pass_on(env, conf, plugin, "GC", cidrs.as_deref()) {
            errors.push(e.to_string());
        }
    }

    for r in &stale {
        if let Err(e) = state::remove(&conf.state_dir, &conf.name, &r.container_id, &r.ifname) {
            errors.push(e.to_string());
        }
    }
    tracing::info!(removed = stale.len(), errors = errors.len(), "GC done");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "GC finished with errors: {}",
            errors.join("; ")
        )))
    }
}
