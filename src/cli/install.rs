//! `holdfast install`: what the DaemonSet's init container (and install.sh) runs on a node. Puts
//! the binary into the host's CNI bin dir, then the CA, token and kubeconfig, and the conflist
//! last (a runtime calls a node network-ready as soon as a conflist appears, so everything it
//! names must exist by then). Each file goes through the state layer's checked atomic writer:
//! replaced only after a self-check, and only when its content, mode or owner differ, so a
//! second run changes nothing.

use super::conffile;
use crate::cluster::credentials::{self, CA_FILE, TOKEN_FILE};
use crate::cni::{Error, Result};
use crate::proc;
use crate::state::{at, atomic};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The conflist holdfast ships for Kubernetes nodes, installed unless `--conflist` names another.
pub const SHIPPED_CONFLIST: &str = include_str!("../../conf/10-holdfast-k8s.conflist");
const SHIPPED_CONFLIST_NAME: &str = "10-holdfast-k8s.conflist";
/// A binary that does not answer VERSION within this is not installed.
const SELF_CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// Far above any holdfast build (a debug one included); a file this big is not one.
const MAX_BINARY: usize = 1 << 30;

/// Where things come from and go to; each has a flag and an environment variable.
#[derive(Clone, Debug)]
pub struct Options {
    /// The binary to install (default: this process's own executable).
    pub binary: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// A conflist file to install instead of the shipped one.
    pub conflist: Option<PathBuf>,
    pub sa_dir: PathBuf,
    /// `https://host:port` of the API as pods see it (KUBERNETES_SERVICE_HOST/PORT).
    pub server: Option<String>,
}

impl Options {
    /// From flags, falling back to the environment and then to the defaults.
    pub fn parse(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Options, String> {
        let env_or = |k: &str, d: &str| env(k).filter(|v| !v.is_empty()).unwrap_or(d.into());
        let mut o = Options {
            binary: std::env::current_exe().map_err(|e| format!("own executable: {e}"))?,
            bin_dir: env_or("CNI_BIN_DIR", "/opt/cni/bin").into(),
            conf_dir: env_or("CNI_CONF_DIR", conffile::DEFAULT_CONF_DIR).into(),
            conflist: env("HOLDFAST_CONFLIST")
                .filter(|v| !v.is_empty())
                .map(Into::into),
            sa_dir: env_or("HOLDFAST_SA_DIR", credentials::SA_DIR).into(),
            server: server_from_env(&env)?,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--bin-dir" => o.bin_dir = val()?.into(),
                "--conf-dir" => o.conf_dir = val()?.into(),
                "--conflist" => o.conflist = Some(val()?.into()),
                "--sa-dir" => o.sa_dir = val()?.into(),
                "--binary" => o.binary = val()?.into(),
                "--server" => o.server = Some(val()?),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(o)
    }
}

/// `https://host:port` from the variables the kubelet gives every pod.
fn server_from_env(
    env: &impl Fn(&str) -> Option<String>,
) -> std::result::Result<Option<String>, String> {
    let Some(host) = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
    if port.parse::<u16>().is_err() {
        return Err(format!("KUBERNETES_SERVICE_PORT {port:?} is not a port"));
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(Some(format!("https://{host}:{port}")))
}

/// What one run did, one line per file.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub lines: Vec<String>,
}

impl Report {
    fn note(&mut self, path: &Path, changed: bool) {
        let what = if changed { "installed" } else { "unchanged" };
        self.lines.push(format!("{what} {}", path.display()));
    }
}

/// The command: exit 0 when everything is in place.
pub fn main(args: &[String]) -> i32 {
    let opts = match Options::parse(args, |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("holdfast install: {e}");
            return 2;
        }
    };
    match run(&opts) {
        Ok(r) => {
            for l in r.lines {
                eprintln!("holdfast install: {l}");
            }
            0
        }
        Err(e) => {
            eprintln!("holdfast install: {e}");
            1
        }
    }
}

/// Installs binary, credentials, kubeconfig and conflist, in that order.
pub fn run(o: &Options) -> Result<Report> {
    let mut report = Report::default();
    let (name, source) = match &o.conflist {
        Some(p) => (
            p.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::config(format!("{}: not a file name", p.display())))?
                .to_string(),
            conffile::read(p)?,
        ),
        None => (
            SHIPPED_CONFLIST_NAME.to_string(),
            SHIPPED_CONFLIST.as_bytes().to_vec(),
        ),
    };
    let dest = o.conf_dir.join(&name);
    // An unreadable conflist there (a FIFO, a directory) is replaced like a foreign one.
    let existing = conffile::read(&dest).ok();
    let (conflist, version) = conflist_text(&source, existing.as_deref())?;
    let conf = conffile::parse(&conflist, &format!("the conflist to install ({name})"))?;
    survey(&o.conf_dir, &name, &mut report);

