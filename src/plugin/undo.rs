//! What a failed ADD gives back: each step is recorded as it completes, and on failure exactly
//! those steps are undone, newest first (netavark's `teardown_drivers(drivers.take(i))`, ptp's
//! `defer ipam.ExecDel`). Nothing that was not recorded is touched, so an ADD never removes
//! what it did not create.

use crate::cni::Result;
use crate::dataplane::link::{self, Link};
use crate::dataplane::{Host, Pod, tc};
use crate::ipam::{Plan, Target};
use crate::state::{self, AttachmentLock};
use std::path::Path;

/// One completed step of ADD.
#[derive(Debug)]
pub enum Step {
    /// Addresses taken from the plan.
    Leased,
    /// A host link this ADD created (the veth's host end, which takes the pod end with it, or
    /// the ifb).
    Link(String),
    /// Qdiscs this ADD put on a host link it did not create (chained mode).
    HostQdiscs(Link),
    /// Qdiscs this ADD put on the pod's interface, which it did not create (chained mode).
    PodQdiscs(Link),
    /// The attachment record.
    Record,
    /// The attachment's hostPort entry and its rules.
    HostPorts,
}

/// What the steps are undone with.
pub struct Ctx<'a> {
    pub host: &'a Host,
    pub pod: Option<&'a Pod>,
    pub plan: Option<&'a Plan>,
    pub target: &'a Target<'a>,
    pub state_dir: &'a Path,
}

/// The steps done so far.
#[derive(Debug, Default)]
pub struct Undo(Vec<Step>);

impl Undo {
    pub fn push(&mut self, step: Step) {
        self.0.push(step);
    }

    /// Keeps everything when `outcome` is a success; otherwise undoes the recorded steps and
    /// returns the error. The caller cleared every earlier attempt of the attachment before
    /// the first step, so when the undo is complete and no record is left nothing of the
    /// attachment is, and its lock file goes too.
    pub async fn settle<T>(
        mut self,
        outcome: Result<T>,
        cx: &Ctx<'_>,
        lock: AttachmentLock,
    ) -> Result<T> {
        match outcome {
            Ok(v) => {
                self.0.clear();
                Ok(v)
            }
            Err(e) => {
                if self.unwind(cx).await {
                    give_back(cx, lock);
                }
                Err(e)
            }
        }
    }

    /// Undoes every recorded step, newest first; whether every step was undone. Failures are
    /// logged, not returned: the error the runtime needs to see is the one that made ADD fail.
    async fn unwind(&mut self, cx: &Ctx<'_>) -> bool {
        let mut clean = true;
        while let Some(step) = self.0.pop() {
            let outcome = match &step {
                Step::Leased => match cx.plan {
                    Some(plan) => plan.undo(cx.target).await,
                    None => Ok(()),
                },
                Step::Link(name) => link::delete_by_name(cx.host, name).await.map(|_| ()),
                Step::HostQdiscs(l) => tc::clear(cx.host, l.index, &l.name).await,
                Step::PodQdiscs(l) => match cx.pod {
                    Some(p) => tc::clear(p, l.index, &l.name).await,
                    None => Ok(()),
                },
                Step::Record => state::remove(cx.state_dir, cx.target.network, &cx.target.owner),
                Step::HostPorts => {
                    super::hostports::forget(cx.state_dir, cx.target.network, &cx.target.owner)
                        .map(|_| ())
                }
            };
            if let Err(e) = outcome {
                tracing::warn!("undoing ADD ({step:?}): {e}");
                clean = false;
            }
        }
        clean
    }
}

/// Removes the lock file of an attachment a failed ADD left nothing of (no record).
pub fn give_back(cx: &Ctx<'_>, lock: AttachmentLock) {
    let (t, o) = (cx.target, &cx.target.owner);
    let outcome = match state::read(cx.state_dir, t.network, o) {
        Ok(None) => lock.remove(),
        Ok(Some(_)) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        tracing::warn!("keeping the lock file of {o}: {e}");
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            tracing::error!("ADD dropped {} steps without undoing them", self.0.len());
        }
    }
}
