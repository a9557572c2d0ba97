//! Traffic control through netlink: token bucket filters, the ingress redirect to an ifb, and
//! reading both back. Parameters are computed the way `tc` and the reference bandwidth plugin
//! compute them, so a `tc -s qdisc` on the node shows the familiar values.

use super::Nl;
use crate::cni::{Error, Result};
use futures::TryStreamExt;
use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_REPLACE, Nla, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcOption,
};

/// Queueing latency the bucket may add before dropping, as the reference plugin uses.
pub const LATENCY_MS: u64 = 25;
const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;
const TCA_TBF_PARMS: u16 = 1;
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// Token-bucket parameters as the kernel takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tbf {
    /// Bytes per second.
    pub rate: u32,
    /// Bytes queued at most (rate × latency + burst).
    pub limit: u32,
    /// The bucket size, in psched ticks.
    pub buffer: u32,
}

/// Microseconds → psched ticks, from `/proc/net/psched` as `tc` does.
pub fn ticks_per_usec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(read_psched)
}

fn read_psched() -> f64 {
    let parsed = std::fs::read_to_string("/proc/net/psched")
        .ok()
        .and_then(|s| {
            let v: Vec<u32> = s
                .split_whitespace()
                .filter_map(|w| u32::from_str_radix(w, 16).ok())
                .collect();
            let (t2us, us2t, clock_res) = (*v.first()?, *v.get(1)?, *v.get(2)?);
            if us2t == 0 {
                return None;
            }
            let clock_factor = if clock_res == 1_000_000_000 {
                1000.0
            } else {
                clock_res as f64 / TIME_UNITS_PER_SEC
            };
            Some(t2us as f64 / us2t as f64 * clock_factor)
        });
    // 64 ns per tick (PSCHED_SHIFT 6) on every kernel since 3.x.
    parsed.unwrap_or(15.625)
}

impl Tbf {
    /// From a rate and burst in bits; `key` names the config key in errors.
    pub fn new(rate_bits: u64, burst_bits: u64, key: &str) -> Result<Tbf> {
        let rate = rate_bits / 8;
        let burst = burst_bits / 8;
        if rate == 0 || rate > u32::MAX as u64 {
            return Err(Error::config(format!(
                "{key}Rate {rate_bits} is out of range: 8 to {} bits/s",
                u32::MAX as u64 * 8
            )));
        }
        if burst == 0 || burst > u32::MAX as u64 {
            return Err(Error::config(format!(
                "{key}Burst {burst_bits} is out of range: 8 to {} bits",
                u32::MAX as u64 * 8
            )));
        }
        let usec = burst as f64 * TIME_UNITS_PER_SEC / rate as f64;
        let buffer = usec * ticks_per_usec();
        if buffer >= u32::MAX as f64 {
            return Err(Error::config(format!(
                "{key}Burst {burst_bits} is too large for {key}Rate {rate_bits}: the kernel's bucket holds at most {} seconds",
                (u32::MAX as f64 / ticks_per_usec() / TIME_UNITS_PER_SEC) as u64
            )));
        }
        let limit = rate * LATENCY_MS / 1000 + burst;
        if limit > u32::MAX as u64 {
            return Err(Error::config(format!(
                "{key}Rate/{key}Burst give a queue limit over 4 GiB"
            )));
        }
        Ok(Tbf {
            rate: rate as u32,
            limit: limit as u32,
            buffer: buffer as u32,
        })
    }

    /// `struct tc_tbf_qopt`: rate and peakrate `tc_ratespec`s, then limit, buffer, mtu.
    fn qopt(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(36);
        // rate: cell_log, linklayer, overhead, cell_align, mpu, rate
        b.extend_from_slice(&[0u8, TC_LINKLAYER_ETHERNET]);
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&0i16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&self.rate.to_ne_bytes());
        b.extend_from_slice(&[0u8; 12]); // no peak rate
        b.extend_from_slice(&self.limit.to_ne_bytes());
        b.extend_from_slice(&self.buffer.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    fn from_qopt(b: &[u8]) -> Option<Tbf> {
        let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        Some(Tbf {
            rate: u32_at(8)?,
            limit: u32_at(24)?,
            buffer: u32_at(28)?,
        })
    }
}

/// Puts `tbf` as the root qdisc (handle 1:) of link `index`, replacing what was there.
pub async fn set_root_tbf(h: &Nl, index: u32, ifname: &str, tbf: &Tbf) -> Result<()> {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::ROOT;
    m.header.handle = TcHandle { major: 1, minor: 0 };
    m.attributes.push(TcAttribute::Kind("tbf".into()));
    m.attributes.push(TcAttribute::Options(vec![TcOption::Other(
        DefaultNla::new(TCA_TBF_PARMS, tbf.qopt()),
    )]));
    super::request(
        h,
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_REPLACE,
        &[],
        &format!("adding tbf on {ifname}"),
    )
    .await
}

async fn qdiscs(h: &Nl, index: u32) -> Result<Vec<TcMessage>> {
    let all: Vec<TcMessage> =
        h.0.qdisc()
            .get()
            .index(index as i32)
            .execute()
            .try_collect()
            .await
            .map_err(|e| super::nl_error("listing qdiscs", &e))?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.index == index as i32)
        .collect())
}

