//! Crash points for the crash tests: with the `failpoints` feature (never in a release build),
//! `HOLDFAST_FAILPOINT=<name>` makes the process SIGKILL itself when it reaches `<name>`, as a
//! runtime's kill would, so a test can stop ADD after any step and check what the next verb
//! makes of the leftovers.

/// Dies here if this is the failpoint the test asked for; a no-op without the feature.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("HOLDFAST_FAILPOINT").is_ok_and(|v| v == name) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
