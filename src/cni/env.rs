//! The `CNI_*` environment: which verb, which container, which interface.
//!
//! Required variables per verb follow libcni/skel so that real runtimes and this plugin agree on
//! what is missing; identifiers are validated here, before anything is changed.

use super::error::{Error, Result};
use std::ffi::OsString;
use std::path::PathBuf;

/// The variables a runtime sets.
const VARIABLES: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// A CNI verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// Variables a runtime must set for this verb (besides `CNI_COMMAND`).
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Status | Command::Gc => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

/// Everything the runtime passed in the environment, validated.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `None` when unset or empty (DEL may legitimately omit it).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub path: Vec<PathBuf>,
    /// The raw `CNI_ARGS`, passed on unchanged to delegated plugins.
    pub raw_args: String,
}

impl Env {
    /// Reads the environment through `get` (so tests need not mutate the process environment).
    /// A variable that is not UTF-8 is invalid (code 4), never taken as missing or empty.
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Result<Env> {
        let mut bad = Vec::new();
        for k in VARIABLES {
            if get(k).is_some_and(|v| v.to_str().is_none()) {
                bad.push(*k);
            }
        }
        if !bad.is_empty() {
            return Err(Error::InvalidEnv(format!(
                "env variables [{}] are not valid UTF-8",
                bad.join(",")
            )));
        }
        let get = |k: &str| get(k).and_then(|v| v.into_string().ok());
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let cmd_raw = nonempty("CNI_COMMAND").ok_or_else(|| {
            Error::InvalidEnv("required env variables [CNI_COMMAND] missing".into())
        })?;
        let command = Command::parse(&cmd_raw)
            .ok_or_else(|| Error::InvalidEnv(format!("unknown CNI_COMMAND: {cmd_raw}")))?;

        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|k| nonempty(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::InvalidEnv(format!(
                "required env variables [{}] missing",
                missing.join(",")
            )));
        }

        let container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        let ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        // STATUS and GC concern the whole network; they carry no container.
        if !container_id.is_empty()
            || matches!(command, Command::Add | Command::Del | Command::Check)
        {
            validate_container_id(&container_id)?;
        }
        if !ifname.is_empty() || matches!(command, Command::Add | Command::Del | Command::Check) {
            validate_ifname(&ifname)?;
        }
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if let Some(ns) = &netns
            && !ns.is_absolute()
        {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is not an absolute path",
                ns.display()
            )));
        }
        let raw_args = get("CNI_ARGS").unwrap_or_default();
        parse_args(&raw_args)?;
        let path = nonempty("CNI_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            path,
            raw_args,
        })
    }
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 256 bytes: also what makes it safe in a file name.
pub fn validate_container_id(id: &str) -> Result<()> {
    let bad = || {
        Error::InvalidEnv(format!(
            "CNI_CONTAINERID {id:?} is invalid: must match [A-Za-z0-9][A-Za-z0-9_.-]* and be at most 256 characters"
        ))
    };
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return Err(bad()),
    }
    if id.len() > 256 || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(bad());
    }
    Ok(())
}

/// Linux's rules for a device name (1-15 bytes, no `/`, `:` or whitespace, not `.`/`..`).
pub fn validate_ifname(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains / or : or whitespace")
    } else {
        None
    };
    match why {
        Some(w) => Err(Error::InvalidEnv(format!("CNI_IFNAME {name:?} {w}"))),
        None => Ok(()),
    }
}

/// Checks `K=V;K=V`. Keys other than the Kubernetes ones (`K8S_POD_*`, which holdfast accepts
/// but does not need) are an error unless `IgnoreUnknown` is `1` or `true`.
pub fn parse_args(raw: &str) -> Result<()> {
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::InvalidEnv(format!("CNI_ARGS: {pair:?} is not of the form KEY=VALUE"))
        })?;
        match k {
            "K8S_POD_NAMESPACE" | "K8S_POD_NAME" | "K8S_POD_UID" | "K8S_POD_INFRA_CONTAINER_ID" => {
            }
            "IgnoreUnknown" => {
                ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(Error::InvalidEnv(format!(
                            "CNI_ARGS: IgnoreUnknown={v:?} is not a boolean"
                        )));
                    }
                }
            }
            other => unknown.push(other.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(Error::InvalidEnv(format!(
            "CNI_ARGS: unknown keys [{}] (set IgnoreUnknown=1 to accept them)",
            unknown.join(",")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).map(OsString::from))
    }

    #[test]
    fn missing_vars_are_all_named() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert_eq!(
            e.to_string(),
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_PATH] missing"
        );
        let e = env(&[]).unwrap_err();
        assert!(e.to_string().contains("CNI_COMMAND"));
    }

    #[test]
    fn del_needs_no_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert_eq!(e.netns, None);
    }

    #[test]
    fn status_and_gc_need_only_path() {
        assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn container_id_rules() {
        assert!(validate_container_id("abc-1_2.3").is_ok());
        for bad in ["", "-abc", "a/b", "../x", "a b", &"a".repeat(257)] {
            assert_eq!(validate_container_id(bad).unwrap_err().code(), 4, "{bad}");
        }
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
            assert_eq!(validate_ifname(bad).unwrap_err().code(), 4, "{bad}");
        }
    }

    #[test]
    fn cni_args() {
        assert!(
            parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=bar;K8S_POD_NAMESPACE=ns").is_ok()
        );
        assert!(parse_args("K8S_POD_NAME=web;K8S_POD_UID=u").is_ok());
        // Order must not matter: CRI sends keys in varying order.
        assert!(parse_args("FOO=bar;IgnoreUnknown=true").is_ok());
        let e = parse_args("FOO=bar").unwrap_err();
        assert!(e.to_string().contains("FOO"));
        assert!(parse_args("garbage").is_err());
        assert!(parse_args("").is_ok());
    }

    #[test]
    fn non_utf8_is_invalid_not_missing() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"ab\xffcd".to_vec());
        let e = Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("DEL".into()),
            "CNI_ARGS" => Some(bad.clone()),
            _ => Some("x".into()),
        })
        .unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(
            e.to_string().contains("[CNI_ARGS] are not valid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn relative_netns_rejected() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
            ("CNI_NETNS", "var/run/netns/x"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("CNI_NETNS"));
    }
}
