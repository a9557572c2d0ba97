//! Bandwidth limits (SPEC §5): from the plugin config (node default) and
//! `runtimeConfig.bandwidth` (per pod, wins per direction), applied with tc through netlink.
//!
//! Ingress (into the pod) is a tbf on the host veth's egress. Egress (out of the pod) is either
//! redirected from the host veth's ingress to an ifb and shaped there (`egressShaping: "ifb"`,
//! the default, as the reference plugin does) or shaped by a tbf on the pod's own interface
//! (`"pod"`: no extra device, so ADD and DEL are faster and the sender gets backpressure, but a
//! pod holding CAP_NET_ADMIN could remove its own limit).

use crate::cni::config::get_ci;
use crate::cni::{Error, NetConf, Result};
use crate::dataplane::link::{self, Link};
use crate::dataplane::tc::{self, Tbf};
use rtnetlink::{Handle, LinkIfb};
use serde_json::Value;

/// The burst containerd sends for annotation-derived limits: "unspecified".
pub const UNSPECIFIED_BURST: u64 = 4_294_967_295;
/// An unspecified burst becomes this much traffic at the rate: at most 2 % over the rate in any
/// 5-second average, yet enough that TCP's segmentation-offload packets (up to 64 KiB) pass the
/// bucket whole at 10 Mbit/s and up and the queue (rate × 25 ms + burst) holds what TCP small
/// queues lets a local sender put there. A smaller bucket splits those packets and drops them
/// by the dozen, and TCP then stalls (measurements in README, "Bandwidth").
pub const DEFAULT_BURST_MS: u64 = 100;
/// ...but at least this many full-size packets, or large packets could never pass.
pub const DEFAULT_BURST_MIN_PACKETS: u64 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressShaping {
    #[default]
    Ifb,
    Pod,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub ingress: Option<Tbf>,
    pub egress: Option<Tbf>,
    pub egress_shaping: EgressShaping,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }
    /// The egress limit when it is shaped on an ifb.
    pub fn ifb_egress(&self) -> Option<Tbf> {
        self.egress
            .filter(|_| self.egress_shaping == EgressShaping::Ifb)
    }
    /// The egress limit when it is shaped inside the pod.
    pub fn pod_egress(&self) -> Option<Tbf> {
        self.egress
            .filter(|_| self.egress_shaping == EgressShaping::Pod)
    }
}

fn number(v: &Value, key: &str) -> Result<u64> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        _ => Err(Error::config(format!(
            "{key} {v} is not a non-negative whole number"
        ))),
    }
}

/// Rate and burst of one direction from one source (`None` if that source says nothing of it).
fn pair(src: Option<&Value>, dir: &str, what: &str) -> Result<Option<(u64, u64)>> {
    let Some(src) = src else { return Ok(None) };
    let rate = get_ci(src, &format!("{dir}Rate"));
    let burst = get_ci(src, &format!("{dir}Burst"));
    if rate.is_none() && burst.is_none() {
        return Ok(None);
    }
    let rate = rate
        .map(|v| number(v, &format!("{what}{dir}Rate")))
        .transpose()?
        .unwrap_or(0);
    let burst = burst
        .map(|v| number(v, &format!("{what}{dir}Burst")))
        .transpose()?
        .unwrap_or(0);
    Ok(Some((rate, burst)))
}

fn direction(rate: u64, burst: u64, dir: &str, mtu: u32) -> Result<Option<Tbf>> {
    match (rate, burst) {
        (0, 0) => Ok(None),
        (0, _) => Err(Error::config(format!(
            "{dir}Burst is set without {dir}Rate"
        ))),
        (_, 0) => Err(Error::config(format!(
            "{dir}Rate is set without {dir}Burst"
        ))),
        (r, UNSPECIFIED_BURST) => {
            let burst =
                (r * DEFAULT_BURST_MS / 1000).max(DEFAULT_BURST_MIN_PACKETS * mtu as u64 * 8);
            Tbf::new(r, burst, dir).map(Some)
        }
        (r, b) => Tbf::new(r, b, dir).map(Some),
    }
}

