//! Fetching cluster info from the API: the kubeconfig's server (normally the service VIP) first,
//! the cached real apiserver endpoints after a head start, concurrently; first good answer wins;
//! the whole attempt, credentials included, is bounded by `timeoutMs`. No client-side retries: a
//! CNI plugin's budget is the runtime's, not ours. Which servers take part is the caller's
//! decision ([`Route`]), made from the remembered health.

use super::ClusterInfo;
use super::KubeConf;
use super::credentials;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Endpoints, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;

/// A Node object is tens of KiB; a body beyond this is not an answer worth holding in memory.
const MAX_BODY: usize = 4 << 20;

/// How an attempt failed, which decides what is remembered about the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No answer: not connected, refused, reset, or nothing in time.
    Unreachable,
    /// An answer, but not a usable one.
    Rejected,
    /// No credentials to send (token file, exec plugin): says nothing about the server.
    Credentials,
    /// The kubeconfig itself is unusable: no server was asked.
    Config,
}

/// One server we tried and why it did not do.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub server: String,
    pub error: String,
    pub kind: Kind,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Kind::Credentials => {
                write!(f, "cannot authenticate to {} ({})", self.server, self.error)
            }
            _ => write!(f, "{}: {}", self.server, self.error),
        }
    }
}

pub fn describe_attempts(a: &[Attempt]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The first words of a warning about `failures`: "unreachable" only when no server answered
/// at all; a 500, garbage or an oversized body is an answer, just not a usable one.
pub fn headline(failures: &[Attempt]) -> &'static str {
    if failures.iter().all(|a| a.kind == Kind::Unreachable) {
        "Kubernetes API unreachable"
    } else {
        "no usable answer from the Kubernetes API"
    }
}

/// The kubeconfig, parsed, without credentials resolved yet.
#[derive(Clone)]
pub struct Base {
    cfg: Config,
    /// The kubeconfig server's host: the name TLS is verified against on every path.
    host: String,
    /// The kubeconfig server as `addr:port`.
    pub label: String,
    dir: PathBuf,
}

/// Which servers one ADD asks.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Ask the kubeconfig's server.
    pub primary: bool,
    /// Real apiserver endpoints to ask (never the primary's own address).
    pub endpoints: Vec<SocketAddr>,
}

/// What one fetch found: the winning answer, if any, and every failure seen by then.
#[derive(Debug)]
pub struct Outcome {
    pub info: Option<ClusterInfo>,
    pub failures: Vec<Attempt>,
}

/// How long the kubeconfig server has to itself before the real endpoints are tried as well.
fn head_start(budget: Duration) -> Duration {
    (budget / 4).min(Duration::from_millis(250))
}

/// A kubeconfig with a few embedded certificates is tens of KiB.
const MAX_KUBECONFIG: usize = 1 << 20;

/// Reads and checks the kubeconfig. No credential is touched yet.
pub async fn load_config(kube: &KubeConf) -> Result<Base, Attempt> {
    let fail = |e: String| Attempt {
        server: kube.kubeconfig.display().to_string(),
        error: truncate(&e),
        kind: Kind::Config,
    };
    // kube reads the file with a plain blocking read: a FIFO there would hang the ADD with no
    // deadline, and a huge file would be read whole. Refused here first (non-blocking, regular
    // files only, bounded); kube then reads it for the relative paths it resolves.
    match crate::state::at::read_following(&kube.kubeconfig, MAX_KUBECONFIG) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(fail("kubeconfig: no such file".into())),
        Err(e) => return Err(fail(format!("kubeconfig: {e}"))),
    }
    let kc =
        Kubeconfig::read_from(&kube.kubeconfig).map_err(|e| fail(format!("kubeconfig: {e}")))?;
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(format!("kubeconfig: {e}")))?;
    cfg.default_retry = false;
    if cfg.accept_invalid_certs {
        return Err(fail(
            "kubeconfig: insecure-skip-tls-verify is not allowed: TLS is always verified".into(),
        ));
    }
    let (host, label) = server_of(&cfg);
    let dir = kube
        .kubeconfig
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    Ok(Base {
        cfg,
        host,
        label,
        dir,
    })
}

impl Base {
    /// This config with its credentials resolved (exec plugin run), before `deadline`.
    pub async fn with_credentials(&self, deadline: Instant) -> Result<Config, Attempt> {
        let mut cfg = self.cfg.clone();
        // `resolve` keeps the deadline itself (and kills an exec plugin's whole process group
        // when it passes); this outer bound only catches what it could not.
        let resolved = tokio::time::timeout_at(
            deadline + Duration::from_millis(100),
            credentials::resolve(&mut cfg.auth_info, &self.dir, deadline),
        )
        .await
        .unwrap_or_else(|_| Err("credentials not ready in time".into()));
        resolved.map(|()| cfg).map_err(|error| Attempt {
            server: self.label.clone(),
            error,
            kind: Kind::Credentials,
        })
    }

