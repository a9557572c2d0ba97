//! STATUS: can this plugin take an ADD right now? Changes nothing, and asks the API only when
//! no cache of the node's podCIDRs exists.

use super::Status;
use crate::cni::{Error, Result};
use crate::ipam::range;
use crate::ipam::store::{Owner, Store};
use std::path::Path;

pub async fn status(req: &Status) -> Result<()> {
    let conf = &req.conf;
    writable(&conf.state_dir)?;
    let cidrs = match conf.ipam.uses_pod_cidr() {
        false => None,
        true => match conf.cached_pod_cidrs() {
            Some(c) => Some(c),
            None => {
                let kube = conf
                    .kube()
                    .map_err(|e| Error::NotAvailable(e.to_string()))?;
                let info = crate::cluster::for_add(kube, &conf.state_dir)
                    .await
                    .map_err(|e| Error::NotAvailable(format!("node podCIDRs unknown: {e}")))?;
                Some(info.pod_cidrs)
            }
        },
    };
    // A delegated plugin answers for its own addresses, as the reference plugins let it.
    if let Some(plugin) = conf.ipam.delegate() {
        let stdin = conf.ipam.delegate_stdin(&conf.net.raw, cidrs.as_deref())?;
        let version = conf.net.version.to_string();
        return crate::ipam::pass_on(plugin, &req.path, &version, "STATUS", &stdin)
            .await
            .map(|_| ());
    }
    let sets = conf
        .ipam
        .expanded_ranges(cidrs.as_deref())
        .and_then(|r| range::resolve(&r))
        .map_err(|e| Error::NotAvailable(format!("IPAM is not usable: {e}")))?;
    let leases = match Store::dir_of(&conf.state_dir, conf.name()).exists() {
        false => Vec::new(),
        // An unreadable lease file still takes its address (ADD skips it): it counts as used.
        true => Store::open(&conf.state_dir, conf.name())
            .and_then(|s| s.scan())
            .map(|scan| {
                let nobody = Owner::new("", "");
                let unreadable = scan
                    .unreadable
                    .into_iter()
                    .map(|(ip, _)| (ip, nobody.clone()));
                scan.held.into_iter().chain(unreadable).collect::<Vec<_>>()
            })
            .map_err(|e| Error::NotAvailable(format!("IPAM store is not usable: {e}")))?,
    };
    // A dead pod's address is as good as free: the next ADD reclaims it. Saying "full" would
    // make the runtime mark the node NotReady and stop the very pods that would reclaim it.
    let dead = super::reclaim::dead_owners(conf);
    for (i, (set, (cap, used))) in sets
        .iter()
        .zip(crate::ipam::usage(&sets, &leases, |o| dead.contains(o)))
        .enumerate()
    {
        if used >= cap {
            let desc: Vec<String> = set.iter().map(|r| r.describe()).collect();
            return Err(Error::NotAvailable(format!(
                "ipam.ranges[{i}] {} has no free address ({used} of {cap} in use)",
                desc.join(", ")
            )));
        }
    }
    Ok(())
}

/// `stateDir`, or the directory it will be made in, can be written by this process.
fn writable(dir: &Path) -> Result<()> {
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    nix::unistd::access(
        existing,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| {
        Error::NotAvailable(format!(
            "stateDir {} is not writable ({}: {e})",
            dir.display(),
            existing.display()
        ))
    })
}
