//! ADD. Interface mode (no `CNI_IFNAME` in `prevResult`): a veth pair, addresses, routes and
//! limits. Chained mode: limits on the earlier plugin's veth. Either way, a failure undoes every
//! step before the error is returned.

use super::bandwidth::{self, Limits};
use crate::cni::result::{Interface, IpConfig};
use crate::cni::{CniResult, Env, Error, NetConf, Result};
use crate::dataplane::link::{self, Link, VethCreate};
use crate::dataplane::netns::{Netns, block_on_netlink};
use crate::dataplane::{addr, names, route, sysctl};
use crate::ipam::{self, Assigned, Lease, Plan};
use crate::state::{self, Delegated, Mode, Record};
use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use serde_json::Value;

pub fn add(env: &Env, conf: &NetConf) -> Result<Value> {
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("required env variables [CNI_NETNS] missing".into()))?;
    let limits = bandwidth::from_conf(conf)?;
    if let Some(prev) = &conf.prev_result
        && is_chained(prev, env, netns_path)
    {
        let netns = Netns::open(netns_path)?;
        let result = block_on_netlink(|h| super::chained::add(h, env, conf, netns, limits))?;
        return Ok(result.to_value(conf.version));
    }

    // Everything that can be checked without the API is checked first, so an invalid request
    // never costs an API wait; cluster info (if needed) comes before any change.
    let needs_cluster = crate::cluster::needs_pod_cidrs(conf);
    let plan = if needs_cluster {
        crate::cluster::kube_conf(conf)?;
        None
    } else {
        Some(Plan::new(conf, None)?)
    };
    let netns = Netns::open(netns_path)?;
    let plan = match plan {
        Some(p) => p,
        None => {
            let kube = crate::cluster::kube_conf(conf)?;
            let info = crate::runtime::block_on(crate::cluster::for_add(kube, &conf.state_dir))?;
            Plan::new(conf, Some(&info.pod_cidrs))?
        }
    };
    let result = block_on_netlink(|h| add_interface(h, env, conf, netns, plan, limits))?;
    Ok(result.to_value(conf.version))
}

/// An earlier plugin already put `CNI_IFNAME` into this sandbox.
fn is_chained(prev: &CniResult, env: &Env, netns: &std::path::Path) -> bool {
    let ns = netns.to_string_lossy();
    prev.interfaces.iter().any(|i| {
        i.name == env.ifname
            && i.sandbox
                .as_deref()
                .is_some_and(|s| !s.is_empty() && s == ns)
    })
}

async fn add_interface(
    h: Handle,
    env: &Env,
    conf: &NetConf,
    netns: Netns,
    plan: Plan,
    limits: Limits,
) -> Result<CniResult> {
    let host_name = names::host_veth(&env.container_id, &env.ifname);
    let ifb_name = names::ifb(&env.container_id, &env.ifname);
    clear_previous_attempt(&h, env, conf, &host_name, &ifb_name).await?;

    let assigned = plan.add(conf, env).await?;
    let outcome = async {
        let (result, ifb) = wire(
            &h, env, conf, &netns, &host_name, &ifb_name, &assigned, &limits,
        )
        .await?;
        let record = Record {
            host_ifname: Some(host_name.clone()),
            ifb: ifb.map(|l| l.name),
            ipam_delegate: match &plan {
                Plan::Delegate { plugin, stdin } => Some(Delegated {
                    plugin: plugin.clone(),
                    stdin: String::from_utf8_lossy(stdin).into_owned(),
                }),
                Plan::Builtin { .. } => None,
            },
            ..Record::new(
                &conf.name,
                &env.container_id,
                &env.ifname,
                Mode::Interface,
                netns.path(),
                &result,
            )
        };
        state::write(&conf.state_dir, &record)?;
        Ok(result)
    }
    .await;
    if outcome.is_err() {
        undo_links(&h, &[&host_name, &ifb_name]).await;
        if let Err(e) = plan.undo(conf, env).await {
            tracing::warn!("undoing ADD: releasing addresses: {e}");
        }
    }
    outcome
}

/// A retried ADD (the runtime timed out, or we crashed) finds its own leftovers: the host veth
/// and ifb by their deterministic names, and possibly a record and leases. They are ours, so
/// they go.
async fn clear_previous_attempt(
    h: &Handle,
    env: &Env,
    conf: &NetConf,
    host_name: &str,
    ifb_name: &str,
) -> Result<()> {
    let stale_link = link::delete_by_name(h, host_name).await?;
    let stale_ifb = link::delete_by_name(h, ifb_name).await?;
    let record =
        state::read(&conf.state_dir, &conf.name, &env.container_id, &env.ifname).unwrap_or(None);
    if !stale_link && !stale_ifb && record.is_none() {
        return Ok(());
    }
    tracing::info!(
        container = %env.container_id, ifname = %env.ifname,
        "replacing leftovers of an earlier ADD (host veth: {stale_link}, ifb: {stale_ifb}, record: {})",
        record.is_some()
    );
    match record.as_ref().and_then(|r| r.ipam_delegate.as_ref()) {
        Some(d) => {
            let _ = ipam::delegate::exec(&d.plugin, env, "DEL", d.stdin.as_bytes()).await;
        }
        None => {
            ipam::release_builtin(conf, env, None)?;
        }
    }
    state::remove(&conf.state_dir, &conf.name, &env.container_id, &env.ifname)
}