    /// `cfg` aimed at a real apiserver address, still verifying TLS against the name we would
    /// have used for the kubeconfig's server (apiserver certificates carry the VIP and
    /// kubernetes.default.svc, not necessarily their own address).
    fn at_endpoint(&self, cfg: &Config, ep: &SocketAddr) -> Option<Config> {
        let mut cfg = cfg.clone();
        cfg.cluster_url = format!("https://{ep}").parse().ok()?;
        if cfg.tls_server_name.is_none() {
            cfg.tls_server_name = Some(self.host.clone());
        }
        Some(cfg)
    }
}

type Pending = Pin<Box<dyn Future<Output = (String, Result<ClusterInfo, (Kind, String)>)>>>;

/// Fetches cluster info for `node` along `route`, bounded by `timeoutMs` from now.
pub async fn fetch(kube: &KubeConf, base: &Base, node: &str, route: &Route) -> Outcome {
    let budget = Duration::from_millis(kube.timeout_ms);
    let deadline = Instant::now() + budget;
    let cfg = match base.with_credentials(deadline).await {
        Ok(c) => c,
        Err(a) => {
            return Outcome {
                info: None,
                failures: vec![a],
            };
        }
    };
    let (failed_tx, failed_rx) = tokio::sync::watch::channel(!route.primary);
    let tasks: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut pending = Vec::new();
    if route.primary {
        let (cfg, label, node) = (cfg.clone(), base.label.clone(), node.to_string());
        pending.push(label.clone());
        tasks.push(Box::pin(async move {
            let r = attempt(cfg, &node, deadline).await;
            if r.is_err() {
                let _ = failed_tx.send(true);
            }
            (label, r)
        }));
    }
    let wait = head_start(budget);
    for ep in route
        .endpoints
        .iter()
        .filter(|e| e.to_string() != base.label)
    {
        let Some(cfg) = base.at_endpoint(&cfg, ep) else {
            continue;
        };
        let (mut rx, node, label) = (failed_rx.clone(), node.to_string(), ep.to_string());
        pending.push(label.clone());
        tasks.push(Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.wait_for(|f| *f) => {}
            }
            (label, attempt(cfg, &node, deadline).await)
        }));
    }
    race(tasks, pending, base, deadline, kube.timeout_ms, wait).await
}

/// Collects the first good answer, or every failure by the deadline.
async fn race(
    mut tasks: FuturesUnordered<Pending>,
    mut pending: Vec<String>,
    base: &Base,
    deadline: Instant,
    timeout_ms: u64,
    head: Duration,
) -> Outcome {
    let mut failures = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, tasks.next()).await {
            Ok(Some((label, Ok(mut info)))) => {
                pending.retain(|p| *p != label);
                // The kubeconfig's server was slower than a real endpoint by a whole head start:
                // for the next ADDs it counts as not answering.
                if pending.contains(&base.label) {
                    failures.push(Attempt {
                        server: base.label.clone(),
                        error: format!(
                            "no answer within {} ms, {label} answered",
                            head.as_millis()
                        ),
                        kind: Kind::Unreachable,
                    });
                }
                info.fetched_from = label;
                return Outcome {
                    info: Some(info),
                    failures,
                };
            }
            Ok(Some((label, Err((kind, error))))) => {
                pending.retain(|p| *p != label);
                failures.push(Attempt {
                    server: label,
                    error,
                    kind,
                });
            }
            Ok(None) => break,
            Err(_) => {
                failures.extend(pending.drain(..).map(|p| Attempt {
                    server: p,
                    error: format!("no answer within {timeout_ms} ms"),
                    kind: Kind::Unreachable,
                }));
                break;
            }
        }
    }
    Outcome {
        info: None,
        failures,
    }
}

