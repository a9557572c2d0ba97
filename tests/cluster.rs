//! Cluster info and the API fallback (SPEC §7), against a fake HTTPS API inside each test's node
//! netns: the VIP 10.43.0.1:443 and a "real" apiserver endpoint 10.44.0.5:443.

mod common;
use common::fakeapi::{Cluster, FakeApi, Mode, Pki, write_kubeconfig, write_kubeconfig_exec};
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;

const VIP: &str = "10.43.0.1";
const REAL: &str = "10.44.0.5";
const TOKEN: &str = "s3cr3t-bearer-token-0123456789";

enum Vip {
    Serve,
    Refuse,
    BlackHole,
}

struct Env {
    w: World,
    pki: Pki,
    kubeconfig: PathBuf,
    token_file: PathBuf,
    vip: Option<FakeApi>,
}

fn cluster(cidrs: &[&str], slices: bool) -> Cluster {
    Cluster {
        node: "node-a".into(),
        node_uid: "uid-node-a".into(),
        pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        endpoints: vec![format!("{REAL}:443").parse().unwrap()],
        endpoint_slices: slices,
    }
}

fn setup(test: &str, vip: Vip) -> Option<Env> {
    let w = World::new(test);
    let mut w = w;
    ip(&[
        "-n",
        &w.node,
        "addr",
        "add",
        &format!("{REAL}/32"),
        "dev",
        "lo",
    ]);
    match vip {
        Vip::Serve | Vip::Refuse => {
            ip(&[
                "-n",
                &w.node,
                "addr",
                "add",
                &format!("{VIP}/32"),
                "dev",
                "lo",
            ]);
        }
        Vip::BlackHole => {
            // No dummy driver here: an ifb drops whatever is routed into it, so a connect to the
            // VIP times out exactly like the incident's.
            ip(&["-n", &w.node, "link", "add", "bh0", "type", "ifb"]);
            ip(&["-n", &w.node, "link", "set", "bh0", "up"]);
            ip(&[
                "-n",
                &w.node,
                "route",
                "add",
                &format!("{VIP}/32"),
                "dev",
                "bh0",
            ]);
            w.fixtures.push("bh0".into());
        }
    }
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
    let vip = match vip {
        Vip::Serve => Some(FakeApi::start(
            &w.node,
            format!("{VIP}:443").parse().unwrap(),
            &pki,
            TOKEN,
            cluster(&["10.42.1.0/24"], true),
        )),
        _ => None,
    };
    Some(Env {
        w,
        pki,
        kubeconfig,
        token_file,
        vip,
    })
}

