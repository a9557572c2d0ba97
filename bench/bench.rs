//! holdfast against the reference plugins, side by side in one run, driven the way a runtime
//! drives them (one exec per plugin, config on stdin, prevResult threaded through the chain).
//!
//! Everything runs in a private node netns this program creates and removes; pods are netns
//! inside it. Run as root: `bench/run.sh [cycles]`.

use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REF: &str = "/usr/lib/cni";

struct Proc {
    ok: bool,
    stdout: String,
    cpu: Duration,
    rss_kib: i64,
}

/// Runs one plugin and reaps it with wait4 to get its own CPU time and peak RSS.
fn exec(bin: &str, cmd: &str, conf: &Value, cid: &str, netns: &str) -> Proc {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REF)
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, once; std's Child is forgotten so it never waits again.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    std::mem::forget(child);
    assert!(pid > 0, "wait4 failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Proc {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: out,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kib: ru.ru_maxrss,
    }
}

/// A conflist as libcni runs it.
struct Chain {
    name: &'static str,
    version: &'static str,
    plugins: Vec<(String, Value)>,
    runtime: Value,
}

#[derive(Default)]
struct Stats {
    add: Vec<f64>,
    del: Vec<f64>,
    add_cpu: Vec<f64>,
    del_cpu: Vec<f64>,
    rss: i64,
    errors: usize,
}

impl Chain {
    fn conf(&self, p: &Value, prev: Option<&Value>) -> Value {
        let mut c = p.clone();
        c["name"] = json!(self.name);
        c["cniVersion"] = json!(self.version);
        if let Some(caps) = p.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on == &json!(true)
                    && let Some(v) = self.runtime.get(cap)
                {
                    c["runtimeConfig"][cap] = v.clone();
                }
            }
        }
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        c
    }

    /// ADD then DEL of one pod; only the plugins from `measure_from` on are timed (chained-only
    /// comparisons time just the bandwidth plugin).
    fn cycle(&self, cid: &str, netns: &str, measure_from: usize, s: &mut Stats) -> Option<Value> {
        let mut prev: Option<Value> = None;
        let (mut t, mut cpu) = (Duration::ZERO, Duration::ZERO);
        for (i, (bin, p)) in self.plugins.iter().enumerate() {
            let conf = self.conf(p, prev.as_ref());
            let start = Instant::now();
            let r = exec(bin, "ADD", &conf, cid, netns);
            if i >= measure_from {
                t += start.elapsed();
                cpu += r.cpu;
                s.rss = s.rss.max(r.rss_kib);
            }
            if !r.ok {
                s.errors += 1;
                eprintln!("{} ADD failed in {bin}: {}", self.name, r.stdout);
                return None;
            }
            prev = serde_json::from_str(&r.stdout).ok();
        }
        s.add.push(t.as_secs_f64() * 1000.0);
        s.add_cpu.push(cpu.as_secs_f64() * 1000.0);
        let result = prev.clone();
        let (mut t, mut cpu) = (Duration::ZERO, Duration::ZERO);
        for (i, (bin, p)) in self.plugins.iter().enumerate().rev() {
            let conf = self.conf(p, prev.as_ref());
            let start = Instant::now();
            let r = exec(bin, "DEL", &conf, cid, netns);
            if i >= measure_from {
                t += start.elapsed();
                cpu += r.cpu;
                s.rss = s.rss.max(r.rss_kib);
            }
            if !r.ok {
                s.errors += 1;
                eprintln!("{} DEL failed in {bin}: {}", self.name, r.stdout);
            }
        }
        s.del.push(t.as_secs_f64() * 1000.0);
        s.del_cpu.push(cpu.as_secs_f64() * 1000.0);
        result
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args:?}");
}

struct World {
    node: String,
    pods: Vec<String>,
    dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", p]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cycles: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let holdfast =
        std::env::var("HOLDFAST_BIN").unwrap_or_else(|_| "target/release/holdfast".into());
    let holdfast = std::fs::canonicalize(&holdfast)
        .expect("build first: scripts/build-release.sh (bench/run.sh does)");
    let holdfast = holdfast.to_str().unwrap().to_string();

    let tag = format!("hfbench{}", std::process::id());
    let mut w = World {
        node: format!("{tag}-node"),
        pods: Vec::new(),
        dir: std::env::temp_dir().join(&tag),
    };
    ip(&["netns", "add", &w.node]);
    std::fs::create_dir_all(&w.dir).unwrap();
    for i in 0..cycles.max(100) {
        let p = format!("{tag}-p{i}");
        ip(&["netns", "add", &p]);
        w.pods.push(p);
    }
    // From here on this process lives in the node netns; every plugin it starts inherits it.
    let f = std::fs::File::open(format!("/var/run/netns/{}", w.node)).unwrap();
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    ip(&["link", "set", "lo", "up"]);

