//! The `portMappings` capability (a pod's `hostPort`s) done by holdfast itself: what the reference
//! `portmap` plugin would do after it, without another process per ADD and per DEL.
//!
//! Each attachment with mappings has an entry, `stateDir/hostports/<network>/<id>.json` (its pod
//! addresses and mappings), and the kernel's hostPort tables are rebuilt from all entries, under
//! one lock, whenever one comes or goes ([`crate::dataplane::hostport`]). An attachment without
//! mappings costs nothing: ADD writes nothing, and a teardown finds no directory.

use super::conf::Conf;
use crate::cni::config::AttachmentId;
use crate::cni::config::CaseInsensitive;
use crate::cni::{Error, Result};
use crate::dataplane::hostport::{self, Forward, Mapping, Protocol};
use crate::dataplane::{conntrack, sysctl};
use crate::state::{self, at, lock};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

const DIR: &str = "hostports";
const LOCK: &str = "hostports.lock";
/// An entry is a few hundred bytes; a larger file was not written by holdfast.
const MAX_ENTRY: usize = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    container_id: String,
    ifname: String,
    ips: Vec<IpAddr>,
    mappings: Vec<Mapping>,
}

/// One mapping as runtimes send it. Keys are matched case-insensitively, as portmap's Go decoder
/// does: containerd (go-cni) sends `HostPort`, `ContainerPort`, `Protocol`, `HostIP`, untagged Go
/// field names, and `HostIP` empty when the pod names none; the spec's examples say `hostPort`.
#[derive(Deserialize)]
struct Wire {
    hostport: u16,
    containerport: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    hostip: Option<String>,
}

impl Wire {
    fn mapping(self) -> std::result::Result<Mapping, String> {
        if self.hostport == 0 || self.containerport == 0 {
            return Err(format!(
                "port 0 (hostPort {}, containerPort {})",
                self.hostport, self.containerport
            ));
        }
        let protocol = match self.protocol.map(|p| p.to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some("sctp") => Protocol::Sctp,
            Some(p) => return Err(format!("protocol {p:?} is not tcp, udp or sctp")),
        };
        let host_ip = match self.hostip.as_deref() {
            None | Some("") => None,
            Some(h) => Some(
                h.parse()
                    .map_err(|_| format!("hostIP {h:?} is not an address"))?,
            ),
        };
        Ok(Mapping {
            host_port: self.hostport,
            container_port: self.containerport,
            protocol,
            host_ip,
        })
    }
}

/// The runtime's `runtimeConfig.portMappings` (empty when it sent none). A malformed list is
/// code 7, asked for only by ADD: it never stops a DEL.
pub fn requested(conf: &Conf) -> Result<Vec<Mapping>> {
    let v = conf
        .net
        .raw
        .get("runtimeConfig")
        .and_then(|r| r.get("portMappings"));
    parse(v).map_err(|e| Error::config(format!("runtimeConfig.portMappings: {e}")))
}

fn parse(v: Option<&serde_json::Value>) -> std::result::Result<Vec<Mapping>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let wire: Vec<CaseInsensitive<Wire>> =
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    wire.into_iter().map(|w| w.0.mapping()).collect()
}

fn name_of(id: &AttachmentId) -> String {
    format!("{}.json", state::file_stem(&id.container_id, &id.ifname))
}

