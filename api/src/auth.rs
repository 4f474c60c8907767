//! Credentials: Proxmox-style tickets and CSRF tokens (HMAC-SHA256 with the server secret),
//! argon2 password hashes and hashed API token secrets. Pure functions of their inputs and
//! the current time, so they are unit-tested without a server.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Lifetime of a ticket and of a CSRF token, as Proxmox: two hours.
pub const TICKET_LIFETIME_S: i64 = 7200;
/// Tickets dated this far in the future are still accepted (clock skew between nodes).
pub const TICKET_CLOCK_SKEW_S: i64 = 300;
/// Length of the server's ticket-signing secret in bytes.
pub const SECRET_LEN_BYTES: usize = 32;

/// Why a credential could not be made.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
}

type HmacSha256 = Hmac<Sha256>;

/// The server's signing key for tickets and CSRF tokens.
#[derive(Clone)]
pub struct TicketKey([u8; SECRET_LEN_BYTES]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

impl TicketKey {
    /// A key from its bytes.
    pub fn new(bytes: [u8; SECRET_LEN_BYTES]) -> Self {
        TicketKey(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        TicketKey(rand::random())
    }

    /// Hex encoding, for the key file.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parse the key file's hex encoding.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != SECRET_LEN_BYTES * 2 {
            return None;
        }
        let mut out = [0u8; SECRET_LEN_BYTES];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(TicketKey(out))
    }

    fn sign(&self, data: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(data.as_bytes());
        STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn verify_sig(&self, data: &str, sig: &str) -> bool {
        let expected = self.sign(data);
        expected.as_bytes().ct_eq(sig.as_bytes()).into()
    }

    /// A ticket `PVE:{userid}:{HEXTIME}::{signature}` for `userid` issued at `now`.
    pub fn ticket(&self, userid: &str, now: i64) -> String {
        let data = format!("PVE:{userid}:{now:08X}");
        let sig = self.sign(&data);
        format!("{data}::{sig}")
    }

    /// The user a ticket was issued to, if it is authentic and neither expired nor from the
    /// future.
    pub fn verify_ticket(&self, ticket: &str, now: i64) -> Option<String> {
        let (data, sig) = ticket.split_once("::")?;
        let rest = data.strip_prefix("PVE:")?;
        let (userid, hextime) = rest.rsplit_once(':')?;
        if hextime.len() != 8 || !crate::schema::is_userid(userid) {
            return None;
        }
        let time = i64::from_str_radix(hextime, 16).ok()?;
        if !self.verify_sig(data, sig) {
            return None;
        }
        let age = now - time;
        if !(-TICKET_CLOCK_SKEW_S..=TICKET_LIFETIME_S).contains(&age) {
            return None;
        }
        Some(userid.to_string())
    }

    /// A CSRF prevention token `{HEXTIME}:{signature}` bound to `userid`.
    pub fn csrf_token(&self, userid: &str, now: i64) -> String {
        let sig = self.sign(&format!("{now:08X}:{userid}"));
        format!("{now:08X}:{sig}")
    }

    /// Whether `token` is a valid, unexpired CSRF token for `userid`.
    pub fn verify_csrf(&self, token: &str, userid: &str, now: i64) -> bool {
        let Some((hextime, sig)) = token.split_once(':') else {
            return false;
        };
        let Ok(time) = i64::from_str_radix(hextime, 16) else {
            return false;
        };
        if hextime.len() != 8 || !self.verify_sig(&format!("{hextime}:{userid}"), sig) {
            return false;
        }
        let age = now - time;
        (-TICKET_CLOCK_SKEW_S..=TICKET_LIFETIME_S).contains(&age)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An argon2id PHC hash of `password`.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC `hash`; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A new API token secret: a random UUID-v4-shaped string like Proxmox's.
pub fn new_token_secret() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// How a token secret is stored: SHA-256 hex. The secret is 122 random bits, so a fast hash
/// is enough (no dictionary to defend against) and keeps token-authenticated requests cheap.
pub fn hash_token_secret(secret: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(secret.as_bytes())))
}

/// Constant-time check of a presented token secret against its stored hash.
pub fn verify_token_secret(secret: &str, stored: &str) -> bool {
    hash_token_secret(secret)
        .as_bytes()
        .ct_eq(stored.as_bytes())
        .into()
}

/// A parsed `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub userid: String,
    pub tokenid: String,
    pub secret: String,
}

