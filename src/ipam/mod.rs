//! Addresses for pods: the built-in allocator, or a delegated IPAM plugin.

pub mod conf;
pub mod delegate;
pub mod range;
pub mod store;

use crate::cni::result::{Dns, Route};
use crate::cni::{CniResult, Error, Result};
use conf::{IpamConf, RouteConf};
use ipnetwork::IpNetwork;
use range::{RangeSet, from_u128, to_u128};
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use store::{Owner, Store};

/// One address given to the pod, with the gateway it routes through.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub address: IpNetwork,
    pub gateway: IpAddr,
}

/// What IPAM gives an interface.
#[derive(Clone, Debug, Default)]
pub struct Assigned {
    pub leases: Vec<Lease>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// Takes one address from every range set for `owner`, or none at all.
pub fn allocate(store: &Store, sets: &[RangeSet], owner: &Owner) -> Result<Vec<Lease>> {
    let mut got: Vec<Lease> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        match allocate_one(store, i, set, owner) {
            Ok(Some(l)) => got.push(l),
            other => {
                for l in &got {
                    let _ = store.release(l.address.ip(), owner);
                }
                let desc: Vec<String> = set.iter().map(|r| r.describe()).collect();
                return match other {
                    Err(e) => Err(e),
                    _ => Err(Error::RangeExhausted(format!(
                        "no free address in ipam.ranges[{i}]: {} is exhausted",
                        desc.join(", ")
                    ))),
                };
            }
        }
    }
    Ok(got)
}

/// Round-robin: continues after the last address handed out in this set, so a released address
/// is not immediately reused (a peer may still have it in an ARP or conntrack entry).
fn allocate_one(store: &Store, idx: usize, set: &RangeSet, owner: &Owner) -> Result<Option<Lease>> {
    let n = set.len();
    let (first, from) = store
        .last_reserved(idx)
        .and_then(|ip| {
            set.iter()
                .position(|r| r.contains(ip))
                .map(|p| (p, to_u128(ip) + 1))
        })
        .unwrap_or((0, to_u128(set[0].start)));
    for k in 0..=n {
        let r = &set[(first + k) % n];
        let (lo, hi) = match k {
            0 => (from, to_u128(r.end)),
            k if k == n => (to_u128(r.start), from.saturating_sub(1)),
            _ => (to_u128(r.start), to_u128(r.end)),
        };
        let mut x = lo;
        while x <= hi {
            let ip = from_u128(x, r.is_v6());
            if ip != r.gateway && store.reserve(ip, owner)? {
                store.set_last_reserved(idx, ip)?;
                let address = IpNetwork::new(ip, r.subnet.prefix())
                    .map_err(|e| Error::Internal(format!("{ip}/{}: {e}", r.subnet.prefix())))?;
                return Ok(Some(Lease {
                    address,
                    gateway: r.gateway,
                }));
            }
            x += 1;
        }
    }
    Ok(None)
}

/// The routes of `ipam.routes` for the families the pod has; a route without `gw` goes via the
/// gateway of its family.
pub fn routes_for(conf: &[RouteConf], leases: &[Lease]) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for (i, r) in conf.iter().enumerate() {
        let dst: IpNetwork = r
            .dst
            .parse()
            .map_err(|e| Error::config(format!("ipam.routes[{i}].dst {:?}: {e}", r.dst)))?;
        let Some(lease) = leases.iter().find(|l| l.address.is_ipv6() == dst.is_ipv6()) else {
            continue;
        };
        if let Some(gw) = r.gw
            && gw.is_ipv6() != dst.is_ipv6()
        {
            return Err(Error::config(format!(
                "ipam.routes[{i}].gw {gw} is not of the family of {dst}"
            )));
        }
        out.push(Route::new(dst, Some(r.gw.unwrap_or(lease.gateway))));
    }
    Ok(out)
}

/// Reads a delegated plugin's result into leases: a missing gateway becomes the subnet's first
/// address, as ptp does, since a routed pod needs one.
pub fn assigned_from_result(r: &CniResult) -> Result<Assigned> {
    let mut leases = Vec::new();
    for ip in &r.ips {
        let gateway = match ip.gateway {
            Some(g) => g,
            None => to_u128(ip.address.network())
                .checked_add(1)
                .map(|n| from_u128(n, ip.address.is_ipv6()))
                .ok_or_else(|| {
                    Error::Internal(format!("IPAM gave {} and no gateway", ip.address))
                })?,
        };
        if gateway == ip.address.ip() {
            return Err(Error::Internal(format!(
                "IPAM gave {} with itself as gateway",
                ip.address
            )));
        }
        leases.push(Lease {
            address: ip.address,
            gateway,
        });
    }
    if leases.is_empty() {
        return Err(Error::Internal("IPAM returned no addresses".into()));
    }
    Ok(Assigned {
        leases,
        routes: r.routes.clone(),
        dns: r.dns.clone(),
    })
}

