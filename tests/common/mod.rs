//! Test worlds: a private "node" netns per test, pod netns inside it, the real plugin binary run
//! in the node netns, and a guard that removes all of it even when the test fails.
#![allow(dead_code)]

pub mod fakeapi;
pub mod libcni;
pub mod night;

use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_holdfast");
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Privileged tests are `#[ignore = "needs root …"]`, so a plain `cargo test` lists them as
/// ignored instead of passing them unrun; run with `--include-ignored` (tests/run.sh does)
/// they need root, and fail without it rather than report `ok`.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test}: needs root (CAP_NET_ADMIN for network namespaces): run `sudo tests/run.sh`, \
         or leave the privileged tests ignored"
    );
}

/// `ip` with arguments; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn try_ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `argv` (a plugin, or a wrapper that execs one) with a runtime's environment: nothing but
/// `PATH`, `CNI_COMMAND`, `CNI_PATH` and `env`; stdio piped.
pub fn plugin_command(argv: &[&str], command: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// One test's private world.
pub struct World {
    pub tag: String,
    pub node: String,
    pub state_dir: PathBuf,
    pods: Vec<String>,
    /// Pods made so far (names stay unique after a pod is deleted).
    made: usize,
    /// Links (and their routes) the test itself set up in the node netns, e.g. a black hole.
    pub fixtures: Vec<String>,
}

/// What one plugin run returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }
    /// Asserts a CNI error with `code` whose message contains `needle`.
    pub fn err(&self, code: u64, needle: &str) -> Value {
        assert_ne!(self.code, 0, "expected failure, got {}", self.stdout);
        let j = self.json();
        assert_eq!(j["code"], code, "wrong code: {j}");
        let msg = j["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "message {msg:?} does not contain {needle:?}"
        );
        j
    }
}

impl World {
    pub fn new(test: &str) -> World {
        require_root(test);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("hft{}x{n}", std::process::id());
        let node = format!("{tag}-node");
        ip(&["netns", "add", &node]);
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        let state_dir = std::env::temp_dir().join(format!("{tag}-state"));
        World {
            tag,
            node,
            state_dir,
            pods: Vec::new(),
            made: 0,
            fixtures: Vec::new(),
        }
    }

    /// A new pod netns; returns its path.
    pub fn pod(&mut self) -> String {
        let name = format!("{}-p{}", self.tag, self.made);
        self.made += 1;
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        self.pods.push(name.clone());
        format!("/var/run/netns/{name}")
    }

