//! Files that cannot be trusted and the kernel's odd corners: planted symlinks and records, a
//! full disk, odd CNI_NETNS files, very long container IDs, delegates that misbehave.
//!
//! Every test builds its own node netns and stateDir (tests/common), and checks that nothing
//! outside stateDir was written, created or truncated.

mod common;

use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A directory outside stateDir that the test watches; removed on drop.
struct Outside(PathBuf);

impl Outside {
    fn new(w: &World) -> Outside {
        let p = w.state_dir.with_extension("outside");
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Outside(p)
    }

    /// Every file in it with its content.
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = walk(&self.0)
            .into_iter()
            .map(|p| {
                let c = std::fs::read(&p).unwrap_or_default();
                (p.display().to_string(), c)
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(p.clone());
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every file under stateDir (recursively), for "nothing left" checks.
fn state_files(w: &World) -> Vec<String> {
    let mut v: Vec<String> = walk(&w.state_dir)
        .into_iter()
        .filter(|p| !p.is_dir())
        .filter_map(|p| {
            p.strip_prefix(&w.state_dir)
                .ok()
                .map(|r| r.display().to_string())
        })
        .collect();
    v.sort();
    v
}

fn temps(w: &World) -> Vec<String> {
    state_files(w)
        .into_iter()
        .filter(|f| f.rsplit('/').next().is_some_and(|n| n.starts_with('.')))
        .collect()
}

fn v4(w: &World) -> Value {
    w.conf("1.1.0", ipam_v4("10.99.0.0/24"))
}

/// Runs the plugin in the node netns, killing it if it has not finished by `ceiling` (a hang is
/// the failure these tests look for). Returns the run and whether it had to be killed.
fn cni_bounded(
    w: &World,
    command: &str,
    conf: &Value,
    env: &[(&str, &str)],
    ceiling: Duration,
) -> (Run, bool) {
    let mut child = plugin_command(&["ip", "netns", "exec", &w.node, BIN], command, env)
        .spawn()
        .unwrap();
    let input = conf.to_string().into_bytes();
    let mut si = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = si.write_all(&input);
    });
    let deadline = Instant::now() + ceiling;
    let mut killed = false;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (run, killed)
}

#[test]
#[ignore = "needs root"]
fn planted_symlinks_at_files_are_never_followed() {
    let mut w = World::new("planted_symlinks_at_files_are_never_followed");
    let out = Outside::new(&w);
    for v in ["victim1", "victim2", "victim3", "victim5"] {
        std::fs::write(out.0.join(v), b"keep").unwrap();
    }
    let before = out.snapshot();
    let ipam = w.state_dir.join("ipam/testnet");
    let att = w.state_dir.join("attachments/testnet");
    std::fs::create_dir_all(&ipam).unwrap();
    std::fs::create_dir_all(&att).unwrap();
    symlink(out.0.join("victim2"), ipam.join("10.99.0.2")).unwrap();
    symlink(out.0.join("victim1"), ipam.join("last_reserved_ip.0")).unwrap();
    symlink(out.0.join("victim3"), att.join("s1@eth0.json")).unwrap();
    // The temp names of earlier versions, and the pattern of the current ones.
    for n in [
        ".s1@eth0.json.1234.tmp",
        ".s1@eth0.json.0.tmp",
        ".10.99.0.3.0.tmp",
    ] {
        let d = if n.contains("json") { &att } else { &ipam };
        symlink(out.0.join("victim5"), d.join(n)).unwrap();
    }
    let pod = w.pod();
    let conf = v4(&w);
    let r = w.cni("ADD", "s1", &pod, "eth0", &conf).ok().json();
    assert_eq!(
        r["ips"][0]["address"], "10.99.0.3/24",
        "a symlinked lease is taken"
    );
    assert_eq!(out.snapshot(), before, "something outside stateDir changed");
    let rec = att.join("s1@eth0.json");
    assert!(!std::fs::symlink_metadata(&rec).unwrap().is_symlink());
    w.cni("CHECK", "s1", &pod, "eth0", &with_prev(&conf, &r))
        .ok();
    w.cni("DEL", "s1", &pod, "eth0", &conf).ok();
    assert_eq!(out.snapshot(), before);
    assert!(!rec.exists());
    assert_eq!(
        common::files(&att),
        Vec::<String>::new(),
        "DEL sweeps the record's temp names"
    );
    w.delete_pod(&pod);
}

#[test]
#[ignore = "needs root"]
fn a_symlinked_lock_or_state_directory_is_refused() {
    let mut w = World::new("a_symlinked_lock_or_state_directory_is_refused");
    let out = Outside::new(&w);
    std::fs::create_dir_all(out.0.join("ipamdir")).unwrap();
    std::fs::create_dir_all(out.0.join("attdir")).unwrap();
    let before = out.snapshot();
    let pod = w.pod();

    // A dangling symlink at the lock: never created through.
    let ipam = w.state_dir.join("ipam/testnet");
    std::fs::create_dir_all(&ipam).unwrap();
    symlink(out.0.join("lock-created-by-plugin"), ipam.join("lock")).unwrap();
    w.cni("ADD", "l1", &pod, "eth0", &v4(&w))
        .err(5, "ipam/testnet/lock");
    assert_eq!(out.snapshot(), before);
    assert_eq!(w.node_links(), Vec::<String>::new());

    // ipam/<net> and attachments/<net> as symlinks to outside directories.
    let mut conf = v4(&w);
    conf["name"] = json!("net2");
    symlink(out.0.join("ipamdir"), w.state_dir.join("ipam/net2")).unwrap();
    w.cni("ADD", "l2", &pod, "eth0", &conf).err(5, "ipam/net2");
    std::fs::remove_file(w.state_dir.join("ipam/net2")).unwrap();
    std::fs::create_dir_all(w.state_dir.join("attachments")).unwrap();
    symlink(out.0.join("attdir"), w.state_dir.join("attachments/net2")).unwrap();
    w.cni("ADD", "l2", &pod, "eth0", &conf)
        .err(5, "attachments/net2");
    assert_eq!(
        out.snapshot(),
        before,
        "written through a symlinked directory"
    );
    assert_eq!(
        w.node_links(),
        Vec::<String>::new(),
        "the failed ADD left links"
    );
    let leases: Vec<String> = common::files(&w.state_dir.join("ipam/net2"))
        .into_iter()
        .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert_eq!(leases, Vec::<String>::new(), "the failed ADD left a lease");
    w.delete_pod(&pod);
}

#[test]
#[ignore = "needs root"]
fn a_planted_record_is_reported_not_used() {
    let w = World::new("a_planted_record_is_reported_not_used");
    let out = Outside::new(&w);
    std::fs::write(out.0.join("gcvictim@x.json"), b"keep").unwrap();
    let before = out.snapshot();
    let att = w.state_dir.join("attachments/testnet");
    std::fs::create_dir_all(&att).unwrap();
    let rel = format!(
        "../../../{}/gcvictim",
        out.0.file_name().unwrap().to_str().unwrap()
    );
    let planted = |cid: &str, host: &str| {
        json!({"version": 1, "network": "testnet", "containerId": cid, "ifname": "x",
               "mode": "interface", "netns": null, "hostIfname": host, "ifb": null,
               "ips": [], "result": {}, "createdUnix": 1})
    };
    std::fs::write(
        att.join("planted.json"),
        planted(&rel, "victim0").to_string(),
    )
    .unwrap();
    // A well-formed name and ID, but a link name holdfast never makes.
    std::fs::write(att.join("p1@x.json"), planted("p1", "victim0").to_string()).unwrap();
    ip(&[
        "-n", &w.node, "link", "add", "victim0", "type", "veth", "peer", "name", "victim1",
    ]);
    let mut gc = w.conf("1.1.0", ipam_v4("10.99.0.0/24"));
    gc["cni.dev/valid-attachments"] = json!([]);
    let r = w.cni_env("GC", &gc, &[]);
    assert!(
        ip(&["-n", &w.node, "link", "show"]).contains("victim0"),
        "GC deleted a foreign link: {r:?}"
    );
    assert_eq!(out.snapshot(), before, "GC touched a file outside stateDir");
    // DEL of the attachment the foreign record claims ignores it too.
    w.cni("DEL", "p1", "", "x", &v4(&w)).ok();
    assert!(ip(&["-n", &w.node, "link", "show"]).contains("victim0"));
    assert_eq!(out.snapshot(), before);
}

#[test]
#[ignore = "needs root"]
fn an_oversized_record_or_delegate_output_is_a_clear_error() {
    let mut w = World::new("an_oversized_record_or_delegate_output_is_a_clear_error");
    let pod = w.pod();
    let conf = v4(&w);
    let r = w.cni("ADD", "o1", &pod, "eth0", &conf).ok().json();
    let rec = w.state_dir.join("attachments/testnet/o1@eth0.json");
    let mut big = std::fs::read(&rec).unwrap();
    big.resize(5 << 20, b' ');
    std::fs::write(&rec, &big).unwrap();
    w.cni("CHECK", "o1", &pod, "eth0", &with_prev(&conf, &r))
        .err(5, "larger than");
    w.cni("DEL", "o1", &pod, "eth0", &conf).ok();

    // A delegate that prints 5 MiB.
    let bin = w.state_dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    script(
        &bin.join("loud-ipam"),
        "head -c 5242880 /dev/zero | tr '\\0' ' '\n",
    );
    let path = format!("{}:{}", bin.display(), cni_path());
    let mut dconf = conf.clone();
    dconf["ipam"] = json!({"type": "loud-ipam"});
    let run = w.cni_env(
        "ADD",
        &dconf,
        &[
            ("CNI_CONTAINERID", "o2"),
            ("CNI_NETNS", &pod),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &path),
        ],
    );
    run.err(6, "larger than");
    assert_eq!(w.node_links(), Vec::<String>::new());
    w.delete_pod(&pod);
}

