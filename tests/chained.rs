//! holdfast in conflists with the reference plugins (Debian's containernetworking-plugins 1.1.1,
//! which speak CNI up to 1.0.0), driven by a libcni-style executor.

mod common;
use common::libcni::Chain;
use common::*;
use holdfast::dataplane::tc::Tbf;
use serde_json::{Value, json};

const VERSIONS: &[&str] = &["0.4.0", "1.0.0"];

fn limits() -> Value {
    json!({"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 4_000_000, "egressBurst": 80_000})
}

fn host_local(w: &World, subnet: &str) -> Value {
    json!({"type": "host-local", "dataDir": w.state_dir.join("host-local"),
           "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]})
}

fn addr_of(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn holdfast_shapes_the_veth_of_reference_ptp() {
    let mut w = World::new("holdfast_shapes_the_veth_of_reference_ptp");
    for (i, v) in VERSIONS.iter().enumerate() {
        let list = json!({"cniVersion": v, "name": "testnet", "plugins": [
            {"type": "ptp", "ipMasq": false, "ipam": host_local(&w, "10.50.0.0/24")},
            {"type": "holdfast", "stateDir": w.state_dir, "logLevel": "warn", "capabilities": {"bandwidth": true}},
        ]});
        let pod = w.pod();
        let chain = Chain {
            w: &w,
            list,
            runtime: json!({"bandwidth": limits()}),
        };
        let cid = format!("ptp{i}");
        let r = chain
            .add(&cid, &pod, "eth0")
            .unwrap_or_else(|(p, r)| panic!("{p}: {r:?}"));
        assert_eq!(r["cniVersion"], *v);
        let ifs = r["interfaces"].as_array().unwrap();
        // ptp's host veth, the pod's eth0, then holdfast's ifb.
        assert_eq!(ifs.len(), 3, "{r}");
        assert_eq!(ifs[1]["name"], "eth0");
        let veth = ifs[0]["name"].as_str().unwrap();
        assert!(!veth.starts_with("hf"), "the veth is ptp's: {veth}");
        assert!(ifs[2]["name"].as_str().unwrap().starts_with("hfi"));
        assert_eq!(
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap(),
            addr_of(&r)
        );
        let (tbf, redirect, _) = w.host_tc(veth);
        assert_eq!(tbf, Some(Tbf::new(8_000_000, 80_000, "ingress").unwrap()));
        let (ifb_tbf, _, ifb_index) = w.host_tc(ifs[2]["name"].as_str().unwrap());
        assert_eq!(
            ifb_tbf,
            Some(Tbf::new(4_000_000, 80_000, "egress").unwrap())
        );
        assert_eq!(redirect, ifb_index);
        let gw = r["ips"][0]["gateway"].as_str().unwrap().to_string();
        let node = w.node.clone();
        assert!(w.ping(&pod, &gw), "pod -> ptp gateway");
        assert!(w.ping(&node, &addr_of(&r)), "node -> pod");
        chain
            .check(&cid, &pod, "eth0", &r, &[])
            .unwrap_or_else(|(p, r)| panic!("CHECK {p}: {r:?}"));
        chain
            .del(&cid, &pod, "eth0", Some(&r))
            .unwrap_or_else(|(p, r)| panic!("DEL {p}: {r:?}"));
        // containerd's second DEL: no prevResult, no netns.
        chain
            .del(&cid, "", "eth0", None)
            .unwrap_or_else(|(p, r)| panic!("second DEL {p}: {r:?}"));
        w.assert_clean();
    }
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn holdfast_shapes_a_reference_bridge_port() {
    let mut w = World::new("holdfast_shapes_a_reference_bridge_port");
    w.fixtures.push("hfbr0".into()); // the bridge plugin leaves its bridge, by design
    let list = json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
        {"type": "bridge", "bridge": "hfbr0", "isGateway": true, "ipMasq": false, "ipam": host_local(&w, "10.51.0.0/24")},
        {"type": "holdfast", "stateDir": w.state_dir, "logLevel": "warn", "capabilities": {"bandwidth": true}},
    ]});
    let pod = w.pod();
    let chain = Chain {
        w: &w,
        list,
        runtime: json!({"bandwidth": limits()}),
    };
    let r = chain
        .add("br", &pod, "eth0")
        .unwrap_or_else(|(p, r)| panic!("{p}: {r:?}"));
    // bridge lists the bridge first: the veth is found by peer index, not by position.
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs[0]["name"], "hfbr0");
    let veth = ifs[1]["name"].as_str().unwrap();
    assert_eq!(
        w.host_tc(veth).0,
        Some(Tbf::new(8_000_000, 80_000, "ingress").unwrap())
    );
    assert_eq!(
        w.host_tc("hfbr0").0,
        None,
        "the bridge itself is not shaped"
    );
    assert!(w.ping(&pod, "10.51.0.1"));
    chain
        .check("br", &pod, "eth0", &r, &[])
        .unwrap_or_else(|(p, r)| panic!("CHECK {p}: {r:?}"));
    chain
        .del("br", &pod, "eth0", Some(&r))
        .unwrap_or_else(|(p, r)| panic!("DEL {p}: {r:?}"));
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn reference_bandwidth_portmap_and_tuning_chain_after_holdfast() {
    let mut w = World::new("reference_plugins_chain_after_holdfast");
    for (i, v) in VERSIONS.iter().enumerate() {
        let list = json!({"cniVersion": v, "name": "testnet", "plugins": [
            {"type": "holdfast", "stateDir": w.state_dir, "logLevel": "warn",
             "ipam": {"ranges": [[{"subnet": "10.52.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "1234"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false},
        ]});
        let runtime = json!({"bandwidth": limits(),
                             "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
        let pod = w.pod();
        let chain = Chain {
            w: &w,
            list,
            runtime,
        };
        let cid = format!("ref{i}");
        let r = chain
            .add(&cid, &pod, "eth0")
            .unwrap_or_else(|(p, r)| panic!("{p}: {r:?}"));
        let host = r["interfaces"][0]["name"].as_str().unwrap();
        assert!(host.starts_with("hf"));
        // The reference bandwidth plugin found holdfast's host veth and shaped it.
        assert_eq!(w.host_tc(host).0.map(|t| t.rate), Some(1_000_000));
        let podns = pod.rsplit('/').next().unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", podns, "sysctl", "-n", "net.core.somaxconn"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1234",
            "tuning applied"
        );
        let nat = w.in_node(&["iptables", "-t", "nat", "-S"]);
        assert!(
            String::from_utf8_lossy(&nat.stdout).contains("18080"),
            "portmap rules present"
        );
        assert!(w.ping(&pod, "10.52.0.1"));
        // portmap 1.1.1's CHECK always fails (containernetworking/plugins#819).
        chain
            .check(&cid, &pod, "eth0", &r, &["portmap"])
            .unwrap_or_else(|(p, r)| panic!("CHECK {p}: {r:?}"));
        chain
            .del(&cid, &pod, "eth0", Some(&r))
            .unwrap_or_else(|(p, r)| panic!("DEL {p}: {r:?}"));
        let nat = w.in_node(&["iptables", "-t", "nat", "-S"]);
        assert!(
            !String::from_utf8_lossy(&nat.stdout).contains("18080"),
            "portmap rules removed"
        );
        w.assert_clean();
    }
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn a_failed_chained_add_leaves_the_earlier_plugins_veth_as_it_was() {
    let mut w = World::new("a_failed_chained_add_leaves_the_veth");
    let list = json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
        {"type": "ptp", "ipMasq": false, "ipam": host_local(&w, "10.53.0.0/24")},
        {"type": "holdfast", "stateDir": w.state_dir, "logLevel": "warn", "capabilities": {"bandwidth": true}},
    ]});
    let pod = w.pod();
    // The attachment record cannot be written: holdfast fails after shaping.
    std::fs::create_dir_all(w.state_dir.join("attachments")).unwrap();
    std::fs::write(w.state_dir.join("attachments/testnet"), "not a directory").unwrap();
    let chain = Chain {
        w: &w,
        list,
        runtime: json!({"bandwidth": limits()}),
    };
    let (plugin, run) = chain
        .add("f", &pod, "eth0")
        .expect_err("holdfast must fail");
    assert_eq!(plugin, "\"holdfast\"");
    run.err(5, "attachments/testnet");
    let veth = w
        .node_links()
        .into_iter()
        .find(|l| l.starts_with("veth"))
        .expect("ptp's veth is still there");
    assert_eq!(
        w.host_tc(&veth),
        (None, None, w.host_tc(&veth).2),
        "qdiscs left on {veth}"
    );
    assert!(
        !w.node_links().iter().any(|l| l.starts_with("hfi")),
        "ifb left"
    );
    std::fs::remove_file(w.state_dir.join("attachments/testnet")).unwrap();
    chain
        .del("f", &pod, "eth0", None)
        .unwrap_or_else(|(p, r)| panic!("DEL {p}: {r:?}"));
    w.assert_clean();
}
