//! A wave is one probe (SPEC §7): ADDs that come together while the API does not answer cost one
//! wait, not one each; a killed prober never blocks the others. Against the fake HTTPS API in
//! each test's node netns (VIP 10.43.0.1:443).

mod common;
use common::fakeapi::{Cluster, FakeApi, Mode, Pki, write_kubeconfig};
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const VIP: &str = "10.43.0.1";
const TOKEN: &str = "wave-token-0123456789";

struct Env {
    w: World,
    kubeconfig: PathBuf,
}

fn cluster(cidrs: &[&str]) -> Cluster {
    Cluster {
        node: "node-a".into(),
        node_uid: "uid-node-a".into(),
        pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        endpoints: vec![],
        endpoint_slices: true,
    }
}

/// A world whose VIP is served by a fake API (returned), in `mode`.
fn setup(test: &str, mode: Mode) -> (Env, FakeApi) {
    let w = World::new(test);
    ip(&[
        "-n",
        &w.node,
        "addr",
        "add",
        &format!("{VIP}/32"),
        "dev",
        "lo",
    ]);
    let kdir = w.state_dir.join("kube");
    std::fs::create_dir_all(&kdir).unwrap();
    let pki = Pki::new(VIP);
    let token_file = kdir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let kubeconfig = kdir.join("kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &format!("https://{VIP}:443"),
        &pki.ca_pem,
        Some(&token_file),
        None,
    );
    let api = FakeApi::start(
        &w.node,
        format!("{VIP}:443").parse().unwrap(),
        &pki,
        TOKEN,
        cluster(&["10.42.1.0/24"]),
    );
    api.set_mode(mode);
    (Env { w, kubeconfig }, api)
}

