//! ADD in interface mode (no `CNI_IFNAME` in `prevResult`): a veth pair, addresses, routes and
//! limits. Each completed step is recorded, and a failure undoes exactly those steps.

use super::Add;
use super::bandwidth::{self, Limits};
use super::hostports;
use super::reclaim;
use super::teardown::{self, Net, Whose};
use super::undo::{Ctx, Step, Undo};
use crate::cni::result::{Interface, IpConfig, Route};
use crate::cni::{CniResult, Error, Result};
use crate::dataplane::hostport::Mapping;
use crate::dataplane::link::{self, Link, VethCreate};
use crate::dataplane::names::Names;
use crate::dataplane::netns::Netns;
use crate::dataplane::{Host, Pod, addr, route, sysctl};
use crate::failpoint;
use crate::ipam::{Assigned, Lease, Plan, Target};
use crate::state::{self, Delegated, Mode, Record};
use ipnetwork::IpNetwork;

/// What the steps of one interface-mode ADD work with.
struct Wiring<'a> {
    req: &'a Add,
    host: &'a Host,
    pod: &'a Pod,
    netns: &'a Netns,
    names: &'a Names,
    plan: &'a Plan,
    target: &'a Target<'a>,
    limits: &'a Limits,
    ports: &'a [Mapping],
}

pub async fn add(req: &Add) -> Result<CniResult> {
    let conf = &req.conf;
    let limits = Limits::from_conf(&conf.bandwidth, conf.mtu)?;
    let ports = hostports::requested(conf)?;
    // Everything that can be checked without the API is checked first, so an invalid request
    // never costs an API wait; cluster info (if needed) comes before any change.
    let (plan, netns) = match conf.ipam.uses_pod_cidr() {
        false => {
            let plan = Plan::new(&conf.ipam, &conf.dns, &conf.net.raw, None)?;
            (plan, Netns::open(&req.netns)?)
        }
        true => {
            let kube = conf.kube()?;
            let netns = Netns::open(&req.netns)?;
            let cidrs = crate::cluster::for_add(kube, &conf.state_dir)
                .await?
                .pod_cidrs;
            let plan = Plan::new(&conf.ipam, &conf.dns, &conf.net.raw, Some(&cidrs))?;
            (plan, netns)
        }
    };
    // The pod's socket is made on a thread of its own while the lock and the leftovers of an
    // earlier attempt are seen to.
    let pod = netns.start_connect()?;
    let host = Host::connect()?;
    let (cid, ifname) = (&req.att.container_id, &req.att.ifname);
    let lock = conf.network().lock(&req.att)?;
    failpoint::hit("add-locked");
    reclaim::after_reboot(&host, conf, &req.path).await;
    crate::routing::after_reboot(
        &host,
        &conf.routing,
        &conf.state_dir,
        conf.kubernetes.as_ref(),
    )
    .await;
    let names = Names::of(cid, ifname);
    let target = target(req);
    clear_previous_attempt(&host, req, &names, &plan, &target, lock.existed).await?;
    failpoint::hit("add-cleared");

    let cx = Ctx {
        host: &host,
        pod: None,
        plan: Some(&plan),
        target: &target,
        state_dir: &conf.state_dir,
    };
    let pod = match pod.finish() {
        Ok(p) => p,
        Err(e) => return Undo::default().settle(Err(e), &cx, lock).await,
    };
    let w = Wiring {
        req,
        host: &host,
        pod: &pod,
        netns: &netns,
        names: &names,
        plan: &plan,
        target: &target,
        limits: &limits,
        ports: &ports,
    };
    let cx = Ctx {
        pod: Some(&pod),
        ..cx
    };
    let mut undo = Undo::default();
    let outcome = steps(&w, &mut undo).await;
    undo.settle(outcome, &cx, lock).await
}

pub(super) fn target(req: &Add) -> Target<'_> {
    Target {
        state_dir: &req.conf.state_dir,
        network: req.conf.name(),
        owner: req.att.clone(),
        path: &req.path,
    }
}

