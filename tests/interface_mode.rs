//! Interface mode end to end, in private namespaces: ADD/CHECK/DEL in every version, reachability,
//! idempotent DEL, failure cleanup.

mod common;
use common::*;
use serde_json::{Value, json};

const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn add_check_del_in_every_version() {
    let mut w = World::new("add_check_del_in_every_version");
    for (i, v) in VERSIONS.iter().enumerate() {
        let pod = w.pod();
        let cid = format!("ctr{i}");
        let mut conf = w.conf(v, ipam_dual("10.10.0.0/24", "fd10::/64"));
        conf["mtu"] = json!(1400);
        conf["dns"] = json!({"nameservers": ["10.43.0.10"], "search": ["svc.cluster.local"]});
        let r = w.cni("ADD", &cid, &pod, "eth0", &conf).ok().json();

        assert_eq!(r["cniVersion"], *v);
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2);
        let host = &ifs[0];
        assert!(host["name"].as_str().unwrap().starts_with("hf"));
        assert_eq!(host["name"].as_str().unwrap().len(), 13);
        assert!(
            host.get("sandbox").is_none(),
            "host interface has no sandbox"
        );
        assert_eq!(host["mac"].as_str().unwrap().len(), 17);
        assert_eq!(ifs[1]["name"], "eth0");
        assert_eq!(ifs[1]["sandbox"], pod.as_str());
        if *v == "1.1.0" {
            assert_eq!(ifs[1]["mtu"], 1400);
        } else {
            assert!(
                ifs[1].get("mtu").is_none(),
                "{v} must not carry interface mtu"
            );
        }
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0]["address"], format!("10.10.0.{}/24", i + 2));
        assert_eq!(ips[0]["gateway"], "10.10.0.1");
        assert_eq!(ips[0]["interface"], 1);
        assert_eq!(ips[1]["address"], format!("fd10::{}/64", i + 2));
        assert_eq!(ips[1]["gateway"], "fd10::1");
        if v.starts_with("0.") {
            assert_eq!(ips[0]["version"], "4");
            assert_eq!(ips[1]["version"], "6");
        } else {
            assert!(ips[0].get("version").is_none());
        }
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.10.0.1"}, {"dst": "::/0", "gw": "fd10::1"}])
        );
        assert_eq!(r["dns"]["nameservers"], json!(["10.43.0.10"]));

        // The kernel agrees with the result, MTU on both ends.
        assert_eq!(
            w.addrs(&pod, "eth0"),
            vec![
                format!("10.10.0.{}/24", i + 2),
                format!("fd10::{}/64", i + 2)
            ]
        );
        let hostname = host["name"].as_str().unwrap();
        assert!(ip(&["-n", &w.node, "link", "show", hostname]).contains("mtu 1400"));
        let podns = pod.rsplit('/').next().unwrap();
        assert!(ip(&["-n", podns, "link", "show", "eth0"]).contains("mtu 1400"));

        let with = with_prev(&conf, &r);
        if *v >= "0.4.0" {
            w.cni("CHECK", &cid, &pod, "eth0", &with).ok();
        }
        w.cni("DEL", &cid, &pod, "eth0", &with).ok();
        w.cni("DEL", &cid, &pod, "eth0", &with).ok();
    }
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn pods_reach_gateway_node_and_each_other_dual_stack() {
    let mut w = World::new("pods_reach_gateway_node_and_each_other_dual_stack");
    let conf = w.conf("1.0.0", ipam_dual("10.11.0.0/24", "fd11::/64"));
    let (a, b) = (w.pod(), w.pod());
    let ra = w.cni("ADD", "a", &a, "eth0", &conf).ok().json();
    let rb = w.cni("ADD", "b", &b, "eth0", &conf).ok().json();
    let addr = |r: &Value, i: usize| {
        r["ips"][i]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let node = w.node.clone();
    for fam in 0..2 {
        let gw = if fam == 0 { "10.11.0.1" } else { "fd11::1" };
        assert!(w.ping(&a, gw), "pod a -> gateway {gw}");
        assert!(w.ping(&node, &addr(&ra, fam)), "node -> pod a ({fam})");
        assert!(w.ping(&a, &addr(&rb, fam)), "pod a -> pod b ({fam})");
        assert!(w.ping(&b, &addr(&ra, fam)), "pod b -> pod a ({fam})");
    }
    w.cni("DEL", "a", &a, "eth0", &conf).ok();
    w.cni("DEL", "b", &b, "eth0", &conf).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn del_is_idempotent_without_add_netns_or_prev_result() {
    let mut w = World::new("del_is_idempotent_without_add_netns_or_prev_result");
    let conf = w.conf("1.0.0", ipam_v4("10.12.0.0/24"));
    // Never added.
    let pod = w.pod();
    w.cni("DEL", "never", &pod, "eth0", &conf).ok();
    w.cni_env(
        "DEL",
        &conf,
        &[("CNI_CONTAINERID", "never"), ("CNI_IFNAME", "eth0")],
    )
    .ok();

    // Pod netns deleted before DEL, no prevResult: the host veth and lease still go.
    let r = w.cni("ADD", "gone", &pod, "eth0", &conf).ok().json();
    w.delete_pod(&pod);
    assert_eq!(w.leases().len(), 1);
    w.cni("DEL", "gone", &pod, "eth0", &conf).ok();
    w.assert_clean();

    // Empty CNI_NETNS (ctr run --cni does this), then DEL again.
    let pod = w.pod();
    let r2 = w.cni("ADD", "empty", &pod, "eth0", &conf).ok().json();
    assert_ne!(
        r2["ips"][0]["address"], r["ips"][0]["address"],
        "addresses are not reused at once"
    );
    w.cni_env(
        "DEL",
        &with_prev(&conf, &r2),
        &[
            ("CNI_CONTAINERID", "empty"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ],
    )
    .ok();
    w.cni("DEL", "empty", &pod, "eth0", &conf).ok();
    w.assert_clean();
    assert_eq!(
        ip(&["-n", pod.rsplit('/').next().unwrap(), "-o", "link"])
            .lines()
            .count(),
        1,
        "only lo left in pod"
    );
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn del_without_record_releases_crashed_add_leases() {
    let mut w = World::new("del_without_record_releases_crashed_add_leases");
    let conf = w.conf("1.0.0", ipam_v4("10.13.0.0/24"));
    let pod = w.pod();
    w.cni("ADD", "crash", &pod, "eth0", &conf).ok();
    // Simulate a crash after the lease and veth, before the record.
    for r in w.records() {
        std::fs::remove_file(w.state_dir.join("attachments/testnet").join(r)).unwrap();
    }
    w.cni("DEL", "crash", &pod, "eth0", &conf).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn add_onto_existing_interface_fails_without_touching_it() {
    let mut w = World::new("add_onto_existing_interface_fails_without_touching_it");
    let conf = w.conf("1.0.0", ipam_v4("10.14.0.0/24"));
    let pod = w.pod();
    let podns = pod.rsplit('/').next().unwrap().to_string();
    ip(&[
        "-n", &podns, "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let before = ip(&["-n", &podns, "-o", "link", "show", "eth0"]);
    w.cni("ADD", "c", &pod, "eth0", &conf)
        .err(102, "eth0 already exists");
    assert_eq!(ip(&["-n", &podns, "-o", "link", "show", "eth0"]), before);
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn retried_add_replaces_its_own_stale_attachment() {
    let mut w = World::new("retried_add_replaces_its_own_stale_attachment");
    let conf = w.conf("1.0.0", ipam_v4("10.15.0.0/24"));
    let pod = w.pod();
    w.cni("ADD", "c", &pod, "eth0", &conf).ok();
    let r = w.cni("ADD", "c", &pod, "eth0", &conf).ok().json();
    assert_eq!(w.node_links().len(), 1);
    assert_eq!(
        w.leases(),
        vec![
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        ]
    );
    assert!(w.ping(&pod, "10.15.0.1"));
    w.cni("DEL", "c", &pod, "eth0", &conf).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn failed_add_undoes_every_step() {
    let mut w = World::new("failed_add_undoes_every_step");
    let mut conf = w.conf("1.0.0", ipam_v4("10.16.0.0/24"));
    // A gateway that is not on-link: the kernel refuses the route after veth, addresses and
    // lease exist.
    conf["ipam"]["routes"] = json!([{"dst": "192.168.77.0/24", "gw": "172.31.255.1"}]);
    let pod = w.pod();
    let r = w.cni("ADD", "c", &pod, "eth0", &conf);
    r.err(999, "192.168.77.0/24");
    w.assert_clean();
    let podns = pod.rsplit('/').next().unwrap();
    assert_eq!(
        ip(&["-n", podns, "-o", "link"]).lines().count(),
        1,
        "pod end left behind"
    );
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn check_names_what_drifted() {
    let mut w = World::new("check_names_what_drifted");
    let conf = w.conf("1.1.0", ipam_v4("10.17.0.0/24"));
    let pod = w.pod();
    let podns = pod.rsplit('/').next().unwrap().to_string();
    let r = w.cni("ADD", "c", &pod, "eth0", &conf).ok().json();
    let with = with_prev(&conf, &r);
    w.cni("CHECK", "c", &pod, "eth0", &with).ok();

    ip_in(&podns, "route del default");
    w.cni("CHECK", "c", &pod, "eth0", &with)
        .err(101, "route 0.0.0.0/0 via 10.17.0.1");
    ip_in(&podns, "route add default via 10.17.0.1 dev eth0");
    w.cni("CHECK", "c", &pod, "eth0", &with).ok();

    ip_in(&podns, "addr del 10.17.0.2/24 dev eth0");
    w.cni("CHECK", "c", &pod, "eth0", &with)
        .err(101, "address 10.17.0.2/24");
    // Removing the last IPv4 address flushed the device's routes: put everything back.
    ip_in(&podns, "addr add 10.17.0.2/24 dev eth0 noprefixroute");
    ip_in(&podns, "route add 10.17.0.1 dev eth0 scope link");
    ip_in(&podns, "route add default via 10.17.0.1 dev eth0");
    w.cni("CHECK", "c", &pod, "eth0", &with).ok();

    let lease = w.state_dir.join("ipam/testnet/10.17.0.2");
    std::fs::write(&lease, "someone-else\r\neth0").unwrap();
    w.cni("CHECK", "c", &pod, "eth0", &with)
        .err(101, "lease for 10.17.0.2");
    std::fs::write(&lease, "c\r\neth0").unwrap();

    let host = r["interfaces"][0]["name"].as_str().unwrap();
    ip(&["-n", &w.node, "link", "set", host, "down"]);
    w.cni("CHECK", "c", &pod, "eth0", &with).err(101, "down");

    w.cni("CHECK", "c", &pod, "eth0", &conf)
        .err(7, "prevResult");
    w.cni("DEL", "c", &pod, "eth0", &with).ok();
    w.cni("CHECK", "c", &pod, "eth0", &with)
        .err(101, "no attachment record");
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn del_by_link_group_never_takes_a_foreign_link_in_the_group() {
    let mut w = World::new("del_by_link_group_never_takes_a_foreign_link");
    let mut conf = w.conf("1.0.0", ipam_v4("10.18.0.0/24"));
    conf["egressRate"] = json!(8_000_000);
    conf["egressBurst"] = json!(80_000);
    let pod = w.pod();
    let r = w.cni("ADD", "g", &pod, "eth0", &conf).ok().json();
    let g = holdfast::dataplane::names::group("g", "eth0");
    let group = g.to_string();
    for dev in [
        r["interfaces"][0]["name"].as_str().unwrap(),
        r["interfaces"][2]["name"].as_str().unwrap(),
    ] {
        let d = ip(&["-n", &w.node, "-d", "link", "show", dev]);
        // iproute2 prints the group as a signed 32-bit number.
        assert!(
            d.contains(&format!("group {} ", g as i32)),
            "{dev} not in the attachment's group: {d}"
        );
    } // Someone else's link in the same group (as after a hash collision).
    ip(&["-n", &w.node, "link", "add", "foreign0", "type", "ifb"]);
    ip(&["-n", &w.node, "link", "set", "foreign0", "group", &group]);
    w.cni("DEL", "g", &pod, "eth0", &conf).ok();
    assert_eq!(
        w.node_links(),
        vec!["foreign0".to_string()],
        "only the foreign link may remain"
    );
    ip(&["-n", &w.node, "link", "del", "foreign0"]);
    w.assert_clean();
}

/// `ip -n NETNS <words>`.
fn ip_in(netns: &str, words: &str) {
    let mut args = vec!["-n", netns];
    args.extend(words.split_whitespace());
    ip(&args);
}
