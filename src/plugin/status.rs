//! STATUS: can this plugin take an ADD right now?

use crate::cni::{Env, Error, NetConf, Result};
use crate::ipam::range;
use crate::ipam::store::Store;

pub fn status(env: &Env, conf: &NetConf) -> Result<()> {
    let dir = &conf.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::NotAvailable(format!("stateDir {} is not usable: {e}", dir.display()))
    })?;
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| Error::NotAvailable(format!("stateDir {} is not writable: {e}", dir.display())))?;
    // podCIDRs from the cache; only without one does STATUS have to ask the API.
    let cidrs = if crate::cluster::needs_pod_cidrs(conf) {
        let kube =
            crate::cluster::kube_conf(conf).map_err(|e| Error::NotAvailable(e.to_string()))?;
        match crate::cluster::cached_pod_cidrs(kube, dir) {
            Some(c) => Some(c),
            None => Some(
                crate::runtime::block_on(crate::cluster::for_add(kube, dir))
                    .map_err(|e| Error::NotAvailable(format!("node podCIDRs unknown: {e}")))?
                    .pod_cidrs,
            ),
        }
    } else {
        None
    };
    // A delegated plugin answers for its own addresses, as the reference plugins let it.
    if let Some(plugin) = conf.ipam.delegate() {
        return crate::ipam::pass_on(env, conf, plugin, "STATUS", cidrs.as_deref()).map(|_| ());
    }
    let sets = range::resolve(&conf.ipam.ranges, cidrs.as_deref())
        .map_err(|e| Error::NotAvailable(format!("IPAM is not usable: {e}")))?;
    let store = Store::open(dir, &conf.name)
        .map_err(|e| Error::NotAvailable(format!("IPAM store is not usable: {e}")))?;
    let leases = store
        .leases()
        .map_err(|e| Error::NotAvailable(e.to_string()))?;
    for (i, set) in sets.iter().enumerate() {
        let cap: u128 = set.iter().map(|r| r.capacity()).sum();
        let used = leases
            .iter()
            .filter(|(ip, _)| set.iter().any(|r| r.contains(*ip) && *ip != r.gateway))
            .count() as u128;
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