/// The steps of ADD, each recorded in `undo` as soon as it is done.
async fn steps(w: &Wiring<'_>, undo: &mut Undo) -> Result<CniResult> {
    let (assigned, durable) = match w.plan.add(w.target).await {
        // Dead pods may hold the range (a reboot, a lost DEL): reclaim them and try once more.
        Err(e) if matches!(e, Error::RangeExhausted(_)) => {
            let freed = reclaim::dead(w.host, &w.req.conf, &w.req.path, true, "a range was full");
            match freed.await {
                0 => return Err(e),
                _ => w.plan.add(w.target).await?,
            }
        }
        other => other?,
    };
    undo.push(Step::Leased);
    failpoint::hit("ipam-leased");
    let links = create_links(w, undo).await?;

    // The record is written and fsynced on a blocking thread while both ends are configured
    // and shaped: the disk's wait and the kernel's work overlap.
    let result = result_of(&links, w.netns.path(), &assigned);
    let record = record_of(w, &result, links.ifb.clone());
    let state_dir = w.req.conf.state_dir.clone();
    let written = tokio::task::spawn_blocking(move || state::write(&state_dir, &record));
    let configured = configure(w, &links, &assigned).await;
    let written = written
        .await
        .map_err(|e| Error::Internal(format!("writing the record: {e}")))?;
    if written.is_ok() {
        undo.push(Step::Record);
    }
    configured?;
    written?;
    if !w.ports.is_empty() {
        let ips: Vec<_> = assigned.leases.iter().map(|l| l.address.ip()).collect();
        hostports::add(&w.req.conf, &w.req.att, &ips, &w.names.host_veth, w.ports)?;
        undo.push(Step::HostPorts);
        failpoint::hit("add-hostports");
    }
    if w.limits.ingress.is_some() || w.limits.egress.is_some() {
        failpoint::hit("add-shaped");
    }
    durable.wait().await?;
    failpoint::hit("add-recorded");
    Ok(result)
}

/// The attachment's links, as the kernel made them.
struct Links {
    host: Link,
    pod: Link,
    ifb: Option<Link>,
}

/// The veth pair (the pod end straight into the pod netns) and, when egress is shaped on one,
/// the ifb; each recorded in `undo` once it exists.
async fn create_links(w: &Wiring<'_>, undo: &mut Undo) -> Result<Links> {
    let ifname = &w.req.att.ifname;
    let created = link::create_veth(
        w.host,
        &w.names.host_veth,
        ifname,
        w.netns.raw_fd(),
        w.req.conf.mtu,
        w.names.group,
    )
    .await?;
    let echoed = match created {
        VethCreate::Created(echoed) => echoed,
        VethCreate::Exists => {
            return Err(Error::InterfaceExists(format!(
                "interface {ifname} already exists in {}",
                w.netns.path().display()
            )));
        }
    };
    undo.push(Step::Link(w.names.host_veth.clone()));
    failpoint::hit("add-veth");

    let host_side = async {
        let host = match echoed {
            Some(l) => Some(l),
            None => link::by_name(w.host, &w.names.host_veth).await?,
        };
        let host = host.ok_or_else(|| {
            Error::Internal(format!(
                "{} vanished right after creation",
                w.names.host_veth
            ))
        })?;
        let ifb =
            bandwidth::create_ifb(w.host, &host, w.limits, &w.names.ifb, w.names.group).await?;
        Ok::<_, Error>((host, ifb))
    };
    let (pod, host) = futures::join!(link::by_name(w.pod, ifname), host_side);
    let (host, ifb) = host?;
    if let Some(i) = &ifb {
        undo.push(Step::Link(i.name.clone()));
        failpoint::hit("add-ifb");
    }
    let pod =
        pod?.ok_or_else(|| Error::Internal(format!("{ifname} vanished from the pod netns")))?;
    Ok(Links { host, pod, ifb })
}

/// Pod side and host side, each configured and then shaped, concurrently.
async fn configure(w: &Wiring<'_>, l: &Links, assigned: &Assigned) -> Result<()> {
    let pod_side = async {
        configure_pod(w.pod, &l.pod, &assigned.leases, &assigned.routes).await?;
        bandwidth::shape_pod(w.pod, &l.pod, w.limits).await
    };
    let host_side = async {
        configure_host(w.host, &l.host, &assigned.leases).await?;
        failpoint::hit("add-configured");
        bandwidth::shape_host(w.host, &l.host, w.limits, l.ifb.as_ref()).await
    };
    let (pod, host) = futures::join!(pod_side, host_side);
    pod.and(host)
}

