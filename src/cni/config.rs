//! The network configuration a runtime sends on stdin: the part every CNI plugin shares
//! (`cniVersion`, `name`, `prevResult`), and the two ways of reading the rest that the protocol
//! needs: typed, naming the key at fault (code 7), and with keys matched case-insensitively, as
//! Go's decoder (and so every reference plugin and runtime) does. holdfast's own keys are typed
//! next to the code that owns them.

use super::error::{Error, Result};
use super::result::CniResult;
use super::version::Version;
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol part of a plugin's configuration, parsed and checked.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub prev_result: Option<CniResult>,
    /// The config exactly as received: what a delegated plugin is given, and what the plugin's
    /// own keys are read from.
    pub raw: Value,
}

/// Stdin as JSON (code 6 when it is not); the first step of parsing, so that the caller knows
/// the `cniVersion` to answer an error in even when a later check fails.
pub fn read_json(bytes: &[u8]) -> Result<Value> {
    let raw: Value =
        serde_json::from_slice(bytes).map_err(|e| Error::decode("network config", e))?;
    if !raw.is_object() {
        return Err(Error::decode("network config", "not a JSON object"));
    }
    Ok(raw)
}

impl NetConf {
    /// Checks, in the order libcni's skel does: name (7), version (1), then `prevResult` (7).
    pub fn from_value(raw: Value) -> Result<NetConf> {
        let name = match raw.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(Error::config("missing network name (key \"name\")")),
        };
        validate_network_name(&name)?;
        let version = config_version(&raw)?;
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                CniResult::from_value(v).map_err(|e| Error::config(format!("prevResult: {e}")))?,
            ),
        };
        Ok(NetConf {
            version,
            name,
            prev_result,
            raw,
        })
    }

    /// Parses a whole config from bytes.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        NetConf::from_value(read_json(bytes)?)
    }

    /// The config's top level as `T`, keys matched case-insensitively: `T`'s fields are named in
    /// lower case. A wrong type is code 7 naming the key as the config spelled it.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T> {
        let lowered = lower_keys(&self.raw);
        serde_path_to_error::deserialize(&lowered).map_err(|e| {
            let path = e.path().to_string();
            let (first, rest) = path.split_once('.').unwrap_or((&path, ""));
            let original = self
                .raw
                .as_object()
                .and_then(|m| m.keys().find(|k| k.to_ascii_lowercase() == first))
                .map(String::as_str)
                .unwrap_or(first);
            let key = if rest.is_empty() {
                original.to_string()
            } else {
                format!("{original}.{rest}")
            };
            Error::config(format!("key {key:?}: {}", e.inner()))
        })
    }
}

/// An object's keys in lower case. Where two keys differ only in case, the one that sorts last
/// wins: the camelCase spelling (`ingressRate`) over a capitalised one (`IngressRate`).
fn lower_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

/// `T` read from a JSON object whose keys are matched case-insensitively (containerd sends
/// `runtimeConfig.bandwidth.IngressRate`, the upstream tests `bandWidth`): `T`'s fields are named
/// in lower case.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaseInsensitive<T>(pub T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for CaseInsensitive<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        T::deserialize(lower_keys(&v))
            .map(CaseInsensitive)
            .map_err(serde::de::Error::custom)
    }
}

/// A value whose decoding error is kept for the verb that needs the value instead of failing the
/// whole config: a bad bandwidth limit fails ADD with code 7, but must never stop the DEL that
/// cleans up after that failed ADD.
#[derive(Clone, Debug, PartialEq)]
pub struct Lenient<T>(pub std::result::Result<T, String>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(Err("absent".into()))
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(Lenient(T::deserialize(v).map_err(|e| e.to_string())))
    }
}

/// One attachment: (container ID, ifname), as a runtime names it (GC's
/// `cni.dev/valid-attachments`), as a verb is about it, and as a lease names its holder.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentId {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentId {
    pub fn new(container_id: &str, ifname: &str) -> AttachmentId {
        AttachmentId {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl std::fmt::Display for AttachmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// The config's `cniVersion`: missing means 0.1.0 to libcni, which we do not speak.
pub fn config_version(raw: &Value) -> Result<Version> {
    let s = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0");
    let v = Version::parse(s)
        .ok_or_else(|| Error::decode("cniVersion", format!("{s:?} is not a version")))?;
    if !v.is_supported() {
        return Err(Error::IncompatibleVersion(format!(
            "config version {s} is not one of {}",
            super::version::SUPPORTED.join(", ")
        )));
    }
    Ok(v)
}

/// libcni's rule for network names; also what makes the name safe as a directory under `stateDir`.
pub fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(Error::config(format!(
            "network name {name:?} is invalid: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_in_skel_order() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code(), 6);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"name":"n","cniVersion":"0.2.0"}"#)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(NetConf::parse(br#"{"name":"n"}"#).unwrap_err().code(), 1);
        assert_eq!(
            NetConf::parse(br#"{"name":"../x","cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code(),
            7
        );
        let e = NetConf::parse(br#"{"name":"n","cniVersion":"1.0.0","prevResult":{"ips":3}}"#)
            .unwrap_err();
        assert_eq!(e.code(), 7);
    }

    #[derive(Deserialize, Debug)]
    struct Keys {
        #[serde(rename = "ingressrate")]
        ingress_rate: Option<u64>,
        #[serde(rename = "runtimeconfig", default)]
        runtime: Option<CaseInsensitive<Inner>>,
    }
    #[derive(Deserialize, Debug, Default, PartialEq)]
    struct Inner {
        #[serde(rename = "bandwidth")]
        bandwidth: Option<Lenient<u64>>,
    }

    #[test]
    fn keys_match_case_insensitively_and_errors_name_them() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","IngressRate":7,"runtimeConfig":{"bandWidth":"x"}}"#,
        )
        .unwrap();
        let k: Keys = c.typed().unwrap();
        assert_eq!(k.ingress_rate, Some(7));
        let inner = k.runtime.unwrap().0;
        assert!(
            inner.bandwidth.unwrap().0.is_err(),
            "lenient keeps the error"
        );
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ingressRate":"fast"}"#).unwrap();
        let e = c.typed::<Keys>().unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("\"ingressRate\""), "{e}");
    }
}
