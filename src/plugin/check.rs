//! CHECK: does the attachment still look like `prevResult` and the config say? Names the first
//! thing that differs. Reads only the kernel and local files.

use super::bandwidth;
use crate::cni::{CniResult, Env, Error, NetConf, Result};
use crate::dataplane::netns::{Netns, block_on_netlink};
use crate::dataplane::{addr, link, names, route};
use crate::ipam::store::{Owner, Store};
use crate::state;

pub fn check(env: &Env, conf: &NetConf) -> Result<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::config("CHECK needs prevResult"))?;
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("required env variables [CNI_NETNS] missing".into()))?;
    let limits = bandwidth::from_conf(conf)?;
    let netns = Netns::open(netns_path)?;
    let record = state::read(&conf.state_dir, &conf.name, &env.container_id, &env.ifname)?
        .ok_or_else(|| {
            Error::CheckFailed(format!(
                "no attachment record for container {} interface {}",
                env.container_id, env.ifname
            ))
        })?;

    let host_name = record
        .host_ifname
        .clone()
        .unwrap_or_else(|| names::host_veth(&env.container_id, &env.ifname));
    let ifb_name = names::ifb(&env.container_id, &env.ifname);
    let host_limits = limits.clone();
    block_on_netlink(|h| async move {
        let host = link::by_name(&h, &host_name)
            .await?
            .ok_or_else(|| Error::CheckFailed(format!("host interface {host_name} is missing")))?;
        if !host.up {
            return Err(Error::CheckFailed(format!(
                "host interface {host_name} is down"
            )));
        }
        bandwidth::check_host(&h, &host, &host_limits, &ifb_name).await
    })?;

    let ifname = env.ifname.clone();
    let expected = prev.clone();
    let sandbox = netns.path().display().to_string();
    let chained = record.mode == state::Mode::Chained;
    netns.run(move |h| async move {
        // In chained mode the interface, addresses and routes are the earlier plugin's to check.
        let l = if chained {
            link::by_name(&h, &ifname).await?.ok_or_else(|| {
                Error::CheckFailed(format!("interface {ifname} is missing from {sandbox}"))
            })?
        } else {
            check_pod(&h, &ifname, &sandbox, &expected).await?
        };
        bandwidth::check_pod(&h, &l, &limits).await
    })?;
    if chained {
        return Ok(());
    }

    if conf.ipam.delegate().is_none() {
        let store = Store::open(&conf.state_dir, &conf.name)?;
        let owner = Owner::new(&env.container_id, &env.ifname);
        for ip in &record.ips {
            if store.owner(*ip).as_ref() != Some(&owner) {
                return Err(Error::CheckFailed(format!(
                    "IPAM lease for {ip} is not held by container {} interface {}",
                    env.container_id, env.ifname
                )));
            }
        }
    }
    Ok(())
}

async fn check_pod(
    h: &rtnetlink::Handle,
    ifname: &str,
    sandbox: &str,
    prev: &CniResult,
) -> Result<link::Link> {
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