/// Forwards `mappings` to the attachment's `ips` (its host veth `host_ifname`): its entry, then
/// the tables with it. When the tables cannot be made, the entry goes again.
pub fn add(
    conf: &Conf,
    id: &AttachmentId,
    ips: &[IpAddr],
    host_ifname: &str,
    mappings: &[Mapping],
) -> Result<()> {
    if ips.iter().any(IpAddr::is_ipv4) {
        sysctl::route_localnet(host_ifname)?;
    }
    let entry = Entry {
        container_id: id.container_id.clone(),
        ifname: id.ifname.clone(),
        ips: ips.to_vec(),
        mappings: mappings.to_vec(),
    };
    let bytes = serde_json::to_vec(&entry)
        .map_err(|e| Error::Internal(format!("encoding hostPort entry: {e}")))?;
    {
        let _held = hold(&conf.state_dir)?;
        let d = at::Dir::open_path(&conf.state_dir, &[DIR, conf.name()], true)?
            .ok_or_else(|| Error::Internal("hostports directory vanished".into()))?;
        // On disk before the rules exist: whatever crashes after this finds the entry to undo.
        d.write_atomic(&name_of(id), &bytes, true)?;
        if let Err(e) = rebuild(&conf.state_dir, None) {
            let _ = d.remove(&name_of(id));
            return Err(e);
        }
    }
    // With the rules in place, no UDP flow keeps going to the pod that had the port before.
    let udp: Vec<u16> = mappings
        .iter()
        .filter(|m| m.protocol == Protocol::Udp)
        .map(|m| m.host_port)
        .collect();
    for v6 in [false, true]
        .into_iter()
        .filter(|v6| ips.iter().any(|i| i.is_ipv6() == *v6))
    {
        if let Err(e) = conntrack::forget_udp_to(&udp, v6) {
            tracing::warn!("stale UDP conntrack entries of hostPorts {udp:?} stay: {e}");
        }
    }
    Ok(())
}

/// Stops forwarding to attachment `id` of `network`, if it had mappings: the tables without
/// its entry, then the entry. Whether it had one.
pub fn forget(state_dir: &Path, network: &str, id: &AttachmentId) -> Result<bool> {
    let name = name_of(id);
    let Some(d) = at::Dir::open_path(state_dir, &[DIR, network], false)? else {
        return Ok(false);
    };
    if d.stat(&name)?.is_none() {
        return Ok(false);
    }
    let _held = hold(state_dir)?;
    rebuild(state_dir, Some((network, &name)))?;
    d.remove(&name)
}

/// Makes the tables say every entry again (the agent, each round): a table that something else
/// removed (`nft flush ruleset` at a firewall reload) or that an older holdfast wrote comes back
/// whole. Nothing is touched on a node that never had an entry. Returns how many pods forward.
pub fn restore(state_dir: &Path) -> Result<usize> {
    if at::Dir::open_path(state_dir, &[DIR], false)?.is_none() {
        return Ok(0);
    }
    let _held = hold(state_dir)?;
    rebuild(state_dir, None)
}

/// The lock every change of the tables is made under, so that the last rebuild saw every entry.
fn hold(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let (f, path) = lock::named_file(state_dir, LOCK)?;
    lock::flock_until(f, &path, std::time::Instant::now() + lock::LOCK_WAIT)
}

/// Makes the tables say every entry but `except` (network, file name); how many entries that is.
fn rebuild(state_dir: &Path, except: Option<(&str, &str)>) -> Result<usize> {
    let mut forwards = Vec::new();
    let (good, bad) = entries(state_dir)?;
    for b in bad {
        tracing::warn!("leaving out {}: {}", b.path.display(), b.why);
    }
    let mut n = 0;
    for (network, name, e) in good {
        if except == Some((network.as_str(), name.as_str())) {
            continue;
        }
        n += 1;
        forwards.extend(e.ips.iter().map(|ip| Forward {
            pod: *ip,
            mappings: e.mappings.clone(),
        }));
    }
    hostport::apply(&forwards).map(|()| n)
}

/// An entry with its network and file name.
type Named = (String, String, Entry);

/// An entry file that cannot be read or trusted: it forwards nothing.
pub struct Unreadable {
    pub network: String,
    pub name: String,
    pub path: std::path::PathBuf,
    pub why: String,
}

/// Every entry, (network, file name, entry), and those that cannot be read or that name another
/// attachment than their file does.
fn entries(state_dir: &Path) -> Result<(Vec<Named>, Vec<Unreadable>)> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let Some(top) = at::Dir::open_path(state_dir, &[DIR], false)? else {
        return Ok((good, bad));
    };
    for (network, kind) in top.entries()? {
        if !kind.is_some_and(|k| k.is_dir()) {
            continue;
        }
        let Some(d) = top.sub(&network, false)? else {
            continue;
        };
        for (name, _) in d.entries()? {
            if at::is_temp(&name) || !name.ends_with(".json") {
                continue;
            }
            let parsed = d
                .read(&name, MAX_ENTRY)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let Some(b) = b else { return Ok(None) };
                    let e: Entry = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
                    let id = AttachmentId::new(&e.container_id, &e.ifname);
                    match name_of(&id) == name {
                        true => Ok(Some(e)),
                        false => Err("it names another attachment than its file".into()),
                    }
                });
            match parsed {
                Ok(Some(e)) => good.push((network.clone(), name, e)),
                Ok(None) => {}
                Err(why) => bad.push(Unreadable {
                    network: network.clone(),
                    path: d.join(&name),
                    name,
                    why,
                }),
            }
        }
    }
    Ok((good, bad))
}

