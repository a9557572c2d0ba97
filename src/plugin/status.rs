//! STATUS: could an ADD succeed, whatever happens to the node's pods (SPEC §4)? Changes nothing,
//! reads no lease, and asks the API only when no cache of the node's podCIDRs exists.

use super::Status;
use crate::cni::{Error, Result};
use crate::ipam::range;
use crate::state::at::Dir;
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
    // A range held by live pods is not reported (SPEC §4): a STATUS error makes the node
    // NotReady, whose taint evicts the pods, which frees the range, and the node flaps. ADD
    // fails with code 100 naming the range instead. So no lease is read here.
    conf.ipam
        .expanded_ranges(cidrs.as_deref())
        .and_then(|r| range::resolve(&r))
        .map_err(|e| Error::NotAvailable(format!("IPAM is not usable: {e}")))?;
    // A symlink (or a file) where the lease directory belongs fails every ADD.
    Dir::open_path(&conf.state_dir, &["ipam", conf.name()], false)
        .map_err(|e| Error::NotAvailable(format!("IPAM store is not usable: {e}")))?;
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
