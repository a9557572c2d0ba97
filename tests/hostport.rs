//! hostPorts (`runtimeConfig.portMappings`) forwarded by holdfast itself: from the node's
//! addresses, a hostIP, 127.0.0.1, another pod and the pod itself (hairpin), for TCP and UDP;
//! gone with DEL, kept for the other pods; undone when ADD fails after them.

mod common;
use common::*;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};

const NODE_IP: &str = "192.168.77.1";

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server in a pod netns: TCP on 80 (IPv4 and IPv6) and UDP on 5353, each answering with the address the
/// request came from (so a test sees whether it was masqueraded).
struct Server;

const SERVE: &str = r#"
import socket, threading
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 5353))
    while True:
        d, a = u.recvfrom(100)
        u.sendto(("udp from " + a[0]).encode(), a)
threading.Thread(target=udp, daemon=True).start()
def tcp6():
    t = socket.socket(socket.AF_INET6)
    t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        t.bind(("::", 80))
    except OSError:
        return  # a pod without IPv6
    t.listen(16)
    while True:
        c, a = t.accept()
        c.sendall(("tcp from " + a[0]).encode())
        c.close()
threading.Thread(target=tcp6, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 80))
t.listen(16)
print("ready", flush=True)
while True:
    c, a = t.accept()
    c.sendall(("tcp from " + a[0]).encode())
    c.close()
"#;

const ASK: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=2)
        print(s.recv(100).decode())
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
        s.settimeout(2)
        s.sendto(b"?", (host, port))
        print(s.recvfrom(100)[0].decode())
except Exception as e:
    print("failed:", type(e).__name__)
"#;

impl Server {
    fn start(pod: &str) -> Killed {
        let ns = pod.rsplit('/').next().unwrap();
        let mut c = Command::new("ip")
            .args(["netns", "exec", ns, "/usr/bin/python3", "-c", SERVE])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Killed(c)
    }
}

/// What a `proto` request to `host:port` from netns `from` (a pod path or the node's name) got.
fn ask(from: &str, proto: &str, host: &str, port: u16) -> String {
    ask_from(from, proto, host, port, 0)
}

