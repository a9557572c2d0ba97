//! Credentials as client-go reads them, resolved by holdfast itself before the kube client is
//! built: a token file is trimmed of whitespace; an `exec` credential plugin runs as a child
//! process in its own process group under the attempt's deadline, and is killed and reaped when
//! the deadline passes. (kube-rs would run it synchronously inside `Client::try_from`, where no
//! timer can fire, and print its `env` values in its error.) Nothing a plugin prints and none of
//! its `env` values ever reach an error or a log.
//!
//! The service account's CA and token are copied beside the kubeconfig from here too (by
//! `holdfast install` and by the agent every round), with the kubeconfig that names them.

use crate::proc;
use crate::state::{at, atomic};
use kube::config::{AuthInfo, ExecConfig, ExecInteractiveMode};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokio::time::Instant;

/// An ExecCredential is a few KiB at most; a plugin printing more is not one.
const MAX_EXEC_OUTPUT: usize = 1 << 20;
/// A token or a CA bundle is a few KiB.
const MAX_TOKEN_FILE: usize = 64 << 10;
/// The service account's files, copied beside the kubeconfig (`holdfast install`, the agent).
pub const CA_FILE: &str = "holdfast-ca.crt";
pub const TOKEN_FILE: &str = "holdfast-token";
/// Where the kubelet mounts a pod's service account.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Deserialize)]
struct ExecCredential {
    status: Option<ExecStatus>,
}

#[derive(Deserialize)]
struct ExecStatus {
    token: Option<String>,
}

/// Replaces a token file or an exec plugin in `auth` by the token they yield, so the client
/// only ever sees an inline token. `kubeconfig_dir` anchors a relative exec command, as in
/// client-go. Errors are one short line naming what failed.
pub async fn resolve(
    auth: &mut AuthInfo,
    kubeconfig_dir: &Path,
    deadline: Instant,
) -> Result<(), String> {
    // kube-rs and client-go alike: an inline token wins over a token file, which wins over exec.
    if auth.token.is_some() {
        auth.token_file = None;
        auth.exec = None;
        return Ok(());
    }
    if let Some(file) = auth.token_file.take() {
        auth.exec = None;
        auth.token = Some(read_token_file(Path::new(&file))?.into());
        return Ok(());
    }
    if let Some(exec) = auth.exec.take() {
        auth.token = Some(run_exec(&exec, kubeconfig_dir, deadline).await?.into());
    }
    Ok(())
}

fn read_token_file(path: &Path) -> Result<String, String> {
    let what = |e: &dyn std::fmt::Display| format!("token file {}: {e}", path.display());
    let bytes = at::read_following(path, MAX_TOKEN_FILE)
        .map_err(|e| what(&e))?
        .ok_or_else(|| what(&"not found"))?;
    let raw = String::from_utf8(bytes).map_err(|_| what(&"not UTF-8"))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(what(&"empty"));
    }
    Ok(token.to_string())
}

/// The command as client-go resolves it: a relative path with a slash is relative to the
/// kubeconfig's directory; a bare name is looked up in PATH.
fn command_path(cmd: &str, kubeconfig_dir: &Path) -> std::path::PathBuf {
    let p = Path::new(cmd);
    if p.is_relative() && cmd.contains('/') {
        kubeconfig_dir.join(p)
    } else {
        p.to_path_buf()
    }
}

/// What the plugin is told about the request: non-interactive, and the cluster if asked for.
fn exec_info(exec: &ExecConfig) -> Result<String, String> {
    let mut spec = serde_json::json!({"interactive": false});
    if exec.provide_cluster_info
        && let Some(c) = &exec.cluster
    {
        spec["cluster"] = serde_json::to_value(c).map_err(|e| e.to_string())?;
    }
    let info = serde_json::json!({
        "apiVersion": exec.api_version.as_deref().unwrap_or("client.authentication.k8s.io/v1"),
        "kind": "ExecCredential",
        "spec": spec,
    });
    Ok(info.to_string())
}

async fn run_exec(
    exec: &ExecConfig,
    kubeconfig_dir: &Path,
    deadline: Instant,
) -> Result<String, String> {
    let cmd = exec
        .command
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or("exec credential plugin: no command")?;
    let label = format!("exec credential plugin {cmd}");
    // There is no terminal here: "Always" cannot be honoured, anything else runs as "Never".
    if exec.interactive_mode == Some(ExecInteractiveMode::Always) {
        return Err(format!("{label}: interactiveMode Always needs a terminal"));
    }
    let mut c = tokio::process::Command::new(command_path(cmd, kubeconfig_dir));
    c.args(exec.args.iter().flatten())
        .env("KUBERNETES_EXEC_INFO", exec_info(exec)?);
    for e in exec.env.iter().flatten() {
        if let (Some(k), Some(v)) = (e.get("name"), e.get("value")) {
            c.env(k, v);
        }
    }
    // Its stderr goes nowhere: it may echo what it was given.
    let limits = proc::Limits {
        stdout: MAX_EXEC_OUTPUT,
        stderr: None,
    };
    let out = proc::run_bounded(&mut c, None, deadline, limits)
        .await
        .map_err(|e| format!("{label}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{label}: failed ({})", out.status));
    }
    let cred: ExecCredential = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("{label}: printed no ExecCredential JSON"))?;
    cred.status
        .and_then(|s| s.token)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("{label}: gave no token (only tokens are supported)"))
}

