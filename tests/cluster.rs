//! Cluster info and the API fallback (SPEC §7), against a fake HTTPS API inside each test's node
//! netns: the VIP 10.43.0.1:443 and a "real" apiserver endpoint 10.44.0.5:443.

mod common;
use common::fakeapi::{Cluster, FakeApi, Mode, Pki, write_kubeconfig};
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn every_api_failure_falls_back_to_the_cache() {
    let Some(mut e) = setup("every_api_failure_falls_back", Vip::Serve) else {
        return;
    };
    let api = e.vip.take().unwrap();
    let conf = e.conf(json!({}));
    type Arrange = Box<dyn Fn(&FakeApi)>;
    let cases: Vec<(&str, Arrange)> = vec![
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
    ];
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn refused_and_untrusted_apis_fall_back_too() {
    let Some(mut e) = setup("refused_and_untrusted_apis_fall_back", Vip::Refuse) else {
        return;
    };
    let conf = e.conf(json!({}));
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
    drop(_api);
    let r = e.sync(&conf);
    assert_eq!(r.code, 1);
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
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
