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
///
/// The deadline covers everything: writing stdin, reading stdout and stderr (concurrently, so a
/// plugin that answers before reading, or never reads, cannot deadlock us) and the exit. Output
/// is bounded. The child dies with us even when we are SIGKILLed.
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
    die_with_parent(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("running {}", bin.display()), e))?;
    let what = format!("{plugin} {command}");
    let run = talk(&mut child, &what, stdin);
    // On timeout or error `child` is dropped, and kill_on_drop kills it.
    let (status, stdout, stderr) =
        tokio::time::timeout(DELEGATE_TIMEOUT, run)
            .await
            .map_err(|_| {
                Error::TryAgainLater(format!(
                    "{what} did not finish within {}s",
                    DELEGATE_TIMEOUT.as_secs()
                ))
            })??;
    let parsed: Option<Value> = serde_json::from_slice(&stdout).ok();
    if !status.success() {
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
            None => (999, String::from_utf8_lossy(&stderr).trim().to_string()),
        };
        return Err(Error::Delegate {
            plugin: what,
            code,
            msg,
        });
    }
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parsed
        .map(Some)
        .ok_or_else(|| Error::decode(format!("{what} output"), String::from_utf8_lossy(&stdout)))
}

/// A delegate's stdout larger than this is refused: a CNI result is a few KiB.
const MAX_STDOUT: usize = 4 << 20;
/// Only this much of a delegate's stderr is kept (the rest is read and dropped).
const MAX_STDERR: usize = 64 << 10;

/// Makes the child get SIGKILL when the thread that spawned it dies, so a holdfast killed by its
/// runtime does not leave its delegate running (tokio's kill_on_drop needs a normal exit). The
/// spawning thread is the verb's own thread, which lives as long as the process does.
fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls (prctl, getppid); it allocates nothing and touches no
    // lock or shared state.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // The parent may have died before prctl: then the signal will never come.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Writes `stdin` to the child and reads its output, all at once; then waits for its exit.
async fn talk(
    child: &mut tokio::process::Child,
    what: &str,
    stdin: &[u8],
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>)> {
    let si = child.stdin.take();
    let so = child.stdout.take();
    let se = child.stderr.take();
    let write = async move {
        if let Some(mut si) = si {
            // A plugin may answer without reading its stdin (the reference plugins' VERSION, or
            // an early error): its exit status and stdout say what happened, not the broken pipe.
            match si.write_all(stdin).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(Error::io(format!("writing to {what}"), e));
                }
                _ => {}
            }
            // Dropping it here closes the pipe: the plugin sees the end of its input.
        }
        Ok(())
    };
    let out = async move {
        match so {
            Some(so) => read_capped(so, MAX_STDOUT, true, what).await,
            None => Ok(Vec::new()),
        }
    };
    let err = async move {
        match se {
            Some(se) => read_capped(se, MAX_STDERR, false, what).await,
            None => Ok(Vec::new()),
        }
    };
    let ((), stdout, stderr) = futures::try_join!(write, out, err)?;
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io(format!("waiting for {what}"), e))?;
    Ok((status, stdout, stderr))
}

/// Reads `r` to its end keeping at most `limit` bytes; beyond that it is an error if `strict`,
/// otherwise the rest is read and dropped (so the writer never blocks on a full pipe).
async fn read_capped(
    mut r: impl tokio::io::AsyncRead + Unpin,
    limit: usize,
    strict: bool,
    what: &str,
) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| Error::io(format!("reading the output of {what}"), e))?;
        if n == 0 {
            return Ok(kept);
        }
        let chunk = buf.get(..n).unwrap_or_default();
        let room = limit.saturating_sub(kept.len());
        if chunk.len() > room && strict {
            return Err(Error::decode(
                format!("{what} output"),
                format!("larger than {limit} bytes"),
            ));
        }
        kept.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
    }
}
