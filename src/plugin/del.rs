//! DEL: best effort, idempotent, and never dependent on the API or on the pod netns still
//! existing. Everything it removes is found by deterministic name or from local records.

use crate::cni::{Env, Error, NetConf, Result};
use crate::dataplane::netns::block_on_netlink;
use crate::dataplane::{link, names};
use crate::ipam;
use crate::state;

pub fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let record = match state::read(&conf.state_dir, &conf.name, &env.container_id, &env.ifname) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("ignoring unreadable attachment record: {e}");
            None
        }
    };
    let mut errors: Vec<String> = Vec::new();

    // Deleting the host end takes the pod end with it, wherever the pod netns is. The veth and
    // the ifb share a link group and go in one kernel batch (one RCU grace period, which is most
    // of DEL's time). In chained mode no link has our veth name: the veth is the earlier
    // plugin's, and it deletes it.
    let host = names::host_veth(&env.container_id, &env.ifname);
    let ifb = names::ifb(&env.container_id, &env.ifname);
    let group = names::group(&env.container_id, &env.ifname);
    let links = block_on_netlink(|h| async move {
        Ok(match link::delete_group(&h, group, &[&host, &ifb]).await {
            Ok(()) => Vec::new(),
            Err(e) => vec![e.to_string()],
        })
    })?;
    errors.extend(links);

    let chained = record
        .as_ref()
        .is_some_and(|r| r.mode == state::Mode::Chained);
    match record.as_ref().and_then(|r| r.ipam_delegate.as_ref()) {
        _ if chained => {}
        Some(d) => {
            if let Err(e) = run_delegate_del(env, &d.plugin, d.stdin.as_bytes()) {
                errors.push(e.to_string());
            }
        }
        None => match conf.ipam.delegate() {
            // No record (ADD never finished, or a second DEL): ask the delegate anyway with this
            // config; it releases by container ID and ifname.
            Some(plugin) => {
                let cidrs = conf
                    .kubernetes
                    .as_ref()
                    .and_then(|k| crate::cluster::cached_pod_cidrs(k, &conf.state_dir));
                let stdin = ipam::delegate_stdin(conf, cidrs.as_deref())
                    .unwrap_or_else(|_| conf.raw.to_string().into_bytes());
                if let Err(e) = run_delegate_del(env, plugin, &stdin) {
                    errors.push(e.to_string());
                }
            }
            None => {
                let known = record.as_ref().map(|r| r.ips.as_slice());
                if let Err(e) = ipam::release_builtin(conf, env, known) {
                    errors.push(e.to_string());
                }
            }
        },
    }

    if errors.is_empty() {
        state::remove(&conf.state_dir, &conf.name, &env.container_id, &env.ifname)?;
        Ok(())
    } else {
        // Keep the record so a retried DEL knows what is left.
        Err(Error::Internal(format!(
            "DEL incomplete: {}",
            errors.join("; ")
        )))
    }
}

fn run_delegate_del(env: &Env, plugin: &str, stdin: &[u8]) -> Result<()> {
    crate::runtime::block_on(ipam::delegate::exec(plugin, env, "DEL", stdin)).map(|_| ())
}
