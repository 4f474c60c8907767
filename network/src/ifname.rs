//! Validated Linux interface names.

use std::fmt;

/// Longest interface name the kernel accepts (IFNAMSIZ minus the NUL byte).
pub const IFNAME_MAX_BYTES: usize = 15;

/// Errors for interface names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    #[error("interface name is empty")]
    Empty,
    #[error("interface name {name:?} is {len_bytes} bytes long, the kernel allows at most 15")]
    TooLong { name: String, len_bytes: usize },
    #[error("interface name {0:?} may only contain A-Z, a-z, 0-9, '_', '-' and '.'")]
    BadCharacter(String),
    #[error("interface name {0:?} is reserved")]
    Reserved(String),
}

/// An interface name the kernel will accept: 1-15 bytes of `[A-Za-z0-9_.-]`, not `.`/`..`.
///
/// The kernel itself allows more (anything but `/`, `:` and whitespace); the narrower set
/// keeps names safe in nftables rules, file paths and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn new(name: &str) -> Result<Self, IfNameError> {
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > IFNAME_MAX_BYTES {
            return Err(IfNameError::TooLong {
                name: name.to_owned(),
                len_bytes: name.len(),
            });
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Reserved(name.to_owned()));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(IfNameError::BadCharacter(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for IfName {
    type Err = IfNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(IfName::new("vmbr0").is_ok());
        assert!(IfName::new("tap100i0").is_ok());
        assert!(IfName::new("a23456789012345").is_ok());
        assert_eq!(IfName::new(""), Err(IfNameError::Empty));
        assert!(matches!(
            IfName::new("a234567890123456"),
            Err(IfNameError::TooLong { len_bytes: 16, .. })
        ));
        for bad in ["a b", "a/b", "a:b", "é", "x\n"] {
            assert!(
                matches!(IfName::new(bad), Err(IfNameError::BadCharacter(_))),
                "{bad}"
            );
        }
        assert!(matches!(IfName::new(".."), Err(IfNameError::Reserved(_))));
    }
}
