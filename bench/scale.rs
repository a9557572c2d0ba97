//! holdfast on a node with thousands of attachments (issue 16): N synthetic attachments
//! (record, lease and lock file each, written in holdfast's on-disk formats; half of them point
//! at a real pod netns, half at one that is gone) next to a few real pods, and what the verbs
//! cost there: STATUS, GC with every attachment listed, DEL of a real pod (against its cost on
//! an empty node), the first ADD after a reboot (which reclaims the dead half), and a GC of
//! everything afterwards (D12: it must succeed and leave nothing).

use super::{Bench, Run, exec};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

const NET: &str = "scale";

/// DEL and STATUS are measured this many times; the median is reported.
const REPEAT: usize = 7;

struct Row {
    n: usize,
    del_empty: f64,
    del: f64,
    status: f64,
    gc: f64,
    reboot_add: f64,
    reclaimed: usize,
    gc_all: (f64, bool, usize, usize),
}

pub fn scale(b: &Bench, sizes: &[usize]) {
    let rows: Vec<Row> = sizes.iter().map(|n| one(b, *n)).collect();
    println!(
        "\n| attachments (half dead) | DEL, empty node | DEL | DEL ratio | STATUS | GC (all listed) | first ADD after reboot | reclaimed | GC [] after | GC [] ok | left (records, leases) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {}, {} |",
            r.n,
            r.del_empty,
            r.del,
            r.del / r.del_empty,
            r.status,
            r.gc,
            r.reboot_add,
            r.reclaimed,
            r.gc_all.0,
            r.gc_all.1,
            r.gc_all.2,
            r.gc_all.3
        );
    }
    println!(
        "\nTimes in ms, wall clock of one plugin process; DEL and STATUS are medians of {REPEAT}. Targets at 5000: first ADD after reboot < 3000, DEL ratio < 1.5, STATUS < 50, GC < 1000."
    );
}

fn conf(state: &Path) -> Value {
    json!({"cniVersion": "1.1.0", "name": NET, "type": "holdfast", "stateDir": state, "logLevel": "warn",
           "ipam": {"ranges": [[{"subnet": "10.200.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}})
}

/// Wall ms of one verb; panics naming the verb if it fails.
fn timed(b: &Bench, cmd: &str, conf: &Value, cid: &str, netns: &str) -> (f64, Value) {
    let t = Instant::now();
    let r = exec(&b.holdfast, cmd, conf, cid, netns, Run::Timed);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(r.ok, "{cmd} {cid} failed: {}", r.stdout);
    (ms, serde_json::from_str(&r.stdout).unwrap_or(Value::Null))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// DEL of a real pod's attachment (ADDed first, not timed), median of [`REPEAT`].
fn del_cost(b: &Bench, conf: &Value, tag: &str) -> f64 {
    median(
        (0..REPEAT)
            .map(|i| {
                let (cid, pod) = (format!("{tag}{i}"), b.pod(i));
                timed(b, "ADD", conf, &cid, &pod);
                timed(b, "DEL", conf, &cid, &pod).0
            })
            .collect(),
    )
}

fn one(b: &Bench, n: usize) -> Row {
    let state = b.state(&format!("scale{n}"));
    let c = conf(&state);
    let del_empty = del_cost(b, &c, "se");
    let live: Vec<PathBuf> = (0..4).map(|i| PathBuf::from(b.pod(i))).collect();
    synthesize(&state, n, &live);
    let status = median(
        (0..REPEAT)
            .map(|_| timed(b, "STATUS", &c, "x", &b.pod(0)).0)
            .collect(),
    );
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = (0..n)
        .map(|i| json!({"containerID": cid(i), "ifname": "eth0"}))
        .collect();
    let gc_ms = timed(b, "GC", &gc, "x", &b.pod(0)).0;
    let del = del_cost(b, &c, "sd");
    // A reboot, as far as holdfast can tell: the remembered boot ID is another one.
    std::fs::write(
        state.join("boot").join(NET),
        "00000000-0000-4000-8000-000000000000",
    )
    .unwrap();
    let before = count(&state.join("attachments").join(NET));
    let (reboot_add, _) = timed(b, "ADD", &c, "sreboot", &b.pod(5));
    let reclaimed = (before + 1).saturating_sub(count(&state.join("attachments").join(NET)));
    timed(b, "DEL", &c, "sreboot", &b.pod(5));
    let mut none = c.clone();
    none["cni.dev/valid-attachments"] = json!([]);
    let t = Instant::now();
    let r = exec(&b.holdfast, "GC", &none, "x", &b.pod(0), Run::Timed);
    let gc_all_ms = t.elapsed().as_secs_f64() * 1000.0;
    if !r.ok {
        eprintln!("GC [] at {n} failed: {}", r.stdout);
    }
    let left = (count(&state.join("attachments").join(NET)), leases(&state));
    let _ = std::fs::remove_dir_all(&state);
    Row {
        n,
        del_empty,
        del,
        status,
        gc: gc_ms,
        reboot_add,
        reclaimed,
        gc_all: (gc_all_ms, r.ok, left.0, left.1),
    }
}

fn cid(i: usize) -> String {
    format!("synthetic{i:05}")
}

fn ip(i: usize) -> String {
    // 10.200.0.0/16 from .1.0 on: clear of the gateway and of the real pods' first addresses.
    let k = i + 256;
    format!("10.200.{}.{}", k / 256, k % 256)
}

/// `n` attachments in holdfast's formats: even ones live (their netns is one of `live`, with
/// its identity), odd ones dead (their netns path is gone).
fn synthesize(state: &Path, n: usize, live: &[PathBuf]) {
    let (att, ipam, locks) = (
        state.join("attachments").join(NET),
        state.join("ipam").join(NET),
        state.join("locks").join(NET),
    );
    for d in [&att, &ipam, &locks] {
        std::fs::create_dir_all(d).unwrap();
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    for i in 0..n {
        let (id, addr) = (cid(i), ip(i));
        let (netns, netns_id) = match i % 2 {
            0 => {
                let p = &live[i / 2 % live.len()];
                (p.clone(), holdfast::dataplane::netns::identity(p))
            }
            _ => (PathBuf::from(format!("/var/run/netns/gone-{id}")), None),
        };
        let record = json!({"version": 1, "network": NET, "containerId": id, "ifname": "eth0",
            "mode": "interface", "netns": netns, "ifb": null, "ips": [addr],
            "hostIfname": holdfast::dataplane::names::host_veth(&id, "eth0"),
            "result": {"cniVersion": "1.1.0", "ips": [{"address": format!("{addr}/16"), "gateway": "10.200.0.1", "interface": 1}]},
            "createdUnix": 1, "netnsId": netns_id, "bootId": boot.trim()});
        std::fs::write(att.join(format!("{id}@eth0.json")), record.to_string()).unwrap();
        std::fs::write(ipam.join(&addr), format!("{id}\r\neth0")).unwrap();
        std::fs::write(locks.join(format!("{id}@eth0.lock")), b"").unwrap();
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn leases(state: &Path) -> usize {
    std::fs::read_dir(state.join("ipam").join(NET))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}