    let bw = json!({"ingressRate": 10_000_000, "ingressBurst": 100_000, "egressRate": 10_000_000, "egressBurst": 100_000});
    let state = w.dir.join("holdfast");
    let hl = |sub: &str| json!({"type": "host-local", "dataDir": w.dir.join("host-local"), "ranges": [[{"subnet": sub}]], "routes": [{"dst": "0.0.0.0/0"}]});
    let hf_conf = |shaping: &str, sub: &str| {
        json!({"type": "holdfast", "stateDir": state, "logLevel": "warn", "egressShaping": shaping,
               "capabilities": {"bandwidth": true},
               "ipam": {"ranges": [[{"subnet": sub}]], "routes": [{"dst": "0.0.0.0/0"}]}})
    };
    let runtime = json!({"bandwidth": bw});
    let reference = Chain {
        name: "reference",
        version: "1.0.0",
        plugins: vec![
            (
                format!("{REF}/ptp"),
                json!({"type": "ptp", "ipMasq": false, "ipam": hl("10.60.0.0/16")}),
            ),
            (
                format!("{REF}/bandwidth"),
                json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            ),
        ],
        runtime: runtime.clone(),
    };
    let hf_ifb = Chain {
        name: "holdfast-ifb",
        version: "1.0.0",
        plugins: vec![(holdfast.clone(), hf_conf("ifb", "10.61.0.0/16"))],
        runtime: runtime.clone(),
    };
    let hf_pod = Chain {
        name: "holdfast-pod",
        version: "1.0.0",
        plugins: vec![(holdfast.clone(), hf_conf("pod", "10.62.0.0/16"))],
        runtime: runtime.clone(),
    };
    let ptp = |sub: &str| {
        (
            format!("{REF}/ptp"),
            json!({"type": "ptp", "ipMasq": false, "ipam": hl(sub)}),
        )
    };
    let chained_ref = Chain {
        name: "ptp-bandwidth",
        version: "1.0.0",
        plugins: vec![
            ptp("10.63.0.0/16"),
            (
                format!("{REF}/bandwidth"),
                json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            ),
        ],
        runtime: runtime.clone(),
    };
    let chained_hf = Chain {
        name: "ptp-holdfast",
        version: "1.0.0",
        plugins: vec![
            ptp("10.64.0.0/16"),
            (
                holdfast.clone(),
                json!({"type": "holdfast", "stateDir": state, "logLevel": "warn", "capabilities": {"bandwidth": true}}),
            ),
        ],
        runtime: runtime.clone(),
    };

    let mut st: Vec<Stats> = (0..5).map(|_| Stats::default()).collect();
    let started = Instant::now();
    // Interleaved, so every variant sees the same machine noise.
    for i in 0..cycles {
        let ns = format!("/var/run/netns/{}", w.pods[i]);
        reference.cycle(&format!("ref{i}"), &ns, 0, &mut st[0]);
        hf_ifb.cycle(&format!("hfi{i}"), &ns, 0, &mut st[1]);
        hf_pod.cycle(&format!("hfp{i}"), &ns, 0, &mut st[2]);
        chained_ref.cycle(&format!("cr{i}"), &ns, 1, &mut st[3]);
        chained_hf.cycle(&format!("ch{i}"), &ns, 1, &mut st[4]);
    }
    let sequential = started.elapsed();

