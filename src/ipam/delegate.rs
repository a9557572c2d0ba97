//! Running another plugin (an IPAM plugin) exactly as the CNI spec says: found in `CNI_PATH`,
//! same environment and stdin, result or error JSON on its stdout.

use crate::cni::{Error, Result};
use crate::proc;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// A delegated plugin that does not answer within this is killed.
const DELEGATE_TIMEOUT: Duration = Duration::from_secs(30);

fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(Error::config(format!(
            "ipam.type {plugin:?} is not a plugin name"
        )));
    }
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::config(format!(
                "ipam.type {plugin:?}: no such plugin in CNI_PATH ({})",
                path.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })
}

/// Whether `plugin`'s VERSION lists `version`: verbs newer than a plugin (STATUS, GC) are not
/// sent to it.
pub async fn speaks(plugin: &str, path: &[PathBuf], version: &str) -> Result<bool> {
    let probe = serde_json::to_vec(&serde_json::json!({ "cniVersion": version }))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let info = exec(plugin, path, "VERSION", &probe).await?;
    Ok(info
        .as_ref()
        .and_then(|v| v.get("supportedVersions"))
        .and_then(Value::as_array)
        .is_some_and(|vs| vs.iter().any(|v| v.as_str() == Some(version))))
}

/// Runs `plugin` with `command` in this process's environment; returns its parsed stdout (empty
/// for DEL).
pub async fn exec(
    plugin: &str,
    path: &[PathBuf],
    command: &str,
    stdin: &[u8],
) -> Result<Option<Value>> {
    exec_for(plugin, path, command, stdin, None).await
}

/// As [`exec`], but for another attachment `(container ID, ifname)` than this process's (GC
/// releasing a stale one): its IDs replace ours and there is no netns.
///
/// The deadline covers everything: writing stdin, reading stdout and stderr, and the exit
/// (see [`crate::proc`]). Output is bounded. The child dies with us even when we are SIGKILLed.
pub async fn exec_for(
    plugin: &str,
    path: &[PathBuf],
    command: &str,
    stdin: &[u8],
    attachment: Option<(&str, &str)>,
) -> Result<Option<Value>> {
    let bin = find(plugin, path)?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.env("CNI_COMMAND", command);
    if let Some((container_id, ifname)) = attachment {
        cmd.env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env_remove("CNI_NETNS");
    }
    let what = format!("{plugin} {command}");
    let limits = proc::Limits {
        stdout: MAX_STDOUT,
        stderr: Some(MAX_STDERR),
    };
    let deadline = tokio::time::Instant::now() + DELEGATE_TIMEOUT;
    let out = proc::run_bounded(&mut cmd, Some(stdin), deadline, limits)
        .await
        .map_err(|e| match e {
            proc::Error::Spawn(e) => Error::io(format!("running {}", bin.display()), e),
            proc::Error::TimedOut => Error::TryAgainLater(format!(
                "{what} did not finish within {}s",
                DELEGATE_TIMEOUT.as_secs()
            )),
            proc::Error::TooLarge(n) => {
                Error::decode(format!("{what} output"), format!("larger than {n} bytes"))
            }
            proc::Error::Io(e) => Error::io(format!("talking to {what}"), e),
        })?;
    judge(&what, &out)
}

/// The delegate's answer: its result (`None` when it printed nothing, as for DEL), or its
/// error as the CNI error it printed.
fn judge(what: &str, out: &proc::Output) -> Result<Option<Value>> {
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (code, msg) = match &parsed {
            Some(v) => (
                v.get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(999),
                v.get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            None => (999, String::from_utf8_lossy(&out.stderr).trim().to_string()),
        };
        return Err(Error::Delegate {
            plugin: what.to_string(),
            code,
            msg,
        });
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parsed.map(Some).ok_or_else(|| {
        Error::decode(
            format!("{what} output"),
            String::from_utf8_lossy(&out.stdout),
        )
    })
}

/// A delegate's stdout larger than this is refused: a CNI result is a few KiB.
const MAX_STDOUT: usize = 4 << 20;
/// Only this much of a delegate's stderr is kept (the rest is read and dropped).
const MAX_STDERR: usize = 64 << 10;