/// Parse an API token authorization header value (`=` or `:` before the secret, as Proxmox).
pub fn parse_token_header(value: &str) -> Option<TokenHeader> {
    let rest = value.trim().strip_prefix("PVEAPIToken=")?;
    let (full, secret) = rest.split_once(['=', ':'])?;
    let (userid, tokenid) = full.split_once('!')?;
    if !crate::schema::is_userid(userid) || !crate::schema::is_tokenid(tokenid) {
        return None;
    }
    if secret.is_empty() || secret.len() > 128 {
        return None;
    }
    Some(TokenHeader {
        userid: userid.to_string(),
        tokenid: tokenid.to_string(),
        secret: secret.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_roundtrip_and_expiry() {
        let k = TicketKey::generate();
        let t = k.ticket("root@pam", 1_000_000);
        assert!(t.starts_with("PVE:root@pam:000F4240::"));
        assert_eq!(k.verify_ticket(&t, 1_000_000).as_deref(), Some("root@pam"));
        assert_eq!(
            k.verify_ticket(&t, 1_000_000 + TICKET_LIFETIME_S)
                .as_deref(),
            Some("root@pam")
        );
        assert!(
            k.verify_ticket(&t, 1_000_000 + TICKET_LIFETIME_S + 1)
                .is_none()
        );
        assert!(
            k.verify_ticket(&t, 1_000_000 - TICKET_CLOCK_SKEW_S - 1)
                .is_none()
        );
    }

    #[test]
    fn forged_tickets_rejected() {
        let k = TicketKey::generate();
        let other = TicketKey::generate();
        let t = k.ticket("alice@pve", 10);
        assert!(other.verify_ticket(&t, 10).is_none());
        let forged = t.replace("alice@pve", "root@pam");
        assert!(k.verify_ticket(&forged, 10).is_none());
        for junk in [
            "",
            "PVE:",
            "PVE:root@pam:zz::x",
            "::",
            "PVE:a@pve:0000000A::",
        ] {
            assert!(k.verify_ticket(junk, 10).is_none(), "{junk}");
        }
    }

    #[test]
    fn csrf_bound_to_user() {
        let k = TicketKey::generate();
        let c = k.csrf_token("root@pam", 100);
        assert!(k.verify_csrf(&c, "root@pam", 100));
        assert!(!k.verify_csrf(&c, "alice@pve", 100));
        assert!(!k.verify_csrf(&c, "root@pam", 100 + TICKET_LIFETIME_S + 1));
        assert!(!k.verify_csrf("garbage", "root@pam", 100));
    }

    #[test]
    fn key_hex_roundtrip() {
        let k = TicketKey::generate();
        let k2 = TicketKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(k.ticket("a@pve", 1), k2.ticket("a@pve", 1));
        assert!(TicketKey::from_hex("abc").is_none());
    }

    #[test]
    fn passwords_and_token_secrets() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("s3cret", "not a hash"));
        let s = new_token_secret();
        assert_eq!(s.len(), 36);
        let stored = hash_token_secret(&s);
        assert!(!stored.contains(&s));
        assert!(verify_token_secret(&s, &stored));
        assert!(!verify_token_secret("x", &stored));
    }

    #[test]
    fn token_header() {
        let h = parse_token_header("PVEAPIToken=root@pam!ci=abcd-ef").unwrap();
        assert_eq!(h.userid, "root@pam");
        assert_eq!(h.tokenid, "ci");
        assert_eq!(h.secret, "abcd-ef");
        assert!(parse_token_header("PVEAPIToken=root@pam=abc").is_none());
        assert!(parse_token_header("Bearer x").is_none());
        assert!(parse_token_header("PVEAPIToken=root@pam!ci=").is_none());
    }
}