/// [`ask`] from source port `sport` (0: any), so that two requests are one conntrack flow.
fn ask_from(from: &str, proto: &str, host: &str, port: u16, sport: u16) -> String {
    let ns = from.rsplit('/').next().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "/usr/bin/python3",
            "-c",
            ASK,
            proto,
            host,
        ])
        .args([port.to_string(), sport.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn conf(w: &World, mappings: Value) -> Value {
    let mut c = w.conf("1.0.0", ipam_v4("10.61.0.0/24"));
    c["capabilities"] = json!({"portMappings": true});
    c["runtimeConfig"] = json!({ "portMappings": mappings });
    c
}

/// The node's own address, on a veth pair inside the node netns (this kernel has no dummy links).
fn node_address(w: &mut World) {
    let n = w.node.clone();
    ip(&[
        "-n", &n, "link", "add", "hfnode0", "type", "veth", "peer", "name", "hfnode1",
    ]);
    ip(&[
        "-n",
        &n,
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        "hfnode0",
    ]);
    ip(&["-n", &n, "link", "set", "hfnode0", "up"]);
    ip(&["-n", &n, "link", "set", "hfnode1", "up"]);
    w.fixtures.extend(["hfnode0".into(), "hfnode1".into()]);
}

/// A world with a node address and one pod (`cid`) forwarding hostPort 8080 to its port 80.
fn one_pod_on_8080(test: &str, cid: &str) -> (World, String) {
    let mut w = World::new(test);
    node_address(&mut w);
    let a = w.pod();
    let c = conf(&w, json!([{"hostPort": 8080, "containerPort": 80}]));
    w.cni("ADD", cid, &a, "eth0", &c).ok();
    (w, a)
}

fn addr_of(r: &Value) -> String {
    let a = r["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

fn hostport_entries(w: &World) -> Vec<String> {
    files(&w.state_dir.join("hostports/testnet"))
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn hostports_are_forwarded_from_every_node_address_and_go_with_del() {
    let mut w = World::new("hostports_are_forwarded");
    node_address(&mut w);
    let (a, b) = (w.pod(), w.pod());
    let maps = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        // As containerd's go-cni sends it: Go field names, an empty HostIP.
        {"HostPort": 5300, "ContainerPort": 5353, "Protocol": "udp", "HostIP": ""},
        {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
    ]);
    let ra = w.cni("ADD", "hpa", &a, "eth0", &conf(&w, maps)).ok().json();
    let rb = w
        .cni("ADD", "hpb", &b, "eth0", &conf(&w, json!([])))
        .ok()
        .json();
    let (pa, pb) = (addr_of(&ra), addr_of(&rb));
    let gw = ra["ips"][0]["gateway"].as_str().unwrap().to_string();
    let _server = Server::start(&a);
    assert_eq!(
        hostport_entries(&w),
        ["hpa@eth0.json"],
        "one entry, for the pod with mappings"
    );

    let node = w.node.clone();
    // From the node: its own address is not masqueraded; 127.0.0.1 is (as the gateway).
    assert_eq!(
        ask(&node, "tcp", NODE_IP, 8080),
        format!("tcp from {NODE_IP}")
    );
    assert_eq!(
        ask(&node, "tcp", "127.0.0.1", 8080),
        format!("tcp from {gw}")
    );
    assert_eq!(
        ask(&node, "udp", NODE_IP, 5300),
        format!("udp from {NODE_IP}")
    );
    // A hostIP limits the mapping to that address.
    assert_eq!(
        ask(&node, "tcp", "127.0.0.1", 8081),
        format!("tcp from {gw}")
    );
    assert!(ask(&node, "tcp", NODE_IP, 8081).starts_with("failed"));
    // Another pod keeps its address; the pod itself (hairpin) comes back through the node.
    assert_eq!(ask(&b, "tcp", NODE_IP, 8080), format!("tcp from {pb}"));
    assert_eq!(ask(&a, "tcp", NODE_IP, 8080), format!("tcp from {gw}"));
    assert_eq!(ask(&a, "udp", NODE_IP, 5300), format!("udp from {gw}"));
    assert_eq!(
        ask(&node, "tcp", &pa, 80),
        format!("tcp from {gw}"),
        "the pod itself"
    );

    w.cni("DEL", "hpa", &a, "eth0", &conf(&w, json!([]))).ok();
    assert!(ask(&node, "tcp", NODE_IP, 8080).starts_with("failed"));
    assert!(hostport_entries(&w).is_empty());
    w.cni("DEL", "hpb", &b, "eth0", &conf(&w, json!([]))).ok();
    // A second DEL (containerd sends up to three) finds nothing to do.
    w.cni("DEL", "hpa", &a, "eth0", &conf(&w, json!([]))).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn one_pods_del_leaves_the_others_hostports() {
    let mut w = World::new("one_pods_del_leaves_the_others");
    node_address(&mut w);
    let (a, b) = (w.pod(), w.pod());
    let ma = json!([{"hostPort": 8080, "containerPort": 80}]);
    let mb = json!([{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}]);
    w.cni("ADD", "hpa", &a, "eth0", &conf(&w, ma)).ok();
    let rb = w.cni("ADD", "hpb", &b, "eth0", &conf(&w, mb)).ok().json();
    let _sa = Server::start(&a);
    let _sb = Server::start(&b);
    let node = w.node.clone();
    assert_eq!(
        ask(&node, "tcp", NODE_IP, 8080),
        format!("tcp from {NODE_IP}")
    );
    assert_eq!(
        ask(&node, "tcp", NODE_IP, 9090),
        format!("tcp from {NODE_IP}")
    );
    w.cni("DEL", "hpa", &a, "eth0", &conf(&w, json!([]))).ok();
    assert!(ask(&node, "tcp", NODE_IP, 8080).starts_with("failed"));
    assert_eq!(
        ask(&node, "tcp", NODE_IP, 9090),
        format!("tcp from {NODE_IP}")
    );
    assert!(!addr_of(&rb).is_empty());
    w.cni("DEL", "hpb", &b, "eth0", &conf(&w, json!([]))).ok();
    assert!(ask(&node, "tcp", NODE_IP, 9090).starts_with("failed"));
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn bad_mappings_fail_add_before_any_change_and_never_stop_del() {
    let mut w = World::new("bad_mappings_fail_add");
    let a = w.pod();
    for bad in [
        json!([{"hostPort": 0, "containerPort": 80}]),
        json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
        json!([{"hostPort": 80, "containerPort": 80, "hostIP": "not-an-ip"}]),
        json!("nope"),
    ] {
        let r = w.cni("ADD", "bad", &a, "eth0", &conf(&w, bad.clone()));
        r.err(7, "portMappings");
        w.cni("DEL", "bad", &a, "eth0", &conf(&w, bad)).ok();
    }
    // Chained after another plugin, the addresses are not holdfast's to forward to.
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": a}],
                      "ips": [{"address": "10.61.1.2/24", "interface": 0}]});
    let mut chained = with_prev(
        &conf(&w, json!([{"hostPort": 80, "containerPort": 80}])),
        &prev,
    );
    chained.as_object_mut().unwrap().remove("ipam");
    w.cni("ADD", "ch", &a, "eth0", &chained).err(7, "portmap");
    w.assert_clean();
    assert!(hostport_entries(&w).is_empty());
}

/// ADD killed right after its hostPorts were made: DEL removes the rules and the entry with the
/// rest.
#[cfg(feature = "failpoints")]
#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn add_killed_after_its_hostports_leaves_nothing_after_del() {
    let mut w = World::new("add_killed_after_its_hostports");
    node_address(&mut w);
    let a = w.pod();
    let c = conf(&w, json!([{"hostPort": 8080, "containerPort": 80}]));
    let env = [
        ("CNI_CONTAINERID", "killed"),
        ("CNI_NETNS", a.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("HOLDFAST_FAILPOINT", "add-hostports"),
    ];
    let r = w.cni_env("ADD", &c, &env);
    assert_ne!(r.code, 0, "the failpoint killed ADD");
    assert_eq!(hostport_entries(&w), ["killed@eth0.json"]);
    let _s = Server::start(&a);
    let node = w.node.clone();
    assert!(ask(&node, "tcp", NODE_IP, 8080).starts_with("tcp from"));
    w.cni("DEL", "killed", &a, "eth0", &conf(&w, json!([])))
        .ok();
    assert!(ask(&node, "tcp", NODE_IP, 8080).starts_with("failed"));
    assert!(hostport_entries(&w).is_empty());
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn check_compares_the_forwarded_hostports_with_the_runtimes() {
    let mut w = World::new("check_compares_hostports");
    let a = w.pod();
    let maps = json!([{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]);
    let r = w
        .cni("ADD", "ck", &a, "eth0", &conf(&w, maps.clone()))
        .ok()
        .json();
    let check = |mappings: &Value| {
        w.cni(
            "CHECK",
            "ck",
            &a,
            "eth0",
            &with_prev(&conf(&w, mappings.clone()), &r),
        )
    };
    check(&maps).ok();
    check(&json!([{"hostPort": 9090, "containerPort": 80}])).err(101, "the runtime asks for");
    check(&json!([])).err(101, "the runtime asks for []");
    std::fs::remove_file(w.state_dir.join("hostports/testnet/ck@eth0.json")).unwrap();
    check(&maps).err(101, "not forwarded");
    w.cni("DEL", "ck", &a, "eth0", &conf(&w, maps)).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn gc_stops_forwarding_to_attachments_the_runtime_no_longer_lists() {
    let mut w = World::new("gc_stops_forwarding");
    node_address(&mut w);
    let (a, b) = (w.pod(), w.pod());
    w.cni(
        "ADD",
        "keep",
        &a,
        "eth0",
        &conf(&w, json!([{"hostPort": 8080, "containerPort": 80}])),
    )
    .ok();
    w.cni(
        "ADD",
        "gone",
        &b,
        "eth0",
        &conf(&w, json!([{"hostPort": 9090, "containerPort": 80}])),
    )
    .ok();
    let dir = w.state_dir.join("hostports/testnet");
    std::fs::write(dir.join("junk@eth0.json"), "{not json").unwrap();
    // doctor shows what is forwarded, and the entry that forwards nothing.
    let file = w.state_dir.join("doctor.conflist");
    let list = json!({"cniVersion": "1.1.0", "name": "testnet", "plugins": [conf(&w, json!([]))]});
    std::fs::write(&file, list.to_string()).unwrap();
    let f = file.display().to_string();
    let report: Value =
        serde_json::from_slice(&w.in_node(&[BIN, "doctor", "--conf", &f, "--json"]).stdout)
            .unwrap();
    let hp = report["hostports"].as_array().unwrap();
    assert_eq!(hp.len(), 2, "{report}");
    let mut ports: Vec<u64> = hp
        .iter()
        .map(|x| x["mappings"][0]["hostPort"].as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [8080, 9090], "{report}");
    let attention = report["attention"].to_string();
    assert!(
        attention.contains("unreadable hostPort entry"),
        "{attention}"
    );
    let human = w.in_node(&[BIN, "doctor", "--conf", &f]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("hostports   keep/eth0") && text.contains("8080/tcp -> 80"),
        "{text}"
    );

    let _sa = Server::start(&a);
    let _sb = Server::start(&b);
    let mut gc = conf(&w, json!([]));
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    w.cni_env("GC", &gc, &[]).ok();
    let node = w.node.clone();
    assert_eq!(
        ask(&node, "tcp", NODE_IP, 8080),
        format!("tcp from {NODE_IP}")
    );
    assert!(ask(&node, "tcp", NODE_IP, 9090).starts_with("failed"));
    assert_eq!(
        files(&dir),
        ["keep@eth0.json"],
        "GC removed the stale and the unreadable entry"
    );
    w.cni("DEL", "keep", &a, "eth0", &conf(&w, json!([]))).ok();
    w.assert_clean();
}

/// Removes the IPv4 hostPort table in netns `ns` as `nft delete table ip holdfast-hostports`
/// would (no nft binary here): one nftables batch over NETLINK_NETFILTER. Prints the kernel's
/// answer, 0 for done.
const DELETE_TABLE: &str = r#"
import socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.bind((0, 0))
def msg(t, flags, seq, family, res, payload=b""):
    body = struct.pack("BBH", family, 0, socket.htons(res)) + payload
    return struct.pack("=LHHLL", 16 + len(body), t, flags, seq, 0) + body
name = b"holdfast-hostports\0"
attr = struct.pack("=HH", 4 + len(name), 1) + name
attr += b"\0" * ((4 - len(attr) % 4) % 4)
s.send(msg(0x10, 1, 0, 0, 10) + msg((10 << 8) | 2, 1 | 4, 1, 2, 0, attr) + msg(0x11, 1, 2, 0, 10))
print(struct.unpack("=i", s.recv(4096)[16:20])[0])
"#;

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn the_agent_brings_back_a_removed_hostport_table() {
    let (w, a) = one_pod_on_8080("agent_brings_back_hostports", "ag");
    let _s = Server::start(&a);
    let node = w.node.clone();
    assert_eq!(
        ask(&node, "tcp", NODE_IP, 8080),
        format!("tcp from {NODE_IP}")
    );
    let out = w.in_node(&["/usr/bin/python3", "-c", DELETE_TABLE]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{out:?}");
    assert!(ask(&node, "tcp", NODE_IP, 8080).starts_with("failed"));

    // An agent with no reachable API (no kubeconfig at all): its rounds still restore the table.
    let list = json!({"cniVersion": "1.1.0", "name": "testnet", "plugins": [{
        "type": "holdfast", "stateDir": w.state_dir, "ipam": ipam_v4("10.61.0.0/24"),
        "kubernetes": {"kubeconfig": w.state_dir.join("no-kubeconfig"), "refreshSeconds": 10}}]});
    let file = w.state_dir.join("agent.conflist");
    std::fs::write(&file, list.to_string()).unwrap();
    let agent = Killed(
        Command::new("ip")
            .args(["netns", "exec", &node, BIN, "agent", "--conf"])
            .arg(&file)
            .args(["--sa-dir", "/nonexistent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A generous ceiling (the agent's round is every 5 s here): the failure is a table that
    // never comes back.
    let back = (0..60).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(500));
        ask(&node, "tcp", NODE_IP, 8080) == format!("tcp from {NODE_IP}")
    });
    assert!(
        back,
        "the agent did not bring the hostPort table back in 30 s"
    );
    drop(agent);
    w.cni("DEL", "ag", &a, "eth0", &conf(&w, json!([]))).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn a_udp_flow_follows_its_hostport_to_the_next_pod() {
    let mut w = World::new("udp_flow_follows");
    node_address(&mut w);
    let (a, b) = (w.pod(), w.pod());
    let maps = json!([{"hostPort": 5300, "containerPort": 5353, "protocol": "udp"}]);
    w.cni("ADD", "ua", &a, "eth0", &conf(&w, maps.clone())).ok();
    let node = w.node.clone();
    let sa = Server::start(&a);
    let answered = format!("udp from {NODE_IP}");
    assert_eq!(ask_from(&node, "udp", NODE_IP, 5300, 40999), answered);
    // The pod is replaced; the client keeps its flow (same ports), whose conntrack entry still
    // says "DNAT to the old pod" until it expires.
    drop(sa);
    w.cni("DEL", "ua", &a, "eth0", &conf(&w, json!([]))).ok();
    w.cni("ADD", "ub", &b, "eth0", &conf(&w, maps)).ok();
    let _sb = Server::start(&b);
    assert_eq!(
        ask_from(&node, "udp", NODE_IP, 5300, 40999),
        answered,
        "the flow went on to the old pod"
    );
    w.cni("DEL", "ub", &b, "eth0", &conf(&w, json!([]))).ok();
    w.assert_clean();
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn ipv6_hostports_are_forwarded_too() {
    const NODE_IP6: &str = "fd77::1";
    let mut w = World::new("ipv6_hostports");
    node_address(&mut w);
    let n = w.node.clone();
    ip(&[
        "-n",
        &n,
        "addr",
        "add",
        &format!("{NODE_IP6}/64"),
        "dev",
        "hfnode0",
        "nodad",
    ]);
    let a = w.pod();
    let mut c = w.conf("1.0.0", ipam_dual("10.62.0.0/24", "fd62::/64"));
    c["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]});
    let r = w.cni("ADD", "v6", &a, "eth0", &c).ok().json();
    let _s = Server::start(&a);
    let gw6 = r["ips"][1]["gateway"].as_str().unwrap().to_string();
    // Both families from the node; the pod's own hostPort over IPv6 comes back masqueraded.
    assert_eq!(ask(&n, "tcp", NODE_IP, 8080), format!("tcp from {NODE_IP}"));
    assert_eq!(
        ask(&n, "tcp", NODE_IP6, 8080),
        format!("tcp from {NODE_IP6}")
    );
    assert_eq!(ask(&a, "tcp", NODE_IP6, 8080), format!("tcp from {gw6}"));
    w.cni("DEL", "v6", &a, "eth0", &c).ok();
    assert!(ask(&n, "tcp", NODE_IP6, 8080).starts_with("failed"));
    w.assert_clean();
}