fn script(p: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A small tmpfs over the world's stateDir, unmounted on drop (before World removes the dir).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "hf-full",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` to the last byte; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.write_all(&[0u8]);
    p
}

#[test]
#[ignore = "needs root"]
fn a_full_disk_is_code_5_and_leaves_no_empty_lease_or_temp() {
    let mut w = World::new("a_full_disk_is_code_5_and_leaves_no_empty_lease_or_temp");
    let fs = Tmpfs::mount(&w.state_dir, "256k");
    let conf = v4(&w);
    let p1 = w.pod();
    let p2 = w.pod();
    w.cni("ADD", "f1", &p1, "eth0", &conf).ok();
    let filler = fill(&w.state_dir);
    for _ in 0..3 {
        w.cni("ADD", "f2", &p2, "eth0", &conf)
            .err(5, "No space left");
    }
    let leases = w.leases();
    assert_eq!(leases, ["10.99.0.2"], "only f1's lease");
    for l in &leases {
        let c = std::fs::read(w.state_dir.join("ipam/testnet").join(l)).unwrap();
        assert!(!c.is_empty(), "an empty lease");
    }
    assert_eq!(temps(&w), Vec::<String>::new(), "temp files left");
    assert_eq!(
        w.node_links().len(),
        1,
        "the failed ADDs left links: {:?}",
        w.node_links()
    );
    std::fs::remove_file(filler).unwrap();
    w.cni("DEL", "f2", &p2, "eth0", &conf).ok();
    w.cni("DEL", "f1", &p1, "eth0", &conf).ok();
    w.assert_clean();
    assert_eq!(temps(&w), Vec::<String>::new());
    drop(fs);
}

