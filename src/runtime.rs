//! The one async runtime shape this process uses: current-thread, IO and timers. The process
//! lives for milliseconds; a thread pool would cost more to start than all the work it would do.

use crate::cni::{Error, Result};
use std::future::Future;

/// Runs `f` to completion on a fresh current-thread runtime.
///
/// The runtime is then shut down without joining its idle blocking-pool threads: whatever a
/// verb needs from one (an fsync) it awaits inside `f`, and joining costs ADD a few hundred
/// microseconds of cross-CPU wake-ups before it can print its result.
pub fn block_on<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}
