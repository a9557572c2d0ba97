//! `holdfast install`: what the DaemonSet's init container runs on a node. Puts the binary into
//! the host's CNI bin dir, then the CA, token and kubeconfig, and the conflist last (a runtime
//! calls a node network-ready as soon as a conflist appears, so everything it names must exist
//! by then). Each file is replaced atomically and only after a self-check, and only when its
//! content changed, so a second run changes nothing.

use super::conffile;
use crate::cni::{Error, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The conflist holdfast ships for Kubernetes nodes, installed unless `--conflist` names another.
pub const SHIPPED_CONFLIST: &str = include_str!("../../conf/10-holdfast-k8s.conflist");
const SHIPPED_CONFLIST_NAME: &str = "10-holdfast-k8s.conflist";
/// Files written beside the kubeconfig; the agent keeps the token current.
pub const CA_FILE: &str = "holdfast-ca.crt";
pub const TOKEN_FILE: &str = "holdfast-token";
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A binary that does not answer VERSION within this is not installed.
const SELF_CHECK_DEADLINE: Duration = Duration::from_secs(5);

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
            sa_dir: env_or("HOLDFAST_SA_DIR", SA_DIR).into(),
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
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?,
        ),
        None => (
            SHIPPED_CONFLIST_NAME.to_string(),
            SHIPPED_CONFLIST.as_bytes().to_vec(),
        ),
    };
    let dest = o.conf_dir.join(&name);
    let existing = read_optional(&dest)?;
    let (conflist, version) = conflist_text(&source, existing.as_deref())?;
    for other in other_holdfast_conflists(&o.conf_dir, &name) {
        report.lines.push(format!(
            "note: {} also configures holdfast; left alone",
            other.display()
        ));
    }

    let bin = o.bin_dir.join("holdfast");
    let bytes = std::fs::read(&o.binary)
        .map_err(|e| Error::io(format!("reading {}", o.binary.display()), e))?;
    let changed = replace(&bin, &bytes, 0o755, |tmp| check_binary(tmp, &version))?;
    report.note(&bin, changed);

    if let Some(kubeconfig) = kubeconfig_path(&conflist)? {
        install_credentials(o, &kubeconfig, &mut report)?;
    }
    let changed = replace(&dest, &conflist, 0o644, |tmp| {
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
    for (path, changed) in sync_service_account(&o.sa_dir, &o.conf_dir)? {
        report.note(&path, changed);
    }
    let text = kubeconfig_text(server, &host_dir.join(CA_FILE), &host_dir.join(TOKEN_FILE));
    let dest = o.conf_dir.join(file);
    let changed = replace(&dest, text.as_bytes(), 0o600, |tmp| {
        kube::config::Kubeconfig::read_from(tmp)
            .map(|_| ())
            .map_err(|e| Error::config(format!("generated kubeconfig does not parse: {e}")))
    })?;
    report.note(&dest, changed);
    Ok(())
}

/// Copies the service account's CA and token into `dir` when they differ (projected tokens
/// rotate). Returns each destination and whether it was replaced.
pub fn sync_service_account(sa_dir: &Path, dir: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    for (src, dst, mode) in [("ca.crt", CA_FILE, 0o644), ("token", TOKEN_FILE, 0o600)] {
        let from = sa_dir.join(src);
        let bytes = std::fs::read(&from).map_err(|e| {
            Error::io(
                format!("reading the service account's {}", from.display()),
                e,
            )
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::config(format!("{} is empty", from.display())));
        }
        let to = dir.join(dst);
        let changed = replace(&to, &bytes, mode, |_| Ok(()))?;
        out.push((to, changed));
    }
    Ok(out)
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

/// The holdfast plugin's `kubernetes.kubeconfig`, if it has a kubernetes section.
fn kubeconfig_path(conflist: &[u8]) -> Result<Option<PathBuf>> {
    let v: Value = serde_json::from_slice(conflist).map_err(|e| Error::decode("conflist", e))?;
    let plugin = v
        .get("plugins")
        .and_then(Value::as_array)
        .and_then(|p| {
            p.iter()
                .find(|p| p.get("type").and_then(Value::as_str) == Some("holdfast"))
        })
        .ok_or_else(|| Error::config("the conflist to install has no plugin of type holdfast"))?;
    Ok(plugin
        .get("kubernetes")
        .and_then(|k| k.get("kubeconfig"))
        .and_then(Value::as_str)
        .map(PathBuf::from))
}

/// A kubeconfig that names the CA and token files rather than embedding them, so that a
/// rotated token is read by the next plugin run.
pub fn kubeconfig_text(server: &str, ca: &Path, token: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: holdfast\n  user:\n    tokenFile: {}\n\
         contexts:\n- name: holdfast\n  context: {{cluster: local, user: holdfast}}\n\
         current-context: holdfast\n",
        ca.display(),
        token.display()
    )
}

/// Other files in `dir` with a holdfast plugin (e.g. one install.sh wrote): never touched.
fn other_holdfast_conflists(dir: &Path, ours: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()) != Some(ours))
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("conflist" | "conf")
            )
        })
        .filter(|p| conffile::load(Some(p)).is_ok())
        .collect();
    v.sort();
    v
}

/// Runs the candidate binary with CNI_COMMAND=VERSION (empty environment, bounded) and requires
/// it to speak `version`.
fn check_binary(path: &Path, version: &str) -> Result<()> {
    let fail = |why: String| Error::config(format!("self-check of {}: {why}", path.display()));
    let spawn = || {
        Command::new(path)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    };
    // A just-written file can be briefly "busy" while another thread's fork still holds it.
    let mut child = spawn()
        .or_else(|e| match e.raw_os_error() {
            Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(50));
                spawn()
            }
            _ => Err(e),
        })
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < SELF_CHECK_DEADLINE => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "no answer to VERSION within {SELF_CHECK_DEADLINE:?}"
                )));
            }
        }
    };
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut out);
    }
    if !status.success() {
        return Err(fail(format!("VERSION exited with {status}")));
    }
    let v: Value =
        serde_json::from_slice(&out).map_err(|e| fail(format!("VERSION printed no JSON: {e}")))?;
    let speaks = v
        .get("supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(version)));
    if !speaks {
        return Err(fail(format!("it does not support cniVersion {version}")));
    }
    Ok(())
}

fn read_optional(p: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

/// Replaces `path` with `bytes` (mode `mode`) unless it already holds exactly them: a fresh
/// temp file in the same directory (O_EXCL, so no planted symlink is followed), fsynced, passed
/// to `check`, renamed over `path`, and the directory fsynced. Returns whether it was replaced.
pub fn replace(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<bool> {
    if read_optional(path)?.as_deref() == Some(bytes) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let outcome = written
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))
        .and_then(|()| check(&tmp))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .map_err(|e| Error::io(format!("renaming onto {}", path.display()), e))
        });
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    Ok(true)
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
    fn a_rotated_token_is_replaced_and_an_unchanged_one_is_not() {
        let s = Scratch::new("rotate");
        let d = s.0.join("net.d");
        let first = sync_service_account(&s.0.join("sa"), &d).unwrap();
        assert!(first.iter().all(|(_, c)| *c));
        assert!(
            sync_service_account(&s.0.join("sa"), &d)
                .unwrap()
                .iter()
                .all(|(_, c)| !*c)
        );
        std::fs::write(s.0.join("sa/token"), "token-2").unwrap();
        let third = sync_service_account(&s.0.join("sa"), &d).unwrap();
        assert_eq!(
            third.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(s.read("net.d/holdfast-token"), "token-2");
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
