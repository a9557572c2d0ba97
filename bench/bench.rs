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

/// The reference plugins: `HOLDFAST_REF_DIR` (bench/run.sh points it at the current release from
/// tests/stack/build.sh), else Debian 12's.
fn reference_dir() -> String {
    std::env::var("HOLDFAST_REF_DIR").unwrap_or_else(|_| "/usr/lib/cni".into())
}
/// ADD/DEL cycles per variant run through GNU time for the peak RSS.
const RSS_CYCLES: usize = 20;

struct Proc {
    ok: bool,
    stdout: String,
    cpu: Duration,
    rss_kib: i64,
}

/// How a plugin is run.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// Directly, reaped with wait4 for its own CPU time.
    Timed,
    /// Through GNU time, for its peak RSS. wait4's `ru_maxrss` cannot tell it: std spawns with
    /// vfork, so until exec the child shares this process's memory, and its peak is this
    /// bench's size. time forks a child of its own (980 KiB here) that execs the plugin; the
    /// RSS of a plugin's own children (ptp's host-local) is included, as with wait4.
    Rss,
}

const TIME: &str = "/usr/bin/time";

/// Runs one plugin: its CPU time when `Run::Timed`, its peak RSS when `Run::Rss`.
fn exec(bin: &str, cmd: &str, conf: &Value, cid: &str, netns: &str, run: Run) -> Proc {
    let rss_file = std::env::temp_dir().join(format!("holdfast-bench-rss-{}", std::process::id()));
    let mut command = match run {
        Run::Timed => Command::new(bin),
        Run::Rss => {
            let mut c = Command::new(TIME);
            c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(bin);
            c
        }
    };
    let mut child = command
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", reference_dir())
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    feed(&mut child, conf);
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
    let rss_kib = match run {
        Run::Timed => 0,
        Run::Rss => std::fs::read_to_string(&rss_file)
            .ok()
            .and_then(|s| s.lines().last()?.trim().parse().ok())
            .expect("GNU time's %M"),
    };
    Proc {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: out,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kib,
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
        self.cycle_run(cid, netns, measure_from, s, Run::Timed)
    }

    /// One cycle through GNU time: only `s.rss` means anything afterwards.
    fn rss(&self, cid: &str, netns: &str, measure_from: usize) -> i64 {
        let mut s = Stats::default();
        self.cycle_run(cid, netns, measure_from, &mut s, Run::Rss);
        s.rss
    }

    fn cycle_run(
        &self,
        cid: &str,
        netns: &str,
        measure_from: usize,
        s: &mut Stats,
        run: Run,
    ) -> Option<Value> {
        let mut prev: Option<Value> = None;
        let (mut t, mut cpu) = (Duration::ZERO, Duration::ZERO);
        for (i, (bin, p)) in self.plugins.iter().enumerate() {
            let conf = self.conf(p, prev.as_ref());
            let start = Instant::now();
            let r = exec(bin, "ADD", &conf, cid, netns, run);
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
            let r = exec(bin, "DEL", &conf, cid, netns, run);
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

#[path = "../tests/common/fakeapi.rs"]
mod fakeapi;

const VIP: &str = "10.43.0.1";
const REAL: &str = "10.44.0.5";
const TOKEN: &str = "bench-token";
const SCENARIOS: &[&str] = &["compare", "api", "parallel", "soak", "storm", "scale"];
/// `scale` (thousands of synthetic attachments, bench/scale.rs) runs only when asked for.
const DEFAULT: usize = 5;

mod scale;

/// What to run: `bench [cycles] [--only a,b] [--soak N]`.
struct Args {
    cycles: usize,
    soak_cycles: usize,
    only: Vec<String>,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            cycles: 300,
            soak_cycles: 1000,
            only: SCENARIOS[..DEFAULT].iter().map(|s| s.to_string()).collect(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(x) = it.next() {
            match x.as_str() {
                "--only" => {
                    let list = it.next().expect("--only needs a list");
                    a.only = list.split(',').map(String::from).collect();
                    for s in &a.only {
                        assert!(
                            SCENARIOS.contains(&s.as_str()),
                            "unknown scenario {s}: {SCENARIOS:?}"
                        );
                    }
                }
                "--soak" => {
                    a.soak_cycles = it.next().and_then(|n| n.parse().ok()).expect("--soak N")
                }
                n => a.cycles = n.parse().expect("cycles must be a number"),
            }
        }
        a
    }

    fn runs(&self, s: &str) -> bool {
        self.only.iter().any(|o| o == s)
    }
}

/// The benchmark's world: a node netns (this process lives in it), pod netns, a scratch dir.
struct Bench {
    holdfast: String,
    w: World,
    runtime: Value,
    pki: fakeapi::Pki,
    /// The machine's netns, which the fake API must be started from (it checks it never
    /// serves there).
    root_ns: std::fs::File,
}

impl Bench {
    fn new(pods: usize) -> Bench {
        let holdfast =
            std::env::var("HOLDFAST_BIN").unwrap_or_else(|_| "target/release/holdfast".into());
        let holdfast = std::fs::canonicalize(&holdfast)
            .expect("build first: scripts/build-release.sh (bench/run.sh does)");
        let tag = format!("hfbench{}", std::process::id());
        let mut w = World {
            node: format!("{tag}-node"),
            pods: Vec::new(),
            dir: std::env::temp_dir().join(&tag),
        };
        ip(&["netns", "add", &w.node]);
        std::fs::create_dir_all(&w.dir).unwrap();
        for i in 0..pods {
            let p = format!("{tag}-p{i}");
            ip(&["netns", "add", &p]);
            w.pods.push(p);
        }
        let root_ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        // From here on this process lives in the node netns; every plugin it starts inherits it.
        let f = std::fs::File::open(format!("/var/run/netns/{}", w.node)).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ip(&["link", "set", "lo", "up"]);
        let bw = json!({"ingressRate": 10_000_000, "ingressBurst": 100_000, "egressRate": 10_000_000, "egressBurst": 100_000});
        Bench {
            holdfast: holdfast.to_str().unwrap().to_string(),
            w,
            runtime: json!({"bandwidth": bw}),
            pki: fakeapi::Pki::new(VIP),
            root_ns,
        }
    }

    fn pod(&self, i: usize) -> String {
        format!("/var/run/netns/{}", self.w.pods[i % self.w.pods.len()])
    }

    fn state(&self, name: &str) -> std::path::PathBuf {
        self.w.dir.join(name)
    }

    fn hf_conf(&self, state: &str, shaping: &str, sub: &str) -> Value {
        json!({"type": "holdfast", "stateDir": self.state(state), "logLevel": "warn", "egressShaping": shaping,
               "capabilities": {"bandwidth": true},
               "ipam": {"ranges": [[{"subnet": sub}]], "routes": [{"dst": "0.0.0.0/0"}]}})
    }

    fn chain(&self, name: &'static str, plugins: Vec<(String, Value)>) -> Chain {
        Chain {
            name,
            version: "1.0.0",
            plugins,
            runtime: self.runtime.clone(),
        }
    }

    fn hf(&self, name: &'static str, conf: Value) -> Chain {
        self.chain(name, vec![(self.holdfast.clone(), conf)])
    }
}

fn main() {
    let args = Args::parse();
    let mut pods = 20;
    if args.runs("compare") {
        pods = pods.max(args.cycles);
    }
    if args.runs("parallel") {
        pods = pods.max(100);
    }
    if args.runs("storm") {
        pods = pods.max(STORM);
    }
    let b = Bench::new(pods);
    println!("# holdfast benchmark\n");
    println!("{}\n", machine());
    if args.runs("compare") {
        compare(&b, args.cycles);
    }
    if args.runs("soak") {
        soak(&b, args.soak_cycles);
    }
    let api = (args.runs("api") || args.runs("storm")).then(|| ApiWorld::new(&b));
    if let Some(api) = &api
        && args.runs("api")
    {
        api_fallback(&b, api, (args.cycles / 10).clamp(10, 30));
    }
    if args.runs("parallel") {
        parallel(&b);
    }
    if let Some(api) = &api
        && args.runs("storm")
    {
        storm(&b, api);
    }
    if args.runs("scale") {
        scale::scale(&b, &[1000, 5000]);
    }
}

/// holdfast and the reference chain, ADD/DEL cycles interleaved so they share the noise.
fn compare(b: &Bench, cycles: usize) {
    let hl = |sub: &str| json!({"type": "host-local", "dataDir": b.w.dir.join("host-local"), "ranges": [[{"subnet": sub}]], "routes": [{"dst": "0.0.0.0/0"}]});
    let ptp = |sub: &str| {
        (
            format!("{}/ptp", reference_dir()),
            json!({"type": "ptp", "ipMasq": false, "ipam": hl(sub)}),
        )
    };
    let bandwidth = || {
        (
            format!("{}/bandwidth", reference_dir()),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        )
    };
    let chains = [
        b.chain("reference", vec![ptp("10.60.0.0/16"), bandwidth()]),
        b.hf("holdfast-ifb", b.hf_conf("holdfast", "ifb", "10.61.0.0/16")),
        b.hf("holdfast-pod", b.hf_conf("holdfast", "pod", "10.62.0.0/16")),
        b.chain("ptp-bandwidth", vec![ptp("10.63.0.0/16"), bandwidth()]),
        b.chain(
            "ptp-holdfast",
            vec![
                ptp("10.64.0.0/16"),
                (b.holdfast.clone(), json!({"type": "holdfast", "stateDir": b.state("holdfast"), "logLevel": "warn", "capabilities": {"bandwidth": true}})),
            ],
        ),
    ];
    let prefixes = ["ref", "hfi", "hfp", "cr", "ch"];
    let mut st: Vec<Stats> = (0..5).map(|_| Stats::default()).collect();
    let started = Instant::now();
    for i in 0..cycles {
        // Each cycle starts at the next variant: a verb's cost depends on what the kernel was
        // just doing (a DEL waits for every RCU callback queued before it), so no variant always
        // follows the same one.
        for j in 0..chains.len() {
            let k = (i + j) % chains.len();
            let c = &chains[k];
            let measure_from = if k >= 3 { 1 } else { 0 };
            c.cycle(
                &format!("{}{i}", prefixes[k]),
                &b.pod(i),
                measure_from,
                &mut st[k],
            );
        }
    }
    // Peak RSS in a pass of its own, through GNU time (see `Run::Rss`), rotating the same way.
    for i in 0..RSS_CYCLES {
        for j in 0..chains.len() {
            let k = (i + j) % chains.len();
            let measure_from = if k >= 3 { 1 } else { 0 };
            let rss = chains[k].rss(&format!("{}r{i}", prefixes[k]), &b.pod(i), measure_from);
            st[k].rss = st[k].rss.max(rss);
        }
    }
    print_compare(&st, cycles, started.elapsed());
}

fn print_compare(st: &[Stats], cycles: usize, took: Duration) {
    println!(
        "{cycles} ADD/DEL cycles per variant, interleaved, in one run ({:.0} s). Times in ms; CPU = user+sys of every process of the verb; RSS = the largest process's peak, from {RSS_CYCLES} more cycles run through GNU time.\n",
        took.as_secs_f64()
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
    for (n, s) in names.iter().zip(st) {
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
}

/// The fake HTTPS API on the "real" apiserver address inside the node netns `node`.
fn start_real(node: &str, pki: &fakeapi::Pki) -> fakeapi::FakeApi {
    ip(&["-n", node, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        node,
        "addr",
        "add",
        &format!("{REAL}/32"),
        "dev",
        "lo",
    ]);
    let cluster = fakeapi::Cluster {
        node: "bench-node".into(),
        node_uid: "u".into(),
        pod_cidrs: vec!["10.65.0.0/16".into()],
        endpoints: vec![format!("{REAL}:443").parse().unwrap()],
        endpoint_slices: true,
    };
    let addr = format!("{REAL}:443").parse().unwrap();
    fakeapi::FakeApi::start(node, addr, pki, TOKEN, cluster)
}

/// The fake API on the real address, a black hole for the VIP (and, on demand, for the real
/// address too), and a kubeconfig pointing at the VIP.
struct ApiWorld {
    kubeconfig: std::path::PathBuf,
    _real: fakeapi::FakeApi,
    real_down: std::cell::Cell<bool>,
}

const TIMEOUT_MS: u64 = 1000;

impl ApiWorld {
    fn new(b: &Bench) -> ApiWorld {
        let node_ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let enter = |f: &std::fs::File| {
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap()
        };
        enter(&b.root_ns);
        let real = start_real(&b.w.node, &b.pki);
        enter(&node_ns);
        ip(&["link", "add", "bh0", "type", "ifb"]);
        ip(&["link", "set", "bh0", "up"]);
        ip(&["route", "add", &format!("{VIP}/32"), "dev", "bh0"]);
        let token = b.w.dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let kubeconfig = b.w.dir.join("kubeconfig");
        fakeapi::write_kubeconfig(
            &kubeconfig,
            &format!("https://{VIP}:443"),
            &b.pki.ca_pem,
            Some(&token),
            None,
        );
        ApiWorld {
            kubeconfig,
            _real: real,
            real_down: std::cell::Cell::new(false),
        }
    }

    /// The real address stops answering too: the whole API is gone.
    fn black_hole_real(&self) {
        if self.real_down.replace(true) {
            return;
        }
        ip(&["addr", "del", &format!("{REAL}/32"), "dev", "lo"]);
        ip(&["route", "add", &format!("{REAL}/32"), "dev", "bh0"]);
    }

    /// The real address answers again (only the VIP stays black-holed).
    fn restore_real(&self) {
        if !self.real_down.replace(false) {
            return;
        }
        ip(&["route", "del", &format!("{REAL}/32"), "dev", "bh0"]);
        ip(&["addr", "add", &format!("{REAL}/32"), "dev", "lo"]);
    }

    /// A usePodCidr config in its own stateDir, with a cache `age` seconds old.
    fn conf(&self, b: &Bench, state: &str, refresh: u64, age: u64) -> Value {
        let mut c = b.hf_conf(state, "pod", "usePodCidr");
        c["kubernetes"] = json!({"kubeconfig": self.kubeconfig, "nodeName": "bench-node", "timeoutMs": TIMEOUT_MS,
                                 "refreshSeconds": refresh, "outageHoldSeconds": 60});
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let dir = b.state(state);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster-info.json"), json!({"version": 1, "nodeName": "bench-node", "nodeUid": "u",
            "podCIDRs": ["10.65.0.0/16"], "apiEndpoints": [format!("{REAL}:443")], "fetchedUnix": now - age, "fetchedFrom": "seed"}).to_string()).unwrap();
        c
    }
}

/// ADD latency when the API is down or half down, next to a fresh cache's.
fn api_fallback(b: &Bench, api: &ApiWorld, n: usize) {
    let run = |name: &'static str, conf: Value, prefix: &str| {
        let chain = b.hf(name, conf);
        let mut s = Stats::default();
        for i in 0..n {
            chain.cycle(&format!("{prefix}{i}"), &b.pod(i), 0, &mut s);
        }
        s
    };
    let fresh = run("fresh", api.conf(b, "api-fresh", 3600, 0), "fr");
    let vip_down = run("vipdown", api.conf(b, "api-vipdown", 0, 300), "vd");
    api.black_hole_real();
    let outage = run("outage", api.conf(b, "api-outage", 0, 300), "bh");
    println!(
        "\n| API ({n} ADDs each, timeoutMs {TIMEOUT_MS}, outageHoldSeconds 60) | first ADD | rest p50 | rest p99 | rest max | errors |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, s) in [
        (
            "everything black-holed, warm cache (cache after the first)",
            &outage,
        ),
        (
            "VIP black-holed, real endpoint up (fresh answers)",
            &vip_down,
        ),
        ("fresh cache (no request)", &fresh),
    ] {
        let rest = s.add.get(1..).unwrap_or_default();
        let max = rest.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            s.add.first().copied().unwrap_or(f64::NAN),
            pct(rest, 0.5),
            pct(rest, 0.99),
            max,
            s.errors
        );
    }
}