impl Env {
    fn conf(&self, kube: Value) -> Value {
        let mut c = self.w.conf(
            "1.1.0",
            json!({"ranges": [[{"subnet": "usePodCidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}),
        );
        c["logLevel"] = json!("info");
        c["kubernetes"] =
            json!({"kubeconfig": self.kubeconfig, "nodeName": "node-a", "refreshSeconds": 0});
        if let Value::Object(m) = kube {
            for (k, v) in m {
                c["kubernetes"][k] = v;
            }
        }
        c
    }

    /// A cache written `age` seconds ago, naming no real endpoint (only the VIP is asked).
    fn seed_cache(&self, age: u64, cidrs: &[&str]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        std::fs::create_dir_all(&self.w.state_dir).unwrap();
        let v = json!({"version": 1, "nodeName": "node-a", "nodeUid": "uid-old", "podCIDRs": cidrs,
                       "apiEndpoints": [], "fetchedUnix": now - age, "fetchedFrom": "seed"});
        std::fs::write(self.w.state_dir.join("cluster-info.json"), v.to_string()).unwrap();
    }

    /// An ADD started in the background, as a runtime would (the child is holdfast itself:
    /// `ip netns exec` execs it).
    fn spawn_add(&self, cid: &str, pod: &str, conf: &Value) -> Child {
        let mut c = plugin_command(
            &["ip", "netns", "exec", &self.w.node, BIN],
            "ADD",
            &[
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", pod),
                ("CNI_IFNAME", "eth0"),
            ],
        );
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child
    }

    fn counter(&self, name: &str) -> u64 {
        std::fs::metadata(self.w.state_dir.join("counters").join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn del_all(&self, pods: &[(String, String)], conf: &Value) {
        for (cid, pod) in pods {
            self.w.cni("DEL", cid, pod, "eth0", conf).ok();
        }
    }
}

/// Waits for ADDs to end, each on a thread of its own: each one's run and how long it took
/// from `t0` to its own end.
fn finish(children: Vec<Child>, t0: Instant) -> Vec<(Run, Duration)> {
    let waiting: Vec<_> = children
        .into_iter()
        .map(|child| {
            std::thread::spawn(move || {
                let out = child.wait_with_output().unwrap();
                let took = t0.elapsed();
                let run = Run {
                    code: out.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                };
                (run, took)
            })
        })
        .collect();
    waiting.into_iter().map(|t| t.join().unwrap()).collect()
}

/// A generous ceiling: only a wait on the API (the failure) comes near it.
fn bounded(what: &str, took: Duration, ceiling_ms: u64) {
    assert!(
        took < Duration::from_millis(ceiling_ms),
        "{what} took {took:?}, over the {ceiling_ms} ms ceiling"
    );
}

/// Whether some process holds the probe lock right now (a prober is asking).
fn probe_lock_held(state_dir: &std::path::Path) -> bool {
    let Ok(f) = std::fs::File::open(state_dir.join("api-probe.lock")) else {
        return false;
    };
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Polls `cond` every 20 ms for `secs` at most.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {secs}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` has a thread blocked waiting for a lock (state/lock.rs names it).
fn waits_on_a_lock(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "lock-wait")
            })
        })
        .unwrap_or(false)
}

#[test]
#[ignore = "needs root"]
fn a_wave_with_a_stale_cache_and_a_hanging_api_costs_one_wait() {
    let (mut e, api) = setup("a_wave_with_a_stale_cache", Mode::Hang);
    e.seed_cache(300, &["10.42.5.0/24"]);
    let timeout = 4000;
    let conf = e.conf(json!({"timeoutMs": timeout, "outageHoldSeconds": 60}));
    let pods: Vec<(String, String)> = (0..8).map(|i| (format!("c{i}"), e.w.pod())).collect();
    let t0 = Instant::now();
    let children: Vec<Child> = pods
        .iter()
        .map(|(cid, pod)| e.spawn_add(cid, pod, &conf))
        .collect();
    let runs = finish(children, t0);
    let mut waited = 0;
    for (r, took) in &runs {
        assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
        let ip = r.json()["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.42.5."), "the cache's podCIDR: {ip}");
        if r.stderr.contains("Kubernetes API unreachable") && !r.stderr.contains("outageHold") {
            waited += 1;
            bounded("the prober", *took, timeout + 5000);
        } else {
            // Took the cache at once: another was asking, or the outage was already known.
            bounded("an ADD that did not probe", *took, timeout);
        }
    }
    assert_eq!(waited, 1, "exactly one ADD waits on the API: {runs:#?}");
    // One probe: the Node and the apiserver's endpoints, asked together.
    assert_eq!(api.requests(), 2, "one probe reached the API");
    assert_eq!(e.counter("add-asked"), 1);
    assert_eq!(e.counter("add-cache"), 8);
    let h: Value =
        serde_json::from_slice(&std::fs::read(e.w.state_dir.join("api-health.json")).unwrap())
            .unwrap();
    assert_eq!(h["servers"][format!("{VIP}:443")]["state"], "unreachable");
    e.del_all(&pods, &conf);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn without_a_cache_the_wave_waits_for_the_one_answer() {
    let (mut e, api) = setup("without_a_cache_the_wave_waits", Mode::Hang);
    let timeout = 2000;
    let conf = e.conf(json!({"timeoutMs": timeout}));
    let pods: Vec<(String, String)> = (0..6).map(|i| (format!("c{i}"), e.w.pod())).collect();
    let t0 = Instant::now();
    let children: Vec<Child> = pods
        .iter()
        .map(|(cid, pod)| e.spawn_add(cid, pod, &conf))
        .collect();
    let runs = finish(children, t0);
    for (r, took) in &runs {
        // Each is bounded by its own timeoutMs (a hang is the failure), and they all tell the
        // prober's one answer: the VIP did not answer.
        bounded("an ADD without a cache", *took, timeout + 5000);
        r.err(11, &format!("{VIP}:443"));
    }
    // One probe (the Node and the apiserver's endpoints, asked together), not one per ADD.
    assert_eq!(api.requests(), 2, "one probe reached the API: {runs:#?}");
    assert_eq!(e.counter("add-asked"), 1);
    assert_eq!(e.counter("add-failed"), 6);
    e.del_all(&pods, &conf);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn a_prober_killed_mid_probe_never_blocks_the_others() {
    let (mut e, api) = setup("a_prober_killed_mid_probe", Mode::Hang);
    // Long enough that only the kill can end the prober's wait.
    let conf = e.conf(json!({"timeoutMs": 20000}));
    let pods: Vec<(String, String)> = (0..4).map(|i| (format!("c{i}"), e.w.pod())).collect();
    let mut prober = e.spawn_add(&pods[0].0, &pods[0].1, &conf);
    wait_until("the prober takes the lock", 20, || {
        probe_lock_held(&e.w.state_dir) && api.requests() >= 1
    });
    let t0 = Instant::now();
    let waiters: Vec<Child> = pods[1..]
        .iter()
        .map(|(cid, pod)| e.spawn_add(cid, pod, &conf))
        .collect();
    // No cache: each waits for the prober's answer.
    for w in &waiters {
        wait_until("an ADD waits for the prober", 20, || {
            waits_on_a_lock(w.id())
        });
    }
    api.set_mode(Mode::Answer);
    prober.kill().unwrap();
    let _ = prober.wait();
    for (r, took) in finish(waiters, t0) {
        let r = r.ok();
        let ip = r.json()["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.42.1."), "the API's answer: {ip}");
        // Far below the dead prober's 20 s: nobody waited for it.
        bounded("a waiter after the kill", took, 10_000);
    }
    // The killed ADD changed nothing; its DEL finds nothing to undo.
    e.del_all(&pods, &conf);
    e.w.assert_clean();
}

/// GET `path` from `addr` inside the netns `node`; (status, body).
fn http_get(node: &str, addr: &str, path: &str) -> (u16, String) {
    try_get(node, addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn try_get(node: &str, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let (node, addr, path) = (node.to_string(), addr.to_string(), path.to_string());
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{node}"))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
        Ok((code, body.to_string()))
    })
    .join()
    .unwrap()
}

/// The one sample of `name` whose labels contain every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    let found: Vec<f64> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in:\n{metrics}");
    found[0]
}

/// Kills the agent when the test ends, however it ends.
struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn the_agent_serves_every_metric_family_and_both_probes() {
    let (mut e, api) = setup("the_agent_serves_every_metric", Mode::Answer);
    let conf = e.conf(json!({"timeoutMs": 1000, "refreshSeconds": 3600, "outageHoldSeconds": 60}));
    let addr = "127.0.0.1:9473";
    let pods = one_add_of_each_outcome(&mut e, &api, &conf);

    let (_agent, conflist) = start_agent(&e, &conf, addr);
    let mut ready = (0, String::new());
    wait_until("the agent is ready", 30, || {
        ready = try_get(&e.w.node, addr, "/readyz").unwrap_or((0, String::new()));
        ready.0 == 200
    });
    assert!(ready.1.contains("cluster-info cache"), "{}", ready.1);
    assert!(
        ready.1.contains(&format!("api {VIP}:443 ok")),
        "{}",
        ready.1
    );
    let (code, body) = http_get(&e.w.node, addr, "/healthz");
    assert_eq!(code, 200, "{body}");

    assert_every_metric_family(&e.w.node, addr);

    assert_doctor_tells_the_same(&e, &conflist);
    drop(_agent);
    let left: Vec<(String, String)> = pods.into_iter().take(1).collect();
    e.del_all(&left, &conf);
    e.w.cni("DEL", "c1", "", "eth0", &conf).ok();
    e.w.assert_clean();
}

/// One ADD asks the API (fresh), one falls back to the cache, one fails, one loses its netns;
/// the reclaim journal names one reclaimed attachment. Returns the pods to delete at the end.
fn one_add_of_each_outcome(e: &mut Env, api: &FakeApi, conf: &Value) -> Vec<(String, String)> {
    e.seed_cache(7200, &["10.42.5.0/24"]);
    let mut pods = Vec::new();
    let p0 = e.w.pod();
    // With one hostPort (holdfast_hostports).
    let mut c0 = conf.clone();
    c0["runtimeConfig"] = json!({"portMappings": [{"hostPort": 18080, "containerPort": 80}]});
    e.w.cni("ADD", "c0", &p0, "eth0", &c0).ok();
    pods.push(("c0".to_string(), p0));
    api.set_mode(Mode::Status(500));
    e.seed_cache(7200, &["10.42.1.0/24"]);
    let p1 = e.w.pod();
    e.w.cni("ADD", "c1", &p1, "eth0", conf).ok();
    pods.push(("c1".to_string(), p1.clone()));
    e.w.cni("ADD", "c2", "/var/run/netns/no-such-netns", "eth0", conf);
    e.w.delete_pod(&p1);
    let journal = json!([{"unix": 1700000000u64, "network": "testnet", "containerId": "old",
                           "ifname": "eth0", "ips": ["10.42.1.9"], "why": "netns gone after a reboot"}]);
    std::fs::write(e.w.state_dir.join("reclaimed.json"), journal.to_string()).unwrap();
    api.set_mode(Mode::Answer);
    pods
}

/// The agent on `addr` in the node netns, with a conflist around `conf`; and that conflist.
fn start_agent(e: &Env, conf: &Value, addr: &str) -> (Agent, std::path::PathBuf) {
    let list = json!({"cniVersion": "1.1.0", "name": "testnet", "plugins": [{
        "type": "holdfast", "stateDir": e.w.state_dir, "logLevel": "info", "ipam": conf["ipam"],
        "kubernetes": conf["kubernetes"]}]});
    let conflist = e.w.state_dir.join("kube/holdfast.conflist");
    std::fs::write(&conflist, list.to_string()).unwrap();
    let agent = std::process::Command::new("ip")
        .args(["netns", "exec", &e.w.node, BIN, "agent", "--conf"])
        .arg(&conflist)
        .args(["--sa-dir", "/nonexistent", "--metrics-addr", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Agent(agent), conflist)
}

/// Every metric family the agent serves, with the values the ADDs above leave.
fn assert_every_metric_family(node: &str, addr: &str) {
    let (code, m) = http_get(node, addr, "/metrics");
    assert_eq!(code, 200, "{m}");
    assert_eq!(sample(&m, "holdfast_build_info", &["version=\""]), 1.0);
    assert_eq!(sample(&m, "holdfast_cluster_info_usable", &[]), 1.0);
    assert!(sample(&m, "holdfast_cluster_info_age_seconds", &[]) < 600.0);
    let vip = format!("server=\"{VIP}:443\"");
    assert_eq!(
        sample(&m, "holdfast_api_server_state", &[&vip, "state=\"ok\""]),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "holdfast_api_server_state",
            &[&vip, "state=\"failing\""]
        ),
        0.0
    );
    assert!(
        sample(
            &m,
            "holdfast_api_server_state_since_timestamp_seconds",
            &[&vip]
        ) > 0.0
    );
    assert!(sample(&m, "holdfast_api_server_checked_timestamp_seconds", &[&vip]) > 0.0);
    assert_eq!(
        sample(&m, "holdfast_cni_adds_total", &["outcome=\"fresh\""]),
        1.0
    );
    assert_eq!(
        sample(&m, "holdfast_cni_adds_total", &["outcome=\"cache\""]),
        1.0
    );
    assert_eq!(
        sample(&m, "holdfast_cni_adds_total", &["outcome=\"failed\""]),
        1.0
    );
    assert_eq!(sample(&m, "holdfast_cni_add_api_probes_total", &[]), 2.0);
    assert_eq!(
        sample(&m, "holdfast_ipam_addresses_used", &["10.42.1.0/24"]),
        2.0
    );
    assert!(sample(&m, "holdfast_ipam_addresses_capacity", &["10.42.1.0/24"]) > 200.0);
    assert_eq!(sample(&m, "holdfast_attachments", &["state=\"live\""]), 1.0);
    assert_eq!(
        sample(&m, "holdfast_attachments", &["state=\"netns_gone\""]),
        1.0
    );
    assert_eq!(sample(&m, "holdfast_attachments_reclaimed", &[]), 1.0);
    assert_eq!(sample(&m, "holdfast_hostports", &[]), 1.0);
    assert_eq!(
        sample(
            &m,
            "holdfast_attachments_last_reclaim_timestamp_seconds",
            &[]
        ),
        1700000000.0
    );
    assert!(
        sample(
            &m,
            "holdfast_agent_api_requests_total",
            &[&vip, "outcome=\"ok\""]
        ) >= 1.0
    );
    assert!(
        sample(
            &m,
            "holdfast_agent_api_request_duration_seconds_count",
            &[&vip]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(http_get(node, addr, "/nothing").0, 404);
}

/// `doctor` tells what the metrics tell.
fn assert_doctor_tells_the_same(e: &Env, conflist: &std::path::Path) {
    let out = e.w.in_node(&[
        BIN,
        "doctor",
        "--conf",
        conflist.to_str().unwrap(),
        "--json",
    ]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        j["adds"],
        json!({"fresh": 1, "cache": 1, "failed": 1, "asked": 2}),
        "{j}"
    );
    let out =
        e.w.in_node(&[BIN, "doctor", "--conf", conflist.to_str().unwrap()]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains(
            "adds        1 fresh from the API, 1 from the cache, 1 failed; 2 asked the API"
        ),
        "{human}"
    );
    assert!(
        human.contains("attachments 2 (1 live, 1 whose netns is gone), 1 reclaimed"),
        "{human}"
    );
}
