//! Pods that died without a DEL (issue 9, SPEC §4): an attachment whose netns is gone, or now
//! names another namespace, is dead. holdfast reclaims dead attachments when a range would
//! otherwise be exhausted and on the first verb after the boot ID changed; STATUS never
//! reports a full range; a late DEL of one exits 0; a live attachment is never reclaimed.

mod common;
use common::night::*;
use common::*;
use serde_json::{Value, json};

fn with_ifb(mut conf: Value) -> Value {
    conf["runtimeConfig"] = json!({"bandwidth": {
        "ingressRate": 10_000_000, "ingressBurst": 100_000,
        "egressRate": 10_000_000, "egressBurst": 100_000}});
    conf
}

/// A live attachment is wholly there: veth, pod interface, its lease and record, reachable.
fn assert_alive(w: &World, cid: &str, pod: &str, r: &Value, what: &str) {
    assert_eq!(
        attachment(w, cid, pod, "eth0"),
        Ok(Attachment::Present(vec![addr_of(r, 0)])),
        "{what}: live {cid}"
    );
    assert!(
        w.ping(&w.node, &addr_of(r, 0)),
        "{what}: node -> live {cid}"
    );
}

/// The dead attachment's lease, record and host links are gone.
fn assert_reclaimed(w: &World, cid: &str, what: &str) {
    assert_eq!(
        owned_leases(w, cid, "eth0"),
        Vec::<String>::new(),
        "{what}: lease of {cid}"
    );
    assert_eq!(
        records_of(w, cid, "eth0").len(),
        0,
        "{what}: record of {cid}"
    );
    let links = w.node_links();
    for l in [
        holdfast::dataplane::names::host_veth(cid, "eth0"),
        holdfast::dataplane::names::ifb(cid, "eth0"),
    ] {
        assert!(!links.contains(&l), "{what}: {l} of {cid} left: {links:?}");
    }
}

#[test]
#[ignore = "needs root"]
fn dead_pods_free_a_full_range_and_a_live_one_survives() {
    let mut w = World::new("dead_pods_free_a_full_range");
    let conf = w.conf("1.1.0", ipam_v4("10.94.0.0/29"));
    let pods: Vec<String> = (0..5).map(|_| w.pod()).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            verb(&w, "ADD", &format!("old{i}"), p, "eth0", &conf)
                .run
                .ok()
                .json()
        })
        .collect();
    // Full of live pods: no STATUS error (SPEC §4), ADD alone says so.
    bare(&w, "STATUS", &conf, &[]).run.ok();
    // A cold reboot, except for old2: the runtime never sends DEL for the others.
    for (i, p) in pods.iter().enumerate() {
        if i != 2 {
            w.delete_pod(p);
        }
    }
    bare(&w, "STATUS", &conf, &[]).run.ok();

    // Four dead attachments give four new pods an address; the fifth finds the range full,
    // because old2 is alive.
    let new: Vec<String> = (0..5).map(|_| w.pod()).collect();
    let mut fresh = Vec::new();
    for (i, p) in new.iter().take(4).enumerate() {
        let r = verb(&w, "ADD", &format!("new{i}"), p, "eth0", &conf)
            .run
            .ok()
            .json();
        assert_ne!(
            addr_of(&r, 0),
            addr_of(&results[2], 0),
            "live old2's address reused"
        );
        fresh.push(r);
    }
    verb(&w, "ADD", "new4", &new[4], "eth0", &conf)
        .run
        .err(100, "10.94.0.0/29");
    assert_alive(&w, "old2", &pods[2], &results[2], "range full again");
    assert_doctor_lists(&w, &conf, &["old0", "old1", "old3", "old4"]);

    // The runtime's late DELs of the dead ones exit 0 and touch nobody else.
    for (i, p) in pods.iter().enumerate().filter(|(i, _)| *i != 2) {
        verb(&w, "DEL", &format!("old{i}"), p, "eth0", &conf)
            .run
            .ok();
        assert_reclaimed(&w, &format!("old{i}"), "late DEL");
    }
    assert_alive(&w, "old2", &pods[2], &results[2], "after the late DELs");
    for (i, (p, r)) in new.iter().zip(&fresh).enumerate() {
        assert_alive(&w, &format!("new{i}"), p, r, "after the late DELs");
    }
    verb(&w, "DEL", "old2", &pods[2], "eth0", &conf).run.ok();
    for (i, p) in new.iter().enumerate() {
        verb(&w, "DEL", &format!("new{i}"), p, "eth0", &conf)
            .run
            .ok();
    }
    let all: Vec<&str> = new.iter().chain([&pods[2]]).map(String::as_str).collect();
    assert_no_attachment_left(&w, &all, "after every DEL");
}

