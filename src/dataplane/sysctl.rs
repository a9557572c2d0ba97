//! The few sysctls a routed pod needs, written only when they differ (a write is a syscall and
//! an audit event on some nodes; a read is cheap).

use crate::cni::{Error, Result};
use std::path::Path;

fn ensure(path: &str, value: &str) -> Result<()> {
    let p = Path::new(path);
    match std::fs::read_to_string(p) {
        Ok(cur) if cur.trim() == value => Ok(()),
        _ => std::fs::write(p, value).map_err(|e| Error::io(format!("writing {path}"), e)),
    }
}

/// Enables forwarding for the families in use, in the calling thread's netns.
pub fn enable_forwarding(v4: bool, v6: bool) -> Result<()> {
    if v4 {
        ensure("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    if v6 {
        ensure("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Turns off IPv6 duplicate address detection on a link we just created.
///
/// The node forwards pod-to-pod IPv6 through the host veth, and the kernel sends the neighbour
/// solicitation for a forwarded packet from the link's link-local address. While that address is
/// tentative (about a second after link-up) no solicitation goes out at all, so the first packets
/// between two new pods are lost. The veth is point-to-point and ours: nothing to detect.
pub fn disable_dad(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
    if !Path::new(&path).exists() {
        return Ok(()); // IPv6 disabled on this node
    }
    ensure(&path, "0")
}

/// Lets packets from 127.0.0.0/8 be routed out of `ifname` (a pod's host veth): a connection to
/// a hostPort on 127.0.0.1, DNATed to the pod, leaves through it before it is masqueraded.
pub fn route_localnet(ifname: &str) -> Result<()> {
    ensure(
        &format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet"),
        "1",
    )
}
