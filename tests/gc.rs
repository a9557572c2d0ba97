//! GC removes exactly the attachments the runtime no longer lists.

mod common;
use common::*;
use serde_json::json;

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn gc_keeps_listed_attachments_and_removes_the_rest() {
    let mut w = World::new("gc_keeps_listed_attachments");
    let conf = w.conf("1.1.0", ipam_v4("10.30.0.0/24"));
    let pods: Vec<String> = (0..3).map(|_| w.pod()).collect();
    for (i, p) in pods.iter().enumerate() {
        w.cni("ADD", &format!("c{i}"), p, "eth0", &conf).ok();
    }
    // A crashed ADD's lease without record or link is collected too.
    std::fs::write(
        w.state_dir.join("ipam/testnet/10.30.0.99"),
        "crashed\r\neth0",
    )
    .unwrap();

    // No list: nothing removed.
    w.cni_env("GC", &conf, &[]).ok();
    assert_eq!(w.records().len(), 3);
    assert_eq!(w.leases().len(), 4);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    w.cni_env("GC", &gc, &[]).ok();
    assert_eq!(w.records(), vec!["c1@eth0.json".to_string()]);
    assert_eq!(w.leases(), vec!["10.30.0.3".to_string()]);
    assert_eq!(w.node_links().len(), 1);
    assert!(w.ping(&pods[1], "10.30.0.1"), "the kept pod still works");

    // The older key works as well; an empty list means nothing is valid.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    w.cni_env("GC", &gc, &[]).ok();
    w.assert_clean();

    let mut bad = conf.clone();
    bad["cni.dev/valid-attachments"] = json!([{"containerID": "x"}]);
    w.cni_env("GC", &bad, &[]).err(7, "ifname");
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn gc_releases_delegated_leases_of_stale_attachments() {
    let mut w = World::new("gc_releases_delegated_leases");
    // Debian's host-local 1.1.1 speaks CNI up to 1.0.0 and has no GC: the attachments are made
    // at 1.0.0, GC (1.1.0 only) must release their leases with the DEL each ADD recorded.
    let ipam = json!({"type": "host-local", "dataDir": w.state_dir.join("host-local"),
                      "ranges": [[{"subnet": "10.31.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]});
    let add = w.conf("1.0.0", ipam.clone());
    let pods: Vec<String> = (0..2).map(|_| w.pod()).collect();
    for (i, p) in pods.iter().enumerate() {
        w.cni("ADD", &format!("c{i}"), p, "eth0", &add).ok();
    }
    assert_eq!(w.leases(), vec!["10.31.0.2", "10.31.0.3"]);

    let mut gc = w.conf("1.1.0", ipam);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    w.cni_env("GC", &gc, &[]).ok();
    assert_eq!(
        w.leases(),
        vec!["10.31.0.3"],
        "c0's host-local lease released"
    );
    assert_eq!(w.records(), vec!["c1@eth0.json".to_string()]);
    assert_eq!(w.node_links().len(), 1);
    assert!(w.ping(&pods[1], "10.31.0.1"), "the kept pod still works");

    gc["cni.dev/valid-attachments"] = json!([]);
    w.cni_env("GC", &gc, &[]).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn gc_is_passed_on_to_a_delegate_that_speaks_1_1_0() {
    let mut w = World::new("gc_is_passed_on_to_a_delegate");
    let (dir, path) = fake_ipam(&w);
    let conf = w.conf(
        "1.1.0",
        json!({"type": "fake-ipam", "routes": [{"dst": "0.0.0.0/0"}]}),
    );
    let pod = w.pod();
    w.cni_env(
        "ADD",
        &conf,
        &[
            ("CNI_CONTAINERID", "c0"),
            ("CNI_NETNS", &pod),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &path),
        ],
    )
    .ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    w.cni_env("GC", &gc, &[("CNI_PATH", &path)]).ok();
    let calls = std::fs::read_to_string(dir.join("calls.log")).unwrap();
    let verbs: Vec<&str> = calls.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(verbs, ["ADD", "DEL", "VERSION", "GC"], "{calls}");
    assert!(calls.lines().any(|l| l.starts_with("DEL c0 ")), "{calls}");
    let gc_line = calls.lines().find(|l| l.starts_with("GC ")).unwrap();
    assert!(
        gc_line.contains(r#""cni.dev/valid-attachments":[]"#),
        "{gc_line}"
    );
    w.assert_clean();
}