/// Copies the service account's CA and token into `dir` when they differ (projected tokens
/// rotate), or when their mode or owner is not what it should be. Returns each destination and
/// whether it was written. The agent calls this every round; `holdfast install` once.
pub fn sync_service_account(sa_dir: &Path, dir: &Path) -> crate::cni::Result<Vec<(PathBuf, bool)>> {
    use crate::cni::Error;
    let mut out = Vec::new();
    for (src, dst, mode) in [("ca.crt", CA_FILE, 0o644), ("token", TOKEN_FILE, 0o600)] {
        let from = sa_dir.join(src);
        // The kubelet's projected files are symlinks into a timestamped directory.
        let bytes = at::read_following(&from, MAX_TOKEN_FILE)?.ok_or_else(|| {
            Error::io(
                format!("reading the service account's {}", from.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::config(format!("{} is empty", from.display())));
        }
        let to = dir.join(dst);
        let changed = atomic::replace_checked(&to, &bytes, mode, |_| Ok(()))?;
        out.push((to, changed));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hf-cred-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn script(d: &Path, body: &str) -> String {
        let p = d.join("plugin.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn exec_auth(cmd: &str) -> AuthInfo {
        let mut env = std::collections::HashMap::new();
        env.insert("name".to_string(), "CLOUD_SECRET".to_string());
        env.insert("value".to_string(), "TOPSECRET-ENV".to_string());
        AuthInfo {
            exec: Some(ExecConfig {
                api_version: Some("client.authentication.k8s.io/v1".into()),
                command: Some(cmd.into()),
                args: None,
                env: Some(vec![env]),
                drop_env: None,
                install_hint: None,
                interactive_mode: Some(ExecInteractiveMode::Never),
                provide_cluster_info: false,
                cluster: None,
                other: Default::default(),
            }),
            ..Default::default()
        }
    }

    fn run(auth: &mut AuthInfo, d: &Path, ms: u64) -> Result<(), String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(resolve(
                auth,
                d,
                Instant::now() + std::time::Duration::from_millis(ms),
            ))
    }

    #[test]
    fn token_file_is_trimmed() {
        let d = dir("tf");
        let f = d.join("token");
        std::fs::write(&f, "abc.def\n").unwrap();
        let mut a = AuthInfo {
            token_file: Some(f.to_str().unwrap().into()),
            ..Default::default()
        };
        run(&mut a, &d, 1000).unwrap();
        assert_eq!(token(&a), "abc.def");
        std::fs::write(&f, " \n").unwrap();
        let mut a = AuthInfo {
            token_file: Some(f.to_str().unwrap().into()),
            ..Default::default()
        };
        assert!(run(&mut a, &d, 1000).unwrap_err().contains("empty"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn exec_plugin_token_failure_and_deadline() {
        let d = dir("ex");
        let ok = script(
            &d,
            r#"[ "$CLOUD_SECRET" = TOPSECRET-ENV ] || exit 3
echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"tok-1"}}'"#,
        );
        let mut a = exec_auth(&ok);
        run(&mut a, &d, 2000).unwrap();
        assert_eq!(token(&a), "tok-1");

        let failing = script(
            &d,
            "echo \"$CLOUD_SECRET\"; echo \"$CLOUD_SECRET\" >&2; exit 1",
        );
        let e = run(&mut exec_auth(&failing), &d, 2000).unwrap_err();
        assert!(e.contains("failed") && !e.contains("TOPSECRET"), "{e}");

        let hung = script(
            &d,
            &format!("sleep 30 & echo $! > {}/pid; wait", d.display()),
        );
        let t = std::time::Instant::now();
        let e = run(&mut exec_auth(&hung), &d, 300).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "a hang is the failure"
        );
        let pid = std::fs::read_to_string(d.join("pid")).unwrap();
        assert!(dies(pid.trim()), "the plugin's own child outlived the kill");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_rotated_token_is_replaced_and_an_unchanged_one_is_not() {
        let d = dir("rotate");
        let (sa, out) = (d.join("sa"), d.join("out"));
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("ca.crt"), "CA-1\n").unwrap();
        // The kubelet's projected files are symlinks into a timestamped directory.
        std::fs::write(d.join("token-1"), "token-1").unwrap();
        std::os::unix::fs::symlink(d.join("token-1"), sa.join("token")).unwrap();
        let first = sync_service_account(&sa, &out).unwrap();
        assert!(first.iter().all(|(_, c)| *c));
        let second = sync_service_account(&sa, &out).unwrap();
        assert!(second.iter().all(|(_, c)| !*c));
        std::fs::remove_file(sa.join("token")).unwrap();
        std::fs::write(sa.join("token"), "token-2").unwrap();
        let third = sync_service_account(&sa, &out).unwrap();
        assert_eq!(
            third.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(
            std::fs::read_to_string(out.join(TOKEN_FILE)).unwrap(),
            "token-2"
        );
        let mode = std::fs::metadata(out.join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A SIGKILLed process may still be scheduled for a moment: gone (or a zombie) within 2 s.
    fn dies(pid: &str) -> bool {
        (0..200).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let gone = stat.is_empty() || stat.contains(") Z ");
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        })
    }

    /// The token is a `SecretString`; AuthInfo's serialisation is the way to read it back.
    fn token(a: &AuthInfo) -> String {
        serde_json::to_value(a).unwrap()["token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}
