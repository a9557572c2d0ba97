//! `holdfast doctor`: what an operator needs to know during an incident, from this node alone.

use crate::cluster::{self, cache};
use crate::dataplane::{link, names};
use crate::ipam::range;
use crate::ipam::store::Store;
use crate::plugin::conf::Conf;
use crate::state;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub config: ConfigReport,
    pub api: Option<Vec<ApiProbe>>,
    pub cache: Option<CacheReport>,
    pub ipam: Vec<RangeUsage>,
    pub attachments: usize,
    pub attachments_netns_gone: Vec<Attachment>,
    pub orphan_links: Vec<String>,
    pub orphan_leases: Vec<String>,
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

/// Builds the report; `conf` is what was loaded, or the error loading it.
pub fn run(path: Option<PathBuf>, conf: Result<Conf, String>) -> Report {
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
    r.config.network = Some(conf.name().to_string());
    r.config.state_dir = Some(conf.state_dir.clone());

    let mut pod_cidrs = None;
    if let Some(kube) = &conf.kubernetes {
        match cluster::node_name(kube) {
            Err(e) => r.attention.push(format!("config: {e}")),
            Ok(node) => {
                let cached = cache::load(&conf.state_dir, &node);
                let endpoints = cached
                    .as_ref()
                    .map(|c| c.api_endpoints.clone())
                    .unwrap_or_default();
                match crate::runtime::block_on(async {
                    Ok(cluster::client::probe_each(kube, &node, &endpoints).await)
                }) {
                    Ok(probes) => {
                        let list: Vec<ApiProbe> = probes
                            .into_iter()
                            .enumerate()
                            .map(|(i, (server, res))| ApiProbe {
                                server,
                                via: if i == 0 { "kubeconfig" } else { "endpoint" },
                                ok: res.is_ok(),
                                error: res.err(),
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
                    Err(e) => r.attention.push(format!("API probe: {e}")),
                }
                let path = cache::path(&conf.state_dir);
                r.cache = Some(match cached {
                    Ok(info) => {
                        let age = info.age_secs();
                        if kube.max_stale_seconds > 0 && age > kube.max_stale_seconds {
                            r.attention.push(format!(
                                "cache is {age}s old, over maxStaleSeconds {}: ADD fails while the API is unreachable",
                                kube.max_stale_seconds
                            ));
                        }
                        pod_cidrs = Some(info.pod_cidrs.clone());
                        CacheReport {
                            path,
                            usable: true,
                            problem: None,
                            age_seconds: Some(age),
                            info: Some(info),
                        }
                    }
                    Err(why) => {
                        r.attention.push(format!(
                            "cluster-info cache: {why}: ADD fails with error 11 while the API is unreachable (run holdfast sync)"
                        ));
                        CacheReport {
                            path,
                            usable: false,
                            problem: Some(why.to_string()),
                            age_seconds: None,
                            info: None,
                        }
                    }
                });
            }
        }
    }

    // IPAM usage, per range set.
    if conf.ipam.delegate().is_none() {
        match conf
            .ipam
            .expanded_ranges(pod_cidrs.as_deref())
            .and_then(|r| range::resolve(&r))
        {
            Ok(sets) => {
                let leases = leases(&conf.state_dir, conf.name());
                for set in sets {
                    let cap: u128 = set.iter().map(|x| x.capacity()).sum();
                    let used = leases
                        .iter()
                        .filter(|(ip, _)| set.iter().any(|x| x.contains(*ip) && *ip != x.gateway))
                        .count() as u128;
                    let desc: Vec<String> = set.iter().map(|x| x.describe()).collect();
                    if used * 10 >= cap * 9 {
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
            Err(e) => r.attention.push(format!("ipam: {e}")),
        }
    }

    // Attachments, their netns, and what the host has that nobody owns.
    let mut owned: HashSet<String> = HashSet::new();
    let mut owners: HashSet<(String, String)> = HashSet::new();
    for net in state::networks(&conf.state_dir) {
        let (records, bad) = state::list(&conf.state_dir, &net);
        for (p, e) in bad {
            r.attention
                .push(format!("unreadable attachment record {}: {e}", p.display()));
        }
        for rec in records {
            r.attachments += 1;
            owned.extend(rec.host_ifname.iter().cloned());
            owned.extend(rec.ifb.iter().cloned());
            if net == conf.name() {
                owners.insert((rec.container_id.clone(), rec.ifname.clone()));
            }
            if let Some(ns) = &rec.netns
                && !Path::new(ns).exists()
            {
                r.attention.push(format!(
                    "attachment {}/{} ({}) has no netns {ns} any more: a DEL or GC was missed",
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
    match crate::runtime::block_on(async {
        let host = crate::dataplane::Host::connect()?;
        link::all(&host).await
    }) {
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
    for (ip, o) in leases(&conf.state_dir, conf.name()) {
        if !owners.contains(&(o.container_id.clone(), o.ifname.clone())) {
            r.attention.push(format!(
                "lease {ip} of {}/{} has no attachment record (a crashed ADD; DEL or GC releases it)",
                o.container_id, o.ifname
            ));
            r.orphan_leases.push(ip.to_string());
        }
    }
    r
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
    let mut o = String::new();
    let path = r
        .config
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    o += &format!(
        "config      {path} (network {})\n",
        r.config.network.as_deref().unwrap_or("-")
    );
    match &r.api {
        None => o += "api         not configured (no \"kubernetes\" section)\n",
        Some(list) => {
            for p in list {
                let st = if p.ok {
                    "ok".to_string()
                } else {
                    format!("FAILED: {}", p.error.as_deref().unwrap_or(""))
                };
                o += &format!("api         {:<10} {:<24} {st}\n", p.via, p.server);
            }
        }
    }
    if let Some(c) = &r.cache {
        match &c.info {
            Some(i) => {
                let cidrs: Vec<String> = i.pod_cidrs.iter().map(|c| c.to_string()).collect();
                let eps: Vec<String> = i.api_endpoints.iter().map(|e| e.to_string()).collect();
                o += &format!(
                    "cache       {} age {}s from {}: node {} podCIDRs [{}] endpoints [{}]\n",
                    c.path.display(),
                    c.age_seconds.unwrap_or(0),
                    i.fetched_from,
                    i.node_name,
                    cidrs.join(", "),
                    eps.join(", ")
                );
            }
            None => {
                o += &format!(
                    "cache       {}: {}\n",
                    c.path.display(),
                    c.problem.as_deref().unwrap_or("unusable")
                )
            }
        }
    }
    for u in &r.ipam {
        o += &format!(
            "ipam        {}: {} of {} used\n",
            u.range, u.used, u.capacity
        );
    }
    o += &format!("attachments {}\n", r.attachments);
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
