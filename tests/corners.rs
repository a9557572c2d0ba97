//! Runtime corners seen in the field (issue 9): CRI-O's "unspecified" burst, one pod attached
//! twice to one network, racing verbs on one attachment, a held IPAM lock keeps code 11, and
//! two of the longest container IDs. (FIFO and non-net netns, a single long ID and deaf or
//! orphaned delegates are tests/files.rs's.)

mod common;
use common::night::*;
use common::*;
use holdfast::dataplane::tc::Tbf;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// containerd's and CRI-O's burst for annotation-derived limits: both mean "unspecified".
const CONTAINERD_BURST: u64 = 4_294_967_295;
const CRIO_BURST: u64 = 34_359_738_359;

fn limited(w: &World, burst: u64) -> Value {
    let mut conf = w.conf("1.0.0", ipam_v4("10.97.0.0/24"));
    conf["runtimeConfig"] = json!({"bandwidth": {
        "ingressRate": 10_000_000, "ingressBurst": burst,
        "egressRate": 20_000_000, "egressBurst": burst}});
    conf
}

#[test]
#[ignore = "needs root"]
fn crio_unspecified_burst_gets_the_same_bucket_as_containerds() {
    let mut w = World::new("crio_unspecified_burst");
    let mut seen = Vec::new();
    for (cid, burst) in [("containerd", CONTAINERD_BURST), ("crio", CRIO_BURST)] {
        let pod = w.pod();
        let conf = limited(&w, burst);
        let r = verb(&w, "ADD", cid, &pod, "eth0", &conf).run.ok().json();
        let host = r["interfaces"][0]["name"].as_str().unwrap_or_default();
        let ifb = r["interfaces"][2]["name"].as_str().unwrap_or_default();
        let (ingress, _, _) = w.host_tc(host);
        let (egress, _, _) = w.host_tc(ifb);
        // 100 ms at the rate, well above two full-size packets.
        assert_eq!(
            ingress,
            Some(Tbf::new(10_000_000, 1_000_000, "ingress").unwrap()),
            "{cid}"
        );
        assert_eq!(
            egress,
            Some(Tbf::new(20_000_000, 2_000_000, "egress").unwrap()),
            "{cid}"
        );
        for other in [CONTAINERD_BURST, CRIO_BURST] {
            let check = with_prev(&limited(&w, other), &r);
            verb(&w, "CHECK", cid, &pod, "eth0", &check).run.ok();
        }
        seen.push((cid, pod, ingress, egress));
    }
    assert_eq!(seen[0].2, seen[1].2, "same ingress bucket");
    assert_eq!(seen[0].3, seen[1].3, "same egress bucket");
    for (cid, pod, _, _) in &seen {
        verb(&w, "DEL", cid, pod, "eth0", &limited(&w, CRIO_BURST))
            .run
            .ok();
    }
    w.assert_clean();
}

/// Two attachments of one network in one pod: both work and are reachable from the node, and
/// DEL of the first leaves the second working.
fn attached_twice(w: &mut World, a: (&str, &str), b: (&str, &str)) {
    let conf = w.conf("1.0.0", ipam_v4("10.98.0.0/24"));
    let pod = w.pod();
    let ra = verb(w, "ADD", a.0, &pod, a.1, &conf).run.ok().json();
    let rb = verb(w, "ADD", b.0, &pod, b.1, &conf).run.ok().json();
    let (xa, xb) = (addr_of(&ra, 0), addr_of(&rb, 0));
    assert_ne!(xa, xb);
    let mut links = pod_links(&pod);
    links.sort();
    let mut want = vec![a.1.to_string(), b.1.to_string()];
    want.sort();
    assert_eq!(links, want);
    assert!(w.ping(&w.node, &xa), "node -> {xa} ({a:?})");
    assert!(w.ping(&w.node, &xb), "node -> {xb} ({b:?})");

    verb(w, "DEL", a.0, &pod, a.1, &conf).run.ok();
    assert_eq!(
        attachment(w, a.0, &pod, a.1),
        Ok(Attachment::Absent),
        "{a:?}"
    );
    assert_eq!(
        attachment(w, b.0, &pod, b.1),
        Ok(Attachment::Present(vec![xb.clone()])),
        "{b:?} after DEL of {a:?}"
    );
    assert!(w.ping(&w.node, &xb), "node -> {xb} after DEL of {a:?}");
    assert!(
        w.ping(&pod, "10.98.0.1"),
        "{b:?} -> gateway after DEL of {a:?}"
    );
    verb(w, "CHECK", b.0, &pod, b.1, &with_prev(&conf, &rb))
        .run
        .ok();
    verb(w, "DEL", b.0, &pod, b.1, &conf).run.ok();
    assert_no_attachment_left(w, &[&pod], "after both DELs");
}

#[test]
#[ignore = "needs root"]
fn one_pod_attached_twice_with_two_container_ids() {
    let mut w = World::new("attached_twice_two_ids");
    // As Multus does: one container ID per attachment.
    attached_twice(&mut w, ("multus-a", "eth0"), ("multus-b", "net1"));
}

#[test]
#[ignore = "needs root"]
fn one_pod_attached_twice_with_one_container_id() {
    let mut w = World::new("attached_twice_one_id");
    attached_twice(&mut w, ("pod", "eth0"), ("pod", "net1"));
}

