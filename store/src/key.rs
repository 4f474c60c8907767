//! Keys in the FoundationDB tuple encoding.
//!
//! Every backend stores the same bytes, so a key written through redb reads back the same way
//! through FoundationDB. Tuple encoding preserves order element by element, and the encoding of a
//! tuple is a byte prefix of the encoding of any longer tuple that starts with it: the key
//! `("users",)` prefixes every `("users", name)`, which is what makes subspace scans work.

use std::fmt;

pub use foundationdb_tuple::{TuplePack, TupleUnpack};

/// Largest key accepted by every backend (FoundationDB's limit).
pub const MAX_KEY_BYTES: usize = 10_000;
/// Largest value accepted by every backend (FoundationDB's limit).
pub const MAX_VALUE_BYTES: usize = 100_000;

/// Errors from decoding keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The bytes are not a tuple of the expected shape.
    #[error("key {key} is not a tuple of the expected shape: {reason}")]
    Unpack {
        /// The key that failed to decode.
        key: Key,
        /// What the tuple decoder reported (its error type is not `Send + Sync`-safe to keep).
        reason: String,
    },
    /// The key does not start with the subspace prefix it was decoded against.
    #[error("key {key} is outside the subspace {prefix}")]
    OutsidePrefix {
        /// The key being decoded.
        key: Key,
        /// The prefix it was expected to start with.
        prefix: Key,
    },
}

/// A key: the tuple-encoded bytes of a tuple such as `("vms", 100u32)`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key(Vec<u8>);

impl Key {
    /// Encodes a tuple, e.g. `Key::pack(&("users", "root@pam"))`.
    pub fn pack<T: TuplePack>(tuple: &T) -> Key {
        Key(foundationdb_tuple::pack(tuple))
    }

    /// The prefix of a subspace, e.g. `Key::prefix(&("users",))`; scan it with
    /// [`Key::subspace_range`] or [`crate::Txn::get_prefix`].
    pub fn prefix<T: TuplePack>(tuple: &T) -> Key {
        Key::pack(tuple)
    }

    /// Wraps raw bytes (already tuple-encoded, e.g. read back from a backend).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Key {
        Key(bytes.into())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Decodes the whole key as a tuple, e.g. `key.unpack::<(String, u32)>()`.
    pub fn unpack<'de, T: TupleUnpack<'de>>(&'de self) -> Result<T, KeyError> {
        foundationdb_tuple::unpack(&self.0).map_err(|e| KeyError::Unpack {
            key: self.clone(),
            reason: e.to_string(),
        })
    }

    /// Decodes what follows `prefix`, e.g. the `(name,)` of `("users", name)` under `("users",)`.
    pub fn unpack_suffix<'de, T: TupleUnpack<'de>>(&'de self, prefix: &Key) -> Result<T, KeyError> {
        let rest =
            self.0
                .strip_prefix(prefix.as_bytes())
                .ok_or_else(|| KeyError::OutsidePrefix {
                    key: self.clone(),
                    prefix: prefix.clone(),
                })?;
        foundationdb_tuple::unpack(rest).map_err(|e| KeyError::Unpack {
            key: self.clone(),
            reason: e.to_string(),
        })
    }

    /// Whether this key lies in the subspace `prefix` (or is the prefix itself).
    pub fn starts_with(&self, prefix: &Key) -> bool {
        self.0.starts_with(prefix.as_bytes())
    }

    /// Appends one more tuple to this key: `Key::prefix(&("vms",)).join(&(100u32,))` equals
    /// `Key::pack(&("vms", 100u32))`.
    pub fn join<T: TuplePack>(&self, tuple: &T) -> Key {
        let mut bytes = self.0.clone();
        bytes.extend_from_slice(&foundationdb_tuple::pack(tuple));
        Key(bytes)
    }

    /// Every key strictly inside the subspace `self` (longer tuples starting with it), as
    /// FoundationDB's `Subspace::range` defines it: `[self ++ 0x00, self ++ 0xff)`.
    pub fn subspace_range(&self) -> KeyRange {
        let mut begin = self.0.clone();
        begin.push(0x00);
        let mut end = self.0.clone();
        end.push(0xff);
        KeyRange {
            begin: Key(begin),
            end: Key(end),
        }
    }

    /// The smallest key greater than `self` (used to make inclusive bounds exclusive).
    pub fn successor(&self) -> Key {
        let mut bytes = self.0.clone();
        bytes.push(0x00);
        Key(bytes)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// Printable ASCII as is, other bytes as `\xNN`, like FoundationDB's `printable`.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() && b != b'\\' || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Key {
        Key(bytes)
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A half-open key range `[begin, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// First key included.
    pub begin: Key,
    /// First key excluded.
    pub end: Key,
}

impl KeyRange {
    /// The range `[begin, end)`.
    pub fn new(begin: Key, end: Key) -> KeyRange {
        KeyRange { begin, end }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &Key) -> bool {
        &self.begin <= key && key < &self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_scan_range_covers_longer_tuples_only() {
        let users = Key::prefix(&("users",));
        let root = Key::pack(&("users", "root@pam"));
        let other = Key::pack(&("usersx",));
        let range = users.subspace_range();
        assert!(range.contains(&root));
        assert!(!range.contains(&other));
        assert!(!range.contains(&users));
        assert_eq!(users.join(&("root@pam",)), root);
        let (name,): (String,) = root.unpack_suffix(&users).expect("suffix decodes");
        assert_eq!(name, "root@pam");
    }

    #[test]
    fn integers_order_numerically() {
        let a = Key::pack(&("vms", 9u32));
        let b = Key::pack(&("vms", 100u32));
        assert!(a < b);
        let (_, id): (String, u32) = b.unpack().expect("tuple decodes");
        assert_eq!(id, 100);
    }

    #[test]
    fn bad_bytes_are_an_error_not_a_panic() {
        let k = Key::from_bytes(vec![0x02, b'a']);
        assert!(k.unpack::<(String,)>().is_err());
        let outside = Key::pack(&("a",));
        assert!(matches!(
            outside.unpack_suffix::<(String,)>(&Key::prefix(&("b",))),
            Err(KeyError::OutsidePrefix { .. })
        ));
    }
}