    let bin = o.bin_dir.join("holdfast");
    let bytes = at::read_following(&o.binary, MAX_BINARY)?.ok_or_else(|| {
        Error::config(format!("the binary {} does not exist", o.binary.display()))
    })?;
    let changed = atomic::replace_checked(&bin, &bytes, 0o755, |tmp| check_binary(tmp, &version))?;
    report.note(&bin, changed);

    if let Ok(kube) = conf.kube() {
        install_credentials(o, &kube.kubeconfig, &mut report)?;
    }
    let changed = atomic::replace_checked(&dest, &conflist, 0o644, |tmp| {
        conffile::load(Some(tmp)).map(|_| ())
    })?;
    report.note(&dest, changed);
    Ok(report)
}

/// The CA and token from the service account, and a kubeconfig naming them. Written into
/// `conf_dir` (the host's conf dir as this container mounts it) under the file names the
/// conflist's `kubernetes.kubeconfig` implies; the paths inside are the host's.
fn install_credentials(o: &Options, kubeconfig: &Path, report: &mut Report) -> Result<()> {
    let host_dir = kubeconfig
        .parent()
        .ok_or_else(|| Error::config("kubernetes.kubeconfig has no directory"))?;
    let file = kubeconfig
        .file_name()
        .ok_or_else(|| Error::config("kubernetes.kubeconfig has no file name"))?;
    let server = o.server.as_deref().ok_or_else(|| {
        Error::config(
            "the conflist has a kubernetes section but the API server is unknown \
             (KUBERNETES_SERVICE_HOST unset and no --server)",
        )
    })?;
    for (path, changed) in credentials::sync_service_account(&o.sa_dir, &o.conf_dir)? {
        report.note(&path, changed);
    }
    let text =
        credentials::kubeconfig_text(server, &host_dir.join(CA_FILE), &host_dir.join(TOKEN_FILE));
    let dest = o.conf_dir.join(file);
    let changed = atomic::replace_checked(&dest, text.as_bytes(), 0o600, |tmp| {
        kube::config::Kubeconfig::read_from(tmp)
            .map(|_| ())
            .map_err(|e| Error::config(format!("generated kubeconfig does not parse: {e}")))
    })?;
    report.note(&dest, changed);
    Ok(())
}

/// The conflist to write: `source` as shipped, except that an installed conflist's
/// `cniVersion` is kept (runtimes read the cached results of existing pods in that version;
/// containerd 1.6 fails every DEL when it changes). Returns the bytes and the version.
pub fn conflist_text(source: &[u8], existing: Option<&[u8]>) -> Result<(Vec<u8>, String)> {
    let mut v: Value =
        serde_json::from_slice(source).map_err(|e| Error::decode("the conflist to install", e))?;
    let ours = v
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::config("the conflist to install has no cniVersion"))?
        .to_string();
    let installed = existing
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|e| {
            e.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        });
    match installed {
        Some(old) if old != ours => {
            v["cniVersion"] = Value::String(old.clone());
            let mut text =
                serde_json::to_vec_pretty(&v).map_err(|e| Error::Internal(e.to_string()))?;
            text.push(b'\n');
            Ok((text, old))
        }
        _ => Ok((source.to_vec(), ours)),
    }
}