/// The limits for this attachment; invalid values are error 7 naming the key.
pub fn from_conf(conf: &NetConf) -> Result<Limits> {
    let mtu = conf.mtu.unwrap_or(1500);
    let runtime = conf.runtime_config("bandwidth");
    if let Some(r) = runtime
        && !r.is_object()
        && !r.is_null()
    {
        return Err(Error::config("runtimeConfig.bandwidth is not an object"));
    }
    let mut limits = Limits::default();
    for dir in ["ingress", "egress"] {
        let chosen = match pair(runtime, dir, "runtimeConfig.bandwidth.")? {
            Some(p) => Some(p),
            None => pair(Some(&conf.raw), dir, "")?,
        };
        let tbf = match chosen {
            Some((rate, burst)) => direction(rate, burst, dir, mtu)?,
            None => None,
        };
        if dir == "ingress" {
            limits.ingress = tbf;
        } else {
            limits.egress = tbf;
        }
    }
    limits.egress_shaping = match conf.get_ci("egressShaping").map(|v| v.as_str()) {
        None | Some(Some("ifb")) => EgressShaping::Ifb,
        Some(Some("pod")) => EgressShaping::Pod,
        Some(other) => {
            return Err(Error::config(format!(
                "egressShaping {other:?} is not \"ifb\" or \"pod\""
            )));
        }
    };
    Ok(limits)
}

/// Shapes the host end: the ingress tbf, and for ifb egress shaping the ifb (created here, with
/// the veth's MTU) plus the redirect. Returns the ifb.
pub async fn apply_host(
    h: &Handle,
    host: &Link,
    limits: &Limits,
    ifb_name: &str,
    group: u32,
) -> Result<Option<Link>> {
    if let Some(t) = &limits.ingress {
        tc::set_root_tbf(h, host.index, &host.name, t).await?;
    }
    let Some(egress) = limits.ifb_egress() else {
        return Ok(None);
    };
    // In the attachment's link group, so DEL removes it and the veth in one kernel batch.
    let mut b = LinkIfb::new(ifb_name)
        .up()
        .append_extra_attribute(netlink_packet_route::link::LinkAttribute::Group(group));
    if let Some(mtu) = host.mtu {
        b = b.mtu(mtu);
    }
    h.link()
        .add(b.build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("creating ifb {ifb_name}"), &e))?;
    let ifb = link::by_name(h, ifb_name)
        .await?
        .ok_or_else(|| Error::Internal(format!("{ifb_name} vanished right after creation")))?;
    tc::set_root_tbf(h, ifb.index, ifb_name, &egress).await?;
    tc::redirect_ingress(h, host.index, &host.name, ifb.index).await?;
    Ok(Some(ifb))
}

/// Shapes egress inside the pod (`egressShaping: "pod"`); runs in the pod's netns.
pub async fn apply_pod(h: &Handle, pod: &Link, limits: &Limits) -> Result<()> {
    if let Some(t) = limits.pod_egress() {
        tc::set_root_tbf(h, pod.index, &pod.name, &t).await?;
    }
    Ok(())
}

fn drift(what: &str, want: &Tbf, have: Option<Tbf>) -> Result<()> {
    match have {
        Some(h) if h == *want => Ok(()),
        Some(h) => Err(Error::CheckFailed(format!(
            "{what} has tbf rate {} B/s limit {} buffer {} instead of rate {} limit {} buffer {}",
            h.rate, h.limit, h.buffer, want.rate, want.limit, want.buffer
        ))),
        None => Err(Error::CheckFailed(format!("{what} has no tbf qdisc"))),
    }
}