/// Asks each server on its own (the kubeconfig's, then every cached real endpoint), each bounded
/// by `timeoutMs`, for `doctor`: which way to the API works right now.
pub async fn probe_each(
    kube: &KubeConf,
    base: &Base,
    node: &str,
    endpoints: &[SocketAddr],
) -> Vec<(String, Result<(), Attempt>)> {
    let budget = Duration::from_millis(kube.timeout_ms);
    let cfg = match base.with_credentials(Instant::now() + budget).await {
        Ok(c) => c,
        Err(a) => return vec![(base.label.clone(), Err(a))],
    };
    let mut targets = vec![(base.label.clone(), cfg.clone())];
    for ep in endpoints.iter().filter(|e| e.to_string() != base.label) {
        if let Some(c) = base.at_endpoint(&cfg, ep) {
            targets.push((ep.to_string(), c));
        }
    }
    let probes = targets.into_iter().map(|(label, cfg)| async move {
        let deadline = Instant::now() + budget;
        let r = match tokio::time::timeout_at(deadline, attempt(cfg, node, deadline)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err((
                Kind::Unreachable,
                format!("no answer within {} ms", kube.timeout_ms),
            )),
        };
        let r = r.map_err(|(kind, error)| Attempt {
            server: label.clone(),
            error,
            kind,
        });
        (label, r)
    });
    futures::future::join_all(probes).await
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

/// A client whose response bodies are cut off at [`MAX_BODY`].
pub fn client(cfg: Config) -> Result<Client, (Kind, String)> {
    let builder = kube::client::ClientBuilder::try_from(cfg).map_err(|e| classify(&e))?;
    Ok(builder
        .with_layer(&tower::util::MapResponseLayer::new(limit_body))
        .build())
}

fn limit_body<B>(r: hyper::Response<B>) -> hyper::Response<http_body_util::Limited<B>> {
    r.map(|b| http_body_util::Limited::new(b, MAX_BODY))
}

/// One server: the node, and (best effort) the apiserver's real addresses.
async fn attempt(
    mut cfg: Config,
    node: &str,
    deadline: Instant,
) -> Result<ClusterInfo, (Kind, String)> {
    // The connector's own timeouts fire before the overall deadline, so a black-holed connect
    // or a server that never answers is reported as such rather than as a bare deadline. The
    // read timer only starts after the connect and the TLS handshake (tens of ms on a loaded
    // node), so the margin grows with the budget: a fixed 20 ms lost that race.
    let left = deadline.saturating_duration_since(Instant::now());
    let margin = (left / 5).max(Duration::from_millis(20));
    let inner = left.saturating_sub(margin).max(Duration::from_millis(5));
    cfg.connect_timeout = Some(inner);
    cfg.read_timeout = Some(inner);
    cfg.write_timeout = Some(inner);
    let client = client(cfg)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let (n, eps) = tokio::join!(nodes.get(node), api_endpoints(client));
    let n = n.map_err(|e| classify(&e))?;
    let pod_cidrs = pod_cidrs(node, n.spec.unwrap_or_default()).map_err(|e| (Kind::Rejected, e))?;
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

fn pod_cidrs(
    node: &str,
    spec: k8s_openapi::api::core::v1::NodeSpec,
) -> Result<Vec<IpNetwork>, String> {
    let raw: Vec<String> = match spec.pod_cidrs {
        Some(v) if !v.is_empty() => v,
        _ => spec.pod_cidr.into_iter().collect(),
    };
    if raw.is_empty() {
        return Err(format!("node {node} has no podCIDRs"));
    }
    raw.iter()
        .map(|c| {
            c.parse()
                .map_err(|e| format!("node {node} podCIDR {:?}: {e}", truncate(c)))
        })
        .collect()
}

/// The port of the `https` entry (or the only unnamed one); 443 when none is listed.
fn https_port<'a>(ports: impl IntoIterator<Item = (Option<&'a str>, Option<i32>)>) -> Option<u16> {
    let found = ports
        .into_iter()
        .find(|(name, _)| name.is_none_or(|n| n == "https"));
    match found {
        Some((_, Some(p))) => u16::try_from(p).ok().filter(|p| *p != 0),
        _ => Some(443),
    }
}

/// The `default/kubernetes` service's real addresses: its EndpointSlice, else (an apiserver
/// without discovery.k8s.io/v1) its core Endpoints. Both are read by name, so the RBAC can be a
/// Role in `default` limited to `resourceNames: [kubernetes]` (the apiserver names the slice it
/// mirrors after the Endpoints object).
async fn api_endpoints(client: Client) -> Result<Vec<SocketAddr>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    match slices.get("kubernetes").await {
        Ok(s) => Ok(slice_addresses(s)),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let eps: Api<Endpoints> = Api::namespaced(client, "default");
            let e = eps.get("kubernetes").await.map_err(|e| classify(&e).1)?;
            let mut out = Vec::new();
            for ss in e.subsets.unwrap_or_default() {
                let ports = ss.ports.unwrap_or_default();
                let Some(port) =
                    https_port(ports.iter().map(|p| (p.name.as_deref(), Some(p.port))))
                else {
                    continue;
                };
                for a in ss.addresses.unwrap_or_default() {
                    if let Ok(ip) = a.ip.parse() {
                        out.push(SocketAddr::new(ip, port));
                    }
                }
            }
            Ok(out)
        }
        Err(e) => Err(classify(&e).1),
    }
}