#[test]
#[ignore = "needs root"]
fn a_fifo_or_a_foreign_namespace_file_as_netns_is_code_4_at_once() {
    let w = World::new("a_fifo_or_a_foreign_namespace_file_as_netns_is_code_4_at_once");
    std::fs::create_dir_all(&w.state_dir).unwrap();
    let fifo = w.state_dir.join("afifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.display().to_string();
    let conf = v4(&w);
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [], "ips": []});
    for (cmd, c) in [("ADD", conf.clone()), ("CHECK", with_prev(&conf, &prev))] {
        for netns in [fifo.as_str(), "/proc/self/ns/mnt", "/proc/self/ns/uts"] {
            let env = [
                ("CNI_CONTAINERID", "n1"),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
            ];
            let (run, killed) = cni_bounded(&w, cmd, &c, &env, Duration::from_secs(20));
            assert!(!killed, "{cmd} with CNI_NETNS={netns} hung");
            run.err(4, "is not a network namespace");
        }
    }
    assert_eq!(w.node_links(), Vec::<String>::new());
    assert_eq!(
        w.leases(),
        Vec::<String>::new(),
        "a lease before the netns check"
    );
    assert_eq!(w.records(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn a_256_character_container_id_adds_and_deletes() {
    let mut w = World::new("a_256_character_container_id_adds_and_deletes");
    let pod = w.pod();
    let conf = v4(&w);
    let id = format!("a{}", "0123456789abcdef".repeat(16).get(1..).unwrap());
    assert_eq!(id.len(), 256);
    let r = w.cni("ADD", &id, &pod, "eth0", &conf).ok().json();
    let recs = w.records();
    assert_eq!(recs.len(), 1);
    assert!(recs[0].len() <= 255);
    let body =
        std::fs::read_to_string(w.state_dir.join("attachments/testnet").join(&recs[0])).unwrap();
    assert!(body.contains(&id), "the record keeps the full ID");
    w.cni("CHECK", &id, &pod, "eth0", &with_prev(&conf, &r))
        .ok();
    w.cni("DEL", &id, &pod, "eth0", &conf).ok();
    w.cni("DEL", &id, &pod, "eth0", &conf).ok();
    let never = "b".repeat(256);
    w.cni("DEL", &never, &pod, "abcdefghijklmno", &conf).ok();
    w.cni("DEL", &never, "", "eth0", &conf).ok();
    w.assert_clean();
    assert_eq!(temps(&w), Vec::<String>::new());
    w.delete_pod(&pod);
}

#[test]
#[ignore = "needs root"]
fn a_delegate_that_never_reads_a_large_config_times_out() {
    let mut w = World::new("a_delegate_that_never_reads_a_large_config_times_out");
    let pod = w.pod();
    let bin = w.state_dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    script(&bin.join("deaf-ipam"), "exec sleep 300\n");
    let path = format!("{}:{}", bin.display(), cni_path());
    let mut conf = w.conf("1.1.0", json!({"type": "deaf-ipam"}));
    conf["pad"] = json!("x".repeat(200_000));
    let env = [
        ("CNI_CONTAINERID", "d1"),
        ("CNI_NETNS", pod.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    let (run, killed) = cni_bounded(&w, "ADD", &conf, &env, Duration::from_secs(60));
    assert!(!killed, "ADD hung past the delegate deadline");
    run.err(11, "did not finish within 30s");
    assert_eq!(w.node_links(), Vec::<String>::new());
    w.delete_pod(&pod);
}

/// The state letter of /proc/<pid>/stat, if that process exists.
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')').next()?.trim().chars().next()
}

#[test]
#[ignore = "needs root"]
fn a_killed_holdfast_leaves_no_delegate_running() {
    let mut w = World::new("a_killed_holdfast_leaves_no_delegate_running");
    let pod = w.pod();
    let bin = w.state_dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pidfile = bin.join("pid");
    script(
        &bin.join("slow-ipam"),
        &format!(
            "cat >/dev/null\necho $$ > {}\nexec sleep 300\n",
            pidfile.display()
        ),
    );
    let path = format!("{}:{}", bin.display(), cni_path());
    let conf = w.conf("1.1.0", json!({"type": "slow-ipam"}));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &w.node, BIN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_PATH", &path)
        .env("CNI_CONTAINERID", "k1")
        .env("CNI_NETNS", &pod)
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut si = child.stdin.take().unwrap();
        si.write_all(conf.to_string().as_bytes()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "the delegate never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let `exec sleep` happen, so the process is the delegate itself, not its shell.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.starts_with("sleep"))
    {
        assert!(Instant::now() < deadline, "the delegate never exec'd sleep");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = loop {
        match proc_state(pid) {
            None | Some('Z') | Some('X') => break true,
            Some(_) if Instant::now() > deadline => break false,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if !gone {
        // Clean up what the failure left: that pid, checked to still be our sleep.
        if std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.starts_with("sleep"))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    assert!(gone, "the delegate {pid} outlived holdfast");
    w.delete_pod(&pod);
}