/// Runs ADD and, `delay` later, `second` on the same attachment; returns both exit codes.
fn race(
    w: &World,
    conf: &Value,
    cid: &str,
    pod: &str,
    second: &str,
    delay: Duration,
) -> (i32, i32) {
    std::thread::scope(|s| {
        let a = s.spawn(|| verb(w, "ADD", cid, pod, "eth0", conf).run.code);
        let b = s.spawn(|| {
            std::thread::sleep(delay);
            verb(w, second, cid, pod, "eth0", conf).run.code
        });
        (a.join().unwrap_or(-2), b.join().unwrap_or(-2))
    })
}

/// 30 rounds of ADD racing `second`; every round must end wholly present or wholly absent, as
/// `judge` (given both exit codes and the end state) decides. Each round is then torn down.
fn rounds(name: &str, second: &str, judge: fn((i32, i32), &Attachment) -> bool) {
    let mut w = World::new(name);
    let conf = w.conf("1.0.0", ipam_v4("10.99.0.0/24"));
    let pod = w.pod();
    let mut bad = Vec::new();
    for i in 0..30u64 {
        let cid = format!("race{i}");
        let codes = race(&w, &conf, &cid, &pod, second, Duration::from_millis(i % 9));
        match attachment(&w, &cid, &pod, "eth0") {
            Ok(state) if judge(codes, &state) => {}
            Ok(state) => bad.push(format!("round {i}: exits {codes:?}, end state {state:?}")),
            Err(seen) => bad.push(format!("round {i}: exits {codes:?}, INCONSISTENT: {seen}")),
        }
        verb(&w, "DEL", &cid, &pod, "eth0", &conf).run.ok();
        assert_no_attachment_left(&w, &[&pod], &format!("round {i}, after DEL"));
    }
    assert!(
        bad.is_empty(),
        "{}/30 rounds went wrong:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
#[ignore = "needs root"]
fn concurrent_add_and_add_of_one_attachment_end_consistent() {
    // Any ADD that reported success must have left a whole attachment behind.
    rounds("concurrent_add_add", "ADD", |(a, b), s| match s {
        Attachment::Present(ips) => ips.len() == 1,
        Attachment::Absent => a != 0 && b != 0,
    });
}

#[test]
#[ignore = "needs root"]
fn concurrent_add_and_del_of_one_attachment_end_consistent() {
    // DEL always succeeds; whichever ran last decides, but never half of an attachment.
    rounds("concurrent_add_del", "DEL", |(a, d), s| {
        d == 0
            && match s {
                Attachment::Present(ips) => a == 0 && ips.len() == 1,
                Attachment::Absent => true,
            }
    });
}

#[test]
#[ignore = "needs root"]
fn del_and_gc_keep_the_lock_timeout_code() {
    let mut w = World::new("del_and_gc_keep_the_lock_timeout_code");
    let conf = w.conf("1.1.0", ipam_v4("10.90.0.0/24"));
    let pod = w.pod();
    verb(&w, "ADD", "c", &pod, "eth0", &conf).run.ok();
    let lock = w.state_dir.join("ipam/testnet/lock");
    let held = w.state_dir.join("held");
    let script = format!("touch {}; exec sleep 60", held.display());
    let holder = Group::spawn(&["flock", "-x", &lock.display().to_string(), "-c", &script]);
    let end = Instant::now() + Duration::from_secs(10);
    while !held.exists() {
        assert!(Instant::now() < end, "flock never took {}", lock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    verb(&w, "DEL", "c", &pod, "eth0", &conf)
        .run
        .err(11, "lock");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    bare(&w, "GC", &gc, &[]).run.err(11, "lock");
    drop(holder);
    verb(&w, "DEL", "c", &pod, "eth0", &conf).run.ok();
    assert_no_attachment_left(&w, &[&pod], "after the lock was free again");
}

#[test]
#[ignore = "needs root"]
fn two_longest_container_ids_that_differ_in_the_last_byte_stay_apart() {
    let mut w = World::new("two_longest_container_ids");
    let conf = w.conf("1.0.0", ipam_v4("10.89.0.0/24"));
    // 256 bytes, the most SPEC allows: file names must be derived from the whole ID, not a
    // prefix that fits NAME_MAX.
    let ids = [
        format!("{}0", "a".repeat(255)),
        format!("{}1", "a".repeat(255)),
    ];
    let pods: Vec<String> = ids.iter().map(|_| w.pod()).collect();
    let results: Vec<Value> = ids
        .iter()
        .zip(&pods)
        .map(|(id, p)| verb(&w, "ADD", id, p, "eth0", &conf).run.ok().json())
        .collect();
    for ((id, p), r) in ids.iter().zip(&pods).zip(&results) {
        assert_eq!(records_of(&w, id, "eth0").len(), 1, "one record per ID");
        verb(&w, "CHECK", id, p, "eth0", &with_prev(&conf, r))
            .run
            .ok();
    }
    verb(&w, "DEL", &ids[0], &pods[0], "eth0", &conf).run.ok();
    assert_eq!(
        attachment(&w, &ids[1], &pods[1], "eth0"),
        Ok(Attachment::Present(vec![addr_of(&results[1], 0)])),
        "DEL of one long ID leaves the other"
    );
    verb(
        &w,
        "CHECK",
        &ids[1],
        &pods[1],
        "eth0",
        &with_prev(&conf, &results[1]),
    )
    .run
    .ok();
    verb(&w, "DEL", &ids[1], &pods[1], "eth0", &conf).run.ok();
    let refs: Vec<&str> = pods.iter().map(String::as_str).collect();
    assert_no_attachment_left(&w, &refs, "after both DELs");
}