impl Env {
    fn conf(&self, extra: Value) -> Value {
        let mut c = self.w.conf(
            "1.1.0",
            json!({"ranges": [[{"subnet": "usePodCidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}),
        );
        c["kubernetes"] = json!({"kubeconfig": self.kubeconfig, "nodeName": "node-a", "timeoutMs": 500, "refreshSeconds": 60});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                c["kubernetes"][k] = v;
            }
        }
        c
    }

    /// The fake API on the apiserver's "real" address, with this node's podCIDRs.
    fn start_real(&self, cidrs: &[&str]) -> FakeApi {
        let addr = format!("{REAL}:443").parse().unwrap();
        FakeApi::start(&self.w.node, addr, &self.pki, TOKEN, cluster(cidrs, true))
    }

    fn cache_path(&self) -> PathBuf {
        self.w.state_dir.join("cluster-info.json")
    }

    fn cache(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.cache_path()).unwrap()).unwrap()
    }

    /// A cache written `age` seconds ago.
    fn seed_cache(&self, age: u64, cidrs: &[&str], endpoints: &[&str], node: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        std::fs::create_dir_all(&self.w.state_dir).unwrap();
        let v = json!({"version": 1, "nodeName": node, "nodeUid": "uid-old", "podCIDRs": cidrs,
                       "apiEndpoints": endpoints, "fetchedUnix": now - age, "fetchedFrom": "seed"});
        std::fs::write(self.cache_path(), v.to_string()).unwrap();
    }

    fn add(&mut self, cid: &str, conf: &Value) -> (String, Run) {
        let pod = self.w.pod();
        let r = self.w.cni("ADD", cid, &pod, "eth0", conf);
        (pod, r)
    }

    /// `conf` written as a conflist (as on a node), for the subcommands' `--conf`.
    fn conflist(&self, conf: &Value) -> String {
        let path = self.w.state_dir.join("kube/holdfast.conflist");
        let mut plugin = conf.clone();
        plugin.as_object_mut().unwrap().remove("name");
        plugin.as_object_mut().unwrap().remove("cniVersion");
        let list = json!({"cniVersion": "1.1.0", "name": "testnet", "plugins": [plugin]});
        std::fs::write(&path, list.to_string()).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn sync(&self, conf: &Value) -> Run {
        let path = self.conflist(conf);
        let out = self.w.in_node(&[BIN, "sync", "--conf", &path]);
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn warnings(r: &Run) -> Vec<&str> {
    r.stderr.lines().filter(|l| l.contains("WARN")).collect()
}

fn first_ip(r: &Value) -> String {
    r["ips"][0]["address"].as_str().unwrap().to_string()
}

#[test]
#[ignore = "needs root"]
fn fresh_cache_makes_no_request_and_del_check_gc_never_do() {
    let Some(mut e) = setup("fresh_cache_makes_no_request", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    api.set_pod_cidrs(&["10.42.1.0/24", "fd42:1::/64"]);
    let conf = e.conf(json!({}));
    let (p0, r0) = e.add("c0", &conf);
    let r0 = r0.ok().json();
    assert!(first_ip(&r0).starts_with("10.42.1."), "{r0}");
    assert!(
        r0["ips"][1]["address"]
            .as_str()
            .unwrap()
            .starts_with("fd42:1::"),
        "{r0}"
    );
    let after_first = api.requests();
    assert!(after_first >= 1, "the first ADD had no cache and must ask");
    let cache = e.cache();
    assert_eq!(cache["fetchedFrom"], format!("{VIP}:443"));
    assert_eq!(cache["podCIDRs"], json!(["10.42.1.0/24", "fd42:1::/64"]));
    assert_eq!(cache["apiEndpoints"], json!([format!("{REAL}:443")]));
    assert_eq!(cache["nodeUid"], "uid-node-a");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(e.cache_path()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let (p1, r1) = e.add("c1", &conf);
    let r1 = r1.ok().json();
    assert_eq!(
        api.requests(),
        after_first,
        "a fresh cache must not cause a request"
    );

    let with = with_prev(&conf, &r1);
    e.w.cni("CHECK", "c1", &p1, "eth0", &with).ok();
    e.w.cni("DEL", "c1", &p1, "eth0", &with).ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c0", "ifname": "eth0"}]);
    e.w.cni_env("GC", &gc, &[]).ok();
    e.w.cni("DEL", "c0", &p0, "eth0", &conf).ok();
    assert_eq!(
        api.requests(),
        after_first,
        "DEL, CHECK and GC must never contact the API"
    );

    // A stale cache (refreshSeconds 0) asks again.
    let stale = e.conf(json!({"refreshSeconds": 0}));
    let (p2, r2) = e.add("c2", &stale);
    r2.ok();
    assert!(api.requests() > after_first);
    e.w.cni("DEL", "c2", &p2, "eth0", &conf).ok();
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn black_holed_vip_is_bypassed_through_the_real_endpoint() {
    let Some(mut e) = setup("black_holed_vip_is_bypassed", Vip::BlackHole) else {
        return;
    };
    // The real apiserver's certificate has no SAN for its own address: TLS must be verified
    // against the VIP's name.
    let real = e.start_real(&["10.42.7.0/24"]);
    e.seed_cache(1000, &["10.42.9.0/24"], &[&format!("{REAL}:443")], "node-a");
    let conf = e.conf(json!({}));
    let (pod, r) = e.add("c0", &conf);
    let r = r.ok();
    assert!(
        first_ip(&r.json()).starts_with("10.42.7."),
        "fresh info from the real endpoint: {}",
        r.stdout
    );
    assert!(
        warnings(&r).is_empty(),
        "a good answer is not a fallback: {}",
        r.stderr
    );
    assert!(real.requests() >= 1);
    let cache = e.cache();
    assert_eq!(cache["fetchedFrom"], format!("{REAL}:443"));
    assert_eq!(cache["podCIDRs"], json!(["10.42.7.0/24"]));
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();
    e.w.assert_clean();
}

type Arrange = Box<dyn Fn(&FakeApi)>;

/// Each way the API can fail, and what the warning must say.
fn failure_cases() -> Vec<(&'static str, Arrange)> {
    vec![
        (
            "connected, but no response",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Hang)),
        ),
        (
            "HTTP 401",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Status(401))),
        ),
        (
            "HTTP 403",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Status(403))),
        ),
        (
            "HTTP 404",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Status(404))),
        ),
        (
            "HTTP 429",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Status(429))),
        ),
        (
            "HTTP 500",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Status(500))),
        ),
        (
            "malformed response",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Garbage)),
        ),
        // Bodies are read up to 4 MiB, not whole.
        (
            "response larger than 4 MiB",
            Box::new(|a: &FakeApi| a.set_mode(Mode::Huge(6 << 20))),
        ),
        (
            "has no podCIDRs",
            Box::new(|a: &FakeApi| {
                a.set_mode(Mode::Answer);
                a.set_pod_cidrs(&[]);
            }),
        ),
        (
            "HTTP 401",
            Box::new(|a: &FakeApi| {
                a.set_pod_cidrs(&["10.42.1.0/24"]);
                a.set_token("another-token");
            }),
        ),
    ]
}

