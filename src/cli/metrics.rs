//! `holdfast agent --metrics-addr ADDR`: Prometheus metrics (`/metrics`), liveness (`/healthz`)
//! and readiness (`/readyz`), served with hyper on the agent's own current-thread runtime.
//!
//! Each scrape reads the node's facts afresh from stateDir through `doctor::local`, so the
//! metrics and `holdfast doctor` always tell the same story; only the agent's own API requests
//! live in memory. The encoding is prometheus-client's (OpenMetrics text, which Prometheus reads).

use super::doctor::{self, Report};
use crate::cluster::{KubeConf, client, health};
use crate::plugin::conf::Conf;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// What the agent keeps between scrapes: its config, its loop's beat and its own API requests.
pub struct Agent {
    pub conf: Conf,
    pub kube: KubeConf,
    beat: Mutex<Option<Beat>>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
}

/// The loop's last round.
#[derive(Clone, Debug)]
pub struct Beat {
    pub unix: u64,
    pub interval_secs: u64,
    pub last_ok_unix: Option<u64>,
    pub last_outcome: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~20 s: a local apiserver answers in milliseconds, a black hole takes timeoutMs.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl Agent {
    pub fn new(conf: Conf, kube: KubeConf) -> Agent {
        Agent {
            conf,
            kube,
            beat: Mutex::new(None),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }

    /// Records a round of the loop; returns it.
    pub fn beat(
        &self,
        now: u64,
        interval_secs: u64,
        outcome: std::result::Result<String, String>,
    ) -> Beat {
        let mut g = self.beat.lock().unwrap_or_else(|p| p.into_inner());
        let last_ok_unix = match &outcome {
            Ok(_) => Some(now),
            Err(_) => g.as_ref().and_then(|b| b.last_ok_unix),
        };
        let b = Beat {
            unix: now,
            interval_secs,
            last_ok_unix,
            last_outcome: outcome.unwrap_or_else(|e| e),
        };
        *g = Some(b.clone());
        b
    }

    fn last_beat(&self) -> Option<Beat> {
        self.beat.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts one refresh: the server that answered, and each that failed, with how long the
    /// refresh took to reach that outcome.
    pub fn requests(&self, outcome: &client::Outcome, took: Duration) {
        let mut seen: Vec<(String, &'static str)> = outcome
            .failures
            .iter()
            .map(|a| {
                let what = match a.kind {
                    client::Kind::Unreachable => "unreachable",
                    client::Kind::Rejected => "rejected",
                    client::Kind::Credentials => "credentials",
                    client::Kind::Config => "config",
                };
                (a.server.clone(), what)
            })
            .collect();
        if let Some(info) = &outcome.info {
            seen.push((info.fetched_from.clone(), "ok"));
        }
        for (server, what) in seen {
            self.requests
                .get_or_create(&vec![("server", server.clone()), ("outcome", what.into())])
                .inc();
            self.latency
                .get_or_create(&vec![("server", server)])
                .observe(took.as_secs_f64());
        }
    }
}

/// One section of the exposition: registers its families, filled from the report.
type Section = fn(&mut Registry, &Report, u64);

/// Every section, in the order they are exposed.
const SECTIONS: &[Section] = &[
    build_info,
    cluster_info,
    api_health,
    adds,
    ipam,
    attachments,
    hostports,
    routing,
];

fn build_info(reg: &mut Registry, _: &Report, _: u64) {
    let g = Family::<Labels, Gauge>::default();
    g.get_or_create(&vec![("version", super::VERSION.to_string())])
        .set(1);
    reg.register("build_info", "holdfast's version (always 1)", g);
}

fn cluster_info(reg: &mut Registry, r: &Report, _: u64) {
    let usable = Gauge::<i64>::default();
    let age = FloatGauge::default();
    let cache = r.cache.as_ref();
    usable.set(i64::from(cache.is_some_and(|c| c.usable)));
    // An unknown age (no cache, or dated in the future) is not a small one.
    age.set(
        cache
            .and_then(|c| c.age_seconds)
            .map(|a| a as f64)
            .unwrap_or(f64::NAN),
    );
    reg.register(
        "cluster_info_usable",
        "Whether the cluster-info cache can stand in for the API (1) or not (0)",
        usable,
    );
    reg.register_with_unit(
        "cluster_info_age",
        "Age of the cluster-info cache; NaN when there is none or it is dated in the future",
        Unit::Seconds,
        age,
    );
}

fn api_health(reg: &mut Registry, r: &Report, _: u64) {
    let state = Family::<Labels, Gauge>::default();
    let since = Family::<Labels, Gauge>::default();
    let checked = Family::<Labels, Gauge>::default();
    for s in &r.api_health {
        for st in [
            health::State::Ok,
            health::State::Unreachable,
            health::State::Failing,
        ] {
            state
                .get_or_create(&vec![
                    ("server", s.server.clone()),
                    ("state", st.to_string()),
                ])
                .set(i64::from(s.state == st));
        }
        let server = vec![("server", s.server.clone())];
        since
            .get_or_create(&server)
            .set(i64::try_from(s.since_unix).unwrap_or(i64::MAX));
        checked
            .get_or_create(&server)
            .set(i64::try_from(s.checked_unix).unwrap_or(i64::MAX));
    }
    reg.register(
        "api_server_state",
        "Each API server's remembered state, as ADD acts on it: 1 for the current one",
        state,
    );
    reg.register_with_unit(
        "api_server_state_since_timestamp",
        "When each API server entered its remembered state (Unix time)",
        Unit::Seconds,
        since,
    );
    reg.register_with_unit(
        "api_server_checked_timestamp",
        "When each API server was last asked (Unix time)",
        Unit::Seconds,
        checked,
    );
}

fn adds(reg: &mut Registry, r: &Report, _: u64) {
    let by = Family::<Labels, Counter>::default();
    let a = &r.adds;
    for (outcome, n) in [("fresh", a.fresh), ("cache", a.cache), ("failed", a.failed)] {
        by.get_or_create(&vec![("outcome", outcome.to_string())])
            .inc_by(n);
    }
    reg.register(
        "cni_adds",
        "ADDs by outcome: fresh (cluster info fresh from the API), cache (the API did not answer, \
         or another ADD was asking it: the cache stood in), failed (for any reason). ADDs that \
         found a fresh cache contact nothing and are not counted",
        by,
    );
    let asked = Counter::<u64>::default();
    asked.inc_by(a.asked);
    reg.register(
        "cni_add_api_probes",
        "ADDs that asked the API themselves (one per node at a time; the others take the cache \
         or the prober's answer)",
        asked,
    );
}

fn ipam(reg: &mut Registry, r: &Report, _: u64) {
    let used = Family::<Labels, FloatGauge>::default();
    let cap = Family::<Labels, FloatGauge>::default();
    for u in &r.ipam {
        let range = vec![("range", u.range.clone())];
        // IPv6 ranges hold more addresses than an i64: floats, as Prometheus stores anyway.
        used.get_or_create(&range).set(u.used as f64);
        cap.get_or_create(&range).set(u.capacity as f64);
    }
    reg.register("ipam_addresses_used", "Addresses leased, per range", used);
    reg.register(
        "ipam_addresses_capacity",
        "Addresses that can be leased, per range",
        cap,
    );
}

fn attachments(reg: &mut Registry, r: &Report, _: u64) {
    let by = Family::<Labels, Gauge>::default();
    let gone = r.attachments_netns_gone.len();
    let live = r.attachments.saturating_sub(gone);
    for (state, n) in [("live", live), ("netns_gone", gone)] {
        by.get_or_create(&vec![("state", state.to_string())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    reg.register(
        "attachments",
        "Pod attachments on record: live, or whose netns is gone (a missed DEL)",
        by,
    );
    let reclaimed = Gauge::<i64>::default();
    reclaimed.set(i64::try_from(r.reclaimed.len()).unwrap_or(i64::MAX));
    reg.register(
        "attachments_reclaimed",
        "Dead attachments holdfast released itself, as kept in its journal (the last 200)",
        reclaimed,
    );
    let last = FloatGauge::default();
    last.set(
        r.reclaimed
            .last()
            .map(|x| x.unix as f64)
            .unwrap_or(f64::NAN),
    );
    reg.register_with_unit(
        "attachments_last_reclaim_timestamp",
        "When holdfast last released a dead attachment (Unix time; NaN if never)",
        Unit::Seconds,
        last,
    );
}

fn hostports(reg: &mut Registry, r: &Report, _: u64) {
    let n: usize = r.hostports.iter().map(|f| f.mappings.len()).sum();
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(n).unwrap_or(i64::MAX));
    reg.register(
        "hostports",
        "hostPort mappings holdfast forwards to this node's pods (capability portMappings)",
        g,
    );
}

/// Peers and routes (SPEC §9), as doctor reports them: nothing in routing mode `none`.
fn routing(reg: &mut Registry, r: &Report, _: u64) {
    let Some(rt) = r.routing.as_ref() else { return };
    let peers = Gauge::<i64>::default();
    peers.set(i64::try_from(rt.peers.len()).unwrap_or(i64::MAX));
    reg.register("peers", "Other nodes in the persisted peer table", peers);
    let routes = Family::<Labels, Gauge>::default();
    let all = rt.peers.iter().flat_map(|p| &p.routes);
    let placed = all.clone().filter(|x| x.in_place).count();
    let missing = all.count().saturating_sub(placed);
    for (state, n) in [("in_place", placed), ("missing", missing)] {
        routes
            .get_or_create(&vec![("state", state.to_string())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    reg.register(
        "routes",
        "Routes to the peers' pod CIDRs that the table wants: in place in the kernel, or missing",
        routes,
    );
    let age = FloatGauge::default();
    age.set(rt.age_seconds.map(|a| a as f64).unwrap_or(f64::NAN));
    reg.register_with_unit(
        "peer_table_age",
        "Since the peer table last matched a full list of Nodes (NaN: never)",
        Unit::Seconds,
        age,
    );
}

/// The exposition of `r` and the agent's own requests.
pub fn exposition(agent: &Agent, r: &Report, now: u64) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("holdfast");
    for section in SECTIONS {
        section(&mut reg, r, now);
    }
    reg.register(
        "agent_api_requests",
        "The agent's cache refreshes, by API server and outcome (ok, unreachable, rejected, \
         credentials, config)",
        agent.requests.clone(),
    );
    reg.register_with_unit(
        "agent_api_request_duration",
        "How long the agent's refreshes took to reach each server's outcome",
        Unit::Seconds,
        agent.latency.clone(),
    );
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// `/healthz`: alive while the loop beats (within three intervals, 30 s at least).
fn healthz(agent: &Agent, now: u64) -> (StatusCode, String) {
    match agent.last_beat() {
        None => (StatusCode::OK, "ok: starting\n".into()),
        Some(b) => {
            let age = now.saturating_sub(b.unix);
            let limit = b.interval_secs.saturating_mul(3).max(30);
            let code = if age <= limit {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, format!("agent beat {age}s ago (limit {limit}s)\n"))
        }
    }
}

/// `/readyz`: ready once the loop has run and a usable cache exists, API outage or not; the
/// body says how stale the cache is and what each server last did.
fn readyz(agent: &Agent, r: &Report, now: u64) -> (StatusCode, String) {
    let Some(b) = agent.last_beat() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first refresh has not run yet\n".into(),
        );
    };
    let refreshed = b
        .last_ok_unix
        .map(|t| format!("{}s ago", now.saturating_sub(t)))
        .unwrap_or_else(|| "never".into());
    let (code, mut body) = match r.cache.as_ref().filter(|c| c.usable) {
        Some(c) => {
            let age = c
                .age_seconds
                .map(|a| format!("{a}s old"))
                .unwrap_or_else(|| "dated in the future".into());
            let stale = match c.age_seconds {
                Some(a) if a < agent.kube.refresh_seconds => "fresh",
                _ => "STALE: ADD asks the API, and uses this cache while it does not answer",
            };
            (
                StatusCode::OK,
                format!(
                    "ready: cluster-info cache {age} (refreshSeconds {}), {stale}\n",
                    agent.kube.refresh_seconds
                ),
            )
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no usable cluster-info cache: ADD fails while the API is unreachable\n"
                .into(),
        ),
    };
    body += &format!("last refresh ok {refreshed}; last: {}\n", b.last_outcome);
    for s in &r.api_health {
        body += &format!("api {} {}\n", s.server, s.state);
    }
    (code, body)
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(agent: &Agent, path: &str) -> Response<Full<Bytes>> {
    let now = crate::state::now_unix();
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => {
            let (c, b) = healthz(agent, now);
            reply(c, TEXT, b)
        }
        "/readyz" => {
            let r = doctor::local(&agent.conf).await;
            let (c, b) = readyz(agent, &r, now);
            reply(c, TEXT, b)
        }
        "/metrics" => {
            let r = doctor::local(&agent.conf).await;
            match exposition(agent, &r, now) {
                Ok(s) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    s,
                ),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "/metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// How many scrapers at once; more are turned away rather than queued.
const MAX_CONNECTIONS: usize = 16;
/// A connection's whole life: a scrape is a few KiB; a peer that dawdles is cut off.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, agent: Arc<Agent>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&agent, req.uri().path()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}