/// One attachment's forwarded hostPorts, as doctor and the metrics show them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Forwarded {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    pub mappings: Vec<Mapping>,
}

/// Every attachment's forwarded hostPorts, and the entries that forward nothing.
pub fn listed(state_dir: &Path) -> Result<(Vec<Forwarded>, Vec<Unreadable>)> {
    let (good, bad) = entries(state_dir)?;
    let fw = good
        .into_iter()
        .map(|(network, _, e)| Forwarded {
            network,
            container_id: e.container_id,
            ifname: e.ifname,
            ips: e.ips,
            mappings: e.mappings,
        })
        .collect();
    Ok((fw, bad))
}

/// Removes an entry file that forwards nothing (GC).
pub fn discard(state_dir: &Path, b: &Unreadable) -> Result<()> {
    if let Some(d) = at::Dir::open_path(state_dir, &[DIR, &b.network], false)? {
        d.remove(&b.name)?;
    }
    Ok(())
}

/// CHECK: the attachment forwards exactly what the runtime asks for (`want`), to its `ips`.
/// Reads the entry, not the kernel: the tables are rebuilt from the entries whole.
pub fn check(
    state_dir: &Path,
    network: &str,
    id: &AttachmentId,
    ips: &[IpAddr],
    want: &[Mapping],
) -> Result<()> {
    let d = at::Dir::open_path(state_dir, &[DIR, network], false)?;
    let bytes = match d {
        Some(d) => d.read(&name_of(id), MAX_ENTRY)?,
        None => None,
    };
    let have: Option<Entry> = bytes
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .map_err(|e| Error::CheckFailed(format!("hostPort entry of {id}: {e}")))?;
    let fail = |what: String| Err(Error::CheckFailed(what));
    match have {
        None if want.is_empty() => Ok(()),
        None => fail(format!("hostPorts of {id} are not forwarded (no entry)")),
        Some(e) if e.mappings != want => fail(format!(
            "hostPorts of {id} forward {:?}, the runtime asks for {want:?}",
            e.mappings
        )),
        Some(e) if e.ips != ips => fail(format!(
            "hostPorts of {id} go to {:?}, the attachment has {ips:?}",
            e.ips
        )),
        Some(_) => Ok(()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::hostport::mapping as m;
    use serde_json::json;

    #[test]
    fn mappings_parse_as_containerd_and_the_spec_send_them() {
        // containerd 2.1's go-cni: untagged Go field names, HostIP empty when unset.
        let containerd = json!([
            {"HostPort": 54323, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": "127.0.0.1"},
            {"HostPort": 54323, "ContainerPort": 8080, "Protocol": "udp", "HostIP": ""},
        ]);
        assert_eq!(
            parse(Some(&containerd)).unwrap(),
            [
                m(54323, 8080, Protocol::Tcp, Some("127.0.0.1")),
                m(54323, 8080, Protocol::Udp, None)
            ]
        );
        let spec = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "SCTP"}, {"hostPort": 9, "containerPort": 9}]);
        assert_eq!(
            parse(Some(&spec)).unwrap(),
            [
                m(8080, 80, Protocol::Sctp, None),
                m(9, 9, Protocol::Tcp, None)
            ]
        );
        assert_eq!(parse(None).unwrap(), []);
        assert_eq!(parse(Some(&json!(null))).unwrap(), []);
        for bad in [
            json!([{"hostPort": 0, "containerPort": 80}]),
            json!([{"hostPort": 70000, "containerPort": 80}]),
            json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
            json!([{"hostPort": 80, "containerPort": 80, "hostIP": "x"}]),
            json!([{"containerPort": 80}]),
            json!("nope"),
        ] {
            assert!(parse(Some(&bad)).is_err(), "{bad}");
        }
    }
}
