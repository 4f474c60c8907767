//! Bootstrap tokens: `gpve1.<ca-sha256-hex>.<id>.<secret>`.
//!
//! The CA fingerprint lets the agent pin the cluster CA before it trusts anything; the id
//! finds the token record; only a SHA-256 of the secret is stored by the server.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The token format version prefix.
pub const TOKEN_PREFIX: &str = "gpve1";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 16;

/// A token that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error(
        "the token is malformed: expected gpve1.<64 hex CA fingerprint>.<12 hex id>.<32 hex secret>"
    )]
    Malformed,
}

/// A parsed bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// Lowercase hex SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: String,
    /// Lowercase hex; the key of the token record.
    pub id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("BootstrapToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BootstrapToken {
    /// A new random token for the CA with fingerprint `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Self {
        let mut rng = rand::rng();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        BootstrapToken {
            ca_fingerprint: ca_fingerprint.to_ascii_lowercase(),
            id: hex(&id),
            secret: hex(&secret),
        }
    }

    /// What the server stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        hex(&Sha256::digest(self.secret.as_bytes()))
    }

    /// Whether this token's secret hashes to `stored_hash` (constant time).
    pub fn secret_matches(&self, stored_hash: &str) -> bool {
        self.secret_hash()
            .as_bytes()
            .ct_eq(stored_hash.as_bytes())
            .into()
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

impl FromStr for BootstrapToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        match parts.as_slice() {
            [prefix, fp, id, secret]
                if *prefix == TOKEN_PREFIX
                    && is_hex(fp, 64)
                    && is_hex(id, ID_BYTES * 2)
                    && is_hex(secret, SECRET_BYTES * 2) =>
            {
                Ok(BootstrapToken {
                    ca_fingerprint: fp.to_string(),
                    id: id.to_string(),
                    secret: secret.to_string(),
                })
            }
            _ => Err(TokenError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_secret() {
        let fp = "ab".repeat(32);
        let t = BootstrapToken::generate(&fp);
        let parsed: BootstrapToken = t.to_string().parse().expect("parses");
        assert_eq!(parsed, t);
        assert!(parsed.secret_matches(&t.secret_hash()));
        let other = BootstrapToken::generate(&fp);
        assert!(!other.secret_matches(&t.secret_hash()));
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn refuses_malformed_tokens() {
        let fp = "ab".repeat(32);
        for bad in [
            "",
            "gpve1",
            "gpve2.x.y.z",
            &format!("gpve1.{fp}.0011223344.00112233445566778899aabbccddeeff"),
            &format!("gpve1.{fp}.001122334455.00112233445566778899AABBCCDDEEFF"),
            &format!("gpve1.{fp}.001122334455.00112233445566778899aabbccddeeff.x"),
        ] {
            assert_eq!(
                bad.parse::<BootstrapToken>(),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }
}
