//! Running another plugin (an IPAM plugin) exactly as the CNI spec says: found in `CNI_PATH`,
//! same environment and stdin, result or error JSON on its stdout.

use crate::cni::{Error, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

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
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("running {}", bin.display()), e))?;
    if let Some(mut si) = child.stdin.take() {
        // A plugin may answer without reading its stdin (the reference plugins' VERSION, or an
        // early error): its exit status and stdout say what happened, not the broken pipe.
        match si.write_all(stdin).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(Error::io(format!("writing to {plugin}"), e));
            }
            _ => {}
        }
    }
    let out = tokio::time::timeout(DELEGATE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            Error::TryAgainLater(format!(
                "{plugin} {command} did not finish within {}s",
                DELEGATE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Error::io(format!("waiting for {plugin}"), e))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (code, msg) = match &parsed {
            Some(v) => (
                v.get("code").and_then(Value::as_u64).unwrap_or(999) as u32,
                v.get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            None => (999, String::from_utf8_lossy(&out.stderr).trim().to_string()),
        };
        return Err(Error::Delegate {
            plugin: format!("{plugin} {command}"),
            code,
            msg,
        });
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parsed.map(Some).ok_or_else(|| {
        Error::decode(
            format!("{plugin} output"),
            String::from_utf8_lossy(&out.stdout),
        )
    })
}
