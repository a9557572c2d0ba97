//! Bandwidth limits (SPEC §5): from the plugin config (node default) and
//! `runtimeConfig.bandwidth` (per pod, wins per direction), applied with tc through netlink.
//!
//! Ingress (into the pod) is a tbf on the host veth's egress. Egress (out of the pod) is either
//! redirected from the host veth's ingress to an ifb and shaped there (`egressShaping: "ifb"`,
//! the default, as the reference plugin does) or shaped by a tbf on the pod's own interface
//! (`"pod"`: no extra device, so ADD and DEL are faster and the sender gets backpressure, but a
//! pod holding CAP_NET_ADMIN could remove its own limit).

use crate::cni::config::{CaseInsensitive, Lenient};
use crate::cni::result::Interface;
use crate::cni::{Error, Result};
use crate::dataplane::link::{self, Link};
use crate::dataplane::tc::{self, Tbf};
use crate::dataplane::{Host, Pod};
use serde::Deserialize;
use serde_json::Value;

/// The burst containerd sends for annotation-derived limits (`math.MaxUint32`): "unspecified".
pub const UNSPECIFIED_BURST: u64 = 4_294_967_295;
/// The burst CRI-O sends for the same (`math.MaxUint32*8-1`): "unspecified" too.
pub const UNSPECIFIED_BURST_CRIO: u64 = 34_359_738_359;
/// An unspecified burst becomes this much traffic at the rate: at most 2 % over the rate in any
/// 5-second average, yet enough that TCP's segmentation-offload packets (up to 64 KiB) pass the
/// bucket whole at 10 Mbit/s and up and the queue (rate × 25 ms + burst) holds what TCP small
/// queues lets a local sender put there. A smaller bucket splits those packets and drops them
/// by the dozen, and TCP then stalls (measurements in README, "Bandwidth").
pub const DEFAULT_BURST_MS: u64 = 100;
/// ...but at least this many full-size packets, or large packets could never pass.
pub const DEFAULT_BURST_MIN_PACKETS: u64 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressShaping {
    #[default]
    Ifb,
    Pod,
}

/// A whole, non-negative number as the reference plugin reads it (`1e7` is fine, `-5` or `1.5`
/// are not).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Whole(pub u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if let Some(n) = v.as_u64() {
            return Ok(Whole(n));
        }
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(Whole(f as u64)),
            _ => Err(serde::de::Error::custom(format!(
                "{v} is not a non-negative whole number"
            ))),
        }
    }
}

/// Rates and bursts from one source, as the reference plugin names them (keys matched
/// case-insensitively: containerd sends `IngressRate`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Entry {
    #[serde(rename = "ingressrate")]
    pub ingress_rate: Option<Lenient<Whole>>,
    #[serde(rename = "ingressburst")]
    pub ingress_burst: Option<Lenient<Whole>>,
    #[serde(rename = "egressrate")]
    pub egress_rate: Option<Lenient<Whole>>,
    #[serde(rename = "egressburst")]
    pub egress_burst: Option<Lenient<Whole>>,
}

/// `runtimeConfig`: only the `bandwidth` capability is holdfast's.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    pub bandwidth: Option<Lenient<CaseInsensitive<Entry>>>,
}

/// Every bandwidth key of a config. Values are kept leniently: only the verbs that shape (ADD,
/// CHECK) turn a bad one into code 7, so a DEL after a failed ADD always runs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct BandwidthConf {
    /// The node-wide default, from the plugin config's top level.
    #[serde(flatten)]
    pub node: Entry,
    #[serde(rename = "egressshaping")]
    pub egress_shaping: Option<Lenient<EgressShaping>>,
    #[serde(rename = "runtimeconfig")]
    pub runtime: Option<Lenient<CaseInsensitive<RuntimeConfig>>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub ingress: Option<Tbf>,
    pub egress: Option<Tbf>,
    pub egress_shaping: EgressShaping,
}

impl Limits {
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