    // ADD with a warm cache while the API VIP is black-holed (as after a cold reboot), and with
    // a fresh cache. The cache is seeded; refreshSeconds 0 forces the API attempt.
    ip(&["link", "add", "bh0", "type", "ifb"]);
    ip(&["link", "set", "bh0", "up"]);
    ip(&["route", "add", "10.43.0.1/32", "dev", "bh0"]);
    ip(&["route", "add", "10.44.0.5/32", "dev", "bh0"]);
    let kc = w.dir.join("kubeconfig");
    let ca = rcgen::generate_simple_self_signed(vec!["10.43.0.1".to_string()])
        .unwrap()
        .cert
        .pem();
    std::fs::write(&kc, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.43.0.1:443\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: bench-token\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        base64_encode(ca.as_bytes())
    )).unwrap();
    let timeout_ms = 1000u64;
    let k8s = |refresh: u64| {
        let mut c = hf_conf("pod", "usePodCidr");
        c["kubernetes"] = json!({"kubeconfig": kc, "nodeName": "bench-node", "timeoutMs": timeout_ms, "refreshSeconds": refresh});
        c
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("cluster-info.json"), json!({"version": 1, "nodeName": "bench-node", "nodeUid": "u",
        "podCIDRs": ["10.65.0.0/16"], "apiEndpoints": ["10.44.0.5:443"], "fetchedUnix": now, "fetchedFrom": "seed"}).to_string()).unwrap();
    let blackholed = Chain {
        name: "bh",
        version: "1.0.0",
        plugins: vec![(holdfast.clone(), k8s(0))],
        runtime: runtime.clone(),
    };
    let fresh = Chain {
        name: "fresh",
        version: "1.0.0",
        plugins: vec![(holdfast.clone(), k8s(3600))],
        runtime: runtime.clone(),
    };
    let mut bh = Stats::default();
    let mut fr = Stats::default();
    let n_bh = (cycles / 10).clamp(10, 30);
    for i in 0..n_bh {
        let ns = format!("/var/run/netns/{}", w.pods[i]);
        blackholed.cycle(&format!("bh{i}"), &ns, 0, &mut bh);
        fresh.cycle(&format!("fr{i}"), &ns, 0, &mut fr);
    }

    // 100 pods ADDed in parallel, then DELed in parallel.
    let par = |chain: &Chain, prefix: &str| -> (f64, f64, usize, usize) {
        let start = Instant::now();
        let results: Vec<Option<Value>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..100)
                .map(|i| {
                    let ns = format!("/var/run/netns/{}", w.pods[i]);
                    let cid = format!("{prefix}{i}");
                    s.spawn(move || {
                        let (bin, p) = &chain.plugins[0];
                        let r = exec(bin, "ADD", &chain.conf(p, None), &cid, &ns);
                        if r.ok {
                            serde_json::from_str::<Value>(&r.stdout).ok()
                        } else {
                            None
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let add_wall = start.elapsed().as_secs_f64() * 1000.0;
        let errors = results.iter().filter(|r| r.is_none()).count();
        let distinct: HashSet<String> = results
            .iter()
            .flatten()
            .filter_map(|r| r["ips"][0]["address"].as_str().map(String::from))
            .collect();
        let start = Instant::now();
        std::thread::scope(|s| {
            for i in 0..100 {
                let ns = format!("/var/run/netns/{}", w.pods[i]);
                let cid = format!("{prefix}{i}");
                s.spawn(move || {
                    let (bin, p) = &chain.plugins[0];
                    exec(bin, "DEL", &chain.conf(p, None), &cid, &ns);
                });
            }
        });
        (
            add_wall,
            start.elapsed().as_secs_f64() * 1000.0,
            errors,
            distinct.len(),
        )
    };
    let par_ifb = par(&hf_ifb, "pi");
    let par_pod = par(&hf_pod, "pp");

    // Report.
    let machine = machine();
    println!("# holdfast benchmark\n");
    println!("{machine}\n");
    println!(
        "{cycles} ADD/DEL cycles per variant, interleaved, in one run ({:.0} s). Times in ms; CPU = user+sys of every process of the verb; RSS = the largest process.\n",
        sequential.as_secs_f64()
    );
    println!(
        "| variant | ADD p50 | ADD p90 | ADD p99 | DEL p50 | DEL p90 | DEL p99 | CPU/ADD p50 | CPU/DEL p50 | peak RSS KiB | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let names = [
        "reference: ptp + host-local + bandwidth",
        "holdfast (egress via ifb)",
        "holdfast (egressShaping: pod)",
        "chained: reference bandwidth after ptp (bandwidth only)",
        "chained: holdfast after ptp (holdfast only)",
    ];
    for (n, s) in names.iter().zip(&st) {
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} |",
            pct(&s.add, 0.5),
            pct(&s.add, 0.9),
            pct(&s.add, 0.99),
            pct(&s.del, 0.5),
            pct(&s.del, 0.9),
            pct(&s.del, 0.99),
            pct(&s.add_cpu, 0.5),
            pct(&s.del_cpu, 0.5),
            s.rss,
            s.errors
        );
    }
    let r = |a: &Stats, b: &Stats, f: fn(&Stats) -> &Vec<f64>| pct(f(a), 0.5) / pct(f(b), 0.5);
    println!("\n| ratio (medians) | ADD | DEL | CPU/ADD | peak RSS |");
    println!("|---|---|---|---|---|");
    for (n, i, j) in [
        ("holdfast (ifb) / reference", 1, 0),
        ("holdfast (pod) / reference", 2, 0),
        ("chained holdfast / reference bandwidth", 4, 3),
    ] {
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r(&st[i], &st[j], |s| &s.add),
            r(&st[i], &st[j], |s| &s.del),
            r(&st[i], &st[j], |s| &s.add_cpu),
            st[i].rss as f64 / st[j].rss.max(1) as f64
        );
    }
    println!(
        "\n| API fallback ({n_bh} ADDs each, timeoutMs {timeout_ms}) | ADD p50 | ADD p90 | ADD p99 | max | errors |"
    );
    println!("|---|---|---|---|---|---|");
    for (n, s) in [
        ("warm cache, VIP and real endpoint black-holed", &bh),
        ("fresh cache (no request)", &fr),
    ] {
        let max = s.add.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            pct(&s.add, 0.5),
            pct(&s.add, 0.9),
            pct(&s.add, 0.99),
            max,
            s.errors
        );
    }
    println!("\n| 100 pods in parallel | ADD wall ms | DEL wall ms | errors | distinct IPs |");
    println!("|---|---|---|---|---|");
    for (n, p) in [("holdfast (ifb)", par_ifb), ("holdfast (pod)", par_pod)] {
        println!("| {n} | {:.0} | {:.0} | {} | {} |", p.0, p.1, p.2, p.3);
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let plugins = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "containernetworking-plugins"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, kernel {}; reference plugins: Debian containernetworking-plugins {plugins}.",
        kernel.trim()
    )
}