#[test]
#[ignore = "needs root"]
fn every_api_failure_falls_back_to_the_cache() {
    let Some(mut e) = setup("every_api_failure_falls_back", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    // Every case must reach the API: no hold after the previous case's failure.
    let conf = e.conf(json!({"outageHoldSeconds": 0}));
    let cases = failure_cases();
    for (i, (needle, arrange)) in cases.iter().enumerate() {
        arrange(&api);
        e.seed_cache(300, &["10.42.5.0/24"], &[], "node-a");
        let before = api.requests();
        let (pod, r) = e.add(&format!("c{i}"), &conf);
        let r = r.ok();
        assert!(
            first_ip(&r.json()).starts_with("10.42.5."),
            "case {needle}: {}",
            r.stdout
        );
        assert!(
            api.requests() > before,
            "case {needle}: the API was not asked"
        );
        // One request per resource at most (node, EndpointSlices, Endpoints on a 404): no retries.
        assert!(
            api.requests() - before <= 3,
            "case {needle}: client retried ({} requests)",
            api.requests() - before
        );
        let w = warnings(&r);
        assert_eq!(
            w.len(),
            1,
            "case {needle}: want one warning, got {}",
            r.stderr
        );
        assert!(w[0].contains(needle), "case {needle}: {}", w[0]);
        assert!(w[0].contains(&format!("{VIP}:443")), "{}", w[0]);
        assert!(
            w[0].contains("cached 300s ago") || w[0].contains("cached 301s ago"),
            "{}",
            w[0]
        );
        e.w.cni("DEL", &format!("c{i}"), &pod, "eth0", &conf).ok();
    }
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn refused_and_untrusted_apis_fall_back_too() {
    let Some(mut e) = setup("refused_and_untrusted_apis_fall_back", Vip::Refuse) else {
        return;
    };
    let conf = e.conf(json!({"outageHoldSeconds": 0}));
    e.seed_cache(120, &["10.42.5.0/24"], &[], "node-a");
    let (pod, r) = e.add("c0", &conf);
    let r = r.ok();
    assert!(
        warnings(&r)[0].contains(&format!("{VIP}:443: connection refused")),
        "{}",
        r.stderr
    );
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();

    // A server whose certificate is not signed by the kubeconfig's CA.
    let other = Pki::new(VIP);
    let _api = FakeApi::start(
        &e.w.node,
        format!("{VIP}:443").parse().unwrap(),
        &other,
        TOKEN,
        cluster(&["10.42.1.0/24"], true),
    );
    let (pod, r) = e.add("c1", &conf);
    let r = r.ok();
    assert!(first_ip(&r.json()).starts_with("10.42.5."));
    assert!(warnings(&r)[0].contains("TLS"), "{}", r.stderr);
    e.w.cni("DEL", "c1", &pod, "eth0", &conf).ok();
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn no_usable_cache_fails_with_11_and_leaves_nothing() {
    let Some(mut e) = setup("no_usable_cache_fails_with_11", Vip::BlackHole) else {
        return;
    };
    let conf = e.conf(json!({}));
    let (_, r) = e.add("c0", &conf);
    r.err(11, &format!("{VIP}:443: connect timed out"));
    e.w.assert_clean();
    assert!(!e.cache_path().exists());

    // maxStaleSeconds bounds how old a cache may be.
    e.seed_cache(100, &["10.42.5.0/24"], &[], "node-a");
    let (_, r) = e.add("c1", &e.conf(json!({"maxStaleSeconds": 50})));
    r.err(11, "maxStaleSeconds");
    e.w.assert_clean();
    let (pod, r) = e.add("c2", &e.conf(json!({"maxStaleSeconds": 500})));
    r.ok();
    e.w.cni("DEL", "c2", &pod, "eth0", &conf).ok();

    // A cache of another node is no cache.
    e.seed_cache(10, &["10.42.5.0/24"], &[], "node-b");
    let (_, r) = e.add("c3", &e.conf(json!({"refreshSeconds": 3600})));
    let j = r.err(11, "no cached cluster info");
    assert!(r.stderr.contains("node-b"), "{j} {}", r.stderr);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn corrupt_cache_is_reported_and_replaced() {
    let Some(mut e) = setup("corrupt_cache_is_reported_and_replaced", Vip::Serve) else {
        return;
    };
    let conf = e.conf(json!({}));
    std::fs::create_dir_all(&e.w.state_dir).unwrap();
    std::fs::write(e.cache_path(), "{\"version\": 1, \"nodeName\": ").unwrap();
    let (pod, r) = e.add("c0", &conf);
    let r = r.ok();
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    assert_eq!(e.cache()["podCIDRs"], json!(["10.42.1.0/24"]));
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();

    // A cache that cannot be written never fails ADD.
    std::fs::remove_file(e.cache_path()).unwrap();
    std::fs::create_dir(e.cache_path()).unwrap();
    let (pod, r) = e.add("c1", &conf);
    let r = r.ok();
    assert!(
        r.stderr.contains("could not write the cluster-info cache"),
        "{}",
        r.stderr
    );
    e.w.cni("DEL", "c1", &pod, "eth0", &conf).ok();
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn rotated_token_file_is_read_on_every_run_and_never_logged() {
    let Some(mut e) = setup("rotated_token_file_is_read_on_every_run", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    let mut conf = e.conf(json!({"refreshSeconds": 0}));
    conf["logLevel"] = json!("trace");
    let (p0, r) = e.add("c0", &conf);
    let r = r.ok();
    let auth0 = api.authorized();
    assert!(auth0 >= 1);
    api.set_token("rotated-token-ABCDEFG");
    std::fs::write(&e.token_file, "rotated-token-ABCDEFG").unwrap();
    let (p1, r1) = e.add("c1", &conf);
    let r1 = r1.ok();
    assert!(api.authorized() > auth0, "the rotated token was not used");
    assert!(warnings(&r1).is_empty(), "{}", r1.stderr);
    for out in [&r.stdout, &r.stderr, &r1.stdout, &r1.stderr] {
        assert!(
            !out.contains(TOKEN) && !out.contains("rotated-token-ABCDEFG"),
            "token leaked: {out}"
        );
    }
    // A rejected token: still not in logs or errors.
    api.set_token("something-else");
    let (p2, r2) = e.add("c2", &conf);
    let r2 = r2.ok();
    assert!(
        !r2.stderr.contains("rotated-token-ABCDEFG"),
        "{}",
        r2.stderr
    );
    let s = e.sync(&conf);
    assert_eq!(s.code, 1);
    assert!(
        !s.stderr.contains("rotated-token-ABCDEFG") && !s.stdout.contains("rotated-token-ABCDEFG")
    );
    for (c, p) in [("c0", &p0), ("c1", &p1), ("c2", &p2)] {
        e.w.cni("DEL", c, p, "eth0", &conf).ok();
    }
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn client_certificates_authenticate() {
    let Some(mut e) = setup("client_certificates_authenticate", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    api.set_token("no-token-will-match");
    let (cert, key) = e.pki.client_cert("system:node:node-a");
    write_kubeconfig(
        &e.kubeconfig,
        &format!("https://{VIP}:443"),
        &e.pki.ca_pem,
        None,
        Some((&cert, &key)),
    );
    let conf = e.conf(json!({}));
    let (pod, r) = e.add("c0", &conf);
    let r = r.ok();
    assert!(warnings(&r).is_empty(), "{}", r.stderr);
    assert!(api.authorized() >= 1);
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn the_apiserver_endpoints_are_read_by_name_under_least_privilege_rbac() {
    let Some(e) = setup("endpoints_by_name", Vip::Refuse) else {
        return;
    };
    // The fake forbids listing EndpointSlices, as the shipped Role (get of `kubernetes` only)
    // makes a real apiserver do.
    let _api = FakeApi::start(
        &e.w.node,
        format!("{VIP}:443").parse().unwrap(),
        &e.pki,
        TOKEN,
        cluster(&["10.42.3.0/24"], true),
    );
    let r = e.sync(&e.conf(json!({})));
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(e.cache()["apiEndpoints"], json!([format!("{REAL}:443")]));
}

#[test]
#[ignore = "needs root"]
fn sync_reports_what_it_fetched_and_old_apiservers_use_endpoints() {
    let Some(e) = setup("sync_reports_what_it_fetched", Vip::Refuse) else {
        return;
    };
    // An apiserver without discovery.k8s.io/v1 (1.20): core Endpoints instead.
    let _api = FakeApi::start(
        &e.w.node,
        format!("{VIP}:443").parse().unwrap(),
        &e.pki,
        TOKEN,
        cluster(&["10.42.3.0/24"], false),
    );
    let conf = e.conf(json!({}));
    let r = e.sync(&conf);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("fetched from {VIP}:443")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("podCIDRs [10.42.3.0/24]"), "{}", r.stdout);
    assert_eq!(e.cache()["apiEndpoints"], json!([format!("{REAL}:443")]));
    assert_eq!(e.health()["servers"][format!("{VIP}:443")]["state"], "ok");
    drop(_api);
    let r = e.sync(&conf);
    assert_eq!(r.code, 1);
    // sync asks every server whatever is remembered, and remembers what they did.
    let h = e.health();
    assert_eq!(
        h["servers"][format!("{VIP}:443")]["state"],
        "unreachable",
        "{h}"
    );
    assert_eq!(
        h["servers"][format!("{REAL}:443")]["state"],
        "unreachable",
        "{h}"
    );
    assert!(
        r.stderr.contains(&format!("{VIP}:443: connection refused")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("{REAL}:443: connection refused")),
        "{}",
        r.stderr
    );
}

#[test]
#[ignore = "needs root"]
fn delegated_ipam_gets_the_pod_cidr_and_del_needs_no_api() {
    let Some(mut e) = setup("delegated_ipam_gets_the_pod_cidr", Vip::Serve) else {
        return;
    };
    // Debian's host-local 1.1.1 speaks CNI up to 1.0.0.
    let mut conf = e.conf(json!({}));
    conf["cniVersion"] = json!("1.0.0");
    let data = e.w.state_dir.join("host-local");
    conf["ipam"] =
        json!({"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "usePodCidr"}]]});
    let (pod, r) = e.add("c0", &conf);
    let r = r.ok().json();
    assert!(first_ip(&r).starts_with("10.42.1."), "{r}");
    assert!(
        data.join("testnet")
            .join(first_ip(&r).split('/').next().unwrap())
            .exists()
    );
    drop(e.vip.take());
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();
    assert!(
        !data
            .join("testnet")
            .join(first_ip(&r).split('/').next().unwrap())
            .exists()
    );
    e.w.assert_clean();
}

fn doctor(e: &Env, conf: &Value) -> (i32, Value, String) {
    let path = e.conflist(conf);
    let p = path.as_str();
    let j = e.w.in_node(&[BIN, "doctor", "--conf", p, "--json"]);
    let human = e.w.in_node(&[BIN, "doctor", "--conf", p]);
    assert_eq!(j.status.code(), human.status.code());
    (
        j.status.code().unwrap_or(-1),
        serde_json::from_slice(&j.stdout).unwrap_or_else(|err| {
            panic!(
                "doctor --json: {err}: {}",
                String::from_utf8_lossy(&j.stdout)
            )
        }),
        String::from_utf8_lossy(&human.stdout).into_owned(),
    )
}

/// What ADD acts on: the VIP remembered as not answering (the endpoint won after the head
/// start), the endpoint as ok, each with since when.
fn assert_remembered_vip_down(j: &Value, human: &str) {
    let health = j["apiHealth"].as_array().unwrap();
    let vip = health
        .iter()
        .find(|h| h["server"] == format!("{VIP}:443"))
        .unwrap();
    assert_eq!(vip["state"], "unreachable", "{j}");
    assert!(vip["sinceSeconds"].as_u64().is_some(), "{j}");
    let ep = health
        .iter()
        .find(|h| h["server"] == format!("{REAL}:443"))
        .unwrap();
    assert_eq!(ep["state"], "ok", "{j}");
    assert!(human.contains(&format!("remembered  {VIP}:443")), "{human}");
    assert!(human.contains("unreachable for "), "{human}");
}

#[test]
#[ignore = "needs root"]
fn doctor_reports_api_paths_cache_usage_and_leftovers() {
    let Some(mut e) = setup(
        "doctor_reports_api_paths_cache_usage_and_leftovers",
        Vip::BlackHole,
    ) else {
        return;
    };
    let real = e.start_real(&["10.42.8.0/29"]);
    e.seed_cache(1000, &["10.42.9.0/24"], &[&format!("{REAL}:443")], "node-a");
    let conf = e.conf(json!({}));

    // Healthy apart from the black-holed VIP: the real endpoint answers.
    let (pod, r) = e.add("c0", &conf);
    r.ok();
    let (code, j, human) = doctor(&e, &conf);
    assert_eq!(code, 1, "the VIP is down: attention");
    let api = j["api"].as_array().unwrap();
    assert_eq!(api[0]["server"], format!("{VIP}:443"));
    assert_eq!(api[0]["via"], "kubeconfig");
    assert_eq!(api[0]["ok"], false);
    assert!(
        api[0]["error"]
            .as_str()
            .unwrap()
            .contains("connect timed out"),
        "{j}"
    );
    assert_eq!(api[1]["server"], format!("{REAL}:443"));
    assert_eq!(api[1]["ok"], true, "{j}");
    assert_eq!(j["cache"]["usable"], true);
    assert_eq!(j["cache"]["info"]["podCIDRs"], json!(["10.42.8.0/29"]));
    assert_eq!(j["ipam"][0]["used"], 1);
    assert_eq!(j["ipam"][0]["capacity"], 5);
    assert_eq!(j["attachments"], 1);
    assert!(human.contains("FAILED: connect timed out"), "{human}");
    assert!(human.contains("1 thing(s) need attention"), "{human}");
    assert_remembered_vip_down(&j, &human);

    // Leftovers: a pod netns gone without DEL, a stray host link, a lease without record.
    e.w.delete_pod(&pod);
    ip(&[
        "-n",
        &e.w.node,
        "link",
        "add",
        "hf00000000000",
        "type",
        "ifb",
    ]);
    std::fs::write(
        e.w.state_dir.join("ipam/testnet/10.42.8.6"),
        "crashed\r\neth0",
    )
    .unwrap();
    drop(real);
    let (code, j, _) = doctor(&e, &conf);
    assert_eq!(code, 1);
    assert_eq!(j["attachmentsNetnsGone"][0]["containerID"], "c0");
    assert_eq!(j["orphanLinks"], json!(["hf00000000000"]));
    assert_eq!(j["orphanLeases"], json!(["10.42.8.6"]));
    assert_eq!(j["api"][1]["ok"], false);
    let attention = j["attention"].as_array().unwrap();
    assert!(attention.len() >= 5, "{j}");
    ip(&["-n", &e.w.node, "link", "del", "hf00000000000"]);
    e.w.cni_env(
        "DEL",
        &conf,
        &[("CNI_CONTAINERID", "c0"), ("CNI_IFNAME", "eth0")],
    )
    .ok();
    std::fs::remove_file(e.w.state_dir.join("ipam/testnet/10.42.8.6")).unwrap();
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn doctor_is_quiet_when_all_is_well() {
    let Some(mut e) = setup("doctor_is_quiet_when_all_is_well", Vip::Serve) else {
        return;
    };
    let _real = e.start_real(&["10.42.1.0/24"]);
    let conf = e.conf(json!({}));
    let (pod, r) = e.add("c0", &conf);
    r.ok();
    let (code, j, human) = doctor(&e, &conf);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["attention"], json!([]));
    assert!(human.contains("all well"), "{human}");
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();
}

// ---- An outage is remembered (issue 10) ----

impl Env {
    /// Makes `addr` drop everything sent to it, so a connect times out, as in the incident.
    fn black_hole(&mut self, addr: &str) {
        if !self.w.fixtures.iter().any(|f| f == "bh0") {
            ip(&["-n", &self.w.node, "link", "add", "bh0", "type", "ifb"]);
            ip(&["-n", &self.w.node, "link", "set", "bh0", "up"]);
            self.w.fixtures.push("bh0".into());
        }
        let a = format!("{addr}/32");
        try_ip(&["-n", &self.w.node, "addr", "del", &a, "dev", "lo"]);
        ip(&["-n", &self.w.node, "route", "add", &a, "dev", "bh0"]);
    }

    /// Undoes `black_hole`: `addr` is served on the node's loopback again.
    fn restore(&self, addr: &str) {
        let a = format!("{addr}/32");
        ip(&["-n", &self.w.node, "route", "del", &a, "dev", "bh0"]);
        ip(&["-n", &self.w.node, "addr", "add", &a, "dev", "lo"]);
    }

    fn health(&self) -> Value {
        let p = self.w.state_dir.join("api-health.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn timed_add(&mut self, cid: &str, conf: &Value) -> (String, Run, std::time::Duration) {
        let pod = self.w.pod();
        let t = std::time::Instant::now();
        let r = self.w.cni("ADD", cid, &pod, "eth0", conf);
        (pod, r, t.elapsed())
    }

    fn del_all(&self, pods: &[(String, String)], conf: &Value) {
        for (cid, pod) in pods {
            self.w.cni("DEL", cid, pod, "eth0", conf).ok();
        }
    }
}

/// A generous ceiling: only a hang (or a wait for the API it already knows is gone) exceeds it.
fn bounded(what: &str, took: std::time::Duration, ceiling_ms: u64) {
    assert!(
        took < std::time::Duration::from_millis(ceiling_ms),
        "{what} took {took:?}, over the {ceiling_ms} ms ceiling"
    );
}

#[test]
#[ignore = "needs root"]
fn an_outage_costs_the_first_add_its_wait_not_the_others() {
    let Some(mut e) = setup("an_outage_costs_the_first_add", Vip::BlackHole) else {
        return;
    };
    e.black_hole(REAL);
    e.seed_cache(300, &["10.42.5.0/24"], &[&format!("{REAL}:443")], "node-a");
    let mut conf = e.conf(json!({"timeoutMs": 3000, "refreshSeconds": 0, "outageHoldSeconds": 60}));
    // Even at debug, a fallback is one WARN and no ERROR line from the HTTP client.
    conf["logLevel"] = json!("debug");
    let mut pods = Vec::new();
    for i in 0..8 {
        let cid = format!("c{i}");
        let (pod, r, took) = e.timed_add(&cid, &conf);
        let r = r.ok();
        assert!(first_ip(&r.json()).starts_with("10.42.5."), "{}", r.stdout);
        let w = warnings(&r);
        assert_eq!(w.len(), 1, "one warning per fallback: {}", r.stderr);
        assert!(!r.stderr.contains("ERROR"), "{}", r.stderr);
        assert!(
            w[0].contains(&format!("{VIP}:443: connect timed out")),
            "{}",
            w[0]
        );
        assert!(w[0].contains(&format!("{REAL}:443")), "{}", w[0]);
        assert!(w[0].contains("cached 30"), "{}", w[0]);
        if i == 0 {
            bounded("the first ADD", took, 3000 + 5000);
            assert!(!w[0].contains("outageHoldSeconds"), "{}", w[0]);
        } else {
            // Well under timeoutMs: this ADD did not wait for the API.
            bounded(&format!("ADD {i}"), took, 1500);
            assert!(
                w[0].contains("asked again after outageHoldSeconds 60"),
                "{}",
                w[0]
            );
        }
        pods.push((cid, pod));
    }
    let h = e.health();
    for s in [format!("{VIP}:443"), format!("{REAL}:443")] {
        assert_eq!(h["servers"][&s]["state"], "unreachable", "{h}");
        assert!(
            h["servers"][&s]["error"]
                .as_str()
                .unwrap()
                .contains("timed out"),
            "{h}"
        );
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(e.w.state_dir.join("api-health.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    e.del_all(&pods, &conf);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn a_dead_vip_is_skipped_for_the_endpoint_and_retried_after_the_hold() {
    let Some(mut e) = setup("a_dead_vip_is_skipped", Vip::Serve) else {
        return;
    };
    // Connected but never answering: like a black hole, and the fake counts what reaches it.
    let vip = e.vip.take().unwrap();
    vip.set_mode(Mode::Hang);
    let real = e.start_real(&["10.42.7.0/24"]);
    e.seed_cache(1000, &["10.42.9.0/24"], &[&format!("{REAL}:443")], "node-a");
    let conf = e.conf(json!({"timeoutMs": 2000, "refreshSeconds": 0, "outageHoldSeconds": 3}));
    let mut pods = Vec::new();
    let mut vip_asked = 0;
    for i in 0..8 {
        let cid = format!("c{i}");
        let before = real.requests();
        let (pod, r, took) = e.timed_add(&cid, &conf);
        let r = r.ok();
        assert!(
            first_ip(&r.json()).starts_with("10.42.7."),
            "fresh: {}",
            r.stdout
        );
        assert!(warnings(&r).is_empty(), "{}", r.stderr);
        assert!(real.requests() > before, "ADD {i} did not ask the endpoint");
        bounded(&format!("ADD {i}"), took, 2000 + 5000);
        pods.push((cid, pod));
        if i == 0 {
            vip_asked = vip.requests();
            assert!(vip_asked >= 1, "the first ADD asks the VIP");
        }
    }
    // Only the first ADD waited on the VIP; the seven after it went straight to the endpoint.
    assert_eq!(
        vip.requests(),
        vip_asked,
        "the VIP must be left alone within the hold"
    );
    let h = e.health();
    assert_eq!(
        h["servers"][format!("{VIP}:443")]["state"],
        "unreachable",
        "{h}"
    );
    assert_eq!(h["servers"][format!("{REAL}:443")]["state"], "ok", "{h}");
    assert_eq!(e.cache()["fetchedFrom"], format!("{REAL}:443"));

    // After the hold, one ADD asks the VIP again; a VIP that answers is used.
    std::thread::sleep(std::time::Duration::from_millis(3200));
    vip.set_mode(Mode::Answer);
    let (pod, r, _) = e.timed_add("c8", &conf);
    r.ok();
    pods.push(("c8".into(), pod));
    assert!(
        vip.requests() > vip_asked,
        "the VIP is asked again after the hold"
    );
    assert_eq!(e.cache()["fetchedFrom"], format!("{VIP}:443"));
    assert_eq!(e.health()["servers"][format!("{VIP}:443")]["state"], "ok");
    e.del_all(&pods, &conf);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn a_restored_api_is_used_again_once_the_hold_has_passed() {
    let Some(mut e) = setup("a_restored_api_is_used_again", Vip::BlackHole) else {
        return;
    };
    e.black_hole(REAL);
    e.seed_cache(300, &["10.42.5.0/24"], &[&format!("{REAL}:443")], "node-a");
    let hold = 2;
    let conf = e.conf(json!({"timeoutMs": 1000, "refreshSeconds": 0, "outageHoldSeconds": hold}));
    let mut pods = Vec::new();
    let (pod, r, _) = e.timed_add("c0", &conf);
    assert!(first_ip(&r.ok().json()).starts_with("10.42.5."));
    pods.push(("c0".to_string(), pod));

    e.restore(VIP);
    let api = FakeApi::start(
        &e.w.node,
        format!("{VIP}:443").parse().unwrap(),
        &e.pki,
        TOKEN,
        cluster(&["10.42.1.0/24"], true),
    );
    let restored = std::time::Instant::now();
    let mut fresh_after = None;
    for i in 1..60 {
        let cid = format!("c{i}");
        let (pod, r, _) = e.timed_add(&cid, &conf);
        let ip = first_ip(&r.ok().json());
        pods.push((cid, pod));
        if ip.starts_with("10.42.1.") {
            fresh_after = Some(restored.elapsed());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let took = fresh_after.expect("the restored API was never used again");
    bounded("using the restored API again", took, (hold + 5) * 1000);
    assert!(api.requests() >= 1);
    assert_eq!(e.health()["servers"][format!("{VIP}:443")]["state"], "ok");
    e.del_all(&pods, &conf);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn fifty_adds_at_a_cold_boot_with_the_api_gone_all_succeed_in_bound() {
    let Some(mut e) = setup("fifty_adds_at_a_cold_boot", Vip::BlackHole) else {
        return;
    };
    e.black_hole(REAL);
    e.seed_cache(300, &["10.42.5.0/24"], &[&format!("{REAL}:443")], "node-a");
    let conf = e.conf(json!({"timeoutMs": 1000, "refreshSeconds": 0}));
    let pods: Vec<(String, String)> = (0..50).map(|i| (format!("c{i}"), e.w.pod())).collect();
    let w = &e.w;
    let runs: Vec<(Run, std::time::Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|(cid, pod)| {
                let conf = &conf;
                s.spawn(move || {
                    let t = std::time::Instant::now();
                    let r = w.cni("ADD", cid, pod, "eth0", conf);
                    (r, t.elapsed())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = std::collections::HashSet::new();
    for (r, took) in runs {
        let r = r.ok();
        ips.insert(first_ip(&r.json()));
        bounded("an ADD of the storm", took, 1000 + 10_000);
    }
    assert_eq!(ips.len(), 50, "distinct addresses");
    e.del_all(&pods, &conf);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn a_token_file_ending_in_a_newline_authenticates() {
    let Some(mut e) = setup("a_token_file_ending_in_a_newline", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    std::fs::write(&e.token_file, format!("{TOKEN}\n")).unwrap();
    let conf = e.conf(json!({}));
    let (pod, r) = e.add("c0", &conf);
    let r = r.ok();
    assert!(first_ip(&r.json()).starts_with("10.42.1."), "{}", r.stdout);
    assert!(warnings(&r).is_empty(), "{}", r.stderr);
    assert!(api.authorized() >= 1);

    // A missing token file is a credential failure, not an unreachable API.
    std::fs::remove_file(&e.token_file).unwrap();
    let (p1, r) = e.add("c1", &e.conf(json!({"refreshSeconds": 0})));
    let w = warnings(&r);
    assert!(
        w[0].contains(&format!("cannot authenticate to {VIP}:443 (token file")),
        "{}",
        r.stderr
    );
    assert!(!w[0].contains("unreachable"), "{}", w[0]);
    e.w.cni("DEL", "c1", &p1, "eth0", &conf).ok();
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();
    e.w.assert_clean();
}

const SECRET: &str = "TOPSECRET-ENV-VALUE-42";

/// The last warning in a log file.
fn last_warning(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rfind(|l| l.contains("WARN"))
        .unwrap_or_default()
        .to_string()
}

/// An exec credential plugin script in the world's kube dir, made the kubeconfig's user, with
/// the secret in its `env`.
fn use_exec_plugin(e: &Env, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = e.w.state_dir.join("kube").join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = format!("https://{VIP}:443");
    write_kubeconfig_exec(
        &e.kubeconfig,
        &server,
        &e.pki.ca_pem,
        &p,
        &[("CLOUD_SECRET", SECRET)],
    );
    p
}

/// A config that asks the API on every ADD and logs everything to a file (0600).
fn exec_conf(e: &Env) -> (Value, PathBuf) {
    let log = e.w.state_dir.join("holdfast.log");
    let mut conf = e.conf(json!({"timeoutMs": 1000, "refreshSeconds": 0}));
    conf["logFile"] = json!(log);
    conf["logLevel"] = json!("debug");
    (conf, log)
}

fn assert_no_secret(runs: &[&Run], log: &std::path::Path) {
    let logged = std::fs::read_to_string(log).unwrap();
    for out in runs
        .iter()
        .flat_map(|r| [&r.stdout, &r.stderr])
        .chain([&logged])
    {
        assert!(!out.contains(SECRET), "the exec env leaked: {out}");
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(log).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "log file mode");
}

#[test]
#[ignore = "needs root"]
fn exec_credential_plugins_authenticate_and_a_failing_one_never_leaks_its_env() {
    let Some(mut e) = setup("exec_credential_plugins_authenticate", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    let (conf, log) = exec_conf(&e);
    use_exec_plugin(
        &e,
        "good",
        &format!(
            "[ \"$CLOUD_SECRET\" = {SECRET} ] || exit 3\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{TOKEN}\"}}}}'"
        ),
    );
    let (p0, r0) = e.add("c0", &conf);
    let r0 = r0.ok();
    assert!(
        first_ip(&r0.json()).starts_with("10.42.1."),
        "{}",
        r0.stdout
    );
    assert!(api.authorized() >= 1);

    use_exec_plugin(
        &e,
        "failing",
        "echo \"$CLOUD_SECRET\"; echo \"$CLOUD_SECRET\" >&2; exit 1",
    );
    let (p1, r1) = e.add("c1", &conf);
    let r1 = r1.ok();
    let w = last_warning(&log);
    assert!(
        w.contains(&format!(
            "cannot authenticate to {VIP}:443 (exec credential plugin"
        )),
        "{w}"
    );
    assert!(w.contains("failed (exit status: 1)"), "{w}");

    // Without a cache the failure is the error, still without the secret.
    std::fs::remove_file(e.cache_path()).unwrap();
    let (_, r2) = e.add("c2", &conf);
    r2.err(11, "cannot authenticate");
    assert_no_secret(&[&r0, &r1, &r2], &log);
    e.del_all(&[("c0".into(), p0), ("c1".into(), p1)], &conf);
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn a_hung_exec_credential_plugin_is_killed_and_reaped_at_the_deadline() {
    let Some(mut e) = setup("a_hung_exec_credential_plugin", Vip::Serve) else {
        return;
    };
    let _api = e.vip.take().unwrap();
    let (conf, log) = exec_conf(&e);
    e.seed_cache(300, &["10.42.5.0/24"], &[], "node-a");
    let pidfile = e.w.state_dir.join("kube/hung.pid");
    use_exec_plugin(
        &e,
        "hung",
        &format!(
            "echo \"$CLOUD_SECRET\"\nsleep 60 & echo $! > {}\nwait",
            pidfile.display()
        ),
    );
    let (pod, r, took) = e.timed_add("c0", &conf);
    let r = r.ok();
    assert!(first_ip(&r.json()).starts_with("10.42.5."), "{}", r.stdout);
    bounded("ADD with a hung exec plugin", took, 1000 + 5000);
    let w = last_warning(&log);
    assert!(w.contains("did not finish in time, killed"), "{w}");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // SIGKILLed by the ADD; it may still be scheduled for a moment, so a bounded wait.
    let gone = (0..200).any(|_| {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        let gone = stat.is_empty() || stat.contains(") Z ");
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        gone
    });
    assert!(gone, "the exec plugin's own child outlived the ADD");
    assert_no_secret(&[&r], &log);
    e.w.cni("DEL", "c0", &pod, "eth0", &conf).ok();
    e.w.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn a_cache_without_pod_cidrs_is_never_used() {
    let Some(mut e) = setup("a_cache_without_pod_cidrs", Vip::BlackHole) else {
        return;
    };
    e.seed_cache(10, &[], &[], "node-a");
    let conf = e.conf(json!({}));
    let (_, r) = e.add("c0", &conf);
    r.err(11, "no cached cluster info");
    assert!(r.stderr.contains("no podCIDRs"), "{}", r.stderr);
    e.w.assert_clean();
    // STATUS says so too, and fast (the API is black-holed: it is not asked for long).
    let st = e.w.cni_env("STATUS", &conf, &[]);
    assert_ne!(st.code, 0, "{}", st.stdout);
}

#[test]
#[ignore = "needs root"]
fn a_cache_from_the_future_is_stale_and_status_never_asks_the_api() {
    let Some(mut e) = setup("a_cache_from_the_future", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    // Written "tomorrow": the clock stepped back at boot.
    let future = json!({"version": 1, "nodeName": "node-a", "nodeUid": "uid-old",
        "podCIDRs": ["10.42.5.0/24"], "apiEndpoints": [], "fetchedUnix": 4_000_000_000u64, "fetchedFrom": "seed"});
    std::fs::create_dir_all(&e.w.state_dir).unwrap();
    std::fs::write(e.cache_path(), future.to_string()).unwrap();
    let conf = e.conf(json!({"refreshSeconds": 3600}));
    let st = e.w.cni_env("STATUS", &conf, &[]);
    assert_eq!(st.code, 0, "{} {}", st.stdout, st.stderr);
    assert_eq!(
        api.requests(),
        0,
        "STATUS must not ask the API when a cache exists"
    );
    let (p0, r) = e.add("c0", &conf);
    let r = r.ok();
    assert!(api.requests() >= 1, "a future-dated cache is not fresh");
    assert!(first_ip(&r.json()).starts_with("10.42.1."), "{}", r.stdout);

    // And as a fallback its age is named as unknown.
    std::fs::write(e.cache_path(), future.to_string()).unwrap();
    api.set_mode(Mode::Status(500));
    let (p1, r) = e.add("c1", &conf);
    let r = r.ok();
    assert!(first_ip(&r.json()).starts_with("10.42.5."), "{}", r.stdout);
    assert!(warnings(&r)[0].contains("in the future"), "{}", r.stderr);
    e.del_all(&[("c0".into(), p0), ("c1".into(), p1)], &conf);
    e.w.assert_clean();
}
