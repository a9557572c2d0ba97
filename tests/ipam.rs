//! The built-in allocator under real invocations: concurrency, exhaustion, STATUS.

mod common;
use common::*;
use serde_json::json;
use std::collections::HashSet;

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn fifty_concurrent_adds_get_distinct_addresses() {
    let mut w = World::new("fifty_concurrent_adds_get_distinct_addresses");
    let conf = w.conf("1.0.0", ipam_dual("10.20.0.0/24", "fd20::/64"));
    let pods: Vec<String> = (0..50).map(|_| w.pod()).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (w, conf) = (&w, &conf);
                s.spawn(move || w.cni("ADD", &format!("c{i}"), p, "eth0", conf).ok().json())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    for r in &results {
        for ip in r["ips"].as_array().unwrap() {
            assert!(
                seen.insert(ip["address"].as_str().unwrap().to_string()),
                "duplicate {ip}"
            );
        }
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(w.leases().len(), 100);
    assert_eq!(w.node_links().len(), 50);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (w, conf) = (&w, &conf);
            s.spawn(move || w.cni("DEL", &format!("c{i}"), p, "eth0", conf).ok());
        }
    });
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn a_29_is_exhausted_after_five_and_leaves_nothing_for_the_sixth() {
    let mut w = World::new("a_29_is_exhausted_after_five");
    let conf = w.conf("1.1.0", ipam_v4("10.21.0.0/29"));
    let pods: Vec<String> = (0..6).map(|_| w.pod()).collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        let r = w.cni("ADD", &format!("c{i}"), p, "eth0", &conf).ok().json();
        assert_eq!(r["ips"][0]["address"], format!("10.21.0.{}/29", i + 2));
    }
    w.cni("ADD", "c5", &pods[5], "eth0", &conf)
        .err(100, "10.21.0.0/29");
    assert_eq!(w.leases().len(), 5);
    assert_eq!(w.node_links().len(), 5);
    assert_eq!(w.records().len(), 5);
    let podns = pods[5].rsplit('/').next().unwrap();
    assert_eq!(ip(&["-n", podns, "-o", "link"]).lines().count(), 1);

    // A range held by live pods is no STATUS error (SPEC §4: evicting the pods would cure it,
    // and a NotReady node gets them evicted): STATUS stays ready while ADD fails with 100.
    w.cni_env("STATUS", &conf, &[]).ok();
    w.cni("ADD", "c5", &pods[5], "eth0", &conf)
        .err(100, "10.21.0.0/29");
    w.cni("DEL", "c0", &pods[0], "eth0", &conf).ok();
    w.cni_env("STATUS", &conf, &[]).ok();
    for (i, p) in pods.iter().enumerate().skip(1).take(4) {
        w.cni("DEL", &format!("c{i}"), p, "eth0", &conf).ok();
    }
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn status_reports_an_unusable_state_dir() {
    let w = World::new("status_reports_an_unusable_state_dir");
    std::fs::write(&w.state_dir, "a file, not a directory").unwrap();
    let conf = w.conf("1.1.0", ipam_v4("10.22.0.0/24"));
    w.cni_env("STATUS", &conf, &[]).err(50, "stateDir");
    std::fs::remove_file(&w.state_dir).unwrap();
    w.cni_env("STATUS", &conf, &[]).ok();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn range_start_end_and_gateway_are_honoured() {
    let mut w = World::new("range_start_end_and_gateway_are_honoured");
    let conf = w.conf(
        "1.0.0",
        json!({"ranges": [[{"subnet": "10.23.0.0/24", "rangeStart": "10.23.0.100", "rangeEnd": "10.23.0.101", "gateway": "10.23.0.254"}]]}),
    );
    let (a, b, c) = (w.pod(), w.pod(), w.pod());
    let ra = w.cni("ADD", "a", &a, "eth0", &conf).ok().json();
    assert_eq!(ra["ips"][0]["address"], "10.23.0.100/24");
    assert_eq!(ra["ips"][0]["gateway"], "10.23.0.254");
    assert!(w.ping(&a, "10.23.0.254"));
    w.cni("ADD", "b", &b, "eth0", &conf).ok();
    w.cni("ADD", "c", &c, "eth0", &conf)
        .err(100, "10.23.0.100-10.23.0.101");
    for (id, p) in [("a", &a), ("b", &b)] {
        w.cni("DEL", id, p, "eth0", &conf).ok();
    }
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn status_is_passed_on_to_a_delegate_that_speaks_1_1_0() {
    let w = World::new("status_is_passed_on_to_a_delegate");
    let (dir, path) = fake_ipam(&w);
    let conf = w.conf("1.1.0", json!({"type": "fake-ipam"}));
    w.cni_env("STATUS", &conf, &[("CNI_PATH", &path)]).ok();
    std::fs::write(dir.join("full"), "").unwrap();
    w.cni_env("STATUS", &conf, &[("CNI_PATH", &path)])
        .err(51, "fake pool exhausted");
    let calls = std::fs::read_to_string(dir.join("calls.log")).unwrap();
    let verbs: Vec<&str> = calls.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(verbs, ["VERSION", "STATUS", "VERSION", "STATUS"], "{calls}");
    // Debian's host-local 1.1.1 does not speak 1.1.0: nothing to ask, holdfast is ready.
    let old = w.conf(
        "1.1.0",
        json!({"type": "host-local", "ranges": [[{"subnet": "10.33.0.0/24"}]]}),
    );
    w.cni_env("STATUS", &old, &[]).ok();
}
