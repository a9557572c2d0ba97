//! Bandwidth limits through netlink (SPEC §5): parameters read back, real throughput measured
//! with iperf3 between the node netns and the pod, CHECK drift, DEL cleanup.

mod common;
use common::*;
use holdfast::dataplane::tc::Tbf;
use serde_json::{Value, json};
use std::process::Command;

fn with_limits(mut conf: Value, bw: Value, shaping: &str) -> Value {
    conf["runtimeConfig"] = json!({"bandwidth": bw});
    conf["egressShaping"] = json!(shaping);
    conf
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn parameters_read_back_as_asked() {
    let mut w = World::new("parameters_read_back_as_asked");
    let base = w.conf("1.0.0", ipam_v4("10.40.0.0/24"));
    for (i, (rate, burst)) in [
        (1_000_000u64, 16_000u64),
        (10_000_000, 100_000),
        (100_000_000, 1_000_000),
        (5_000_000_000, 40_000_000),
    ]
    .into_iter()
    .enumerate()
    {
        let pod = w.pod();
        let bw = json!({"ingressRate": rate, "ingressBurst": burst, "egressRate": rate / 2, "egressBurst": burst});
        let conf = with_limits(base.clone(), bw, "ifb");
        let r = w
            .cni("ADD", &format!("c{i}"), &pod, "eth0", &conf)
            .ok()
            .json();
        let host = r["interfaces"][0]["name"].as_str().unwrap();
        let ifb = r["interfaces"][2]["name"].as_str().unwrap();
        assert!(ifb.starts_with("hfi"), "the result lists the ifb: {r}");
        assert!(r["interfaces"][2].get("sandbox").is_none());
        let (tbf, redirect, _) = w.host_tc(host);
        assert_eq!(
            tbf,
            Some(Tbf::new(rate, burst, "ingress").unwrap()),
            "ingress tbf at {rate}"
        );
        let (ifb_tbf, _, ifb_index) = w.host_tc(ifb);
        assert_eq!(
            ifb_tbf,
            Some(Tbf::new(rate / 2, burst, "egress").unwrap()),
            "egress tbf at {rate}"
        );
        assert_eq!(redirect, ifb_index, "host ingress redirected to the ifb");
        w.cni(
            "CHECK",
            &format!("c{i}"),
            &pod,
            "eth0",
            &with_prev(&conf, &r),
        )
        .ok();
        w.cni("DEL", &format!("c{i}"), &pod, "eth0", &conf).ok();
    }
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn check_names_deleted_qdiscs_and_ifb() {
    let mut w = World::new("check_names_deleted_qdiscs_and_ifb");
    let bw = json!({"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000});
    let conf = with_limits(w.conf("1.0.0", ipam_v4("10.42.0.0/24")), bw, "ifb");
    let pod = w.pod();
    let r = w.cni("ADD", "c", &pod, "eth0", &conf).ok().json();
    let with = with_prev(&conf, &r);
    let host = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let ifb = r["interfaces"][2]["name"].as_str().unwrap().to_string();
    let tc = |args: &[&str]| {
        let ok = w.in_node(&[&["tc"][..], args].concat()).status.success();
        assert!(ok, "tc {args:?}");
    };
    w.cni("CHECK", "c", &pod, "eth0", &with).ok();
    tc(&["qdisc", "del", "dev", &host, "ingress"]);
    w.cni("CHECK", "c", &pod, "eth0", &with).err(
        101,
        &format!("ingress of {host} is not redirected to {ifb}"),
    );
    tc(&["qdisc", "del", "dev", &host, "root"]);
    w.cni("CHECK", "c", &pod, "eth0", &with)
        .err(101, &format!("host interface {host} has no tbf"));
    // Someone changes the rate.
    tc(&[
        "qdisc", "add", "dev", &host, "root", "handle", "1:", "tbf", "rate", "1mbit", "burst",
        "10kb", "latency", "25ms",
    ]);
    w.cni("CHECK", "c", &pod, "eth0", &with)
        .err(101, "has tbf rate 125000 B/s");
    ip(&["-n", &w.node, "link", "del", &ifb]);
    // A different config is checked against what it says, not against the record.
    let mut lower = conf.clone();
    lower["runtimeConfig"] =
        json!({"bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 80_000}});
    w.cni("CHECK", "c", &pod, "eth0", &with_prev(&lower, &r))
        .err(101, "has tbf rate 125000 B/s");
    w.cni("CHECK", "c", &pod, "eth0", &with)
        .err(101, "host interface");
    let podns = pod.rsplit('/').next().unwrap().to_string();
    let _ = podns;
    w.cni("DEL", "c", &pod, "eth0", &with).ok();
    w.assert_clean();

    // egressShaping pod: the tbf sits in the pod.
    let bw = json!({"egressRate": 8_000_000, "egressBurst": 80_000});
    let conf = with_limits(w.conf("1.0.0", ipam_v4("10.42.0.0/24")), bw, "pod");
    let pod = w.pod();
    let r = w.cni("ADD", "p", &pod, "eth0", &conf).ok().json();
    assert_eq!(
        r["interfaces"].as_array().unwrap().len(),
        2,
        "no ifb with pod shaping"
    );
    let with = with_prev(&conf, &r);
    w.cni("CHECK", "p", &pod, "eth0", &with).ok();
    let podns = pod.rsplit('/').next().unwrap().to_string();
    assert!(
        Command::new("tc")
            .args(["-n", &podns, "qdisc", "del", "dev", "eth0", "root"])
            .status()
            .unwrap()
            .success()
    );
    w.cni("CHECK", "p", &pod, "eth0", &with)
        .err(101, "pod interface eth0 has no tbf");
    w.cni("DEL", "p", &pod, "eth0", &with).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn del_without_netns_or_prev_result_removes_the_ifb_and_failed_add_too() {
    let mut w = World::new("del_without_netns_removes_the_ifb");
    let bw = json!({"egressRate": 8_000_000, "egressBurst": 80_000});
    let conf = with_limits(w.conf("1.0.0", ipam_v4("10.43.0.0/24")), bw, "ifb");
    let pod = w.pod();
    w.cni("ADD", "c", &pod, "eth0", &conf).ok();
    assert_eq!(w.node_links().len(), 2, "veth and ifb");
    w.delete_pod(&pod);
    w.cni_env(
        "DEL",
        &conf,
        &[
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ],
    )
    .ok();
    w.assert_clean();

    // The record cannot be written: ADD fails after veth, ifb and qdiscs exist, and removes them.
    let pod = w.pod();
    std::fs::remove_dir_all(w.state_dir.join("attachments/testnet")).unwrap();
    std::fs::write(w.state_dir.join("attachments/testnet"), "not a directory").unwrap();
    w.cni("ADD", "d", &pod, "eth0", &conf)
        .err(5, "attachments/testnet");
    std::fs::remove_file(w.state_dir.join("attachments/testnet")).unwrap();
    w.assert_clean();
}

#[test]
fn invalid_limits_are_code_7_naming_the_key() {
    // Fails before anything is touched: no privileges needed.
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let conf = |extra: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"holdfast","ipam":{{"ranges":[[{{"subnet":"10.1.0.0/24"}}]]}}{extra}}}"#
        )
    };
    for (extra, needle) in [
        (
            r#","ingressRate":1000000"#,
            "ingressRate is set without ingressBurst",
        ),
        (
            r#","egressBurst":1000000"#,
            "egressBurst is set without egressRate",
        ),
        (
            r#","runtimeConfig":{"bandwidth":{"EgressRate":-1,"EgressBurst":5}}"#,
            "egressRate",
        ),
        (
            r#","runtimeConfig":{"bandwidth":{"ingressRate":"fast","ingressBurst":5}}"#,
            "ingressRate",
        ),
        (
            r#","ingressRate":1000000000000,"ingressBurst":1000"#,
            "ingressRate 1000000000000 is out of range",
        ),
        (
            r#","ingressRate":8000,"ingressBurst":4000000000"#,
            "ingressBurst 4000000000 is too large",
        ),
        (r#","egressShaping":"tc""#, "egressShaping"),
    ] {
        run_plain(&env, &conf(extra)).err(7, needle);
    }
}