/// Where an attachment's addresses live and whom they are for.
pub struct Target<'a> {
    pub state_dir: &'a Path,
    pub network: &'a str,
    pub owner: Owner,
    /// `CNI_PATH`, to find a delegated plugin.
    pub path: &'a [PathBuf],
}

/// How an attachment gets its addresses, decided (and validated) before anything changes.
#[derive(Clone, Debug)]
pub enum Plan {
    Builtin {
        sets: Vec<RangeSet>,
        routes: Vec<RouteConf>,
        dns: Dns,
    },
    Delegate {
        plugin: String,
        stdin: Vec<u8>,
        dns: Dns,
    },
}

impl Plan {
    /// `raw` is the runtime's config, handed on to a delegated plugin with `usePodCidr` expanded.
    pub fn new(
        ipam: &IpamConf,
        dns: &Dns,
        raw: &Value,
        pod_cidrs: Option<&[IpNetwork]>,
    ) -> Result<Plan> {
        match ipam.delegate() {
            Some(plugin) => Ok(Plan::Delegate {
                plugin: plugin.to_string(),
                stdin: ipam.delegate_stdin(raw, pod_cidrs)?,
                dns: dns.clone(),
            }),
            None => Ok(Plan::Builtin {
                sets: range::resolve(&ipam.expanded_ranges(pod_cidrs)?)?,
                routes: ipam.routes.clone(),
                dns: dns.clone(),
            }),
        }
    }

    /// Allocates addresses for `t.owner`. The leases exist (with their owner) when this
    /// returns; making them durable (fsync of the leases and their directory) goes on in the
    /// background while ADD configures the kernel, and [`Durable::wait`] joins it before ADD
    /// reports success.
    pub async fn add(&self, t: &Target<'_>) -> Result<(Assigned, Durable)> {
        match self {
            Plan::Builtin { sets, routes, dns } => {
                let store = Store::open(t.state_dir, t.network)?;
                let leases = allocate(&store, sets, &t.owner)?;
                let routes = routes_for(routes, &leases)?;
                // The store (and its lock) goes with the sync, so no other ADD allocates before
                // these leases are durable.
                let durable = Durable(Some(tokio::task::spawn_blocking(move || store.sync())));
                let assigned = Assigned {
                    leases,
                    routes,
                    dns: dns.clone(),
                };
                Ok((assigned, durable))
            }
            Plan::Delegate { plugin, stdin, dns } => {
                let out = delegate::exec(plugin, t.path, "ADD", stdin)
                    .await?
                    .ok_or_else(|| Error::Internal(format!("{plugin} ADD printed no result")))?;
                let mut a = assigned_from_result(&CniResult::from_value(&out)?)?;
                if !dns.is_empty() {
                    a.dns = dns.clone();
                }
                Ok((a, Durable(None)))
            }
        }
    }

    /// Gives back what [`Plan::add`] took (used when a later step of ADD fails).
    pub async fn undo(&self, t: &Target<'_>) -> Result<()> {
        match self {
            Plan::Builtin { .. } => release_owner(t.state_dir, t.network, &t.owner).map(|_| ()),
            Plan::Delegate { plugin, stdin, .. } => delegate::exec(plugin, t.path, "DEL", stdin)
                .await
                .map(|_| ()),
        }
    }
}

/// The fsync of the leases [`Plan::add`] took, running on a blocking thread.
pub struct Durable(Option<tokio::task::JoinHandle<Result<()>>>);

impl Durable {
    /// Waits until the leases are on disk.
    pub async fn wait(self) -> Result<()> {
        match self.0 {
            None => Ok(()),
            Some(h) => h
                .await
                .map_err(|e| Error::Internal(format!("syncing leases: {e}")))?,
        }
    }
}

/// Releases every built-in lease `owner` holds, whatever a record says: a crashed or retried
/// ADD can leave leases no record names.
pub fn release_owner(state_dir: &Path, network: &str, owner: &Owner) -> Result<Vec<IpAddr>> {
    if !Store::dir_of(state_dir, network).exists() {
        return Ok(Vec::new());
    }
    Store::open(state_dir, network)?.release_owner(owner)
}

