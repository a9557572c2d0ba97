//! Fetching cluster info from the API: the kubeconfig's server (normally the service VIP) first,
//! the cached real apiserver endpoints after a head start, concurrently; first good answer wins;
//! the whole attempt is bounded by `timeoutMs`. No client-side retries: a CNI plugin's budget is
//! the runtime's, not ours.

use super::ClusterInfo;
use super::KubeConf;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Endpoints, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// One server we tried and why it did not do.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub server: String,
    pub error: String,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.server, self.error)
    }
}

pub fn describe_attempts(a: &[Attempt]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// How long the kubeconfig server has to itself before the real endpoints are tried as well.
fn head_start(budget: Duration) -> Duration {
    (budget / 4).min(Duration::from_millis(250))
}

/// Fetches cluster info for `node`. `endpoints` are the real apiserver addresses cached earlier.
pub async fn fetch(
    kube: &KubeConf,
    node: &str,
    endpoints: &[SocketAddr],
) -> Result<ClusterInfo, Vec<Attempt>> {
    let budget = Duration::from_millis(kube.timeout_ms);
    let deadline = Instant::now() + budget;
    let kubeconfig_label = kube.kubeconfig.display().to_string();
    let base = load_config(kube).await.map_err(|e| {
        vec![Attempt {
            server: kubeconfig_label.clone(),
            error: e,
        }]
    })?;
    let (primary_host, primary_label) = server_of(&base);

    let (failed_tx, failed_rx) = tokio::sync::watch::channel(false);
    let mut tasks = FuturesUnordered::new();
    {
        let cfg = base.clone();
        let label = primary_label.clone();
        let node = node.to_string();
        tasks.push(Box::pin(async move {
            let r = attempt(cfg, &node, deadline).await;
            if r.is_err() {
                let _ = failed_tx.send(true);
            }
            (label, r)
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>);
    }
    for ep in endpoints.iter().filter(|e| e.to_string() != primary_label) {
        let Some(cfg) = endpoint_config(&base, ep, &primary_host) else {
            continue;
        };
        let mut rx = failed_rx.clone();
        let node = node.to_string();
        let label = ep.to_string();
        let wait = head_start(budget);
        tasks.push(Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.wait_for(|f| *f) => {}
            }
            (label, attempt(cfg, &node, deadline).await)
        }));
    }

    let mut failures: Vec<Attempt> = Vec::new();
    let mut pending: Vec<String> = std::iter::once(primary_label.clone())
        .chain(
            endpoints
                .iter()
                .map(|e| e.to_string())
                .filter(|e| *e != primary_label),
        )
        .collect();
    loop {
        match tokio::time::timeout_at(deadline, tasks.next()).await {
            Ok(Some((label, Ok(mut info)))) => {
                info.fetched_from = label;
                if info.api_endpoints.is_empty() {
                    info.api_endpoints = endpoints.to_vec();
                }
                return Ok(info);
            }
            Ok(Some((label, Err(error)))) => {
                pending.retain(|p| *p != label);
                failures.push(Attempt {
                    server: label,
                    error,
                });
            }
            Ok(None) => break,
            Err(_) => {
                for p in pending {
                    failures.push(Attempt {
                        server: p,
                        error: format!("no answer within {} ms", kube.timeout_ms),
                    });
                }
                break;
            }
        }
    }
    Err(failures)
}

/// Asks each server on its own (the kubeconfig's, then every cached real endpoint), each bounded
/// by `timeoutMs`, for `doctor`: which way to the API works right now.
pub async fn probe_each(
    kube: &KubeConf,
    node: &str,
    endpoints: &[SocketAddr],
) -> Vec<(String, Result<(), String>)> {
    let base = match load_config(kube).await {
        Ok(c) => c,
        Err(e) => return vec![(kube.kubeconfig.display().to_string(), Err(e))],
    };
    let (host, label) = server_of(&base);
    let mut targets = vec![(label.clone(), base.clone())];
    for ep in endpoints.iter().filter(|e| e.to_string() != label) {
        let Some(cfg) = endpoint_config(&base, ep, &host) else {
            continue;
        };
        targets.push((ep.to_string(), cfg));
    }
    let budget = Duration::from_millis(kube.timeout_ms);
    let probes = targets.into_iter().map(|(label, cfg)| async move {
        let deadline = Instant::now() + budget;
        let r = match tokio::time::timeout_at(deadline, attempt(cfg, node, deadline)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(format!("no answer within {} ms", kube.timeout_ms)),
        };
        (label, r)
    });
    futures::future::join_all(probes).await
}

/// `base` aimed at a real apiserver address, still verifying TLS against the name we would have
/// used for the kubeconfig's server (apiserver certificates carry the VIP and
/// kubernetes.default.svc, not necessarily their own address).
fn endpoint_config(base: &Config, ep: &SocketAddr, server_host: &str) -> Option<Config> {
    let mut cfg = base.clone();
    cfg.cluster_url = format!("https://{ep}").parse().ok()?;
    if cfg.tls_server_name.is_none() {
        cfg.tls_server_name = Some(server_host.to_string());
    }
    Some(cfg)
}

