//! Helpers for the crash, reboot and runtime-corner tests (issue 9): plugin runs that report a
//! kill by signal and never hang, a changed boot ID, and checks that an attachment is either
//! wholly there or wholly gone and that nothing of it is left under stateDir.

use super::{BIN, Run, World, files, ip, try_ip};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any plugin run may take before the test calls it a hang (a ceiling, not a timing).
pub const CEILING: Duration = Duration::from_secs(60);

/// What one plugin run did: its exit (or the signal that ended it) and its output.
#[derive(Debug)]
pub struct Exit {
    pub signal: Option<i32>,
    pub run: Run,
}

/// Runs `argv` (ending in the plugin binary) with a CNI environment and `conf` on stdin; kills
/// it and fails the test if it outlives `ceiling`.
pub fn spawn(
    argv: &[String],
    command: &str,
    conf: &Value,
    env: &[(&str, &str)],
    ceiling: Duration,
) -> Exit {
    start(argv, command, conf, env).finish(ceiling)
}

/// A plugin run under way.
pub struct Started {
    pub child: Child,
    what: String,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

/// Starts `argv` as [`spawn`] does, without waiting; stdin is written from a thread of its own
/// so a plugin that never reads it cannot block the test.
pub fn start(argv: &[String], command: &str, conf: &Value, env: &[(&str, &str)]) -> Started {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut child = super::plugin_command(&argv, command, env)
        .spawn()
        .expect("spawn plugin");
    if let Some(mut si) = child.stdin.take() {
        let input = conf.to_string().into_bytes();
        std::thread::spawn(move || {
            let _ = si.write_all(&input);
        });
    }
    Started {
        out: drain(child.stdout.take()),
        err: drain(child.stderr.take()),
        child,
        what: format!("{command} {argv:?}"),
    }
}

impl Started {
    /// Waits for the run to end; past `ceiling` it is killed and the test fails as a hang.
    pub fn finish(mut self, ceiling: Duration) -> Exit {
        let status = wait_within(&mut self.child, ceiling)
            .unwrap_or_else(|| panic!("{} hung for {ceiling:?}; killed", self.what));
        Exit {
            signal: status.signal(),
            run: Run {
                code: status.code().unwrap_or(-1),
                stdout: self.out.join().unwrap_or_default(),
                stderr: self.err.join().unwrap_or_default(),
            },
        }
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Waits for `child`; past `ceiling` it is killed (by its own pid) and `None` returned.
fn wait_within(child: &mut Child, ceiling: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + ceiling;
    loop {
        if let Some(s) = child.try_wait().expect("waiting for plugin") {
            return Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The argv that runs the plugin in the node netns.
pub fn node_argv(w: &World) -> Vec<String> {
    ["ip", "netns", "exec", &w.node, super::BIN]
        .map(String::from)
        .to_vec()
}

fn attachment_env<'a>(cid: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
    ]
}

/// One verb on one attachment in the node netns, with a hang ceiling.
pub fn verb(w: &World, command: &str, cid: &str, netns: &str, ifname: &str, conf: &Value) -> Exit {
    spawn(
        &node_argv(w),
        command,
        conf,
        &attachment_env(cid, netns, ifname),
        CEILING,
    )
}

/// ADD with `HOLDFAST_FAILPOINT=fp`; asserts the plugin really died there (SIGKILL), so a
/// failpoint that is never reached fails the test instead of passing it.
pub fn add_killed_at(w: &World, fp: &str, cid: &str, netns: &str, ifname: &str, conf: &Value) {
    let mut env = attachment_env(cid, netns, ifname);
    env.push(("HOLDFAST_FAILPOINT", fp));
    let e = spawn(&node_argv(w), "ADD", conf, &env, CEILING);
    assert_eq!(
        e.signal,
        Some(9),
        "ADD {cid} was not killed at failpoint {fp}: exit {} stdout {} stderr {}",
        e.run.code,
        e.run.stdout,
        e.run.stderr
    );
}

/// A boot ID file to bind over `/proc/sys/kernel/random/boot_id`; removed on drop.
pub struct BootId {
    pub path: PathBuf,
}

impl BootId {
    pub fn new(w: &World, value: &str) -> BootId {
        let path = std::env::temp_dir().join(format!("{}-boot_id-{value}", w.tag));
        std::fs::write(&path, format!("{value}\n")).expect("writing fake boot_id");
        BootId { path }
    }

    /// Runs the plugin in the node netns as if the machine had booted with this ID: in a private
    /// mount namespace (gone with the process) with the file bound over the kernel's.
    pub fn run(&self, w: &World, command: &str, conf: &Value, env: &[(&str, &str)]) -> Exit {
        let script =
            r#"mount --bind "$1" /proc/sys/kernel/random/boot_id && exec ip netns exec "$2" "$3""#;
        let argv: Vec<String> = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            &self.path.display().to_string(),
            &w.node,
            BIN,
        ]
        .map(String::from)
        .to_vec();
        spawn(&argv, command, conf, env, CEILING)
    }
}

impl Drop for BootId {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A netns the test made itself (not through `World::pod`); deleted on drop.
pub struct NetnsGuard(pub String);

impl NetnsGuard {
    pub fn add(name: &str) -> NetnsGuard {
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        NetnsGuard(name.to_string())
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        try_ip(&["netns", "del", &self.0]);
    }
}

/// A process (and its children) started in its own process group; the group is killed on drop.
pub struct Group(pub Child);

impl Group {
    pub fn spawn(argv: &[&str]) -> Group {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning helper process");
        Group(child)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

/// The address of `result.ips[i]` without its prefix length.
pub fn addr_of(result: &Value, i: usize) -> String {
    let a = result["ips"][i]["address"].as_str().unwrap_or_default();
    a.split('/').next().unwrap_or(a).to_string()
}

/// Links in a pod netns besides `lo`.
pub fn pod_links(netns: &str) -> Vec<String> {
    let ns = netns.rsplit('/').next().unwrap_or(netns);
    ip(&["-n", ns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n != "lo")
        .collect()
}

fn lease_dirs(w: &World) -> [PathBuf; 2] {
    [
        w.state_dir.join("ipam/testnet"),
        w.state_dir.join("host-local/testnet"),
    ]
}

/// Addresses whose lease names (cid, ifname) as owner, in host-local's `cid\r\nifname` form.
pub fn owned_leases(w: &World, cid: &str, ifname: &str) -> Vec<String> {
    let want = format!("{cid}\r\n{ifname}");
    let mut v = Vec::new();
    for d in lease_dirs(w) {
        for f in files(&d) {
            if f.parse::<std::net::IpAddr>().is_ok()
                && std::fs::read_to_string(d.join(&f)).is_ok_and(|s| s.trim() == want)
            {
                v.push(f);
            }
        }
    }
    v.sort();
    v
}

/// Records of (cid, ifname), found by content so the test does not depend on file names.
pub fn records_of(w: &World, cid: &str, ifname: &str) -> Vec<Value> {
    let dir = w.state_dir.join("attachments/testnet");
    files(&dir)
        .into_iter()
        .filter(|f| !f.starts_with('.'))
        .filter_map(|f| std::fs::read(dir.join(f)).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(|r| r["containerId"] == cid && r["ifname"] == ifname)
        .collect()
}

/// Every non-directory under stateDir, relative to it.
pub fn state_files(w: &World) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(&w.state_dir, &w.state_dir, &mut v);
    v.sort();
    v
}

/// May `rel` stay under stateDir once every attachment is gone? The network-wide lock and
/// round-robin files may (host-local keeps them too), as may anything a clean ADD and DEL of
/// another attachment left (`baseline`: network-wide files such as a remembered boot ID).
fn may_stay(rel: &str, baseline: &[String]) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.starts_with('.') || name.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let net_wide = (rel.starts_with("ipam/testnet/") || rel.starts_with("host-local/testnet/"))
        && rel.matches('/').count() == 2
        && (name == "lock" || name.starts_with("last_reserved_ip."));
    net_wide || (!rel.starts_with("attachments/") && baseline.iter().any(|b| b == rel))
}

/// No attachment is left: no link in the node netns, no interface in `pods`, no lease, record
/// or temp file (a name starting with `.`) under stateDir.
pub fn assert_no_attachment_left(w: &World, pods: &[&str], what: &str) {
    assert_eq!(
        w.node_links(),
        Vec::<String>::new(),
        "{what}: links left in the node netns"
    );
    for p in pods {
        assert_eq!(
            pod_links(p),
            Vec::<String>::new(),
            "{what}: interfaces left in {p}"
        );
    }
    let left: Vec<String> = state_files(w)
        .into_iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.starts_with('.')
                || name.parse::<std::net::IpAddr>().is_ok()
                || f.starts_with("attachments/")
        })
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "{what}: temp files, leases or records left"
    );
    w.assert_clean();
}

/// As `assert_no_attachment_left`, and no per-attachment file either: only the network-wide
/// lock and round-robin files, and what a clean ADD and DEL left (`baseline`), may stay.
pub fn assert_nothing_left(w: &World, pods: &[&str], baseline: &[String], what: &str) {
    assert_no_attachment_left(w, pods, what);
    let left: Vec<String> = state_files(w)
        .into_iter()
        .filter(|f| !may_stay(f, baseline))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "{what}: files left under stateDir"
    );
}

/// Runs a verb in the node netns with exactly `env` (e.g. STATUS, which names no attachment).
pub fn bare(w: &World, command: &str, conf: &Value, env: &[(&str, &str)]) -> Exit {
    spawn(&node_argv(w), command, conf, env, CEILING)
}

/// One attachment as the kernel and stateDir show it, when all of them agree.
#[derive(Debug, PartialEq)]
pub enum Attachment {
    /// Host veth, pod interface, leases and record all there, with these addresses.
    Present(Vec<String>),
    Absent,
}

/// The attachment's state, or a description of how its pieces disagree.
pub fn attachment(w: &World, cid: &str, netns: &str, ifname: &str) -> Result<Attachment, String> {
    let host = holdfast::dataplane::names::host_veth(cid, ifname);
    let link = w.node_links().contains(&host);
    let in_pod = pod_links(netns).iter().any(|l| l == ifname);
    let pod_addrs: Vec<String> = if in_pod {
        let mut v: Vec<String> = w
            .addrs(netns, ifname)
            .iter()
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect();
        v.sort();
        v
    } else {
        Vec::new()
    };
    let leases = owned_leases(w, cid, ifname);
    let records = records_of(w, cid, ifname);
    let mut rec_ips: Vec<String> = records
        .iter()
        .flat_map(|r| r["ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    rec_ips.sort();
    let seen = format!(
        "host link {link}, pod interface {in_pod} {pod_addrs:?}, leases {leases:?}, records {} {rec_ips:?}",
        records.len()
    );
    if !link && !in_pod && leases.is_empty() && records.is_empty() {
        return Ok(Attachment::Absent);
    }
    let whole = link && in_pod && records.len() == 1 && !leases.is_empty();
    if whole && pod_addrs == leases && rec_ips == leases {
        return Ok(Attachment::Present(leases));
    }
    Err(seen)
}