pub(super) async fn undo_links(h: &Handle, names: &[&str]) {
    for n in names {
        if let Err(e) = link::delete_by_name(h, n).await {
            tracing::warn!("undoing ADD: deleting {n}: {e}");
        }
    }
}

fn host_prefix(ip: std::net::IpAddr) -> IpNetwork {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, len).unwrap_or_else(|_| IpNetwork::from(ip))
}

/// The result entry for an ifb, as the reference bandwidth plugin lists it.
pub(super) fn ifb_interface(ifb: &Link) -> Interface {
    Interface {
        name: ifb.name.clone(),
        mac: ifb.mac.clone(),
        mtu: ifb.mtu,
        ..Default::default()
    }
}

/// Creates the veth pair and configures both ends; pod side and host side run concurrently.
#[allow(clippy::too_many_arguments)]
async fn wire(
    h: &Handle,
    env: &Env,
    conf: &NetConf,
    netns: &Netns,
    host_name: &str,
    ifb_name: &str,
    a: &Assigned,
    limits: &Limits,
) -> Result<(CniResult, Option<Link>)> {
    let group = names::group(&env.container_id, &env.ifname);
    match link::create_veth(h, host_name, &env.ifname, netns.raw_fd(), conf.mtu, group).await? {
        VethCreate::Created => {}
        VethCreate::Exists => {
            return Err(Error::InterfaceExists(format!(
                "interface {} already exists in {}",
                env.ifname,
                netns.path().display()
            )));
        }
    }

    let ph = netns.connect()?;
    let pod = async {
        let l = configure_pod(&ph, &env.ifname, &a.leases, &a.routes).await?;
        bandwidth::apply_pod(&ph, &l, limits).await?;
        Ok::<_, Error>(l)
    };
    let host = async {
        let host = configure_host(h, host_name, &a.leases).await?;
        let ifb = bandwidth::apply_host(h, &host, limits, ifb_name, group).await?;
        Ok::<_, Error>((host, ifb))
    };
    let (pod, host) = futures::join!(pod, host);
    let (pod, (host, ifb)) = (pod?, host?);

    let mut interfaces = vec![
        Interface {
            name: host.name.clone(),
            mac: host.mac.clone(),
            mtu: host.mtu,
            ..Default::default()
        },
        Interface {
            name: pod.name.clone(),
            mac: pod.mac.clone(),
            mtu: pod.mtu,
            sandbox: Some(netns.path().display().to_string()),
            ..Default::default()
        },
    ];
    if let Some(i) = &ifb {
        interfaces.push(ifb_interface(i));
    }
    let result = CniResult {
        interfaces,
        ips: a
            .leases
            .iter()
            .map(|l| IpConfig {
                address: l.address,
                gateway: Some(l.gateway),
                interface: Some(1),
            })
            .collect(),
        routes: a.routes.clone(),
        dns: a.dns.clone(),
    };
    Ok((result, ifb))
}

/// Pod end: addresses, up, then a link route to each gateway and the subnet via it (a routed
/// point-to-point link: neighbours in the subnet are reached through the node), then the
/// configured routes.
async fn configure_pod(
    h: &Handle,
    ifname: &str,
    leases: &[Lease],
    routes: &[crate::cni::result::Route],
) -> Result<Link> {
    let l = link::by_name(h, ifname)
        .await?
        .ok_or_else(|| Error::Internal(format!("{ifname} vanished from the pod netns")))?;
    for lease in leases {
        addr::add(h, l.index, lease.address, ifname).await?;
    }
    link::set_up(h, l.index, ifname).await?;
    for lease in leases {
        route::add(h, host_prefix(lease.gateway), None, l.index).await?;
        route::add(h, lease.address, Some(lease.gateway), l.index).await?;
    }
    for r in routes {
        route::add(h, r.dst, r.gw, l.index).await?;
    }
    Ok(l)
}

/// Host end: up, the gateway addresses (as host routes, shared by every pod's veth), a route to
/// each pod address, and forwarding.
async fn configure_host(h: &Handle, host_name: &str, leases: &[Lease]) -> Result<Link> {
    let l = link::by_name(h, host_name)
        .await?
        .ok_or_else(|| Error::Internal(format!("{host_name} vanished right after creation")))?;
    if leases.iter().any(|l| l.address.is_ipv6()) {
        sysctl::disable_dad(host_name)?;
    }
    link::set_up(h, l.index, host_name).await?;
    for lease in leases {
        addr::add(h, l.index, host_prefix(lease.gateway), host_name).await?;
        route::add(h, host_prefix(lease.address.ip()), None, l.index).await?;
    }
    sysctl::enable_forwarding(
        leases.iter().any(|l| l.address.is_ipv4()),
        leases.iter().any(|l| l.address.is_ipv6()),
    )?;
    Ok(l)
}