/// The kubeconfig server's host (the name TLS is verified against) and its `addr:port` label.
fn server_of(cfg: &Config) -> (String, String) {
    let host = cfg
        .cluster_url
        .host()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_string();
    let port = cfg.cluster_url.port_u16().unwrap_or(443);
    let label = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    };
    (host, label)
}

async fn load_config(kube: &KubeConf) -> Result<Config, String> {
    let kc = Kubeconfig::read_from(&kube.kubeconfig).map_err(|e| format!("kubeconfig: {e}"))?;
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    cfg.default_retry = false;
    if cfg.accept_invalid_certs {
        return Err(
            "kubeconfig: insecure-skip-tls-verify is not allowed: TLS is always verified".into(),
        );
    }
    Ok(cfg)
}

/// One server: the node, and (best effort) the apiserver's real addresses.
async fn attempt(mut cfg: Config, node: &str, deadline: Instant) -> Result<ClusterInfo, String> {
    // The connector's own timeouts fire just before the overall deadline, so a black-holed
    // connect is reported as such rather than as a bare deadline.
    let left = deadline.saturating_duration_since(Instant::now());
    let inner = left
        .saturating_sub(Duration::from_millis(20))
        .max(Duration::from_millis(5));
    cfg.connect_timeout = Some(inner);
    cfg.read_timeout = Some(inner);
    cfg.write_timeout = Some(inner);
    let client = Client::try_from(cfg).map_err(|e| describe(&e))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let (n, eps) = tokio::join!(nodes.get(node), api_endpoints(client));
    let n = n.map_err(|e| describe(&e))?;
    let spec = n.spec.unwrap_or_default();
    let raw: Vec<String> = match spec.pod_cidrs {
        Some(v) if !v.is_empty() => v,
        _ => spec.pod_cidr.into_iter().collect(),
    };
    if raw.is_empty() {
        return Err(format!("node {node} has no podCIDRs"));
    }
    let mut pod_cidrs = Vec::new();
    for c in raw {
        let net: IpNetwork = c
            .parse()
            .map_err(|e| format!("node {node} podCIDR {c:?}: {e}"))?;
        pod_cidrs.push(net);
    }
    let api_endpoints = eps.unwrap_or_else(|e| {
        tracing::debug!("apiserver endpoints not fetched: {e}");
        Vec::new()
    });
    Ok(ClusterInfo {
        node_name: node.to_string(),
        node_uid: n.metadata.uid.unwrap_or_default(),
        pod_cidrs,
        api_endpoints,
        fetched_unix: crate::state::now_unix(),
        fetched_from: String::new(),
    })
}

/// The `default/kubernetes` service's real addresses: EndpointSlices, else core Endpoints.
async fn api_endpoints(client: Client) -> Result<Vec<SocketAddr>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
    match slices.list(&lp).await {
        Ok(list) => {
            let mut out = Vec::new();
            for s in list.items {
                let port = s
                    .ports
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p.name.as_deref().is_none_or(|n| n == "https"))
                    .and_then(|p| p.port)
                    .unwrap_or(443);
                for ep in s.endpoints {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    out.extend(
                        ep.addresses
                            .iter()
                            .filter_map(|a| a.parse().ok())
                            .map(|ip| SocketAddr::new(ip, port as u16)),
                    );
                }
            }
            Ok(out)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let eps: Api<Endpoints> = Api::namespaced(client, "default");
            let e = eps.get("kubernetes").await.map_err(|e| describe(&e))?;
            let mut out = Vec::new();
            for ss in e.subsets.unwrap_or_default() {
                let port = ss
                    .ports
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p.name.as_deref().is_none_or(|n| n == "https"))
                    .map(|p| p.port)
                    .unwrap_or(443);
                for a in ss.addresses.unwrap_or_default() {
                    if let Ok(ip) = a.ip.parse() {
                        out.push(SocketAddr::new(ip, port as u16));
                    }
                }
            }
            Ok(out)
        }
        Err(e) => Err(describe(&e)),
    }
}

/// A short, operator-readable reason. Never includes request headers (the bearer token).
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.message.is_empty() {
                s.reason.as_str()
            } else {
                s.message.as_str()
            };
            format!("HTTP {}: {}", s.code, truncate(reason))
        }
        kube::Error::SerdeError(e) => format!("malformed response: {e}"),
        other => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(other);
            let mut chain = Vec::new();
            while let Some(e) = src {
                if let Some(io) = e.downcast_ref::<std::io::Error>() {
                    match io.kind() {
                        std::io::ErrorKind::ConnectionRefused => {
                            return "connection refused".into();
                        }
                        // The connector and the reader both time out with TimedOut; only a
                        // connect failure is wrapped in hyper's "(Connect)" error.
                        std::io::ErrorKind::TimedOut
                            if chain.iter().any(|c: &String| c.contains("(Connect)")) =>
                        {
                            return "connect timed out".into();
                        }
                        std::io::ErrorKind::TimedOut => {
                            return "connected, but no response in time".into();
                        }
                        std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                        _ => {}
                    }
                }
                let s = e.to_string();
                if s.contains("invalid peer certificate")
                    || s.contains("certificate") && s.contains("invalid")
                {
                    return format!("TLS verification failed: {}", truncate(&s));
                }
                chain.push(s);
                src = e.source();
            }
            truncate(&chain.join(": "))
        }
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}
