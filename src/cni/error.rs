//! The one error type of the plugin and its mapping to CNI error codes.
//!
//! Every failure is an [`Error`]; the code a runtime sees is decided once, in [`Error::code`].

use serde::Serialize;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Code 1.
    #[error("incompatible CNI version: {0}")]
    IncompatibleVersion(String),
    /// Code 3.
    #[error("unknown container: {0}")]
    UnknownContainer(String),
    /// Code 4: the message names the variable.
    #[error("{0}")]
    InvalidEnv(String),
    /// Code 5.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Code 6.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },
    /// Code 7: the message names the key.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Code 11.
    #[error("{0}")]
    TryAgainLater(String),
    /// Code 50 (STATUS).
    #[error("{0}")]
    NotAvailable(String),
    /// Code 100: an address range has no free address.
    #[error("{0}")]
    RangeExhausted(String),
    /// Code 101: CHECK found state that differs from the previous result.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// Code 102: the interface to create already exists in the container.
    #[error("{0}")]
    InterfaceExists(String),
    /// A delegated plugin (IPAM) failed: its own code and message are passed on unchanged.
    #[error("{plugin}: {msg}")]
    Delegate {
        plugin: String,
        code: u32,
        msg: String,
    },
    /// Code 999: a kernel request failed (decoded by the dataplane, which knows netlink).
    #[error("{op}: {reason}")]
    Netlink { op: String, reason: String },
    /// Code 999.
    #[error("internal error: {0}")]
    Internal(String),
    /// Several failures of one verb (DEL and GC go on after a failure): the first with a code
    /// other than 999 decides the code, since that is what tells the runtime what to do (11:
    /// retry); every message goes into `details`.
    #[error("{what}: {}", summary(.errors))]
    Many { what: String, errors: Vec<Error> },
}

fn summary(errors: &[Error]) -> String {
    match errors {
        [] => "no error".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

impl Error {
    /// The CNI error code a runtime sees for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => 1,
            Error::UnknownContainer(_) => 3,
            Error::InvalidEnv(_) => 4,
            Error::Io { .. } => 5,
            Error::Decode { .. } => 6,
            Error::InvalidConfig(_) => 7,
            Error::TryAgainLater(_) => 11,
            Error::NotAvailable(_) => 50,
            Error::RangeExhausted(_) => 100,
            Error::CheckFailed(_) => 101,
            Error::InterfaceExists(_) => 102,
            Error::Delegate { code, .. } => *code,
            Error::Netlink { .. } | Error::Internal(_) => 999,
            Error::Many { errors, .. } => errors
                .iter()
                .map(Error::code)
                .find(|c| *c != 999)
                .unwrap_or(999),
        }
    }

    /// All failures of `what`, or `Ok` if there were none; a single one is returned as itself.
    pub fn all(what: impl Into<String>, mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many {
                what: what.into(),
                errors,
            }),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn config(msg: impl Into<String>) -> Error {
        Error::InvalidConfig(msg.into())
    }

    pub fn decode(what: impl Into<String>, reason: impl ToString) -> Error {
        Error::Decode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// The JSON error object of the CNI spec.
    pub fn to_json(&self, cni_version: &str) -> ErrorJson {
        ErrorJson {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: match self {
                Error::Many { errors, .. } => Some(
                    errors
                        .iter()
                        .map(|e| format!("[{}] {e}", e.code()))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                _ => None,
            },
        }
    }
}

/// The error object written to stdout.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(Error::IncompatibleVersion("x".into()).code(), 1);
        assert_eq!(Error::InvalidEnv("CNI_IFNAME".into()).code(), 4);
        assert_eq!(Error::decode("config", "eof").code(), 6);
        assert_eq!(Error::config("name").code(), 7);
        assert_eq!(Error::TryAgainLater("api".into()).code(), 11);
        assert_eq!(Error::NotAvailable("x".into()).code(), 50);
        let j = serde_json::to_value(Error::config("missing name").to_json("1.0.0")).unwrap();
        assert_eq!(j["code"], 7);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["msg"], "invalid config: missing name");
        assert!(j.get("details").is_none());
    }

    #[test]
    fn a_list_keeps_the_telling_code_and_every_message() {
        assert!(Error::all("DEL", vec![]).is_ok());
        let one = Error::all("DEL", vec![Error::TryAgainLater("locked".into())]).unwrap_err();
        assert_eq!((one.code(), one.to_string()), (11, "locked".to_string()));
        let e = Error::all(
            "DEL incomplete",
            vec![
                Error::Internal("boom".into()),
                Error::TryAgainLater("could not lock".into()),
                Error::io("removing x", std::io::Error::other("EROFS")),
            ],
        )
        .unwrap_err();
        assert_eq!(e.code(), 11);
        let j = serde_json::to_value(e.to_json("1.0.0")).unwrap();
        assert_eq!(
            j["msg"],
            "DEL incomplete: internal error: boom (and 2 more)"
        );
        assert_eq!(
            j["details"],
            "[999] internal error: boom; [11] could not lock; [5] removing x: EROFS"
        );
    }
}