/// `holdfast doctor` lists exactly these attachments as reclaimed, with when and why.
fn assert_doctor_lists(w: &World, conf: &Value, cids: &[&str]) {
    let file = w.state_dir.join("doctor.conflist");
    let list = json!({"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]});
    std::fs::write(&file, list.to_string()).expect("conflist for doctor");
    let f = file.display().to_string();
    let out = w.in_node(&[BIN, "doctor", "--conf", &f, "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let mut listed: Vec<&str> = report["reclaimed"]
        .as_array()
        .expect("reclaimed is a list")
        .iter()
        .map(|x| {
            assert!(x["unix"].as_u64().is_some_and(|t| t > 0), "{x}");
            assert_eq!(x["why"], "a range was full", "{x}");
            x["containerId"].as_str().unwrap_or("")
        })
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, cids, "doctor's reclaimed list");
    let human = w.in_node(&[BIN, "doctor", "--conf", &f]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("reclaimed   old0/eth0"), "{text}");
}

/// Live and dead pods with ifb shaping; returns (cid, pod, result) of each.
fn live_and_dead(w: &mut World, conf: &Value, names: &[&str]) -> Vec<(String, String, Value)> {
    names
        .iter()
        .map(|cid| {
            let p = w.pod();
            let r = verb(w, "ADD", cid, &p, "eth0", conf).run.ok().json();
            (cid.to_string(), p, r)
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn a_boot_id_change_reclaims_dead_attachments_on_the_first_verb() {
    let mut w = World::new("a_boot_id_change_reclaims");
    let conf = with_ifb(w.conf("1.1.0", ipam_v4("10.95.0.0/24")));
    let pods = live_and_dead(
        &mut w,
        &conf,
        &["live0", "dead0", "live1", "dead1", "dead2"],
    );
    for (_, p, _) in pods.iter().filter(|(c, _, _)| c == "dead0" || c == "dead1") {
        w.delete_pod(p);
    }
    // Their ifbs outlive the netns; nothing about them is reclaimed by the kernel.
    let ifb = holdfast::dataplane::names::ifb("dead0", "eth0");
    assert!(
        w.node_links().contains(&ifb),
        "dead0's ifb is still there before the reboot"
    );

    // First verb after the "reboot": a DEL of an attachment that never existed.
    let boot = BootId::new(&w, "9f3e1c2a-0000-4000-8000-00000000b007");
    let env = [("CNI_CONTAINERID", "unrelated"), ("CNI_IFNAME", "eth0")];
    boot.run(&w, "DEL", &conf, &env).run.ok();
    for cid in ["dead0", "dead1"] {
        assert_reclaimed(&w, cid, "first verb after the boot ID changed");
    }
    for (cid, p, r) in pods.iter().filter(|(c, _, _)| c != "dead0" && c != "dead1") {
        assert_alive(&w, cid, p, r, "after the boot ID changed");
        verb(&w, "CHECK", cid, p, "eth0", &with_prev(&conf, r))
            .run
            .ok();
    }

    // dead2 dies too; after another boot the first verb is an ADD.
    w.delete_pod(&pods[4].1);
    let boot = BootId::new(&w, "9f3e1c2a-0000-4000-8000-00000000b008");
    let p = w.pod();
    let env = [
        ("CNI_CONTAINERID", "after"),
        ("CNI_NETNS", p.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let after = boot.run(&w, "ADD", &conf, &env).run.ok().json();
    assert_reclaimed(&w, "dead2", "an ADD after the second boot ID change");
    assert_alive(&w, "after", &p, &after, "the ADD that reclaimed");

    for (cid, p, _) in &pods {
        verb(&w, "DEL", cid, p, "eth0", &conf).run.ok();
    }
    verb(&w, "DEL", "after", &p, "eth0", &conf).run.ok();
    assert_no_attachment_left(&w, &[&p], "after every DEL");
}

#[test]
#[ignore = "needs root"]
fn a_netns_path_that_now_names_another_namespace_is_dead() {
    let mut w = World::new("a_netns_path_that_names_another");
    // A /30 has a single pod address: whoever holds it decides whether the next ADD works.
    let conf = w.conf("1.1.0", ipam_v4("10.96.0.0/30"));
    let name = format!("{}-reused", w.tag);
    let path = format!("/var/run/netns/{name}");
    let first = NetnsGuard::add(&name);
    let r = verb(&w, "ADD", "holder", &path, "eth0", &conf)
        .run
        .ok()
        .json();
    assert_eq!(addr_of(&r, 0), "10.96.0.2");
    let other = w.pod();
    verb(&w, "ADD", "other", &other, "eth0", &conf)
        .run
        .err(100, "10.96.0.0/30");
    bare(&w, "STATUS", &conf, &[]).run.ok();

    // The sandbox is gone and a new netns took its name: the path exists, the namespace is new.
    drop(first);
    let _second = NetnsGuard::add(&name);
    bare(&w, "STATUS", &conf, &[]).run.ok();
    let o = verb(&w, "ADD", "other", &other, "eth0", &conf)
        .run
        .ok()
        .json();
    assert_eq!(
        addr_of(&o, 0),
        "10.96.0.2",
        "the dead holder's address is reclaimed"
    );
    assert_reclaimed(&w, "holder", "reclaimed for other");
    assert_eq!(
        pod_links(&path),
        Vec::<String>::new(),
        "the new namespace is left alone"
    );

    verb(&w, "DEL", "holder", &path, "eth0", &conf).run.ok();
    assert_alive(&w, "other", &other, &o, "after holder's late DEL");
    verb(&w, "DEL", "other", &other, "eth0", &conf).run.ok();
    assert_no_attachment_left(&w, &[&other, &path], "after every DEL");
}
