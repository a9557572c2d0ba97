//! CNI results: one in-memory form, read from and written to every supported version.
//!
//! 0.3.x/0.4.0 differ from 1.x only in `ips[].version`; 1.1.0 adds optional interface and route
//! fields that older versions must not carry.

use super::error::{Error, Result};
use super::version::Version;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet, as `10.1.0.5/24`.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

const V11_INTERFACE_KEYS: &[&str] = &["mtu", "socketPath", "pciID"];
const V11_ROUTE_KEYS: &[&str] = &["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// Reads a result of any supported version (`prevResult`, a delegated plugin's output).
    pub fn from_value(v: &Value) -> Result<CniResult> {
        CniResult::deserialize(v).map_err(|e| Error::decode("result", e))
    }

    /// Writes the result in the shape of `version`.
    pub fn to_value(&self, version: Version) -> Value {
        let mut v = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        if version < Version::V1_1_0 {
            strip(&mut v, "interfaces", V11_INTERFACE_KEYS);
            strip(&mut v, "routes", V11_ROUTE_KEYS);
        }
        if version < Version::V1_0_0
            && let Some(Value::Array(ips)) = v.get_mut("ips")
        {
            for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                if let Value::Object(m) = ip {
                    let fam = if cfg.address.is_ipv4() { "4" } else { "6" };
                    m.insert("version".into(), Value::String(fam.into()));
                }
            }
        }
        v.insert("cniVersion".into(), Value::String(version.to_string()));
        Value::Object(v)
    }
}

fn strip(v: &mut Map<String, Value>, list: &str, keys: &[&str]) {
    if let Some(Value::Array(items)) = v.get_mut(list) {
        for item in items {
            if let Value::Object(m) = item {
                for k in keys {
                    m.remove(*k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "hf0123456789a".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    mtu: Some(1400),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    sandbox: Some("/var/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                mtu: Some(1300),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns {
                nameservers: vec!["10.43.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn writes_every_version() {
        let r = sample();
        let v030 = r.to_value(Version(0, 3, 0));
        assert_eq!(v030["cniVersion"], "0.3.0");
        assert_eq!(v030["ips"][0]["version"], "4");
        assert_eq!(v030["ips"][1]["version"], "6");
        assert_eq!(v030["ips"][0]["address"], "10.1.0.5/24");
        assert!(v030["interfaces"][0].get("mtu").is_none());
        assert!(v030["routes"][0].get("mtu").is_none());
        let v040 = r.to_value(Version::V0_4_0);
        assert_eq!(v040["ips"][1]["version"], "6");
        let v100 = r.to_value(Version::V1_0_0);
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["interfaces"][0].get("mtu").is_none());
        let v110 = r.to_value(Version::V1_1_0);
        assert_eq!(v110["interfaces"][0]["mtu"], 1400);
        assert_eq!(v110["routes"][0]["mtu"], 1300);
        assert_eq!(v110["dns"]["nameservers"][0], "10.43.0.10");
        assert_eq!(v110["ips"][0]["interface"], 1);
        assert_eq!(v110["interfaces"][1]["sandbox"], "/var/run/netns/x");
    }

    #[test]
    fn reads_old_and_new() {
        let old = json!({"cniVersion": "0.3.1", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}});
        let r = CniResult::from_value(&old).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
        assert_eq!(r.interfaces[0].sandbox.as_deref(), Some("/x"));
        // Round trip through another version.
        let back = CniResult::from_value(&r.to_value(Version::V1_1_0)).unwrap();
        assert_eq!(back, r);
        assert!(CniResult::from_value(&json!({"ips": [{"address": "bogus"}]})).is_err());
    }
}
