//! CNI spec versions: parsing, ordering and the set this plugin speaks.

use std::fmt;

/// Versions this plugin reads and writes, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version; used when a caller gives none.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch` CNI version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `a.b.c`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u16>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    pub fn is_supported(self) -> bool {
        SUPPORTED.iter().any(|s| Version::parse(s) == Some(self))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!(Version::parse("0.3.1"), Some(Version(0, 3, 1)));
        assert!(Version::parse("1.0").is_none());
        assert!(Version::parse("1.0.0.0").is_none());
        assert!(Version::parse("x.1.0").is_none());
        assert!(Version::V0_4_0 < Version::V1_0_0);
        assert!(Version(0, 3, 1) < Version::V0_4_0);
    }

    #[test]
    fn supported_set() {
        assert!(Version(0, 3, 0).is_supported());
        assert!(Version::V1_1_0.is_supported());
        assert!(!Version(0, 2, 0).is_supported());
        assert!(!Version(0, 3, 2).is_supported());
        assert!(!Version(1, 2, 0).is_supported());
    }
}