fn record_of(w: &Wiring<'_>, result: &CniResult, ifb: Option<Link>) -> Record {
    let conf = &w.req.conf;
    Record {
        // From the fd that was checked to be a network namespace, not the path again.
        netns_id: w.netns.identity(),
        host_ifname: Some(w.names.host_veth.clone()),
        ifb: ifb.map(|l| l.name),
        ipam_delegate: match w.plan {
            Plan::Delegate { plugin, stdin, .. } => Some(Delegated {
                plugin: plugin.clone(),
                stdin: String::from_utf8_lossy(stdin).into_owned(),
            }),
            Plan::Builtin { .. } => None,
        },
        ..Record::new(
            conf.name(),
            &w.req.att.container_id,
            &w.req.att.ifname,
            Mode::Interface,
            w.netns.path(),
            result,
        )
    }
}

fn result_of(l: &Links, netns: &std::path::Path, a: &Assigned) -> CniResult {
    let mut interfaces = vec![
        Interface {
            name: l.host.name.clone(),
            mac: l.host.mac.clone(),
            mtu: l.host.mtu,
            ..Default::default()
        },
        Interface {
            name: l.pod.name.clone(),
            mac: l.pod.mac.clone(),
            mtu: l.pod.mtu,
            sandbox: Some(netns.display().to_string()),
            ..Default::default()
        },
    ];
    interfaces.extend(l.ifb.as_ref().map(bandwidth::ifb_interface));
    CniResult {
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
    }
}

/// A retried ADD (the runtime timed out, or we were killed) finds its own leftovers: the host
/// veth and ifb by their deterministic names, a record, and leases (possibly with no record:
/// killed between the lease and the record; `earlier` says an ADD ran for this attachment and
/// no complete teardown since). They are this attachment's, and we hold its lock, so they go.
async fn clear_previous_attempt(
    host: &Host,
    req: &Add,
    names: &Names,
    plan: &Plan,
    target: &Target<'_>,
    earlier: bool,
) -> Result<()> {
    let conf = &req.conf;
    let (cid, ifname) = (&req.att.container_id, &req.att.ifname);
    // Without an earlier lock file only state from before locks existed can be left: one
    // lookup tells.
    if !earlier && link::by_name(host, &names.host_veth).await?.is_none() {
        return Ok(());
    }
    let record = match conf.network().read(&req.att) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("replacing an unreadable attachment record: {e}");
            None
        }
    };
    tracing::info!(container = %cid, ifname = %ifname,
        "replacing what an earlier ADD left (record: {})", record.is_some());
    let net = Net {
        host,
        conf,
        path: &req.path,
    };
    let whose = Whose::EarlierAttempt(plan, target);
    teardown::attachment(&net, &req.att, record.as_ref(), whose, None)
        .await
        .map(|_| ())
}

/// Pod end: addresses, up, then a link route to each gateway and the subnet via it (a routed
/// point-to-point link: neighbours in the subnet are reached through the node), then the
/// configured routes.
async fn configure_pod(p: &Pod, l: &Link, leases: &[Lease], routes: &[Route]) -> Result<()> {
    let ifname = &l.name;
    for lease in leases {
        addr::add(p, l.index, lease.address, ifname).await?;
    }
    link::set_up(p, l.index, ifname).await?;
    for lease in leases {
        route::add(p, IpNetwork::from(lease.gateway), None, l.index).await?;
        route::add(p, lease.address, Some(lease.gateway), l.index).await?;
    }
    for r in routes {
        route::add(p, r.dst, r.gw, l.index).await?;
    }
    Ok(())
}

/// Host end (created up): the gateway addresses (as host routes, shared by every pod's veth), a
/// route to each pod address, and forwarding.
async fn configure_host(h: &Host, l: &Link, leases: &[Lease]) -> Result<()> {
    let host_name = &l.name;
    if leases.iter().any(|x| x.address.is_ipv6()) {
        sysctl::disable_dad(host_name)?;
    }
    for lease in leases {
        addr::add(h, l.index, IpNetwork::from(lease.gateway), host_name).await?;
        route::add(h, IpNetwork::from(lease.address.ip()), None, l.index).await?;
    }
    sysctl::enable_forwarding(
        leases.iter().any(|x| x.address.is_ipv4()),
        leases.iter().any(|x| x.address.is_ipv6()),
    )?;
    Ok(())
}
