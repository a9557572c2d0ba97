//! DEL: best effort, idempotent, and never dependent on the API or on the pod netns still
//! existing. Everything it removes is found by deterministic name or from local records (see
//! [`super::teardown`]); every step is tried, and the failures are reported together with the
//! code of the telling one.

use super::Del;
use super::teardown::{self, Net, Whose};
use crate::cni::Result;
use crate::dataplane::Host;

pub async fn del(req: &Del) -> Result<()> {
    let conf = &req.conf;
    // The socket first: a DEL that fails before it has the lock leaves no lock file.
    let host = Host::connect()?;
    let lock = conf.network().lock(&req.att)?;
    super::reclaim::after_reboot(&host, conf, &req.path).await;
    let record = match conf.network().read(&req.att) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("ignoring unreadable attachment record: {e}");
            None
        }
    };
    // No record and no lock file before ours: no ADD ran since the last complete teardown (a
    // second DEL, or one for an ADD that never started), so nothing of ours can exist. A
    // delegate is still asked: its state is its own.
    if record.is_none() && !lock.existed && conf.ipam.delegate().is_none() {
        return lock.remove();
    }
    let net = Net {
        host: &host,
        conf,
        path: &req.path,
    };
    teardown::attachment(&net, &req.att, record.as_ref(), Whose::Own, Some(lock))
        .await
        .map(|_| ())
}
