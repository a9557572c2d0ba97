//! Chained mode: an earlier plugin (ptp, bridge, …) made the pod's interface; holdfast finds the
//! host end of its veth and applies the bandwidth limits, then returns `prevResult` plus its ifb.

use super::Add;
use super::bandwidth::{self, Limits};
use super::teardown::{self, Net, Whose};
use super::undo::{Ctx, Step, Undo};
use crate::cni::{CniResult, Error, Result};
use crate::dataplane::link::{self, Link};
use crate::dataplane::names::Names;
use crate::dataplane::netns::Netns;
use crate::dataplane::{Host, Pod};
use crate::failpoint;
use crate::state::{self, Mode, Record};

/// An earlier plugin already put `CNI_IFNAME` into this sandbox.
pub fn earlier_interface(req: &Add) -> bool {
    let ns = req.netns.to_string_lossy();
    req.prev.as_ref().is_some_and(|prev| {
        prev.interfaces.iter().any(|i| {
            i.name == req.att.ifname
                && i.sandbox
                    .as_deref()
                    .is_some_and(|s| !s.is_empty() && s == ns)
        })
    })
}

/// The host end of the pod's veth: the pod end's peer index names it; `prevResult`'s host
/// interfaces are tried first (cheap, by name), then the index itself.
pub async fn host_end(h: &Host, prev: &CniResult, pod: &Link) -> Result<Link> {
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

pub async fn add(req: &Add) -> Result<CniResult> {
    let limits = Limits::from_conf(&req.conf.bandwidth, req.conf.mtu)?;
    // The veth is the earlier plugin's, and so are the addresses: the reference portmap, chained
    // after holdfast, forwards to them.
    if !super::hostports::requested(&req.conf)?.is_empty() {
        return Err(Error::config(
            "portMappings: holdfast forwards hostPorts only to the interfaces it creates; chain the reference portmap plugin after it",
        ));
    }
    let netns = Netns::open(&req.netns)?;
    let pod = netns.start_connect()?;
    let host = Host::connect()?;
    let (cid, ifname) = (&req.att.container_id, &req.att.ifname);
    let conf = &req.conf;
    let lock = conf.network().lock(&req.att)?;
    failpoint::hit("add-locked");
    super::reclaim::after_reboot(&host, conf, &req.path).await;
    let names = Names::of(cid, ifname);
    // A retried ADD: our ifb and record from last time go first.
    if lock.existed {
        let record = conf.network().read(&req.att).unwrap_or_else(|e| {
            tracing::warn!("replacing an unreadable attachment record: {e}");
            None
        });
        let net = Net {
            host: &host,
            conf,
            path: &req.path,
        };
        let whose = Whose::EarlierChained;
        teardown::attachment(&net, &req.att, record.as_ref(), whose, None).await?;
    }

    let target = super::add::target(req);
    // The veth is the earlier plugin's: only what this ADD added to it is undone (its qdiscs are
    // cleared to the kernel's default; the plugins holdfast chains after set none).
    let cx = Ctx {
        host: &host,
        pod: None,
        plan: None,
        target: &target,
        state_dir: &req.conf.state_dir,
    };
    let pod = match pod.finish() {
        Ok(p) => p,
        Err(e) => return Undo::default().settle(Err(e), &cx, lock).await,
    };
    let cx = Ctx {
        pod: Some(&pod),
        ..cx
    };
    let mut undo = Undo::default();
    let outcome = steps(req, &host, &pod, &netns, &names, &limits, &mut undo).await;
    undo.settle(outcome, &cx, lock).await
}

async fn steps(
    req: &Add,
    host: &Host,
    pod: &Pod,
    netns: &Netns,
    names: &Names,
    limits: &Limits,
    undo: &mut Undo,
) -> Result<CniResult> {
    let ifname = &req.att.ifname;
    let pod_link = link::by_name(pod, ifname).await?.ok_or_else(|| {
        Error::UnknownContainer(format!(
            "interface {ifname} from prevResult is not in the pod"
        ))
    })?;
    if limits.pod_egress().is_some() {
        undo.push(Step::PodQdiscs(pod_link.clone()));
        bandwidth::shape_pod(pod, &pod_link, limits).await?;
    }
    let prev = req.prev.clone().unwrap_or_default();
    let host_link = host_end(host, &prev, &pod_link).await?;
    if limits.ingress.is_some() || limits.ifb_egress().is_some() {
        undo.push(Step::HostQdiscs(host_link.clone()));
    }
    let ifb = bandwidth::create_ifb(host, &host_link, limits, &names.ifb, names.group).await?;
    if let Some(i) = &ifb {
        undo.push(Step::Link(i.name.clone()));
        failpoint::hit("add-ifb");
    }
    bandwidth::shape_host(host, &host_link, limits, ifb.as_ref()).await?;
    if limits.ingress.is_some() || limits.egress.is_some() {
        failpoint::hit("add-shaped");
    }

    let mut result = prev;
    result
        .interfaces
        .extend(ifb.as_ref().map(bandwidth::ifb_interface));
    let record = Record {
        netns_id: netns.identity(),
        host_ifname: Some(host_link.name.clone()),
        ifb: ifb.map(|l| l.name),
        ..Record::new(
            req.conf.name(),
            &req.att.container_id,
            ifname,
            Mode::Chained,
            netns.path(),
            &result,
        )
    };
    state::write(&req.conf.state_dir, &record)?;
    undo.push(Step::Record);
    failpoint::hit("add-recorded");
    Ok(result)
}
