//! The kernel side: namespaces, links, addresses, routes, sysctls, traffic control.
//!
//! Everything here talks netlink through `rtnetlink`, and nothing outside this module does:
//! callers hold a [`Host`] (the plugin's own netns, normally the node's) or a [`Pod`] (a pod's
//! netns) and say what they want; the types keep the two sides from being swapped. Nothing
//! runs `ip` or `tc`.

pub mod addr;
pub mod conntrack;
pub mod hostport;
pub mod link;
pub mod names;
pub mod neigh;
pub mod netns;
pub mod nft;
pub mod route;
pub mod sysctl;
pub mod tc;
pub mod vxlan;

use crate::cni::{Error, Result};
use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use std::ops::Deref;

/// A netlink connection to one namespace, driven by the caller's runtime.
#[derive(Clone, Debug)]
pub struct Nl(rtnetlink::Handle);

/// Netlink in the plugin's own namespace (the node's, where the host ends live).
#[derive(Clone, Debug)]
pub struct Host(Nl);

/// Netlink in a pod's namespace (see [`netns::Netns::connect`]).
#[derive(Clone, Debug)]
pub struct Pod(Nl);

impl Deref for Host {
    type Target = Nl;
    fn deref(&self) -> &Nl {
        &self.0
    }
}

impl Deref for Pod {
    type Target = Nl;
    fn deref(&self) -> &Nl {
        &self.0
    }
}

impl Host {
    /// Opens a connection in the calling thread's namespace; needs a running runtime.
    pub fn connect() -> Result<Host> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Host(Nl(handle)))
    }
}

/// Sends one request (for what rtnetlink has no builder flag: tc, appended routes) and waits for its ack; an error whose errno is in `fine` is success.
async fn request(
    h: &Nl,
    msg: RouteNetlinkMessage,
    flags: u16,
    fine: &[i32],
    what: &str,
) -> Result<()> {
    match exchange(h, msg, flags).await {
        Ok(_) => Ok(()),
        Err(e) if errno(&e).is_some_and(|n| fine.contains(&n)) => Ok(()),
        Err(e) => Err(nl_error(what, &e)),
    }
}

/// Sends one request with `flags` (plus `NLM_F_REQUEST | NLM_F_ACK`) and returns the messages
/// the kernel answered with before its ack (an echo, a dump), or the kernel's error.
async fn exchange(
    h: &Nl,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> std::result::Result<Vec<RouteNetlinkMessage>, rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut resp = h.0.clone().request(req)?;
    let mut answers = Vec::new();
    while let Some(m) = resp.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(inner) => answers.push(inner),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
            _ => {}
        }
    }
    Ok(answers)
}

/// A kernel request that failed: the operation and the kernel's errno text (code 999).
fn nl_error(op: impl Into<String>, err: &rtnetlink::Error) -> Error {
    let reason = match err {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    };
    Error::Netlink {
        op: op.into(),
        reason,
    }
}

/// The errno of a netlink error, if the kernel answered with one.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}