    /// The limits of an attachment: the pod's (`runtimeConfig.bandwidth`) win per direction over
    /// the node's. An invalid value is code 7 naming the key.
    pub fn from_conf(conf: &BandwidthConf, mtu: Option<u32>) -> Result<Limits> {
        let mtu = u64::from(mtu.unwrap_or(1500));
        let pod = pod_entry(conf)?;
        let node = Some(&conf.node);
        let ingress = match pair(pod, "ingress", "runtimeConfig.bandwidth.")? {
            Some(p) => Some(p),
            None => pair(node, "ingress", "")?,
        };
        let egress = match pair(pod, "egress", "runtimeConfig.bandwidth.")? {
            Some(p) => Some(p),
            None => pair(node, "egress", "")?,
        };
        let egress_shaping = match &conf.egress_shaping {
            None => EgressShaping::Ifb,
            Some(Lenient(Ok(s))) => *s,
            Some(Lenient(Err(_))) => {
                return Err(Error::config("egressShaping is not \"ifb\" or \"pod\""));
            }
        };
        Ok(Limits {
            ingress: ingress
                .map(|(r, b)| direction(r, b, "ingress", mtu))
                .transpose()?,
            egress: egress
                .map(|(r, b)| direction(r, b, "egress", mtu))
                .transpose()?,
            egress_shaping,
        })
    }
}

fn pod_entry(conf: &BandwidthConf) -> Result<Option<&Entry>> {
    let runtime = match &conf.runtime {
        None => return Ok(None),
        Some(Lenient(Ok(r))) => &r.0,
        Some(Lenient(Err(e))) => {
            return Err(Error::config(format!("runtimeConfig: {e}")));
        }
    };
    match &runtime.bandwidth {
        None => Ok(None),
        Some(Lenient(Ok(b))) => Ok(Some(&b.0)),
        Some(Lenient(Err(_))) => Err(Error::config("runtimeConfig.bandwidth is not an object")),
    }
}

fn value(v: &Option<Lenient<Whole>>, key: &str) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(Lenient(Ok(Whole(n)))) => Ok(Some(*n)),
        Some(Lenient(Err(e))) => Err(Error::config(format!("{key} {e}"))),
    }
}

/// Rate and burst of one direction from one source (`None` if that source says nothing of it).
fn pair(src: Option<&Entry>, dir: &str, what: &str) -> Result<Option<(u64, u64)>> {
    let Some(src) = src else { return Ok(None) };
    let (rate, burst) = if dir == "ingress" {
        (&src.ingress_rate, &src.ingress_burst)
    } else {
        (&src.egress_rate, &src.egress_burst)
    };
    let rate = value(rate, &format!("{what}{dir}Rate"))?;
    let burst = value(burst, &format!("{what}{dir}Burst"))?;
    if rate.is_none() && burst.is_none() {
        return Ok(None);
    }
    Ok(Some((rate.unwrap_or(0), burst.unwrap_or(0))))
}

fn direction(rate: u64, burst: u64, dir: &str, mtu: u64) -> Result<Tbf> {
    match (rate, burst) {
        (0, _) => Err(Error::config(format!(
            "{dir}Burst is set without {dir}Rate"
        ))),
        (_, 0) => Err(Error::config(format!(
            "{dir}Rate is set without {dir}Burst"
        ))),
        (r, UNSPECIFIED_BURST | UNSPECIFIED_BURST_CRIO) => {
            // In u128: a rate near u64::MAX must be rejected by Tbf::new as out of range, not
            // overflow here.
            let bucket = u128::from(r) * u128::from(DEFAULT_BURST_MS) / 1000;
            let burst = u64::try_from(bucket)
                .unwrap_or(u64::MAX)
                .max(DEFAULT_BURST_MIN_PACKETS * mtu * 8);
            Tbf::new(r, burst, dir)
        }
        (r, b) => Tbf::new(r, b, dir),
    }
}

/// The result entry for an ifb, as the reference bandwidth plugin lists it.
pub fn ifb_interface(ifb: &Link) -> Interface {
    Interface {
        name: ifb.name.clone(),
        mac: ifb.mac.clone(),
        mtu: ifb.mtu,
        ..Default::default()
    }
}

/// Shapes the host end: the ingress tbf, and the egress tbf on `ifb` plus the redirect to it.
pub async fn shape_host(h: &Host, host: &Link, limits: &Limits, ifb: Option<&Link>) -> Result<()> {
    if let Some(t) = &limits.ingress {
        tc::set_root_tbf(h, host.index, &host.name, t).await?;
    }
    if let (Some(egress), Some(ifb)) = (limits.ifb_egress(), ifb) {
        tc::set_root_tbf(h, ifb.index, &ifb.name, &egress).await?;
        tc::redirect_ingress(h, host.index, &host.name, ifb.index).await?;
    }
    Ok(())
}

