//! The one way holdfast runs another program (a delegated IPAM plugin, an exec credential
//! plugin, the binary `install` is about to put in place): in its own process group, fed and
//! read concurrently (a child that answers before reading its stdin, or never reads it, cannot
//! deadlock us), with bounded output and one deadline for everything. When the deadline passes,
//! or the child is done, its whole group is SIGKILLed, so helpers it forked cannot outlive it;
//! and it gets SIGKILL if holdfast itself is killed. Nothing here knows what the child is: the
//! caller builds the command (program, arguments, environment) and judges the output.

use std::process::{ExitStatus, Stdio};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Why a run gave no output to judge. Its text never includes the command line or the
/// environment (an exec credential's `env` holds secrets).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot be started ({})", .0.kind())]
    Spawn(#[source] std::io::Error),
    #[error("did not finish in time, killed")]
    TimedOut,
    #[error("output larger than {0} bytes")]
    TooLarge(usize),
    #[error("could not be talked to ({})", .0.kind())]
    Io(#[source] std::io::Error),
}

/// How much output is kept.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// More on stdout than this is [`Error::TooLarge`].
    pub stdout: usize,
    /// `None`: stderr goes nowhere. `Some(n)`: the first `n` bytes are kept, the rest read and
    /// dropped (so the child never blocks on a full pipe).
    pub stderr: Option<usize>,
}

/// A finished run.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` with `stdin` as its input (`None`: /dev/null) until `deadline`.
pub async fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    deadline: Instant,
    limits: Limits,
) -> Result<Output, Error> {
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(piped(stdin.is_some()))
        .stdout(Stdio::piped())
        .stderr(piped(limits.stderr.is_some()))
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(cmd);
    let mut child = cmd.spawn().map_err(Error::Spawn)?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let talked = tokio::time::timeout_at(deadline, talk(&mut child, stdin, limits)).await;
    // Finished or not, what it left behind in its group goes.
    kill_group(pgid);
    let failed = match talked {
        Ok(Ok(out)) => return Ok(out),
        Ok(Err(e)) => e,
        Err(_) => Error::TimedOut,
    };
    // SIGKILL cannot be ignored, so this wait is short; it reaps the child.
    let _ = child.start_kill();
    let _ = child.wait().await;
    Err(failed)
}

/// Makes the child get SIGKILL when the thread that spawned it dies, so a holdfast killed by its
/// runtime does not leave its child running (kill_on_drop needs a normal exit). The spawning
/// thread is the verb's own thread, which lives as long as the process does.
fn die_with_parent(cmd: &mut Command) {
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

fn kill_group(pgid: Option<i32>) {
    if let Some(p) = pgid.filter(|p| *p > 1) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Writes `stdin` to the child and reads its output, all at once; then waits for its exit.
async fn talk(child: &mut Child, stdin: Option<&[u8]>, limits: Limits) -> Result<Output, Error> {
    let si = child.stdin.take();
    let so = child.stdout.take();
    let se = child.stderr.take();
    let write = async move {
        if let (Some(mut si), Some(bytes)) = (si, stdin) {
            // A child may answer without reading its stdin (the reference plugins' VERSION, or
            // an early error): its exit status and stdout say what happened, not the broken pipe.
            match si.write_all(bytes).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(Error::Io(e)),
                _ => {}
            }
            // Dropping it here closes the pipe: the child sees the end of its input.
        }
        Ok(())
    };
    let out = async move {
        match so {
            Some(so) => read_capped(so, limits.stdout, true).await,
            None => Ok(Vec::new()),
        }
    };
    let err = async move {
        match (se, limits.stderr) {
            (Some(se), Some(n)) => read_capped(se, n, false).await,
            _ => Ok(Vec::new()),
        }
    };
    let ((), stdout, stderr) = futures::try_join!(write, out, err)?;
    let status = child.wait().await.map_err(Error::Io)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads `r` to its end keeping at most `limit` bytes; beyond that it is an error if `strict`,
/// otherwise the rest is read and dropped.
async fn read_capped(
    mut r: impl AsyncRead + Unpin,
    limit: usize,
    strict: bool,
) -> Result<Vec<u8>, Error> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = r.read(&mut buf).await.map_err(Error::Io)?;
        if n == 0 {
            return Ok(kept);
        }
        let chunk = buf.get(..n).unwrap_or_default();
        let room = limit.saturating_sub(kept.len());
        if chunk.len() > room && strict {
            return Err(Error::TooLarge(limit));
        }
        kept.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether process `pid` is gone (or a zombie) within two seconds: for tests of the kill.
    pub(crate) fn gone_soon(pid: &str) -> bool {
        (0..200).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let gone = stat.is_empty() || stat.contains(") Z ");
            if !gone {
                std::thread::sleep(Duration::from_millis(10));
            }
            gone
        })
    }

    fn run(script: &str, stdin: Option<&[u8]>, ms: u64, limits: Limits) -> Result<Output, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut c = Command::new("/bin/sh");
                c.args(["-c", script]);
                run_bounded(
                    &mut c,
                    stdin,
                    Instant::now() + Duration::from_millis(ms),
                    limits,
                )
                .await
            })
    }

    const SMALL: Limits = Limits {
        stdout: 64,
        stderr: Some(4),
    };

    #[test]
    fn output_is_read_while_input_is_written_and_capped() {
        // 1 MiB of input the child echoes back in part, while still reading.
        let input = vec![b'a'; 1 << 20];
        let out = run(
            "head -c 10; cat >/dev/null; echo oops >&2",
            Some(&input),
            5000,
            SMALL,
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"aaaaaaaaaa");
        assert_eq!(out.stderr, b"oops", "stderr is cut, not an error");
        let e = run("head -c 100 /dev/zero", None, 5000, SMALL).unwrap_err();
        assert!(matches!(e, Error::TooLarge(64)), "{e}");
        // A child that never reads a large input does not block us.
        let out = run("exit 3", Some(&input), 5000, SMALL).unwrap();
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn the_deadline_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("hf-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let t = std::time::Instant::now();
        let e = run(
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
            None,
            300,
            SMALL,
        )
        .unwrap_err();
        assert!(matches!(e, Error::TimedOut), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a hang is the failure"
        );
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let gone = gone_soon(pid.trim());
        assert!(gone, "the child's own child outlived the kill");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(run_bounded(
                &mut Command::new("/nonexistent/holdfast-test"),
                None,
                Instant::now() + Duration::from_secs(1),
                SMALL,
            ))
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot be started"), "{e}");
    }
}
