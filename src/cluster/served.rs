//! How this process's ADD got its cluster info, for the process edge to count (`cli::counters`).
//! A process runs one verb, so one process-wide value is the ADD's; an ADD that found a fresh
//! cache never sets it (its path stays free of anything extra).

use std::sync::atomic::{AtomicU8, Ordering};

/// This ADD asked the API itself.
pub const ASKED: u8 = 1;
/// Fresh cluster info from the API (this ADD's request or the prober's it waited for).
pub const FRESH: u8 = 2;
/// The API did not answer (or another invocation was asking it): the cache was used.
pub const CACHE: u8 = 4;

static SERVED: AtomicU8 = AtomicU8::new(0);

pub fn set(bits: u8) {
    SERVED.fetch_or(bits, Ordering::Relaxed);
}

/// The bits set so far.
pub fn get() -> u8 {
    SERVED.load(Ordering::Relaxed)
}
