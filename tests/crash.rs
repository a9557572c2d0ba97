//! ADD killed at every step (issue 9): whatever step a runtime's SIGKILL hits, DEL alone, or the
//! retried ADD and then DEL, leaves nothing and loses no address. The kills are the plugin's own
//! failpoints, so this file needs `cargo test --features failpoints`; without the feature it is
//! compiled out rather than passing.
#![cfg(feature = "failpoints")]

mod common;
use common::libcni::{Chain, REFERENCE_DIR};
use common::night::*;
use common::*;
use serde_json::{Value, json};

/// The ADD failpoints of interface mode, in the order ADD reaches them.
const STEPS: &[&str] = &[
    "add-locked",
    "add-cleared",
    "ipam-lease-written",
    "ipam-leased",
    "add-veth",
    "add-ifb",
    "record-temp",
    "add-configured",
    "add-shaped",
    "add-recorded",
];

/// A /29 holds five pods: the final fill shows that no address went missing.
const CAPACITY: usize = 5;

struct Variant {
    conf: fn(&World) -> Value,
    /// Address ranges, so addresses per ADD.
    ranges: usize,
    /// Host links of one attachment (veth, plus the ifb when egress is shaped there).
    links: usize,
    steps: Vec<&'static str>,
}

fn steps_without(skip: &[&str]) -> Vec<&'static str> {
    STEPS
        .iter()
        .copied()
        .filter(|s| !skip.contains(s))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn killed_add_plain_dual_stack_leaves_nothing() {
    sweep(
        "killed_add_plain_dual_stack",
        &Variant {
            conf: |w| w.conf("1.0.0", ipam_dual("10.91.0.0/29", "fd91::/120")),
            ranges: 2,
            links: 1,
            steps: steps_without(&["add-ifb", "add-shaped"]),
        },
    );
}

#[test]
#[ignore = "needs root"]
fn killed_add_with_ifb_shaping_leaves_nothing() {
    sweep(
        "killed_add_with_ifb_shaping",
        &Variant {
            conf: |w| {
                let mut conf = w.conf("1.0.0", ipam_v4("10.92.0.0/29"));
                conf["runtimeConfig"] = json!({"bandwidth": {
                    "ingressRate": 10_000_000, "ingressBurst": 100_000,
                    "egressRate": 10_000_000, "egressBurst": 100_000}});
                conf
            },
            ranges: 1,
            links: 2,
            steps: STEPS.to_vec(),
        },
    );
}

#[test]
#[ignore = "needs root"]
fn killed_add_with_delegated_host_local_leaves_nothing() {
    // Debian's host-local 1.1.1 speaks up to 1.0.0; its dataDir is inside stateDir, so the
    // checks see its leases and files too. It has no temp-file step of its own.
    sweep(
        "killed_add_with_delegated_host_local",
        &Variant {
            conf: |w| {
                let ipam = json!({"type": "host-local", "dataDir": w.state_dir.join("host-local"),
                                  "ranges": [[{"subnet": "10.93.0.0/29"}]],
                                  "routes": [{"dst": "0.0.0.0/0"}]});
                w.conf("1.0.0", ipam)
            },
            ranges: 1,
            links: 1,
            steps: steps_without(&["ipam-lease-written", "add-ifb", "add-shaped"]),
        },
    );
}

/// Every step in a world of its own, so one step's leftovers cannot spoil the next; the test
/// fails naming every step that went wrong.
fn sweep(name: &str, v: &Variant) {
    sweep_steps(name, &v.steps, &|w, fp| kill_at(w, v, fp));
}

fn sweep_steps(name: &str, steps: &[&str], kill_at: &dyn Fn(&mut World, &str)) {
    let mut failed = Vec::new();
    for fp in steps {
        let step = std::panic::AssertUnwindSafe(|| {
            let mut w = World::new(&format!("{name}_{fp}"));
            kill_at(&mut w, fp);
        });
        if let Err(e) = std::panic::catch_unwind(step) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{fp}: {}", msg.replace('\n', " ")));
        }
    }
    assert!(
        failed.is_empty(),
        "{}/{} steps went wrong:\n{}",
        failed.len(),
        steps.len(),
        failed.join("\n")
    );
}

/// (a) ADD killed at `fp`, then DEL; (b) killed at `fp`, killed again at the retry, a whole
/// retry, then DEL. Each ends with nothing left; then the whole range is still there to fill.
fn kill_at(w: &mut World, v: &Variant, fp: &str) {
    let conf = (v.conf)(w);
    let pod = w.pod();
    // What a clean ADD and DEL leave is the network-wide baseline.
    verb(w, "ADD", "warm", &pod, "eth0", &conf).run.ok();
    verb(w, "DEL", "warm", &pod, "eth0", &conf).run.ok();
    let baseline = state_files(w);

    add_killed_at(w, fp, "once", &pod, "eth0", &conf);
    verb(w, "DEL", "once", &pod, "eth0", &conf).run.ok();
    assert_nothing_left(w, &[&pod], &baseline, &format!("killed at {fp}, then DEL"));

    add_killed_at(w, fp, "twice", &pod, "eth0", &conf);
    add_killed_at(w, fp, "twice", &pod, "eth0", &conf);
    let r = verb(w, "ADD", "twice", &pod, "eth0", &conf).run.ok().json();
    assert_one_attachment(w, v, "twice", &pod, &r, fp);
    verb(w, "DEL", "twice", &pod, "eth0", &conf).run.ok();
    let what = format!("killed twice at {fp}, retried, then DEL");
    assert_nothing_left(w, &[&pod], &baseline, &what);
    fill_the_range(w, &conf, &baseline);
}