/// The ready addresses of one EndpointSlice, at its https port.
fn slice_addresses(s: EndpointSlice) -> Vec<SocketAddr> {
    let ports = s.ports.unwrap_or_default();
    let Some(port) = https_port(ports.iter().map(|p| (p.name.as_deref(), p.port))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ep in s.endpoints {
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        out.extend(
            ep.addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(|ip| SocketAddr::new(ip, port)),
        );
    }
    out
}

/// A short, one-line, operator-readable reason, decided from the error's types. Never includes
/// request headers (the bearer token) or a credential plugin's command line.
pub fn classify(e: &kube::Error) -> (Kind, String) {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.message.is_empty() {
                s.reason.as_str()
            } else {
                s.message.as_str()
            };
            (
                Kind::Rejected,
                format!("HTTP {}: {}", s.code, truncate(reason)),
            )
        }
        kube::Error::SerdeError(e) => (
            Kind::Rejected,
            format!("malformed response: {}", truncate(&e.to_string())),
        ),
        // Credentials are resolved before the client exists; this is only a safety net, and
        // its chain can hold a command line with env values.
        kube::Error::Auth(_) => (Kind::Credentials, "credentials could not be used".into()),
        other => classify_chain(other),
    }
}

/// Walks the source chain for the typed causes that matter.
fn classify_chain(top: &(dyn std::error::Error + 'static)) -> (Kind, String) {
    let mut connecting = false;
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(top);
    let mut last = top;
    while let Some(e) = src {
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            connecting |= h.is_connect();
        }
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            return (
                Kind::Rejected,
                format!("response larger than {} MiB", MAX_BODY >> 20),
            );
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return tls(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(t) = rustls_inside(io) {
                return tls(t);
            }
            if let Some(r) = io_reason(io.kind(), connecting) {
                return (Kind::Unreachable, r.into());
            }
        }
        last = e;
        src = e.source();
    }
    (Kind::Rejected, truncate(&last.to_string()))
}

/// tokio-rustls carries the TLS error inside an io::Error (possibly wrapped in another), not as
/// its source, so the source chain never reaches it.
fn rustls_inside(io: &std::io::Error) -> Option<&rustls::Error> {
    let mut inner = io.get_ref()?;
    loop {
        if let Some(t) = inner.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        inner = inner.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

fn tls(e: &rustls::Error) -> (Kind, String) {
    (
        Kind::Rejected,
        format!("TLS verification failed: {}", truncate(&e.to_string())),
    )
}

fn io_reason(kind: std::io::ErrorKind, connecting: bool) -> Option<&'static str> {
    use std::io::ErrorKind as K;
    Some(match kind {
        K::ConnectionRefused => "connection refused",
        // The connector and the reader both time out with TimedOut; hyper marks the connect.
        K::TimedOut if connecting => "connect timed out",
        K::TimedOut => "connected, but no response in time",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => "connection closed",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        _ => return None,
    })
}

/// At most 200 bytes, on one line.
fn truncate(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.len() <= 200 {
        return one_line;
    }
    let mut end = 200;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &one_line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_at_the_kubeconfig_is_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("hf-kc-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        nix::unistd::mkfifo(&kubeconfig, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let kube: KubeConf =
            serde_json::from_value(serde_json::json!({"kubeconfig": kubeconfig})).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = crate::runtime::block_on(async { Ok(load_config(&kube).await.err()) });
            let _ = tx.send(got.ok().flatten());
        });
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("load_config blocked on a FIFO at the kubeconfig path");
        let e = got.expect("a FIFO is not a kubeconfig");
        assert_eq!(e.kind, Kind::Config);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ports_from_the_api_are_checked() {
        assert_eq!(https_port([(Some("https"), Some(6443))]), Some(6443));
        assert_eq!(https_port([(None, Some(443))]), Some(443));
        assert_eq!(https_port([(Some("https"), None)]), Some(443));
        assert_eq!(https_port([(Some("other"), Some(1))]), Some(443));
        assert_eq!(https_port([(Some("https"), Some(70000))]), None);
        assert_eq!(https_port([(Some("https"), Some(-1))]), None);
    }

    #[test]
    fn reasons_are_typed_and_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "x");
        assert_eq!(
            classify_chain(&io),
            (Kind::Unreachable, "connection refused".into())
        );
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "x");
        assert_eq!(classify_chain(&io).1, "connected, but no response in time");
        let t = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let (k, m) = classify_chain(&t);
        assert_eq!(k, Kind::Rejected);
        assert!(m.starts_with("TLS verification failed"), "{m}");
        assert_eq!(truncate("a\nb"), "a b");
        assert!(truncate(&"é".repeat(300)).ends_with('…'));
    }
}