/// 100 pods ADDed in parallel, then DELed in parallel.
fn parallel(b: &Bench) {
    println!("\n| 100 pods in parallel | ADD wall ms | DEL wall ms | errors | distinct IPs |");
    println!("|---|---|---|---|---|");
    for (name, shaping, sub, prefix) in [
        ("holdfast (ifb)", "ifb", "10.66.0.0/16", "pi"),
        ("holdfast (pod)", "pod", "10.67.0.0/16", "pp"),
    ] {
        let chain = b.hf("par", b.hf_conf("par", shaping, sub));
        let (add, del) = at_once(b, &chain, prefix, 100);
        let errors = add.iter().filter(|r| r.1.is_none()).count();
        let distinct: HashSet<String> = add
            .iter()
            .filter_map(|r| {
                r.1.as_ref()?["ips"][0]["address"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        println!(
            "| {name} | {:.0} | {:.0} | {errors} | {} |",
            add_wall(&add),
            del,
            distinct.len()
        );
    }
}

fn add_wall(add: &[(f64, Option<Value>)]) -> f64 {
    add.iter().map(|r| r.0).fold(0.0, f64::max)
}

/// `n` ADDs started together, then `n` DELs: each ADD's latency and result, the DEL wall time.
fn at_once(b: &Bench, chain: &Chain, prefix: &str, n: usize) -> (Vec<(f64, Option<Value>)>, f64) {
    let adds: Vec<(f64, Option<Value>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let (ns, cid) = (b.pod(i), format!("{prefix}{i}"));
                s.spawn(move || {
                    let t = Instant::now();
                    let (bin, p) = &chain.plugins[0];
                    let r = exec(bin, "ADD", &chain.conf(p, None), &cid, &ns, Run::Timed);
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    (
                        ms,
                        r.ok.then(|| serde_json::from_str::<Value>(&r.stdout).ok())
                            .flatten(),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..n {
            let (ns, cid) = (b.pod(i), format!("{prefix}{i}"));
            s.spawn(move || {
                let (bin, p) = &chain.plugins[0];
                exec(bin, "DEL", &chain.conf(p, None), &cid, &ns, Run::Timed);
            });
        }
    });
    (adds, start.elapsed().as_secs_f64() * 1000.0)
}

const STORM: usize = 200;

/// A cold boot: 200 pods at once with a stale cache and no remembered health yet, the API
/// black-holed, then only the VIP black-holed (the real endpoint up), next to the same storm on
/// a fresh cache (which needs no API). A wave is one probe: one ADD waits on the API (counted
/// from stateDir/counters/add-asked), the others take the cache or the prober's answer.
///
/// Identical storms differ as much as the cache does, and the run's first storm was the fastest
/// (a fresh-cache storm repeated after the outage storms measured 1.02-1.63 x the first one's
/// p50 in six runs): so a warm-up storm comes first, and the fresh-cache storm runs before and
/// after the outage storms, which are compared with the mean of the two.
fn storm(b: &Bench, api: &ApiWorld) {
    println!(
        "\n| boot storm: {STORM} ADDs at once, timeoutMs {TIMEOUT_MS} | ADD p50 | ADD p99 | max | wall ms | errors | ADDs that asked the API | p50 / fresh p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    api.restore_real();
    let warm = storm_one(b, api, "storm-warm", "sw", 3600, 0);
    let fresh = storm_one(b, api, "storm-fresh", "sf", 3600, 0);
    let vip = storm_one(b, api, "storm-vip", "sv", 0, 300);
    api.black_hole_real();
    let down = storm_one(b, api, "storm-down", "sd", 0, 300);
    let again = storm_one(b, api, "storm-fresh2", "sg", 3600, 0);
    let base = (fresh.p50 + again.p50) / 2.0;
    for (name, s) in [
        ("warm-up: fresh cache, the run's first storm", &warm),
        ("fresh cache (no request), before", &fresh),
        ("VIP black-holed, real endpoint up, stale cache", &vip),
        ("API black-holed, stale cache", &down),
        ("fresh cache (no request), after", &again),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {:.2}x |",
            s.p50,
            s.p99,
            s.max,
            s.wall,
            s.errors,
            s.asked,
            s.p50 / base
        );
    }
}

struct Storm {
    p50: f64,
    p99: f64,
    max: f64,
    wall: f64,
    errors: usize,
    asked: u64,
}

/// One storm in its own stateDir, with a cache `age` seconds old.
fn storm_one(
    b: &Bench,
    api: &ApiWorld,
    state: &str,
    prefix: &str,
    refresh: u64,
    age: u64,
) -> Storm {
    let chain = b.hf("storm", api.conf(b, state, refresh, age));
    let (add, _) = at_once(b, &chain, prefix, STORM);
    let lat: Vec<f64> = add.iter().map(|r| r.0).collect();
    let asked = std::fs::metadata(b.state(state).join("counters/add-asked"))
        .map(|m| m.len())
        .unwrap_or(0);
    Storm {
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        max: lat.iter().cloned().fold(0.0, f64::max),
        wall: add_wall(&add),
        errors: add.iter().filter(|r| r.1.is_none()).count(),
        asked,
    }
}

/// 1000 ADD/DEL cycles with bandwidth (ifb), with what must stay flat, per 100 cycles.
fn soak(b: &Bench, cycles: usize) {
    let conf = b.hf_conf("soak", "ifb", "10.68.0.0/16");
    let chain = b.hf("soak", conf.clone());
    println!(
        "\n| soak: cycles | links in node netns | files under stateDir | max fds in one ADD | file-nr allocated | peak RSS KiB (one cycle) | ADD p50 | DEL p50 | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut block = Stats::default();
    for i in 0..cycles {
        chain.cycle(&format!("sk{i}"), &b.pod(i), 0, &mut block);
        if (i + 1) % 100 != 0 && i + 1 != cycles {
            continue;
        }
        // One extra ADD/DEL, sampled for its open fds, and one through GNU time for its RSS.
        let fds = max_fds(&b.holdfast, &chain.conf(&conf, None), &b.pod(i));
        block.rss = chain.rss(&format!("skr{i}"), &b.pod(i), 0);
        println!(
            "| {} | {} | {} | {fds} | {} | {} | {:.1} | {:.1} | {} |",
            i + 1,
            node_links(),
            count_files(&b.state("soak")),
            file_nr(),
            block.rss,
            pct(&block.add, 0.5),
            pct(&block.del, 0.5),
            block.errors
        );
        block = Stats::default();
    }
}

/// The most fds the plugin had open at once during one ADD (sampled from /proc), then DEL.
fn max_fds(bin: &str, conf: &Value, netns: &str) -> usize {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "fdprobe")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", reference_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    let dir = format!("/proc/{}/fd", child.id());
    feed(&mut child, conf);
    let mut max = 0;
    while child.try_wait().unwrap().is_none() {
        max = max.max(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0));
        std::thread::sleep(Duration::from_micros(100));
    }
    exec(bin, "DEL", conf, "fdprobe", netns, Run::Timed);
    max
}

fn node_links() -> usize {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|n| n.starts_with("hf"))
        .count()
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => count_files(&e.path()),
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn file_nr() -> String {
    std::fs::read_to_string("/proc/sys/fs/file-nr")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_default()
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
    // A reference plugin run with no CNI_COMMAND names itself: "CNI ptp plugin v1.9.1".
    let plugins = Command::new(format!("{}/ptp", reference_dir()))
        .env_clear()
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, kernel {}; reference plugins: {} ({}).",
        kernel.trim(),
        plugins.lines().next().unwrap_or("unknown").trim(),
        reference_dir()
    )
}

/// Writes the config to a spawned plugin's stdin and closes it.
fn feed(child: &mut std::process::Child, conf: &Value) {
    let mut stdin = child.stdin.take().expect("plugin stdin");
    stdin
        .write_all(conf.to_string().as_bytes())
        .expect("write config");
}
