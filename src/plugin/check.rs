//! CHECK: does the attachment still look like `prevResult` and the config say? Names the first
//! thing that differs. Reads only the kernel and local files.

use super::Check;
use super::bandwidth::{self, Limits};
use crate::cni::{CniResult, Error, Result};
use crate::dataplane::netns::Netns;
use crate::dataplane::{Host, Pod, addr, link, names, route};
use crate::ipam::store::{Owner, Store};
use crate::state::{Mode, Record};

pub async fn check(req: &Check) -> Result<()> {
    let conf = &req.conf;
    let limits = Limits::from_conf(&conf.bandwidth, conf.mtu)?;
    let netns = Netns::open(&req.netns)?;
    let pod = netns.start_connect()?;
    let (cid, ifname) = (&req.att.container_id, &req.att.ifname);
    let lock = conf.network().lock(&req.att)?;
    let Some(record) = conf.network().read(&req.att)? else {
        // Nothing of the attachment exists; the lock file this CHECK made goes with it.
        if !lock.existed {
            lock.remove()?;
        }
        return Err(Error::CheckFailed(format!(
            "no attachment record for container {cid} interface {ifname}"
        )));
    };
    let host = Host::connect()?;
    let pod = pod.finish()?;
    let sandbox = netns.path().display().to_string();
    let (h, p) = futures::join!(
        check_host_side(&host, req, &record, &limits),
        check_pod_side(&pod, req, &record, &sandbox, &limits)
    );
    h?;
    p?;
    if record.mode == Mode::Interface {
        let want = super::hostports::requested(conf)?;
        super::hostports::check(&conf.state_dir, conf.name(), &req.att, &record.ips, &want)?;
    }
    if record.mode == Mode::Chained || conf.ipam.delegate().is_some() {
        return Ok(());
    }
    let store = Store::open(&conf.state_dir, conf.name())?;
    let owner = Owner::new(cid, ifname);
    for ip in &record.ips {
        if store.owner(*ip).as_ref() != Some(&owner) {
            return Err(Error::CheckFailed(format!(
                "IPAM lease for {ip} is not held by container {cid} interface {ifname}"
            )));
        }
    }
    Ok(())
}

async fn check_host_side(h: &Host, req: &Check, record: &Record, limits: &Limits) -> Result<()> {
    let (cid, ifname) = (&req.att.container_id, &req.att.ifname);
    let host_name = record
        .host_ifname
        .clone()
        .unwrap_or_else(|| names::host_veth(cid, ifname));
    let host = link::by_name(h, &host_name)
        .await?
        .ok_or_else(|| Error::CheckFailed(format!("host interface {host_name} is missing")))?;
    if !host.up {
        return Err(Error::CheckFailed(format!(
            "host interface {host_name} is down"
        )));
    }
    bandwidth::check_host(h, &host, limits, &names::ifb(cid, ifname)).await
}

/// In chained mode the interface, addresses and routes are the earlier plugin's to check.
async fn check_pod_side(
    p: &Pod,
    req: &Check,
    record: &Record,
    sandbox: &str,
    limits: &Limits,
) -> Result<()> {
    let ifname = &req.att.ifname;
    let l = if record.mode == Mode::Chained {
        link::by_name(p, ifname).await?.ok_or_else(|| {
            Error::CheckFailed(format!("interface {ifname} is missing from {sandbox}"))
        })?
    } else {
        check_pod(p, ifname, sandbox, &req.prev).await?
    };
    bandwidth::check_pod(p, &l, limits).await
}

async fn check_pod(h: &Pod, ifname: &str, sandbox: &str, prev: &CniResult) -> Result<link::Link> {
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox))
        .ok_or_else(|| {
            Error::CheckFailed(format!(
                "prevResult lists no interface {ifname} in {sandbox}"
            ))
        })?;
    let l = link::by_name(h, ifname).await?.ok_or_else(|| {
        Error::CheckFailed(format!("interface {ifname} is missing from {sandbox}"))
    })?;
    if let Some(mac) = &prev.interfaces[idx].mac
        && l.mac.as_deref().map(str::to_ascii_lowercase) != Some(mac.to_ascii_lowercase())
    {
        return Err(Error::CheckFailed(format!(
            "interface {ifname} has MAC {} instead of {mac}",
            l.mac.as_deref().unwrap_or("none")
        )));
    }
    if !l.up {
        return Err(Error::CheckFailed(format!("interface {ifname} is down")));
    }
    let have = addr::list(h, l.index).await?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == idx))
    {
        if !have
            .iter()
            .any(|a| a.ip() == ip.address.ip() && a.prefix() == ip.address.prefix())
        {
            return Err(Error::CheckFailed(format!(
                "address {} is missing on {ifname}",
                ip.address
            )));
        }
    }
    let mut routes = route::list(h, false).await?;
    routes.extend(route::list(h, true).await?);
    for r in &prev.routes {
        let dst = route::network_of(r.dst);
        if !routes
            .iter()
            .any(|k| k.dst == dst && (r.gw.is_none() || k.gw == r.gw))
        {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(Error::CheckFailed(format!(
                "route {dst}{via} is missing in {sandbox}"
            )));
        }
    }
    Ok(l)
}
