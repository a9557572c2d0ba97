//! GC removes exactly the attachments the runtime no longer lists.

mod common;
use common::*;
use serde_json::json;

#[test]
fn gc_keeps_listed_attachments_and_removes_the_rest() {
    let Some(mut w) = World::new("gc_keeps_listed_attachments") else {
        return;
    };
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
