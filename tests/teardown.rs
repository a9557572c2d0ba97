//! The one teardown (issue 16): GC and reclaim never touch an attachment whose lock a verb
//! holds, a failed ADD or a DEL leaves no lock file, and odd entries in the lease directory do
//! not stop GC.

mod common;
use common::night::*;
use common::*;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn gc_all(conf: &Value) -> Value {
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    gc
}

/// Holds `path` with flock(1), as a verb in flight holds an attachment's lock, until dropped.
fn hold(w: &World, path: &std::path::Path) -> Group {
    let held = w.state_dir.join(format!("held-{}", std::process::id()));
    let _ = std::fs::remove_file(&held);
    let script = format!("touch {}; exec sleep 60", held.display());
    let holder = Group::spawn(&["flock", "-x", &path.display().to_string(), "-c", &script]);
    let end = Instant::now() + Duration::from_secs(10);
    while !held.exists() {
        assert!(Instant::now() < end, "flock never took {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&held);
    holder
}

fn lock_file(w: &World, cid: &str) -> std::path::PathBuf {
    w.state_dir.join(format!("locks/testnet/{cid}@eth0.lock"))
}

#[test]
#[ignore = "needs root"]
fn gc_leaves_an_attachment_whose_lock_is_held_whole() {
    let mut w = World::new("gc_leaves_a_locked_attachment_whole");
    let conf = w.conf("1.1.0", ipam_v4("10.97.0.0/24"));
    let pod = w.pod();
    let r = verb(&w, "ADD", "inflight", &pod, "eth0", &conf)
        .run
        .ok()
        .json();
    let present = Ok(Attachment::Present(vec![addr_of(&r, 0)]));
    // A verb holds the lock (an ADD between its lease and its answer, as far as GC can tell);
    // the runtime's list predates it.
    let holder = hold(&w, &lock_file(&w, "inflight"));
    bare(&w, "GC", &gc_all(&conf), &[]).run.ok();
    assert_eq!(
        attachment(&w, "inflight", &pod, "eth0"),
        present,
        "GC touched an attachment whose lock was held"
    );
    drop(holder);
    bare(&w, "GC", &gc_all(&conf), &[]).run.ok();
    assert_no_attachment_left(&w, &[&pod], "GC once the lock was free");
}

#[test]
#[ignore = "needs root"]
fn gc_racing_adds_leaves_every_attachment_whole_or_gone() {
    let mut w = World::new("gc_racing_adds");
    let conf = w.conf("1.1.0", ipam_v4("10.98.0.0/24"));
    let (threads, per) = (6, 8);
    let pods: Vec<String> = (0..threads * per).map(|_| w.pod()).collect();
    let stop = AtomicBool::new(false);
    let gcs = Mutex::new(0usize);
    let adds: Vec<(String, i32)> = std::thread::scope(|s| {
        let (w, conf, stop, gcs) = (&w, &conf, &stop, &gcs);
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                bare(w, "GC", &gc_all(conf), &[]);
                *gcs.lock().unwrap() += 1;
            }
        });
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let pods = &pods;
                s.spawn(move || {
                    (0..per)
                        .map(|i| {
                            let cid = format!("r{t}x{i}");
                            let pod = &pods[t * per + i];
                            let e = verb(w, "ADD", &cid, pod, "eth0", conf);
                            (cid, e.run.code)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let out = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        out
    });
    assert!(*gcs.lock().unwrap() > 1, "GC never overlapped the ADDs");
    // Whatever GC removed, it removed wholly: an ADD it raced either answered with everything
    // in place (GC skipped it while its lock was held) and was then removed whole by a later
    // GC, or was never half-undone under it.
    let torn: Vec<String> = adds
        .iter()
        .enumerate()
        .filter_map(
            |(i, (cid, code))| match attachment(&w, cid, &pods[i], "eth0") {
                Ok(_) => None,
                Err(seen) => Some(format!("{cid} (ADD rc {code}): {seen}")),
            },
        )
        .collect();
    assert!(
        torn.is_empty(),
        "{} of {} attachments torn by GC:\n{}",
        torn.len(),
        adds.len(),
        torn.join("\n")
    );
    bare(&w, "GC", &gc_all(&conf), &[]).run.ok();
    let refs: Vec<&str> = pods.iter().map(String::as_str).collect();
    assert_no_attachment_left(&w, &refs, "after a last GC");
}

#[test]
#[ignore = "needs root"]
fn failed_verbs_and_del_leave_no_lock_file() {
    let mut w = World::new("failed_verbs_leave_no_lock_file");
    // A /30 has a single pod address.
    let conf = w.conf("1.1.0", ipam_v4("10.99.4.0/30"));
    let (a, b) = (w.pod(), w.pod());
    let r = verb(&w, "ADD", "a", &a, "eth0", &conf).run.ok().json();
    assert!(
        lock_file(&w, "a").exists(),
        "a live attachment keeps its lock file"
    );
    verb(&w, "ADD", "b", &b, "eth0", &conf)
        .run
        .err(100, "10.99.4.0/30");
    assert!(
        !lock_file(&w, "b").exists(),
        "a failed ADD left its lock file"
    );
    let prev = with_prev(&conf, &r);
    verb(&w, "CHECK", "never", &b, "eth0", &prev)
        .run
        .err(101, "record");
    assert!(!lock_file(&w, "never").exists(), "CHECK left a lock file");
    verb(&w, "DEL", "never", &b, "eth0", &conf).run.ok();
    verb(&w, "DEL", "a", &a, "eth0", &conf).run.ok();
    verb(&w, "DEL", "a", &a, "eth0", &conf).run.ok();
    assert_eq!(
        files(&w.state_dir.join("locks/testnet")),
        Vec::<String>::new(),
        "lock files left"
    );
    assert_no_attachment_left(&w, &[&a, &b], "after every DEL");
}

#[test]
#[ignore = "needs root"]
fn a_directory_at_a_lease_name_does_not_fail_gc() {
    let mut w = World::new("a_directory_at_a_lease_name");
    let conf = w.conf("1.1.0", ipam_v4("10.99.5.0/29"));
    let pod = w.pod();
    let planted = w.state_dir.join("ipam/testnet/10.99.5.2");
    std::fs::create_dir_all(planted.join("inside")).unwrap();
    let r = verb(&w, "ADD", "c", &pod, "eth0", &conf).run.ok().json();
    assert_eq!(
        addr_of(&r, 0),
        "10.99.5.3",
        "the planted address is not handed out"
    );
    bare(&w, "GC", &gc_all(&conf), &[]).run.ok();
    bare(&w, "GC", &gc_all(&conf), &[]).run.ok();
    assert!(
        planted.join("inside").is_dir(),
        "GC removed what it did not make"
    );
    std::fs::remove_dir_all(&planted).unwrap();
    assert_no_attachment_left(&w, &[&pod], "after GC");
}