/// Creates the attachment's ifb when egress is shaped on one (with the veth's MTU, in the
/// attachment's link group so DEL removes it with the veth in one kernel batch).
pub async fn create_ifb(
    h: &Host,
    host: &Link,
    limits: &Limits,
    ifb_name: &str,
    group: u32,
) -> Result<Option<Link>> {
    if limits.ifb_egress().is_none() {
        return Ok(None);
    }
    link::create_ifb(h, ifb_name, host.mtu, group)
        .await
        .map(Some)
}

/// Shapes egress inside the pod (`egressShaping: "pod"`).
pub async fn shape_pod(p: &Pod, pod: &Link, limits: &Limits) -> Result<()> {
    if let Some(t) = limits.pod_egress() {
        tc::set_root_tbf(p, pod.index, &pod.name, &t).await?;
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
pub async fn check_host(h: &Host, host: &Link, limits: &Limits, ifb_name: &str) -> Result<()> {
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
pub async fn check_pod(h: &Pod, pod: &Link, limits: &Limits) -> Result<()> {
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

    fn from_conf(extra: &str) -> Result<Limits> {
        let c = crate::plugin::conf::Conf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"holdfast"{extra}}}"#).as_bytes(),
        )
        .unwrap();
        Limits::from_conf(&c.bandwidth, c.mtu)
    }

    #[test]
    fn node_default_and_pod_override() {
        let l = from_conf(r#","ingressRate":1000000,"ingressBurst":100000"#).unwrap();
        assert_eq!(l.ingress.unwrap().rate, 125_000);
        assert!(l.egress.is_none());
        // containerd's CRI capitalises; the pod's value wins over the node default.
        let l = from_conf(
            r#","ingressRate":1000000,"ingressBurst":100000,
               "runtimeConfig":{"bandwidth":{"IngressRate":8000000,"IngressBurst":800000,"EgressRate":16000,"EgressBurst":16000}}"#,
        )
        .unwrap();
        assert_eq!(l.ingress.unwrap().rate, 1_000_000);
        assert_eq!(l.egress.unwrap().rate, 2_000);
        assert!(
            from_conf(r#","runtimeConfig":{"bandWidth":{"egressRate":8000,"egressBurst":8000}}"#,)
                .unwrap()
                .egress
                .is_some()
        );
    }

    #[test]
    fn validation_names_the_key() {
        let e = from_conf(r#","ingressRate":1000"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string()
                .contains("ingressRate is set without ingressBurst"),
            "{e}"
        );
        let e = from_conf(r#","runtimeConfig":{"bandwidth":{"egressBurst":1000}}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("egressBurst is set without egressRate")
        );
        let e = from_conf(r#","egressRate":-5,"egressBurst":10"#).unwrap_err();
        assert!(e.to_string().contains("egressRate"));
        let e = from_conf(r#","egressShaping":"tc""#).unwrap_err();
        assert!(e.to_string().contains("egressShaping"));
    }

    #[test]
    fn unspecified_burst_keeps_the_limit_honest() {
        let l = from_conf(
            r#","runtimeConfig":{"bandwidth":{"IngressRate":10000000,"IngressBurst":4294967295}}"#,
        )
        .unwrap();
        let t = l.ingress.unwrap();
        // 100 ms at 10 Mbit/s = 125 000 bytes, not 512 MiB.
        assert_eq!(t.limit, 1_250_000 * 25 / 1000 + 125_000);
        let slow = from_conf(r#","ingressRate":100000,"ingressBurst":4294967295"#).unwrap();
        // 100 ms at 100 kbit/s is 1250 bytes, less than a packet: two 1500-byte packets instead.
        assert_eq!(slow.ingress.unwrap().limit, 12_500 * 25 / 1000 + 3000);
        // CRI-O's unspecified burst is the same bucket, not an error.
        let crio = from_conf(
            r#","runtimeConfig":{"bandwidth":{"ingressRate":10000000,"ingressBurst":34359738359}}"#,
        )
        .unwrap();
        assert_eq!(crio.ingress, Some(t));
        // A rate no bucket can hold is code 7, never an overflow.
        let e = from_conf(r#","ingressRate":18446744073709551615,"ingressBurst":4294967295"#)
            .unwrap_err();
        assert_eq!(e.code(), 7);
    }
}