/// Passes STATUS or GC on to a delegated IPAM plugin, if its VERSION lists `version` (older
/// plugins know neither verb); returns whether it did. Its error keeps its own code; a plugin
/// that cannot even be asked is code 50.
pub async fn pass_on(
    plugin: &str,
    path: &[PathBuf],
    version: &str,
    verb: &str,
    stdin: &[u8],
) -> Result<bool> {
    let speaks = delegate::speaks(plugin, path, version)
        .await
        .map_err(|e| Error::NotAvailable(format!("IPAM plugin {plugin}: {e}")))?;
    if !speaks {
        tracing::info!("{plugin} does not speak CNI {version}: {verb} not passed on");
        return Ok(false);
    }
    delegate::exec(plugin, path, verb, stdin).await?;
    Ok(true)
}

/// Per range set: (capacity, addresses in use), where a lease counts unless `free(owner)` says
/// its holder is gone. For `doctor` (STATUS reads no lease: SPEC §4).
pub fn usage(
    sets: &[RangeSet],
    leases: &[(IpAddr, Owner)],
    free: impl Fn(&Owner) -> bool,
) -> Vec<(u128, u128)> {
    sets.iter()
        .map(|set| {
            let cap: u128 = set.iter().map(|r| r.capacity()).sum();
            let used = leases
                .iter()
                .filter(|(ip, o)| {
                    !free(o) && set.iter().any(|r| r.contains(*ip) && *ip != r.gateway)
                })
                .count();
            (cap, u128::try_from(used).unwrap_or(u128::MAX))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use conf::RangeConf;

    fn set(subnet: &str) -> RangeSet {
        let conf = RangeConf {
            subnet: subnet.into(),
            range_start: None,
            range_end: None,
            gateway: None,
        };
        vec![range::Range::new(subnet.parse().unwrap(), &conf).unwrap()]
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hf-ipam-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocates_round_robin_and_exhausts() {
        let dir = tmp();
        let store = Store::open(&dir, "net").unwrap();
        let sets = vec![set("10.1.0.0/29")];
        let mut got = Vec::new();
        for i in 0..5 {
            let l = allocate(&store, &sets, &Owner::new(&format!("c{i}"), "eth0")).unwrap();
            assert_eq!(l[0].gateway.to_string(), "10.1.0.1");
            got.push(l[0].address.to_string());
        }
        assert_eq!(
            got,
            [
                "10.1.0.2/29",
                "10.1.0.3/29",
                "10.1.0.4/29",
                "10.1.0.5/29",
                "10.1.0.6/29"
            ]
        );
        let e = allocate(&store, &sets, &Owner::new("c5", "eth0")).unwrap_err();
        assert_eq!(e.code(), 100);
        assert!(e.to_string().contains("10.1.0.0/29"), "{e}");
        // Released addresses come back only after the rest of the range.
        assert!(
            store
                .release("10.1.0.3".parse().unwrap(), &Owner::new("c1", "eth0"))
                .unwrap()
        );
        assert!(
            !store
                .release("10.1.0.4".parse().unwrap(), &Owner::new("c1", "eth0"))
                .unwrap()
        );
        let l = allocate(&store, &sets, &Owner::new("c6", "eth0")).unwrap();
        assert_eq!(l[0].address.to_string(), "10.1.0.3/29");
        assert_eq!(
            store
                .release_owner(&Owner::new("c6", "eth0"))
                .unwrap()
                .len(),
            1
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dual_stack_all_or_nothing() {
        let dir = tmp();
        let store = Store::open(&dir, "net").unwrap();
        let sets = vec![set("fd00::/126"), set("10.1.0.0/30")];
        // fd00::/126 has one usable address besides the gateway, 10.1.0.0/30 too.
        let l = allocate(&store, &sets, &Owner::new("a", "eth0")).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].address.to_string(), "fd00::2/126");
        let e = allocate(&store, &sets, &Owner::new("b", "eth0")).unwrap_err();
        assert_eq!(e.code(), 100);
        assert_eq!(
            store.leases().unwrap().len(),
            2,
            "failed allocation left a lease"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn routes_follow_families() {
        let leases = vec![Lease {
            address: "10.1.0.2/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
        }];
        let conf = vec![
            RouteConf {
                dst: "0.0.0.0/0".into(),
                gw: None,
            },
            RouteConf {
                dst: "::/0".into(),
                gw: None,
            },
        ];
        let r = routes_for(&conf, &leases).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].gw.unwrap().to_string(), "10.1.0.1");
        assert!(
            routes_for(
                &[RouteConf {
                    dst: "nope".into(),
                    gw: None
                }],
                &leases
            )
            .is_err()
        );
    }
}
