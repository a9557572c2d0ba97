//! Throughput through holdfast's limits, measured with iperf3 between the node netns and a pod.
//! In a test binary of its own: cargo runs test binaries one at a time, so nothing else competes
//! for the CPU while it measures.

mod common;
use common::*;
use serde_json::{Value, json};
use std::process::{Command, Stdio};

fn with_limits(mut conf: Value, bw: Value, shaping: &str) -> Value {
    conf["runtimeConfig"] = json!({"bandwidth": bw});
    conf["egressShaping"] = json!(shaping);
    conf
}

/// Mbit/s from `from` (a netns name) to `server` for 5 s; `reverse` measures server → from.
fn iperf(w: &World, from: &str, server: &str, reverse: bool) -> f64 {
    let mut args = vec![
        "netns",
        "exec",
        from,
        "iperf3",
        "-c",
        server,
        "-t",
        "5",
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if reverse {
        args.push("-R");
    }
    let _ = w;
    // iperf3's server runs one test at a time and resets a client that arrives while it is still
    // closing the previous one: a few bounded retries.
    let mut last = Value::Null;
    for _ in 0..5 {
        let out = Command::new("ip").args(&args).output().unwrap();
        last = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("iperf3: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        if let Some(bps) = last["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps / 1e6;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("iperf3 failed 5 times: {last}")
}

/// The best of up to three runs, each of which must stay under the limit. A shared machine's noise
/// (a TCP loss episode, a busy core) only ever lowers a measurement, never lifts it over the
/// shaper; so every sample is held to the upper bound, and only a low one is measured again.
fn best_within_limit(
    w: &World,
    podns: &str,
    reverse: bool,
    want: f64,
    label: &str,
    report: &mut Vec<String>,
) -> f64 {
    let mut best = 0.0f64;
    for attempt in 1..=3 {
        let got = iperf(w, podns, "10.41.0.1", reverse);
        report.push(format!("{label}: {got:.2} Mbit/s (run {attempt})"));
        assert!(
            got <= want * 1.10,
            "{label}: over the limit\n{}",
            report.join("\n")
        );
        best = best.max(got);
        if best >= want * 0.90 {
            break;
        }
    }
    best
}

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored as root"]
fn iperf3_throughput_is_within_ten_percent() {
    let mut w = World::new("iperf3_throughput_is_within_ten_percent");
    let base = w.conf("1.0.0", ipam_v4("10.41.0.0/24"));
    let node = w.node.clone();
    let _srv = Server(
        Command::new("ip")
            .args(["netns", "exec", &node, "iperf3", "-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300)); // let the server bind
    let mut report = Vec::new();
    let cases = [
        ("ifb", 10_000_000u64, 100_000u64),
        ("ifb", 100_000_000, 1_000_000),
        ("pod", 10_000_000, 100_000),
        ("pod", 100_000_000, 1_000_000),
        // containerd's "unspecified" burst: the limit must still hold.
        ("ifb", 10_000_000, 4_294_967_295),
    ];
    for (i, (shaping, rate, burst)) in cases.into_iter().enumerate() {
        let pod = w.pod();
        let podns = pod.rsplit('/').next().unwrap().to_string();
        let bw = json!({"IngressRate": rate, "IngressBurst": burst, "EgressRate": rate, "EgressBurst": burst});
        let conf = with_limits(base.clone(), bw, shaping);
        w.cni("ADD", &format!("c{i}"), &pod, "eth0", &conf).ok();
        let want = rate as f64 / 1e6;
        for (dir, reverse) in [("egress", false), ("ingress", true)] {
            let label = format!("{shaping} {dir} at {want} Mbit/s (burst {burst})");
            let got = best_within_limit(&w, &podns, reverse, want, &label, &mut report);
            assert!(
                (got - want).abs() <= want * 0.10,
                "{label} measured {got:.2} Mbit/s at best\n{}",
                report.join("\n")
            );
        }
        w.cni("DEL", &format!("c{i}"), &pod, "eth0", &conf).ok();
    }
    eprintln!("iperf3 through holdfast limits:\n{}", report.join("\n"));
    w.assert_clean();
}
