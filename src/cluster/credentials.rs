//! Credentials as client-go reads them, resolved by holdfast itself before the kube client is
//! built: a token file is trimmed of whitespace; an `exec` credential plugin runs as a child
//! process in its own process group under the attempt's deadline, and is killed and reaped when
//! the deadline passes. (kube-rs would run it synchronously inside `Client::try_from`, where no
//! timer can fire, and print its `env` values in its error.) Nothing a plugin prints and none of
//! its `env` values ever reach an error or a log.

use kube::config::{AuthInfo, ExecConfig, ExecInteractiveMode};
use serde::Deserialize;
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// An ExecCredential is a few KiB at most; a plugin printing more is not one.
const MAX_EXEC_OUTPUT: u64 = 1 << 20;
const MAX_TOKEN_FILE: u64 = 64 << 10;

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
    use std::io::Read;
    let what = |e: &dyn std::fmt::Display| format!("token file {}: {e}", path.display());
    let f = std::fs::File::open(path).map_err(|e| what(&e))?;
    let mut raw = String::new();
    f.take(MAX_TOKEN_FILE)
        .read_to_string(&mut raw)
        .map_err(|e| what(&e))?;
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
        .env("KUBERNETES_EXEC_INFO", exec_info(exec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    for e in exec.env.iter().flatten() {
        if let (Some(k), Some(v)) = (e.get("name"), e.get("value")) {
            c.env(k, v);
        }
    }
    let mut child = c
        .spawn()
        .map_err(|e| format!("{label}: cannot be started ({})", e.kind()))?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let mut out = Vec::new();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| format!("{label}: no stdout"))?;
    let mut stdout = stdout.take(MAX_EXEC_OUTPUT);
    let run = async {
        let (read, status) = tokio::join!(stdout.read_to_end(&mut out), child.wait());
        (read.is_ok(), status)
    };
    let finished = tokio::time::timeout_at(deadline, run).await;
    let (read_ok, status) = match finished {
        Ok(r) => r,
        Err(_) => {
            kill_group(pgid);
            // SIGKILL cannot be ignored: this wait is short.
            let _ = child.wait().await;
            return Err(format!("{label}: did not finish in time, killed"));
        }
    };
    // Helpers it left behind in its group go too.
    kill_group(pgid);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("{label}: failed ({s})")),
        Err(e) => return Err(format!("{label}: {}", e.kind())),
    }
    if !read_ok {
        return Err(format!("{label}: its output could not be read"));
    }
    let cred: ExecCredential = serde_json::from_slice(&out)
        .map_err(|_| format!("{label}: printed no ExecCredential JSON"))?;
    cred.status
        .and_then(|s| s.token)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("{label}: gave no token (only tokens are supported)"))
}

fn kill_group(pgid: Option<i32>) {
    if let Some(p) = pgid.filter(|p| *p > 1) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
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