fn kind(m: &TcMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// Removes the root and ingress qdiscs of link `index` (back to the kernel's default); missing
/// ones are fine.
pub async fn clear(h: &Nl, index: u32, ifname: &str) -> Result<()> {
    for m in qdiscs(h, index).await? {
        if m.header.parent != TcHandle::ROOT && m.header.parent != TcHandle::INGRESS {
            continue;
        }
        let mut del = TcMessage::with_index(index as i32);
        del.header.parent = m.header.parent;
        del.header.handle = m.header.handle;
        super::request(
            h,
            RouteNetlinkMessage::DelQueueDiscipline(del),
            0,
            &[libc::ENOENT, libc::EINVAL],
            &format!("removing a qdisc of {ifname}"),
        )
        .await?;
    }
    Ok(())
}

/// The root tbf of link `index`, if it has one.
pub async fn root_tbf(h: &Nl, index: u32) -> Result<Option<Tbf>> {
    for m in qdiscs(h, index).await? {
        if m.header.parent != TcHandle::ROOT || kind(&m) != Some("tbf") {
            continue;
        }
        for a in &m.attributes {
            let TcAttribute::Options(opts) = a else {
                continue;
            };
            for o in opts {
                let TcOption::Other(nla) = o else { continue };
                let mut buf = vec![0u8; nla.value_len()];
                nla.emit_value(&mut buf);
                if nla.kind() == TCA_TBF_PARMS {
                    return Ok(Tbf::from_qopt(&buf));
                }
                // For kinds it does not model, the parser keeps all of TCA_OPTIONS as one
                // attribute: walk the nested attributes inside it.
                for inner in NlasIterator::new(&buf[..]).flatten() {
                    if inner.kind() == TCA_TBF_PARMS {
                        return Ok(Tbf::from_qopt(inner.value()));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Adds an ingress qdisc to link `index` and a match-all u32 filter that redirects everything to
/// link `to` (an ifb), as the reference bandwidth plugin does.
pub async fn redirect_ingress(h: &Nl, index: u32, ifname: &str, to: u32) -> Result<()> {
    match h.0.qdisc().add(index as i32).ingress().execute().await {
        Ok(()) => {}
        Err(e) if super::errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => {
            return Err(super::nl_error(
                format!("adding ingress qdisc on {ifname}"),
                &e,
            ));
        }
    }
    h.0.traffic_filter(index as i32)
        .add()
        .parent(0xffff_0000)
        // priority() rewrites all of tcm_info, so it goes first; the protocol half is in network
        // byte order (`tc` shows "protocol all" only for htons(ETH_P_ALL)).
        .priority(1)
        .protocol((libc::ETH_P_ALL as u16).to_be())
        .redirect(to)
        .map_err(|e| super::nl_error(format!("building the redirect filter on {ifname}"), &e))?
        .execute()
        .await
        .map_err(|e| super::nl_error(format!("adding the redirect filter on {ifname}"), &e))
}

/// The link index the ingress of `index` is redirected to, if such a filter is installed.
pub async fn ingress_redirect_target(h: &Nl, index: u32) -> Result<Option<u32>> {
    // Only a filter that matches every protocol redirects everything.
    let all = u32::from((libc::ETH_P_ALL as u16).to_be());
    if !qdiscs(h, index)
        .await?
        .iter()
        .any(|m| kind(m) == Some("ingress"))
    {
        return Ok(None);
    }
    let filters: Vec<TcMessage> =
        h.0.traffic_filter(index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(|e| super::nl_error("listing filters", &e))?;
    for f in filters.iter().filter(|f| f.header.info & 0xffff == all) {
        for a in &f.attributes {
            let TcAttribute::Options(opts) = a else {
                continue;
            };
            for o in opts {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = o else {
                    continue;
                };
                if let Some(i) = actions.iter().find_map(mirred_target) {
                    return Ok(Some(i));
                }
            }
        }
    }
    Ok(None)
}

fn mirred_target(a: &TcAction) -> Option<u32> {
    a.attributes.iter().find_map(|x| match x {
        TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p.ifindex),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_as_tc_computes_them() {
        // 10 Mbit/s, 100 kbit burst: 1_250_000 B/s, 12_500 B burst = 10 ms = 156_250 ticks.
        let t = Tbf::new(10_000_000, 100_000, "ingress").unwrap();
        assert_eq!(t.rate, 1_250_000);
        assert_eq!(t.limit, 1_250_000 * 25 / 1000 + 12_500);
        assert_eq!(t.buffer, (10_000.0 * ticks_per_usec()) as u32);
        assert_eq!(Tbf::from_qopt(&t.qopt()), Some(t));
        assert!(
            Tbf::new(0, 100, "ingress")
                .unwrap_err()
                .to_string()
                .contains("ingressRate")
        );
        assert!(
            Tbf::new(1000, 0, "egress")
                .unwrap_err()
                .to_string()
                .contains("egressBurst")
        );
        assert!(Tbf::new(8 * (u32::MAX as u64 + 1), 1000, "egress").is_err());
        // A huge burst at a tiny rate does not fit the kernel's tick counter.
        assert!(
            Tbf::new(8_000, 4_294_967_295, "ingress")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }
}
