//! A fake Kubernetes API: real HTTPS with a generated CA, bearer-token (or client certificate)
//! auth, JSON built from `k8s-openapi` types, and failure modes on demand. It serves only inside a
//! test's node netns and refuses to start anywhere else.
#![allow(dead_code)]

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, NodeSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What the server does with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Answer,
    /// Accept, read the request, never answer.
    Hang,
    /// Answer every request with this status and a `Status` body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a body of this many bytes (a JSON string that never ends in time).
    Huge(usize),
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub node: String,
    pub node_uid: String,
    pub pod_cidrs: Vec<String>,
    /// What `default/kubernetes` lists as the real apiserver addresses.
    pub endpoints: Vec<SocketAddr>,
    /// Serve discovery.k8s.io/v1 (else 404, as a 1.20 apiserver).
    pub endpoint_slices: bool,
}

struct Shared {
    mode: Mode,
    token: String,
    cluster: Cluster,
    requests: usize,
    authorized: usize,
}

/// The PKI of one test: a CA and a server certificate for the VIP and `kubernetes.default.svc`.
pub struct Pki {
    pub ca_pem: String,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
    ca_cert: rcgen::Certificate,
    ca_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(vip: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "holdfast-test-ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![
            vip.to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes".to_string(),
        ])
        .unwrap();
        let cert = params.signed_by(&key, &ca_issuer).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server_cert_der: cert.der().to_vec(),
            server_key_der: key.serialize_der(),
            ca_cert,
            ca_issuer,
        }
    }

    /// A client certificate signed by this CA: (cert PEM, key PEM).
    pub fn client_cert(&self, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca_issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.server_cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key_der.clone().into()),
            )
            .unwrap();
        Arc::new(cfg)
    }
}

/// A running fake API on one address.
pub struct FakeApi {
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    /// Starts serving on `addr` inside the netns `node` (a name under /var/run/netns).
    pub fn start(
        node: &str,
        addr: SocketAddr,
        pki: &Pki,
        token: &str,
        cluster: Cluster,
    ) -> FakeApi {
        let shared = Arc::new(Mutex::new(Shared {
            mode: Mode::Answer,
            token: token.to_string(),
            cluster,
            requests: 0,
            authorized: 0,
        }));
        let tls = pki.server_config();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns_path = format!("/var/run/netns/{node}");
        let sh = shared.clone();
        // The test process runs in the machine's own netns; the server must never serve there.
        let machine = std::fs::metadata("/proc/self/ns/net").expect("stat own netns");
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).expect("open node netns");
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // The VIP is routable from the machine's root netns: never serve or talk there.
            let own = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
            assert!(
                own.ino() != machine.ino() || own.dev() != machine.dev(),
                "fake API must not run in the machine's network namespace"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                tokio::select! {
                    _ = serve(listener, tls, sh) => {}
                    _ = stop_rx => {}
                }
            });
        });
        ready_rx.recv().unwrap().expect("fake API could not bind");
        FakeApi {
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn set_mode(&self, m: Mode) {
        self.shared.lock().unwrap().mode = m;
    }
    pub fn set_token(&self, t: &str) {
        self.shared.lock().unwrap().token = t.to_string();
    }
    pub fn set_pod_cidrs(&self, c: &[&str]) {
        self.shared.lock().unwrap().cluster.pod_cidrs = c.iter().map(|s| s.to_string()).collect();
    }
    /// Requests received so far (any path, any outcome).
    pub fn requests(&self) -> usize {
        self.shared.lock().unwrap().requests
    }
    pub fn authorized(&self) -> usize {
        self.shared.lock().unwrap().authorized
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts TLS connections for ever, each served by [`handle`].
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    sh: Arc<Mutex<Shared>>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let sh = sh.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &sh, client_cert).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn json(status: u16, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn status(code: u16, reason: &str, msg: &str) -> Response<Full<Bytes>> {
    json(
        code,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": msg, "reason": reason, "code": code}),
    )
}

/// What an injected failure mode answers; `None` in `Answer` mode.
async fn injected(mode: Mode) -> Option<Response<Full<Bytes>>> {
    let raw = |body: Bytes| {
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap()
    };
    match mode {
        Mode::Hang => std::future::pending::<Option<Response<Full<Bytes>>>>().await,
        Mode::Garbage => Some(raw(Bytes::from_static(b"<html>this is not the API</html>"))),
        Mode::Status(c) => Some(status(c, "Injected", &format!("injected failure {c}"))),
        Mode::Huge(n) => {
            let mut body = b"{\"kind\": \"".to_vec();
            body.resize(n, b'x');
            Some(raw(Bytes::from(body)))
        }
        Mode::Answer => None,
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    sh: &Mutex<Shared>,
    client_cert: bool,
) -> Response<Full<Bytes>> {
    let (mode, token, cluster) = {
        let mut s = sh.lock().unwrap();
        s.requests += 1;
        (s.mode.clone(), s.token.clone(), s.cluster.clone())
    };
    if let Some(r) = injected(mode).await {
        return r;
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(client_cert || auth == format!("Bearer {token}")) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    sh.lock().unwrap().authorized += 1;
    let path = req.uri().path().to_string();
    if path == format!("/api/v1/nodes/{}", cluster.node) {
        return json(200, node_of(&cluster));
    }
    // The shipped RBAC (conf/kubernetes/holdfast.yaml) grants `get` of this one slice by name,
    // no `list`: a real apiserver forbids the list, and so does this one.
    if path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" {
        return status(403, "Forbidden", "endpointslices is forbidden: cannot list");
    }
    if path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"
        && cluster.endpoint_slices
    {
        return json(200, slice_of(&cluster));
    }
    if path == "/api/v1/namespaces/default/endpoints/kubernetes" {
        return json(200, endpoints_of(&cluster));
    }
    status(404, "NotFound", &format!("{path} not found"))
}

fn node_of(cluster: &Cluster) -> serde_json::Value {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cluster.node.clone()),
            uid: Some(cluster.node_uid.clone()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: cluster.pod_cidrs.first().cloned(),
            pod_cidrs: if cluster.pod_cidrs.is_empty() {
                None
            } else {
                Some(cluster.pod_cidrs.clone())
            },
            ..Default::default()
        }),
        status: None,
    };
    serde_json::to_value(&node).unwrap()
}