/// CHECK of the host side: tbf on the veth, the ifb, its tbf and the redirect to it.
pub async fn check_host(h: &Handle, host: &Link, limits: &Limits, ifb_name: &str) -> Result<()> {
    if let Some(t) = &limits.ingress {
        drift(
            &format!("host interface {}", host.name),
            t,
            tc::root_tbf(h, host.index).await?,
        )?;
    }
    if let Some(t) = &limits.ifb_egress() {
        let ifb = link::by_name(h, ifb_name)
            .await?
            .ok_or_else(|| Error::CheckFailed(format!("ifb {ifb_name} is missing")))?;
        if !ifb.up {
            return Err(Error::CheckFailed(format!("ifb {ifb_name} is down")));
        }
        drift(
            &format!("ifb {ifb_name}"),
            t,
            tc::root_tbf(h, ifb.index).await?,
        )?;
        if tc::ingress_redirect_target(h, host.index).await? != Some(ifb.index) {
            return Err(Error::CheckFailed(format!(
                "ingress of {} is not redirected to {ifb_name}",
                host.name
            )));
        }
    }
    Ok(())
}

/// CHECK inside the pod (`egressShaping: "pod"`).
pub async fn check_pod(h: &Handle, pod: &Link, limits: &Limits) -> Result<()> {
    if let Some(t) = limits.pod_egress() {
        drift(
            &format!("pod interface {}", pod.name),
            &t,
            tc::root_tbf(h, pod.index).await?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"holdfast"{extra}}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn node_default_and_pod_override() {
        let l = from_conf(&conf(r#","ingressRate":1000000,"ingressBurst":100000"#)).unwrap();
        assert_eq!(l.ingress.unwrap().rate, 125_000);
        assert!(l.egress.is_none());
        // containerd's CRI capitalises; the pod's value wins over the node default.
        let l = from_conf(&conf(
            r#","ingressRate":1000000,"ingressBurst":100000,
               "runtimeConfig":{"bandwidth":{"IngressRate":8000000,"IngressBurst":800000,"EgressRate":16000,"EgressBurst":16000}}"#,
        ))
        .unwrap();
        assert_eq!(l.ingress.unwrap().rate, 1_000_000);
        assert_eq!(l.egress.unwrap().rate, 2_000);
        assert!(
            from_conf(&conf(
                r#","runtimeConfig":{"bandWidth":{"egressRate":8000,"egressBurst":8000}}"#
            ))
            .unwrap()
            .egress
            .is_some()
        );
    }

    #[test]
    fn validation_names_the_key() {
        let e = from_conf(&conf(r#","ingressRate":1000"#)).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string()
                .contains("ingressRate is set without ingressBurst"),
            "{e}"
        );
        let e = from_conf(&conf(
            r#","runtimeConfig":{"bandwidth":{"egressBurst":1000}}"#,
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("egressBurst is set without egressRate")
        );
        let e = from_conf(&conf(r#","egressRate":-5,"egressBurst":10"#)).unwrap_err();
        assert!(e.to_string().contains("egressRate"));
        let e = from_conf(&conf(r#","egressShaping":"tc""#)).unwrap_err();
        assert!(e.to_string().contains("egressShaping"));
    }

    #[test]
    fn unspecified_burst_keeps_the_limit_honest() {
        let l = from_conf(&conf(
            r#","runtimeConfig":{"bandwidth":{"IngressRate":10000000,"IngressBurst":4294967295}}"#,
        ))
        .unwrap();
        let t = l.ingress.unwrap();
        // 100 ms at 10 Mbit/s = 125 000 bytes, not 512 MiB.
        assert_eq!(t.limit, 1_250_000 * 25 / 1000 + 125_000);
        let slow = from_conf(&conf(r#","ingressRate":100000,"ingressBurst":4294967295"#)).unwrap();
        // 100 ms at 100 kbit/s is 1250 bytes, less than a packet: two 1500-byte packets instead.
        assert_eq!(slow.ingress.unwrap().limit, 12_500 * 25 / 1000 + 3000);
    }
}