    /// Runs `cmd` in this world's node netns.
    pub fn in_node(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.node])
            .args(cmd)
            .output()
            .expect("ip netns exec")
    }

    /// Runs the plugin in the node netns with `conf` on stdin.
    pub fn cni(&self, command: &str, cid: &str, netns: &str, ifname: &str, conf: &Value) -> Run {
        self.cni_env(
            command,
            conf,
            &[
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
            ],
        )
    }

    pub fn cni_env(&self, command: &str, conf: &Value, env: &[(&str, &str)]) -> Run {
        self.exec(BIN, command, conf, env)
    }

    /// Runs any plugin binary in the node netns, as a runtime would.
    pub fn exec(&self, bin: &str, command: &str, conf: &Value, env: &[(&str, &str)]) -> Run {
        let c = plugin_command(&["ip", "netns", "exec", &self.node, bin], command, env);
        run_with_stdin(c, conf.to_string().as_bytes())
    }

    /// A standalone config for this world.
    pub fn conf(&self, version: &str, ipam: Value) -> Value {
        json!({
            "cniVersion": version,
            "name": "testnet",
            "type": "holdfast",
            "stateDir": self.state_dir,
            "logLevel": "warn",
            "ipam": ipam,
        })
    }

    /// Does `netns` (a path or the node) reach `addr` with one ping?
    pub fn ping(&self, from: &str, addr: &str) -> bool {
        let ns = from.rsplit('/').next().unwrap_or(from);
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W2", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Links in the node netns besides `lo`.
    pub fn node_links(&self) -> Vec<String> {
        let out = ip(&["-n", &self.node, "-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "lo" && !self.fixtures.contains(n))
            .collect()
    }

    /// Lease files (host-local layout: files named by address).
    pub fn leases(&self) -> Vec<String> {
        files(&self.state_dir.join("ipam/testnet"))
            .into_iter()
            .chain(files(&self.state_dir.join("host-local/testnet")))
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    pub fn records(&self) -> Vec<String> {
        files(&self.state_dir.join("attachments/testnet"))
    }

    /// Nothing of any attachment is left: no link, lease or record in this world.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.node_links(),
            Vec::<String>::new(),
            "links left in node netns"
        );
        assert_eq!(self.leases(), Vec::<String>::new(), "leases left");
        assert_eq!(self.records(), Vec::<String>::new(), "records left");
        let routes: Vec<String> = ip(&["-n", &self.node, "route", "show"])
            .lines()
            .filter(|l| {
                !self
                    .fixtures
                    .iter()
                    .any(|f| l.contains(&format!("dev {f}")))
            })
            .map(String::from)
            .collect();
        assert!(routes.is_empty(), "routes left in node netns: {routes:?}");
    }

    /// Addresses on `ifname` inside `netns` (path), as `a/len`.
    pub fn addrs(&self, netns: &str, ifname: &str) -> Vec<String> {
        let ns = netns.rsplit('/').next().unwrap_or(netns);
        let out = ip(&["-n", ns, "-o", "addr", "show", "dev", ifname]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.find(|w| *w == "inet" || *w == "inet6")?;
                it.next().map(String::from)
            })
            .filter(|a| !a.starts_with("fe80"))
            .collect()
    }

    /// (root tbf, ingress redirect target, index) of a node link, read through netlink.
    pub fn host_tc(
        &self,
        name: &str,
    ) -> (
        Option<holdfast::dataplane::tc::Tbf>,
        Option<u32>,
        Option<u32>,
    ) {
        use holdfast::dataplane::{link, tc};
        let ns = holdfast::dataplane::netns::Netns::open(Path::new(&format!(
            "/var/run/netns/{}",
            self.node
        )))
        .unwrap();
        holdfast::runtime::block_on(async {
            let h = ns.start_connect()?.finish()?;
            let Some(l) = link::by_name(&h, name).await? else {
                return Ok((None, None, None));
            };
            Ok((
                tc::root_tbf(&h, l.index).await?,
                tc::ingress_redirect_target(&h, l.index).await?,
                Some(l.index),
            ))
        })
        .unwrap()
    }

    pub fn delete_pod(&mut self, netns: &str) {
        let ns = netns.rsplit('/').next().unwrap_or(netns).to_string();
        try_ip(&["netns", "del", &ns]);
        self.pods.retain(|p| *p != ns);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for p in &self.pods {
            try_ip(&["netns", "del", p]);
        }
        // Deleting the node netns takes every link in it, veths and ifbs included.
        try_ip(&["netns", "del", &self.node]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn cni_path() -> String {
    "/usr/lib/cni:/opt/cni/bin".to_string()
}

/// Runs the plugin binary directly (no netns; for checks that fail before touching anything).
pub fn run_plain(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut c = Command::new(BIN);
    c.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    run_with_stdin(c, stdin.as_bytes())
}

fn run_with_stdin(mut c: Command, stdin: &[u8]) -> Run {
    let mut child = c.spawn().expect("spawn plugin");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait plugin");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A stand-in IPAM plugin that speaks 1.1.0 and logs every call (`verb containerID stdin`) to
/// `calls.log` beside it; its STATUS fails with code 51 while a file `full` is there. Returns its
/// directory and a `CNI_PATH` that finds it first.
pub fn fake_ipam(w: &World) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = w.state_dir.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("fake-ipam");
    std::fs::write(
        &plugin,
        r#"#!/bin/sh
d=$(dirname "$0")
in=$(cat)
echo "$CNI_COMMAND ${CNI_CONTAINERID:-} $in" >> "$d/calls.log"
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}';;
ADD) echo '{"cniVersion":"1.1.0","ips":[{"address":"10.32.0.5/24","gateway":"10.32.0.1"}]}';;
STATUS) [ -e "$d/full" ] && { echo '{"cniVersion":"1.1.0","code":51,"msg":"fake pool exhausted"}'; exit 1; };;
esac
exit 0
"#,
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.display(), cni_path());
    (dir, path)
}

/// IPAM config for a single IPv4 subnet.
pub fn ipam_v4(subnet: &str) -> Value {
    json!({"ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]})
}

pub fn ipam_dual(v4: &str, v6: &str) -> Value {
    json!({"ranges": [[{"subnet": v4}], [{"subnet": v6}]],
           "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]})
}

/// `conf` with `prevResult` set (what a runtime sends to CHECK and DEL).
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}
