//! DEL: best effort, idempotent, and never dependent on the API or on the pod netns still
//! existing. Everything it removes is found by deterministic name or from local records; every
//! step is tried, and the failures are reported together with the code of the telling one.

use super::Del;
use crate::cni::{Error, Result};
use crate::dataplane::names::Names;
use crate::dataplane::{Host, link};
use crate::ipam::store::Owner;
use crate::ipam::{self, delegate};
use crate::state::{self, Mode, Record};

pub async fn del(req: &Del) -> Result<()> {
    let conf = &req.conf;
    let (cid, ifname) = (&req.att.container_id, &req.att.ifname);
    let lock = state::lock_attachment(&conf.state_dir, conf.name(), cid, ifname)?;
    let host = Host::connect()?;
    super::reclaim::after_reboot(&host, conf, &req.path).await;
    let record = match state::read(&conf.state_dir, conf.name(), cid, ifname) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("ignoring unreadable attachment record: {e}");
            None
        }
    };
    let mut errors: Vec<Error> = Vec::new();

    // Deleting the host end takes the pod end with it, wherever the pod netns is. The veth and
    // the ifb share a link group and go in one kernel batch (one RCU grace period, which is most
    // of DEL's time). In chained mode no link has our veth name: the veth is the earlier
    // plugin's, and it deletes it.
    let names = Names::of(cid, ifname);
    if let Err(e) = link::delete_group(&host, names.group, &[&names.host_veth, &names.ifb]).await {
        errors.push(e);
    }
    if let Err(e) = release(req, record.as_ref()).await {
        errors.push(e);
    }
    if errors.is_empty() {
        // Kept otherwise, so a retried DEL knows what is left.
        state::remove(&conf.state_dir, conf.name(), cid, ifname)?;
        lock.remove()?;
    }
    Error::all("DEL incomplete", errors)
}

/// Gives back the attachment's addresses: a chained attachment has none of ours; a delegated
/// one gets the DEL its ADD recorded (or, without a record, one with this config: the plugin
/// releases by container ID and ifname); built-in leases go by owner, every one the attachment
/// holds, also those of a killed ADD that no record names.
async fn release(req: &Del, record: Option<&Record>) -> Result<()> {
    let conf = &req.conf;
    if record.is_some_and(|r| r.mode == Mode::Chained) {
        return Ok(());
    }
    if let Some(d) = record.and_then(|r| r.ipam_delegate.as_ref()) {
        return delegate::exec(&d.plugin, &req.path, "DEL", d.stdin.as_bytes())
            .await
            .map(|_| ());
    }
    let Some(plugin) = conf.ipam.delegate() else {
        let owner = Owner::new(&req.att.container_id, &req.att.ifname);
        return ipam::release_owner(&conf.state_dir, conf.name(), &owner).map(|_| ());
    };
    match conf
        .ipam
        .delegate_stdin(&conf.net.raw, conf.cached_pod_cidrs().as_deref())
    {
        Ok(stdin) => delegate::exec(plugin, &req.path, "DEL", &stdin)
            .await
            .map(|_| ()),
        // Without the node's podCIDRs no ADD can have given the plugin an address.
        Err(e) => {
            tracing::warn!("not asking {plugin} to release anything: {e}");
            Ok(())
        }
    }
}