/// The retried ADD holds exactly one address per range, and the kernel and stateDir agree.
fn assert_one_attachment(w: &World, v: &Variant, cid: &str, pod: &str, r: &Value, fp: &str) {
    let ips = r["ips"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        ips, v.ranges,
        "retry after {fp}: one address per range: {r}"
    );
    let mut addrs: Vec<String> = (0..ips).map(|i| addr_of(r, i)).collect();
    addrs.sort();
    assert_eq!(
        attachment(w, cid, pod, "eth0"),
        Ok(Attachment::Present(addrs)),
        "retry after {fp}"
    );
    assert_eq!(
        w.leases().len(),
        v.ranges,
        "retry after {fp}: leases {:?}",
        w.leases()
    );
    assert_eq!(
        w.node_links().len(),
        v.links,
        "retry after {fp}: {:?}",
        w.node_links()
    );
    assert_eq!(pod_links(pod), vec!["eth0".to_string()], "retry after {fp}");
}

/// No address went missing: every address of the /29 can be handed out again.
fn fill_the_range(w: &mut World, conf: &Value, baseline: &[String]) {
    let pods: Vec<String> = (0..CAPACITY).map(|_| w.pod()).collect();
    let mut seen = std::collections::HashSet::new();
    for (i, p) in pods.iter().enumerate() {
        let r = verb(w, "ADD", &format!("fill{i}"), p, "eth0", conf)
            .run
            .ok()
            .json();
        assert!(seen.insert(addr_of(&r, 0)), "address handed out twice: {r}");
    }
    for (i, p) in pods.iter().enumerate() {
        verb(w, "DEL", &format!("fill{i}"), p, "eth0", conf)
            .run
            .ok();
    }
    let refs: Vec<&str> = pods.iter().map(String::as_str).collect();
    assert_nothing_left(w, &refs, baseline, "after filling the range");
}

/// The chained-mode ADD failpoints, in order.
const CHAINED_STEPS: &[&str] = &[
    "add-locked",
    "add-ifb",
    "add-shaped",
    "record-temp",
    "add-recorded",
];

#[test]
#[ignore = "needs root"]
fn killed_chained_add_after_ptp_leaves_nothing() {
    sweep_steps("killed_chained_add", CHAINED_STEPS, &chained_kill_at);
}

/// ptp + host-local made the pod's veth; holdfast shapes it. (a) holdfast's ADD killed at `fp`,
/// then the chain's DEL; (b) killed twice, retried whole, then the chain's DEL.
fn chained_kill_at(w: &mut World, fp: &str) {
    let bw = json!({"ingressRate": 8_000_000, "ingressBurst": 80_000,
                    "egressRate": 8_000_000, "egressBurst": 80_000});
    let ipam = json!({"type": "host-local", "dataDir": w.state_dir.join("host-local"),
                      "ranges": [[{"subnet": "10.87.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]});
    let list = json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
        {"type": "ptp", "ipMasq": false, "ipam": ipam},
        {"type": "holdfast", "stateDir": w.state_dir, "logLevel": "warn",
         "capabilities": {"bandwidth": true}}]});
    let pod = w.pod();
    let ptp = format!("{REFERENCE_DIR}/ptp");
    let mut baseline = None;
    for (cid, kills) in [("warm", 0), ("once", 1), ("twice", 2)] {
        let ptp_conf = with_name(&list, 0, None);
        let env = [
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", pod.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let prev = w.exec(&ptp, "ADD", &ptp_conf, &env).ok().json();
        let mut conf = with_name(&list, 1, Some(&prev));
        conf["runtimeConfig"] = json!({"bandwidth": bw});
        for _ in 0..kills {
            add_killed_at(w, fp, cid, &pod, "eth0", &conf);
        }
        if kills != 1 {
            let r = verb(w, "ADD", cid, &pod, "eth0", &conf).run.ok().json();
            let veth = r["interfaces"][0]["name"].as_str().unwrap_or_default();
            assert!(
                w.host_tc(veth).0.is_some(),
                "{fp}: {cid}: ptp's veth is shaped"
            );
            let ifb = holdfast::dataplane::names::ifb(cid, "eth0");
            assert!(w.node_links().contains(&ifb), "{fp}: {cid}: {ifb} is there");
            assert_eq!(
                records_of(w, cid, "eth0").len(),
                1,
                "{fp}: {cid}: one record"
            );
        }
        let chain = Chain {
            w,
            list: list.clone(),
            runtime: json!({"bandwidth": bw}),
        };
        chain
            .del(cid, &pod, "eth0", Some(&prev))
            .unwrap_or_else(|(p, r)| panic!("{fp}: {cid}: {p} DEL: {r:?}"));
        let base = baseline.get_or_insert_with(|| state_files(w)).clone();
        assert_nothing_left(
            w,
            &[&pod],
            &base,
            &format!("{fp}: {cid} (killed {kills}x), chain DEL"),
        );
    }
}

/// Plugin `i` of a conflist as libcni hands it over: the list's name and version, and
/// `prevResult` when there is one.
fn with_name(list: &Value, i: usize, prev: Option<&Value>) -> Value {
    let mut p = list["plugins"][i].clone();
    p["name"] = list["name"].clone();
    p["cniVersion"] = list["cniVersion"].clone();
    if let Some(prev) = prev {
        p["prevResult"] = prev.clone();
    }
    p
}
