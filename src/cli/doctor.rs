//! `holdfast doctor`: what an operator needs to know during an incident, from this node alone.

use crate::cluster::{self, KubeConf, cache, health};
use crate::dataplane::{link, names};
use crate::ipam::range;
use crate::ipam::store::Store;
use crate::plugin::conf::Conf;
use crate::state;
use ipnetwork::IpNetwork;
use serde::Serialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub config: ConfigReport,
    pub api: Option<Vec<ApiProbe>>,
    /// What ADD acts on: each server's remembered state, as it was before this report probed.
    pub api_health: Vec<ServerHealth>,
    pub cache: Option<CacheReport>,
    pub ipam: Vec<RangeUsage>,
    pub attachments: usize,
    pub attachments_netns_gone: Vec<Attachment>,
    /// ADDs counted since stateDir was made, by how they got cluster info (counters.rs).
    pub adds: super::counters::AddCounts,
    pub orphan_links: Vec<String>,
    pub orphan_leases: Vec<String>,
    /// Every attachment's forwarded hostPorts (capability `portMappings`).
    pub hostports: Vec<crate::plugin::hostports::Forwarded>,
    /// Dead attachments holdfast released itself (after a reboot, or when a range was full),
    /// oldest first, with when and why.
    pub reclaimed: Vec<crate::plugin::reclaim::Reclaimed>,
    pub routing: Option<crate::routing::doctor::Report>,
    /// Everything that needs attention, one sentence each; empty when all is well.
    pub attention: Vec<String>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigReport {
    pub path: Option<PathBuf>,
    pub network: Option<String>,
    pub state_dir: Option<PathBuf>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiProbe {
    pub server: String,
    /// `kubeconfig` (normally the service VIP) or `endpoint` (a cached real apiserver address).
    pub via: &'static str,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerHealth {
    pub server: String,
    /// `ok`, `unreachable` (ADD leaves it alone for `outageHoldSeconds`) or `failing`.
    pub state: health::State,
    pub since_unix: u64,
    /// How long it has been in this state; `None` when dated in the future.
    pub since_seconds: Option<u64>,
    pub checked_unix: u64,
    pub error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheReport {
    pub path: PathBuf,
    pub usable: bool,
    pub problem: Option<String>,
    pub age_seconds: Option<u64>,
    pub info: Option<cluster::ClusterInfo>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeUsage {
    pub range: String,
    pub used: u128,
    pub capacity: u128,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<String>,
}

/// Builds the report; `conf` is what was loaded, or the error loading it. One function per
/// section, in the order the report reads.
pub async fn run(path: Option<PathBuf>, conf: Result<Conf, String>) -> Report {
    let mut r = Report {
        config: ConfigReport {
            path,
            ..Default::default()
        },
        ..Default::default()
    };
    let conf = match conf {
        Ok(c) => c,
        Err(e) => {
            r.attention.push(format!("config: {e}"));
            return r;
        }
    };
    let owned = sections(&mut r, &conf, true).await;
    links_section(&mut r, &owned.links).await;
    leases_section(&mut r, &conf, &owned.owners);
    routing_section(&mut r, &conf).await;
    r
}

/// What this node's own files say, and its routes to the peers (one route dump), without
/// asking the API: what the agent's metrics report (metrics.rs), so the two always show the
/// same facts.
pub async fn local(conf: &Conf) -> Report {
    let mut r = Report::default();
    sections(&mut r, conf, false).await;
    routing_section(&mut r, conf).await;
    r
}

/// The peers and whether each route is in place (one route dump; nothing in mode `none`).
async fn routing_section(r: &mut Report, conf: &Conf) {
    r.routing = crate::routing::doctor::report(
        &conf.routing,
        &conf.state_dir,
        conf.kubernetes.as_ref(),
        &mut r.attention,
    )
    .await;
}

/// The sections read from stateDir, and with `probe` what each API server says now.
async fn sections(r: &mut Report, conf: &Conf, probe: bool) -> Owned {
    r.config.network = Some(conf.name().to_string());
    r.config.state_dir = Some(conf.state_dir.clone());
    let pod_cidrs = match &conf.kubernetes {
        Some(kube) => cluster_section(r, kube, &conf.state_dir, probe).await,
        None => None,
    };
    ipam_section(r, conf, pod_cidrs.as_deref());
    let owned = attachments_section(r, conf);
    hostports_section(r, conf, &owned);
    r.reclaimed = crate::plugin::reclaim::journal(&conf.state_dir);
    r.adds = super::counters::read(&conf.state_dir);
    owned
}

/// API paths (with `probe`), remembered health and the cache; returns the cached podCIDRs.
async fn cluster_section(
    r: &mut Report,
    kube: &KubeConf,
    state_dir: &Path,
    probe: bool,
) -> Option<Vec<IpNetwork>> {
    let node = match cluster::node_name(kube) {
        Ok(n) => n,
        Err(e) => {
            r.attention.push(format!("config: {e}"));
            return None;
        }
    };
    let cached = cache::load(state_dir, &node);
    let endpoints = cached
        .as_ref()
        .map(|c| c.api_endpoints.clone())
        .unwrap_or_default();
    health_section(r, state_dir);
    if probe {
        api_section(r, kube, state_dir, &node, &endpoints).await;
    }
    cache_section(r, kube, state_dir, cached)
}

fn health_section(r: &mut Report, state_dir: &Path) {
    let now = state::now_unix();
    r.api_health = health::load(state_dir)
        .servers
        .into_iter()
        .map(|(server, s)| ServerHealth {
            server,
            state: s.state,
            since_unix: s.since_unix,
            since_seconds: now.checked_sub(s.since_unix),
            checked_unix: s.checked_unix,
            error: s.error,
        })
        .collect();
}

async fn api_section(
    r: &mut Report,
    kube: &KubeConf,
    state_dir: &Path,
    node: &str,
    endpoints: &[SocketAddr],
) {
    let probes = cluster::probe_servers(kube, state_dir, node, endpoints).await;
    let list: Vec<ApiProbe> = probes
        .into_iter()
        .enumerate()
        .map(|(i, (server, res))| ApiProbe {
            server,
            via: if i == 0 { "kubeconfig" } else { "endpoint" },
            ok: res.is_ok(),
            error: res.err().map(|a| match a.kind {
                cluster::client::Kind::Credentials => a.to_string(),
                _ => a.error,
            }),
        })
        .collect();
    for p in list.iter().filter(|p| !p.ok) {
        r.attention.push(format!(
            "API via {} {}: {}",
            p.via,
            p.server,
            p.error.as_deref().unwrap_or("failed")
        ));
    }
    r.api = Some(list);
}

fn cache_section(
    r: &mut Report,
    kube: &KubeConf,
    state_dir: &Path,
    cached: Result<cluster::ClusterInfo, cache::Unusable>,
) -> Option<Vec<IpNetwork>> {
    let path = cache::path(state_dir);
    let (report, cidrs) = match cached {
        Ok(info) => {
            let age = info.age_secs();
            match age {
                None => r.attention.push(
                    "cache is dated in the future (clock stepped back?): ADD asks the API every time".into(),
                ),
                Some(a) if kube.max_stale_seconds > 0 && a > kube.max_stale_seconds => {
                    r.attention.push(format!(
                        "cache is {a}s old, over maxStaleSeconds {}: ADD fails while the API is unreachable",
                        kube.max_stale_seconds
                    ))
                }
                Some(_) => {}
            }
            let cidrs = info.pod_cidrs.clone();
            let report = CacheReport {
                path,
                usable: true,
                problem: None,
                age_seconds: age,
                info: Some(info),
            };
            (report, Some(cidrs))
        }
        Err(why) => {
            r.attention.push(format!(
                "cluster-info cache: {why}: ADD fails with error 11 while the API is unreachable (run holdfast sync)"
            ));
            let report = CacheReport {
                path,
                usable: false,
                problem: Some(why.to_string()),
                age_seconds: None,
                info: None,
            };
            (report, None)
        }
    };
    r.cache = Some(report);
    cidrs
}

/// IPAM usage, per range set.
fn ipam_section(r: &mut Report, conf: &Conf, pod_cidrs: Option<&[IpNetwork]>) {
    if conf.ipam.delegate().is_some() {
        return;
    }
    let sets = match conf
        .ipam
        .expanded_ranges(pod_cidrs)
        .and_then(|r| range::resolve(&r))
    {
        Ok(s) => s,
        Err(e) => {
            r.attention.push(format!("ipam: {e}"));
            return;
        }
    };
    let leases = leases(&conf.state_dir, conf.name());
    for (set, (cap, used)) in sets
        .iter()
        .zip(crate::ipam::usage(&sets, &leases, |_| false))
    {
        let desc: Vec<String> = set.iter().map(|x| x.describe()).collect();
        // 90 % full, without overflowing on IPv6-sized capacities.
        if used.saturating_mul(10) >= cap.saturating_mul(9) {
            r.attention
                .push(format!("{} is {used} of {cap} used", desc.join(", ")));
        }
        r.ipam.push(RangeUsage {
            range: desc.join(", "),
            used,
            capacity: cap,
        });
    }
}

/// What the attachment records own: host links, and (container ID, ifname) of this network.
#[derive(Default)]
struct Owned {
    links: HashSet<String>,
    owners: HashSet<(String, String)>,
}

/// Attachments, and those whose netns is gone.
fn attachments_section(r: &mut Report, conf: &Conf) -> Owned {
    let mut owned = Owned::default();
    for net in state::networks(&conf.state_dir) {
        let (records, bad) = state::list(&conf.state_dir, &net);
        for (p, e) in bad {
            r.attention
                .push(format!("unreadable attachment record {}: {e}", p.display()));
        }
        for rec in records {
            r.attachments += 1;
            owned.links.extend(rec.host_ifname.iter().cloned());
            owned.links.extend(rec.ifb.iter().cloned());
            if net == conf.name() {
                owned
                    .owners
                    .insert((rec.container_id.clone(), rec.ifname.clone()));
            }
            if let Some(ns) = &rec.netns
                && !rec.netns_alive()
            {
                r.attention.push(format!(
                    "attachment {}/{} ({}) has no netns {ns} any more: a DEL or GC was missed \
                     (the next ADD that finds its range full reclaims it)",
                    rec.container_id, rec.ifname, net
                ));
                r.attachments_netns_gone.push(Attachment {
                    network: net.clone(),
                    container_id: rec.container_id,
                    ifname: rec.ifname,
                    netns: rec.netns,
                });
            }
        }
    }
    owned
}

/// Forwarded hostPorts; an entry of this network without a record (nothing would remove its
/// rules but GC), or one that cannot be read, needs attention.
fn hostports_section(r: &mut Report, conf: &Conf, owned: &Owned) {
    match crate::plugin::hostports::listed(&conf.state_dir) {
        Ok((fw, bad)) => {
            for b in bad {
                r.attention.push(format!(
                    "unreadable hostPort entry {}: {} (it forwards nothing; GC removes it)",
                    b.path.display(),
                    b.why
                ));
            }
            for f in fw.iter().filter(|f| f.network == conf.name()) {
                if !owned
                    .owners
                    .contains(&(f.container_id.clone(), f.ifname.clone()))
                {
                    r.attention.push(format!(
                        "hostPorts of {}/{} are forwarded to {:?} but no attachment record has them \
                         (a crashed ADD; DEL or GC removes them)",
                        f.container_id, f.ifname, f.ips
                    ));
                }
            }
            r.hostports = fw;
        }
        Err(e) => r.attention.push(format!("hostPort entries: {e}")),
    }
}

/// Host links that look like holdfast's and that no attachment owns.
async fn links_section(r: &mut Report, owned: &HashSet<String>) {
    let links = match crate::dataplane::Host::connect() {
        Ok(host) => link::all(&host).await,
        Err(e) => Err(e),
    };
    match links {
        Ok(links) => {
            for l in links
                .into_iter()
                .filter(|l| names::is_ours(&l.name) && !owned.contains(&l.name))
            {
                r.attention.push(format!(
                    "link {} looks like holdfast's but no attachment owns it",
                    l.name
                ));
                r.orphan_links.push(l.name);
            }
        }
        Err(e) => r.attention.push(format!("listing links: {e}")),
    }
}

/// Leases whose owner has no attachment record.
fn leases_section(r: &mut Report, conf: &Conf, owners: &HashSet<(String, String)>) {
    for (ip, o) in leases(&conf.state_dir, conf.name()) {
        if !owners.contains(&(o.container_id.clone(), o.ifname.clone())) {
            r.attention.push(format!(
                "lease {ip} of {}/{} has no attachment record (a crashed ADD; DEL or GC releases it)",
                o.container_id, o.ifname
            ));
            r.orphan_leases.push(ip.to_string());
        }
    }
}

fn leases(state_dir: &Path, network: &str) -> Vec<(std::net::IpAddr, crate::ipam::store::Owner)> {
    if !Store::dir_of(state_dir, network).exists() {
        return Vec::new();
    }
    Store::open(state_dir, network)
        .and_then(|s| s.leases())
        .unwrap_or_default()
}

/// The human-readable form.
pub fn render(r: &Report) -> String {
    let path = r
        .config
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    let mut o = format!(
        "config      {path} (network {})\n",
        r.config.network.as_deref().unwrap_or("-")
    );
    render_api(&mut o, r);
    render_cache(&mut o, r);
    for u in &r.ipam {
        o += &format!(
            "ipam        {}: {} of {} used\n",
            u.range, u.used, u.capacity
        );
    }
    let gone = r.attachments_netns_gone.len();
    o += &format!(
        "attachments {} ({} live, {gone} whose netns is gone), {} reclaimed\n",
        r.attachments,
        r.attachments.saturating_sub(gone),
        r.reclaimed.len()
    );
    render_hostports(&mut o, r);
    o += &crate::routing::doctor::render(r.routing.as_ref());
    render_reclaimed(&mut o, r);
    let a = &r.adds;
    o += &format!(
        "adds        {} fresh from the API, {} from the cache, {} failed; {} asked the API\n",
        a.fresh, a.cache, a.failed, a.asked
    );
    if r.attention.is_empty() {
        o += "\nall well\n";
    } else {
        o += &format!("\n{} thing(s) need attention:\n", r.attention.len());
        for a in &r.attention {
            o += &format!("  - {a}\n");
        }
    }
    o
}

/// Each attachment's forwarded hostPorts (the first few; all of them are in `--json`).
fn render_hostports(o: &mut String, r: &Report) {
    const SHOWN: usize = 10;
    for f in r.hostports.iter().take(SHOWN) {
        let ips: Vec<String> = f.ips.iter().map(|i| i.to_string()).collect();
        let ports: Vec<String> = f
            .mappings
            .iter()
            .map(|m| {
                let on = m.host_ip.map(|h| format!("{h}:")).unwrap_or_default();
                format!(
                    "{on}{}/{:?} -> {}",
                    m.host_port, m.protocol, m.container_port
                )
                .to_lowercase()
            })
            .collect();
        *o += &format!(
            "hostports   {}/{} [{}]: {}\n",
            f.container_id,
            f.ifname,
            ips.join(", "),
            ports.join(", ")
        );
    }
    if r.hostports.len() > SHOWN {
        *o += &format!(
            "hostports   {} more (see --json)\n",
            r.hostports.len() - SHOWN
        );
    }
}

/// The last few reclaimed attachments (all of them are in `--json`).
fn render_reclaimed(o: &mut String, r: &Report) {
    const SHOWN: usize = 5;
    let now = state::now_unix();
    let skip = r.reclaimed.len().saturating_sub(SHOWN);
    if skip > 0 {
        *o += &format!("reclaimed   {} earlier (see --json)\n", skip);
    }
    for x in r.reclaimed.iter().skip(skip) {
        let ips: Vec<String> = x.ips.iter().map(|i| i.to_string()).collect();
        *o += &format!(
            "reclaimed   {}/{} [{}] {}s ago: {}\n",
            x.container_id,
            x.ifname,
            ips.join(", "),
            now.saturating_sub(x.unix),
            x.why
        );
    }
}

fn render_api(o: &mut String, r: &Report) {
    match &r.api {
        None => *o += "api         not configured (no \"kubernetes\" section)\n",
        Some(list) => {
            for p in list {
                let st = if p.ok {
                    "ok".to_string()
                } else {
                    format!("FAILED: {}", p.error.as_deref().unwrap_or(""))
                };
                *o += &format!("api         {:<10} {:<24} {st}\n", p.via, p.server);
            }
        }
    }
    for h in &r.api_health {
        let since = h
            .since_seconds
            .map(|s| format!("for {s}s"))
            .unwrap_or_else(|| "since a time in the future".into());
        let why = h
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        *o += &format!("remembered  {:<24} {} {since}{why}\n", h.server, h.state);
    }
}

fn render_cache(o: &mut String, r: &Report) {
    let Some(c) = &r.cache else {
        return;
    };
    match &c.info {
        Some(i) => {
            let cidrs: Vec<String> = i.pod_cidrs.iter().map(|c| c.to_string()).collect();
            let eps: Vec<String> = i.api_endpoints.iter().map(|e| e.to_string()).collect();
            let age = c
                .age_seconds
                .map(|a| format!("{a}s"))
                .unwrap_or_else(|| "unknown (dated in the future)".into());
            *o += &format!(
                "cache       {} age {age} from {}: node {} podCIDRs [{}] endpoints [{}]\n",
                c.path.display(),
                i.fetched_from,
                i.node_name,
                cidrs.join(", "),
                eps.join(", ")
            );
        }
        None => {
            *o += &format!(
                "cache       {}: {}\n",
                c.path.display(),
                c.problem.as_deref().unwrap_or("unusable")
            )
        }
    }
}
