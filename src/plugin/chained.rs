//! Chained mode: an earlier plugin (ptp, bridge, …) made the pod's interface; holdfast finds the
//! host end of its veth and applies the bandwidth limits, then returns `prevResult` plus its ifb.

use super::add::{ifb_interface, undo_links};
use super::bandwidth::{self, Limits};
use crate::cni::{CniResult, Env, Error, NetConf, Result};
use crate::dataplane::link::{self, Link};
use crate::dataplane::netns::Netns;
use crate::dataplane::{names, tc};
use crate::state::{self, Mode, Record};
use rtnetlink::Handle;

/// The host end of the pod's veth: the pod end's peer index names it; `prevResult`'s host
/// interfaces are tried first (cheap, by name), then the index itself.
pub async fn host_end(h: &Handle, prev: &CniResult, pod: &Link) -> Result<Link> {
    let peer = pod.peer_index.ok_or_else(|| {
        Error::config(format!(
            "{} in the pod is not a veth: cannot find its host end",
            pod.name
        ))
    })?;
    for i in prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
    {
        if let Some(l) = link::by_name(h, &i.name).await?
            && l.index == peer
        {
            return Ok(l);
        }
    }
    link::by_index(h, peer).await?.ok_or_else(|| {
        Error::config(format!(
            "the host end of {} (index {peer}) is not in this netns",
            pod.name
        ))
    })
}

pub async fn add(
    h: Handle,
    env: &Env,
    conf: &NetConf,
    netns: Netns,
    limits: Limits,
) -> Result<CniResult> {
    let prev = conf.prev_result.clone().unwrap_or_default();
    let ifb_name = names::ifb(&env.container_id, &env.ifname);
    // A retried ADD: our ifb from last time goes first.
    link::delete_by_name(&h, &ifb_name).await?;

    let ph = netns.connect()?;
    let ifname = &env.ifname;
    let pod = link::by_name(&ph, ifname).await?.ok_or_else(|| {
        Error::UnknownContainer(format!(
            "interface {ifname} from prevResult is not in the pod"
        ))
    })?;
    bandwidth::apply_pod(&ph, &pod, &limits).await?;

    let mut shaped: Option<Link> = None;
    let outcome = async {
        let host = host_end(&h, &prev, &pod).await?;
        shaped = Some(host.clone());
        let group = names::group(&env.container_id, &env.ifname);
        let ifb = bandwidth::apply_host(&h, &host, &limits, &ifb_name, group).await?;
        let mut result = prev.clone();
        if let Some(i) = &ifb {
            result.interfaces.push(ifb_interface(i));
        }
        let record = Record {
            host_ifname: Some(host.name.clone()),
            ifb: ifb.map(|l| l.name),
            ..Record::new(
                &conf.name,
                &env.container_id,
                &env.ifname,
                Mode::Chained,
                netns.path(),
                &result,
            )
        };
        state::write(&conf.state_dir, &record)?;
        Ok(result)
    }
    .await;
    if outcome.is_err() {
        // The veth is the earlier plugin's: put its qdiscs back the way we found them.
        undo_links(&h, &[&ifb_name]).await;
        if let Some(host) = &shaped
            && let Err(e) = tc::clear(&h, host.index, &host.name).await
        {
            tracing::warn!("undoing ADD: {e}");
        }
        if limits.pod_egress().is_some()
            && let Err(e) = tc::clear(&ph, pod.index, &pod.name).await
        {
            tracing::warn!("undoing ADD: {e}");
        }
    }
    outcome
}