/// What else in `dir` a runtime might pick, never touched: a network config that sorts before
/// ours is the one the runtime uses (libcni takes the first by name), which would leave holdfast
/// unused without a word unless we say so; another holdfast config is noted.
fn survey(dir: &Path, ours: &str, report: &mut Report) {
    let Ok(files) = conffile::candidates(dir) else {
        return;
    };
    for p in files {
        let Some(file) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file == ours {
            continue;
        }
        // Unreadable, oversized or not a regular file: no runtime uses it either.
        let Ok(bytes) = conffile::read(&p) else {
            continue;
        };
        if file < ours && conffile::is_network_config(&bytes) {
            report.lines.push(format!(
                "warning: {} sorts before {ours}, so the runtime uses it and not holdfast",
                p.display()
            ));
        }
        if conffile::parse(&bytes, &p.display().to_string()).is_ok() {
            report.lines.push(format!(
                "note: {} also configures holdfast; left alone",
                p.display()
            ));
        }
    }
}

/// Runs the candidate binary with CNI_COMMAND=VERSION (empty environment, bounded, its whole
/// process group killed at the deadline) and requires it to speak `version`.
fn check_binary(path: &Path, version: &str) -> Result<()> {
    let fail = |why: String| Error::config(format!("self-check of {}: {why}", path.display()));
    let run = || {
        crate::runtime::block_on(async {
            let mut c = tokio::process::Command::new(path);
            c.env_clear().env("CNI_COMMAND", "VERSION");
            let deadline = tokio::time::Instant::now() + SELF_CHECK_DEADLINE;
            let limits = proc::Limits {
                stdout: 64 << 10,
                stderr: None,
            };
            Ok(proc::run_bounded(&mut c, None, deadline, limits).await)
        })
    };
    // A just-written file can be briefly "busy" while another thread's fork still holds it.
    let out = match run()? {
        Err(proc::Error::Spawn(e)) if e.raw_os_error() == Some(libc::ETXTBSY) => {
            std::thread::sleep(Duration::from_millis(50));
            run()?
        }
        other => other,
    };
    let out = out.map_err(|e| match e {
        proc::Error::TimedOut => fail(format!(
            "no answer to VERSION within {SELF_CHECK_DEADLINE:?}, killed"
        )),
        e => fail(format!("VERSION: {e}")),
    })?;
    if !out.status.success() {
        return Err(fail(format!("VERSION exited with {}", out.status)));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("VERSION printed no JSON: {e}")))?;
    let speaks = v
        .get("supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(version)));
    if !speaks {
        return Err(fail(format!("it does not support cniVersion {version}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("hf-install-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            for d in ["bin", "net.d", "sa"] {
                std::fs::create_dir_all(p.join(d)).unwrap();
            }
            std::fs::write(p.join("sa/ca.crt"), "CA-1\n").unwrap();
            std::fs::write(p.join("sa/token"), "token-1").unwrap();
            Scratch(p)
        }
        /// A stand-in plugin binary that answers VERSION with `versions`.
        fn plugin(&self, versions: &str) -> PathBuf {
            let p = self.0.join(format!("plugin-{}", versions.len()));
            std::fs::write(
                &p,
                format!("#!/bin/sh\necho '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[{versions}]}}'\n"),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        }
        fn opts(&self, plugin: PathBuf) -> Options {
            Options {
                binary: plugin,
                bin_dir: self.0.join("bin"),
                conf_dir: self.0.join("net.d"),
                conflist: None,
                sa_dir: self.0.join("sa"),
                server: Some("https://10.43.0.1:443".into()),
            }
        }
        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.0.join(rel)).unwrap()
        }
        fn mode(&self, rel: &str) -> u32 {
            std::fs::metadata(self.0.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const ALL: &str = r#""0.3.1","0.4.0","1.0.0","1.1.0""#;

    #[test]
    fn installs_everything_then_a_second_run_changes_nothing() {
        let s = Scratch::new("fresh");
        let o = s.opts(s.plugin(ALL));
        let first = run(&o).unwrap();
        assert!(
            first.lines.iter().all(|l| l.starts_with("installed")),
            "{first:?}"
        );
        assert_eq!(s.read("net.d/10-holdfast-k8s.conflist"), SHIPPED_CONFLIST);
        assert_eq!(s.mode("bin/holdfast"), 0o755);
        assert_eq!(s.mode("net.d/holdfast-token"), 0o600);
        assert_eq!(s.mode("net.d/holdfast-kubeconfig"), 0o600);
        assert_eq!(s.read("net.d/holdfast-token"), "token-1");
        let kc = s.read("net.d/holdfast-kubeconfig");
        assert!(kc.contains("server: https://10.43.0.1:443"), "{kc}");
        assert!(
            kc.contains("certificate-authority: /etc/cni/net.d/holdfast-ca.crt"),
            "{kc}"
        );
        assert!(
            kc.contains("tokenFile: /etc/cni/net.d/holdfast-token"),
            "{kc}"
        );
        let second = run(&o).unwrap();
        assert_eq!(second.lines.len(), 5);
        assert!(
            second.lines.iter().all(|l| l.starts_with("unchanged")),
            "{second:?}"
        );
    }

    #[test]
    fn an_installed_conflist_keeps_its_cni_version() {
        let s = Scratch::new("version");
        let old = SHIPPED_CONFLIST
            .replace("\"1.0.0\"", "\"1.1.0\"")
            .replace("1450", "1400");
        assert_ne!(old, SHIPPED_CONFLIST);
        std::fs::write(s.0.join("net.d/10-holdfast-k8s.conflist"), &old).unwrap();
        run(&s.opts(s.plugin(ALL))).unwrap();
        let now: Value = serde_json::from_str(&s.read("net.d/10-holdfast-k8s.conflist")).unwrap();
        assert_eq!(now["cniVersion"], "1.1.0");
        assert_eq!(
            now["plugins"][0]["mtu"], 1450,
            "the rest is the shipped conflist"
        );
        let again = run(&s.opts(s.plugin(ALL))).unwrap();
        assert!(
            again.lines.iter().all(|l| l.starts_with("unchanged")),
            "{again:?}"
        );
    }

    #[test]
    fn foreign_conflists_are_left_alone() {
        let s = Scratch::new("foreign");
        let foreign = r#"{"cniVersion":"0.4.0","name":"other","plugins":[{"type":"bridge"}]}"#;
        std::fs::write(s.0.join("net.d/05-other.conflist"), foreign).unwrap();
        let mine =
            SHIPPED_CONFLIST.replace("\"holdfast\",\n  \"plugins\"", "\"old\",\n  \"plugins\"");
        std::fs::write(s.0.join("net.d/10-holdfast.conflist"), &mine).unwrap();
        let r = run(&s.opts(s.plugin(ALL))).unwrap();
        assert_eq!(s.read("net.d/05-other.conflist"), foreign);
        assert_eq!(s.read("net.d/10-holdfast.conflist"), mine);
        assert!(
            r.lines
                .iter()
                .any(|l| l.contains("10-holdfast.conflist also configures holdfast")),
            "{r:?}"
        );
    }

    #[test]
    fn a_binary_that_fails_its_self_check_installs_nothing() {
        let s = Scratch::new("badbin");
        let err = run(&s.opts(s.plugin(r#""0.3.1""#))).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not support cniVersion 1.0.0"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(s.0.join("bin")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!s.0.join("net.d/10-holdfast-k8s.conflist").exists());
    }

    #[test]
    fn no_server_is_an_error_before_the_conflist_is_written() {
        let s = Scratch::new("noserver");
        let mut o = s.opts(s.plugin(ALL));
        o.server = None;
        assert!(
            run(&o)
                .unwrap_err()
                .to_string()
                .contains("KUBERNETES_SERVICE_HOST")
        );
        assert!(!s.0.join("net.d/10-holdfast-k8s.conflist").exists());
    }

    #[test]
    fn a_loose_mode_is_tightened_even_when_the_content_is_unchanged() {
        let s = Scratch::new("mode");
        let o = s.opts(s.plugin(ALL));
        run(&o).unwrap();
        for (f, loose) in [
            ("net.d/holdfast-token", 0o644),
            ("net.d/holdfast-kubeconfig", 0o644),
            ("bin/holdfast", 0o777),
        ] {
            let p = s.0.join(f);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(loose)).unwrap();
        }
        let r = run(&o).unwrap();
        assert_eq!(s.mode("net.d/holdfast-token"), 0o600, "{r:?}");
        assert_eq!(s.mode("net.d/holdfast-kubeconfig"), 0o600, "{r:?}");
        assert_eq!(s.mode("bin/holdfast"), 0o755, "{r:?}");
        assert_eq!(s.read("net.d/holdfast-token"), "token-1");
    }

    #[test]
    fn temps_of_a_killed_install_are_swept() {
        let s = Scratch::new("temps");
        // What a SIGKILLed install leaves: its own naming (pid, nanos) and the state layer's.
        let old = [
            ".holdfast.4242.123456.tmp",
            ".holdfast.0123456789abcdef.tmp",
        ];
        for t in old {
            let p = s.0.join("bin").join(t);
            std::fs::write(&p, b"half a binary").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(600))
                .unwrap();
        }
        let fresh = s.0.join("bin/.holdfast.4243.1.tmp");
        std::fs::write(&fresh, b"another install at work").unwrap();
        run(&s.opts(s.plugin(ALL))).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(s.0.join("bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".holdfast.4243.1.tmp", "holdfast"]);
    }

    #[test]
    fn a_fifo_or_a_huge_file_in_the_conf_dir_neither_hangs_nor_is_read() {
        let s = Scratch::new("fifo");
        let d = s.0.join("net.d");
        nix::unistd::mkfifo(
            &d.join("05-fifo.conflist"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let huge = std::fs::File::create(d.join("06-huge.conflist")).unwrap();
        huge.set_len(300 << 20).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("07-zero.conflist")).unwrap();
        let o = s.opts(s.plugin(ALL));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(run(&o).map_err(|e| e.to_string())));
        let r = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("install hung on the conf dir")
            .unwrap();
        assert!(
            !r.lines
                .iter()
                .any(|l| l.contains("05-fifo") || l.contains("06-huge")),
            "{r:?}"
        );
        assert_eq!(s.read("net.d/10-holdfast-k8s.conflist"), SHIPPED_CONFLIST);
    }

    #[test]
    fn a_conflist_that_sorts_first_is_warned_about() {
        let s = Scratch::new("first");
        let flannel = r#"{"cniVersion":"0.4.0","name":"cbr0","plugins":[{"type":"flannel"}]}"#;
        std::fs::write(s.0.join("net.d/05-flannel.conflist"), flannel).unwrap();
        std::fs::write(s.0.join("net.d/04-junk.conflist"), "not json").unwrap();
        std::fs::write(s.0.join("net.d/99-late.conflist"), flannel).unwrap();
        let r = run(&s.opts(s.plugin(ALL))).unwrap();
        let warned: Vec<&String> = r
            .lines
            .iter()
            .filter(|l| l.starts_with("warning"))
            .collect();
        assert_eq!(warned.len(), 1, "{r:?}");
        assert!(
            warned[0].contains("05-flannel.conflist") && warned[0].contains("runtime uses it"),
            "{r:?}"
        );
        assert_eq!(s.read("net.d/05-flannel.conflist"), flannel);
    }

    #[test]
    fn a_hung_self_check_is_killed_with_its_children() {
        let s = Scratch::new("hung");
        let pidfile = s.0.join("pid");
        let p = s.0.join("hung-plugin");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nsleep 60 & echo $! > {}\nwait\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = run(&s.opts(p)).unwrap_err();
        assert!(e.to_string().contains("no answer to VERSION"), "{e}");
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let gone = crate::proc::tests::gone_soon(pid.trim());
        assert!(gone, "the self-check's child outlived it");
        assert!(!s.0.join("bin/holdfast").exists());
    }

    #[test]
    fn server_from_the_pod_environment() {
        let env = |h: &'static str| {
            move |k: &str| match k {
                "KUBERNETES_SERVICE_HOST" => Some(h.to_string()),
                "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
                _ => None,
            }
        };
        assert_eq!(
            server_from_env(&env("10.43.0.1")).unwrap().unwrap(),
            "https://10.43.0.1:443"
        );
        assert_eq!(
            server_from_env(&env("fd00::1")).unwrap().unwrap(),
            "https://[fd00::1]:443"
        );
        assert_eq!(server_from_env(&|_: &str| None).unwrap(), None);
    }
}