fn slice_of(cluster: &Cluster) -> serde_json::Value {
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".into(),
                "kubernetes".into(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: cluster
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addresses: vec![e.ip().to_string()],
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![SlicePort {
            name: Some("https".into()),
            port: cluster.endpoints.first().map(|e| e.port() as i32),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    serde_json::to_value(&slice).unwrap()
}

fn endpoints_of(cluster: &Cluster) -> serde_json::Value {
    let ep = Endpoints {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(
                cluster
                    .endpoints
                    .iter()
                    .map(|e| EndpointAddress {
                        ip: e.ip().to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: cluster
                    .endpoints
                    .first()
                    .map(|e| e.port() as i32)
                    .unwrap_or(443),
                ..Default::default()
            }]),
            ..Default::default()
        }]),
    };
    serde_json::to_value(&ep).unwrap()
}

/// Writes a kubeconfig for `server` trusting `ca_pem`; auth by token file or client cert.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token_file: Option<&Path>,
    client: Option<(&str, &str)>,
) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match (token_file, client) {
        (Some(t), _) => format!("    tokenFile: {}\n", t.display()),
        (None, Some((c, k))) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(c),
            b64(k)
        ),
        (None, None) => "    {}\n".into(),
    };
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        b64(ca_pem)
    );
    std::fs::write(path, kc).unwrap();
}

/// Writes a kubeconfig for `server` whose user runs the exec credential plugin `command` with
/// `env` (name, value) pairs, non-interactively.
pub fn write_kubeconfig_exec(
    path: &Path,
    server: &str,
    ca_pem: &str,
    command: &Path,
    env: &[(&str, &str)],
) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let env: String = env
        .iter()
        .map(|(k, v)| format!("      - name: {k}\n        value: {v}\n"))
        .collect();
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\n      env:\n{env}contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        b64(ca_pem),
        command.display()
    );
    std::fs::write(path, kc).unwrap();
}
