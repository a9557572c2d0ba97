//! Routes between nodes (SPEC §9): the peer table of every node's addresses and pod CIDRs, kept
//! from a watch of Nodes by the agent and persisted in `stateDir/peers.json`, and programmed into
//! the kernel as `direct` routes, through a VXLAN device, or both (`auto`).
//!
//! The table on disk is what makes cross-node traffic come back after a cold boot without the
//! API: the first ADD of a new boot, the agent on start and `holdfast routes apply` re-apply it
//! in bounded time before anything waits on the API. Only a complete list of Nodes (or a watch
//! event after one) ever changes the table, so a failed or partial list never prunes a peer.

pub mod apply;
pub mod conf;
pub mod doctor;
pub mod plan;
pub mod table;
pub mod watch;

pub use conf::RoutingConf;

use crate::cluster::{self, KubeConf};
use crate::cni::{Error, Result};
use crate::dataplane::Nl;
use apply::Outcome;
use nix::fcntl::Flock;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// The most a re-apply from disk may take, the lock wait included: ADD must not hang on it.
/// 5,000 peers take well under a second.
pub const BUDGET: Duration = Duration::from_secs(5);
const LOCK: &str = "peers.lock";
/// The boot (`state::boot_key`: boot ID and the node's netns) the table was last re-applied in.
const BOOT: &str = "peers.boot";

/// This node's name: `kubernetes.nodeName`, else the host name.
pub fn node_name(kube: Option<&KubeConf>) -> Result<String> {
    let kube = kube.ok_or_else(|| {
        Error::config("routing needs the \"kubernetes\" section (the node's name and the API)")
    })?;
    cluster::node_name(kube)
}

/// Serialises everything that programs routes (ADDs, the agent, `routes apply`), waiting until
/// `deadline` at most.
pub fn lock(state_dir: &Path, deadline: Instant) -> Result<Flock<File>> {
    let (f, path) = crate::state::lock::named_file(state_dir, LOCK)?;
    crate::state::lock::flock_until(f, &path, deadline)
}

/// Re-applies the persisted table now; `Ok(None)` when there is none yet. Bounded by [`BUDGET`].
pub async fn apply_from_disk(
    h: &Nl,
    rc: &RoutingConf,
    state_dir: &Path,
    node: &str,
) -> Result<Option<Outcome>> {
    let deadline = Instant::now() + BUDGET;
    let _lock = lock(state_dir, deadline)?;
    let Some(t) = table::load(state_dir, node)? else {
        return Ok(None);
    };
    bounded(deadline, apply::apply(h, rc, &t)).await.map(Some)
}

/// Runs `f` until `deadline`; past it, code 11.
pub async fn bounded<T>(deadline: Instant, f: impl Future<Output = Result<T>>) -> Result<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, f).await.unwrap_or_else(|_| {
        Err(Error::TryAgainLater(format!(
            "routes not applied within {}s",
            BUDGET.as_secs()
        )))
    })
}

/// Removes everything routing ever programmed on this node: every route with holdfast's protocol
/// number, the VXLAN device (its neighbour and FDB entries go with it) and the masquerade tables.
/// It is an apply of nothing, so it touches exactly what an apply owns (`holdfast routes clear`,
/// run by `install.sh --uninstall`).
pub async fn clear(h: &Nl) -> Result<apply::Outcome> {
    apply::apply(h, &RoutingConf::default(), &table::Table::default()).await
}

/// On the first verb of a new boot (the kernel has forgotten every route, neighbour and FDB
/// entry), re-applies the table from disk; cheap otherwise (one small file read). Never fails
/// the verb: what went wrong is logged, and the next verb tries again.
pub async fn after_reboot(h: &Nl, rc: &RoutingConf, state_dir: &Path, kube: Option<&KubeConf>) {
    if rc.mode == conf::Mode::None {
        return;
    }
    let Some(now) = crate::state::boot_key() else {
        return;
    };
    let marker = state_dir.join(BOOT);
    let seen = || crate::state::atomic::read(&marker, 256).ok().flatten();
    if seen().as_deref() == Some(now.as_bytes()) {
        return;
    }
    let done = async {
        let node = node_name(kube)?;
        let deadline = Instant::now() + BUDGET;
        // A boot's pods come all at once: one of them re-applies, the others go on at once (their
        // own networking does not need the peers' routes). Should the applier die, the marker is
        // not written and the next verb applies.
        let Some(_lock) = crate::state::lock::try_named(state_dir, LOCK)? else {
            tracing::debug!("another invocation is re-applying the peer table");
            return Ok(None);
        };
        // Another invocation may have done it just before this one took the lock.
        if seen().as_deref() == Some(now.as_bytes()) {
            return Ok(None);
        }
        // No table yet: nothing to re-apply this boot; the agent applies the first one itself.
        let out = match table::load(state_dir, &node)? {
            Some(t) => Some(bounded(deadline, apply::apply(h, rc, &t)).await?),
            None => None,
        };
        crate::state::atomic::write(&marker, now.as_bytes(), true)?;
        Ok::<_, Error>(out)
    };
    match done.await {
        Ok(Some(out)) => tracing::info!(
            "new boot: peer table re-applied ({} peers, {} routes placed, {} problems)",
            out.peers,
            out.routes_replaced,
            out.problems.len()
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!("new boot: peer table not re-applied: {e}"),
    }
}
