//! Declarative parameter schemas: every route declares its parameters (path, query and body
//! alike, as Proxmox does) and [`ParamSchema::validate`] turns the raw request parameters
//! into typed [`Params`] or Proxmox's 400 "Parameter verification failed." error map.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;

/// Most parameters a request may carry; more is garbage, not a real client.
pub const MAX_PARAMS: usize = 64;
/// Longest accepted string parameter unless a schema says otherwise, in bytes.
pub const DEFAULT_MAX_STRING_LEN_BYTES: usize = 4096;

/// Named syntaxes (Proxmox `format`s) checked by code rather than regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `pve-node`: `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
    Node,
    /// `pve-userid`: `name@realm`.
    UserId,
    /// `pve-realm`: `[A-Za-z][A-Za-z0-9.\-_]+`.
    Realm,
    /// API token id: `[A-Za-z][A-Za-z0-9.\-_]+`.
    TokenId,
    /// A task UPID.
    Upid,
    /// `email-opt`: empty or something with one `@` and no whitespace.
    Email,
    /// `pve-groupid-list`: comma-separated `[A-Za-z0-9.\-_]+`.
    GroupList,
    /// `pve-vmid-list`: comma-separated VMIDs.
    VmidList,
    /// `pve-configid-list`: comma-separated `[a-z][a-z0-9_-]*`.
    ConfigIdList,
    /// Printable text without control characters (comments, names).
    Text,
}

fn is_realm(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && s.len() >= 2
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// `name@realm` as Proxmox accepts it; `!` is refused too because it separates token ids.
pub fn is_userid(s: &str) -> bool {
    let Some((name, realm)) = s.rsplit_once('@') else {
        return false;
    };
    s.len() <= 64
        && !name.is_empty()
        && name
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, ':' | '/' | '!'))
        && is_realm(realm)
}

/// Token ids as Proxmox accepts them.
pub fn is_tokenid(s: &str) -> bool {
    is_realm(s) && s.len() <= 64
}

/// Node names as Proxmox accepts them.
pub fn is_node(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Format {
    fn check(self, s: &str) -> Result<(), String> {
        let ok = match self {
            Format::Node => is_node(s),
            Format::UserId => is_userid(s),
            Format::Realm => is_realm(s),
            Format::TokenId => is_tokenid(s),
            Format::Upid => s.parse::<gpve_actors::task::Upid>().is_ok(),
            Format::Email => {
                s.is_empty()
                    || (s.matches('@').count() == 1
                        && !s.starts_with('@')
                        && !s.ends_with('@')
                        && !s.chars().any(|c| c.is_whitespace() || c.is_control()))
            }
            Format::GroupList => s.split([',', ';', ' ']).filter(|g| !g.is_empty()).all(|g| {
                g.len() <= 64
                    && g.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            }),
            Format::VmidList => s.split([',', ';', ' ']).filter(|v| !v.is_empty()).all(|v| {
                v.parse::<u32>()
                    .is_ok_and(|n| (100..=999_999_999).contains(&n))
            }),
            Format::ConfigIdList => s.split([',', ';', ' ']).filter(|v| !v.is_empty()).all(|v| {
                let mut c = v.chars();
                matches!(c.next(), Some(f) if f.is_ascii_lowercase())
                    && c.all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                    })
            }),
            Format::Text => !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("value does not match the format '{}'", self.name()))
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Node => "pve-node",
            Format::UserId => "pve-userid",
            Format::Realm => "pve-realm",
            Format::TokenId => "pve-tokenid",
            Format::Upid => "pve-upid",
            Format::Email => "email-opt",
            Format::GroupList => "pve-groupid-list",
            Format::VmidList => "pve-vmid-list",
            Format::ConfigIdList => "pve-configid-list",
            Format::Text => "text",
        }
    }
}

/// The type of one parameter.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str {
        max_len: usize,
        format: Option<Format>,
    },
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Bool,
    Enum(&'static [&'static str]),
}

/// One declared parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub optional: bool,
}

impl Param {
    /// A required string parameter.
    pub const fn string(name: &'static str, max_len: usize, format: Option<Format>) -> Param {
        Param {
            name,
            kind: Kind::Str { max_len, format },
            optional: false,
        }
    }
    /// A required integer parameter.
    pub const fn int(name: &'static str, min: Option<i64>, max: Option<i64>) -> Param {
        Param {
            name,
            kind: Kind::Int { min, max },
            optional: false,
        }
    }
    /// A required boolean (0/1 on the wire).
    pub const fn boolean(name: &'static str) -> Param {
        Param {
            name,
            kind: Kind::Bool,
            optional: false,
        }
    }
    /// A required enumeration.
    pub const fn enumeration(name: &'static str, values: &'static [&'static str]) -> Param {
        Param {
            name,
            kind: Kind::Enum(values),
            optional: false,
        }
    }
    /// The same parameter, optional.
    pub const fn opt(self) -> Param {
        Param {
            optional: true,
            ..self
        }
    }
    /// The `node` path parameter.
    pub const fn node() -> Param {
        Param::string("node", 64, Some(Format::Node))
    }
    /// The `userid` path parameter.
    pub const fn userid() -> Param {
        Param::string("userid", 64, Some(Format::UserId))
    }
    /// A `vmid`.
    pub const fn vmid() -> Param {
        Param::int("vmid", Some(100), Some(999_999_999))
    }
}

/// The parameters of one route (path, query and body together).
#[derive(Debug, Clone, Copy)]
pub struct ParamSchema(pub &'static [Param]);

/// A raw parameter as it arrived: text from a query string or form, or a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Text(String),
    Json(Value),
}

/// Raw parameters; a key seen twice is kept as an error for validation to report.
#[derive(Debug, Default, Clone)]
pub struct RawParams {
    pub values: BTreeMap<String, Raw>,
    pub duplicates: Vec<String>,
    pub too_many: bool,
}

impl RawParams {
    /// Insert a raw value, recording duplicates.
    pub fn insert(&mut self, key: String, value: Raw) {
        if self.values.len() >= MAX_PARAMS {
            self.too_many = true;
            return;
        }
        match self.values.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => {
                self.duplicates.push(e.key().clone())
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }
}

fn type_err(ty: &str, raw: &Raw) -> String {
    let shown = match raw {
        Raw::Text(t) => t.chars().take(64).collect::<String>(),
        Raw::Json(v) => v.to_string().chars().take(64).collect(),
    };
    format!("type check ('{ty}') failed - got '{shown}'")
}

fn check_one(p: &Param, raw: &Raw) -> Result<Value, String> {
    match p.kind {
        Kind::Str { max_len, format } => {
            let s = match raw {
                Raw::Text(t) => t.clone(),
                Raw::Json(Value::String(s)) => s.clone(),
                // Proxmox's JSON decoding accepts numbers for string parameters.
                Raw::Json(Value::Number(n)) => n.to_string(),
                other => return Err(type_err("string", other)),
            };
            if s.len() > max_len {
                return Err(format!("value may only be {max_len} characters long"));
            }
            format.unwrap_or(Format::Text).check(&s)?;
            Ok(Value::String(s))
        }
        Kind::Int { min, max } => {
            let n = match raw {
                Raw::Text(t) => t.trim().parse::<i64>().ok(),
                Raw::Json(Value::Number(n)) => n.as_i64(),
                Raw::Json(Value::String(s)) => s.trim().parse::<i64>().ok(),
                Raw::Json(_) => None,
            }
            .ok_or_else(|| type_err("integer", raw))?;
            if let Some(min) = min
                && n < min
            {
                return Err(format!("value must have a minimum value of {min}"));
            }
            if let Some(max) = max
                && n > max
            {
                return Err(format!("value must have a maximum value of {max}"));
            }
            Ok(Value::from(n))
        }
        Kind::Bool => {
            let b = match raw {
                Raw::Json(Value::Bool(b)) => Some(*b),
                Raw::Json(Value::Number(n)) => match n.as_i64() {
                    Some(0) => Some(false),
                    Some(1) => Some(true),
                    _ => None,
                },
                Raw::Text(t) | Raw::Json(Value::String(t)) => {
                    match t.to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" | "on" => Some(true),
                        "0" | "false" | "no" | "off" => Some(false),
                        _ => None,
                    }
                }
                Raw::Json(_) => None,
            }
            .ok_or_else(|| type_err("boolean", raw))?;
            Ok(Value::Bool(b))
        }
        Kind::Enum(values) => {
            let s = match raw {
                Raw::Text(t) | Raw::Json(Value::String(t)) => t.as_str(),
                other => return Err(type_err("string", other)),
            };
            if values.contains(&s) {
                Ok(Value::String(s.to_string()))
            } else {
                Err(format!(
                    "value '{}' does not have a value in the enumeration '{}'",
                    s.chars().take(64).collect::<String>(),
                    values.join(", ")
                ))
            }
        }
    }
}

impl ParamSchema {
    /// Validate raw parameters: unknown, duplicate, missing and ill-typed parameters are all
    /// reported together, keyed by parameter name.
    pub fn validate(&self, raw: RawParams) -> Result<Params, ApiError> {
        let mut errors = BTreeMap::new();
        let mut out = BTreeMap::new();
        if raw.too_many {
            errors.insert(
                "parameters".to_string(),
                format!("too many parameters (at most {MAX_PARAMS})"),
            );
        }
        for key in raw.duplicates {
            errors.insert(key, "duplicate parameter".to_string());
        }
        for (key, value) in &raw.values {
            let Some(p) = self.0.iter().find(|p| p.name == key) else {
                let key: String = key.chars().take(64).collect();
                errors.insert(
                    key,
                    "property is not defined in schema and the schema does not allow additional properties".to_string(),
                );
                continue;
            };
            match check_one(p, value) {
                Ok(v) => {
                    out.insert(p.name, v);
                }
                Err(e) => {
                    errors.insert(p.name.to_string(), e);
                }
            }
        }
        for p in self.0 {
            if !p.optional && !raw.values.contains_key(p.name) && !errors.contains_key(p.name) {
                errors.insert(
                    p.name.to_string(),
                    "property is missing and it is not optional".to_string(),
                );
            }
        }
        if errors.is_empty() {
            Ok(Params(out))
        } else {
            Err(ApiError::Params(errors))
        }
    }
}

/// Validated parameters, typed by their schema.
#[derive(Debug, Default, Clone)]
pub struct Params(BTreeMap<&'static str, Value>);

impl Params {
    /// A string parameter, if present.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }
    /// A required string parameter (the schema guarantees presence for required ones).
    pub fn req_str(&self, name: &str) -> Result<&str, ApiError> {
        self.str(name)
            .ok_or_else(|| ApiError::param(name, "property is missing and it is not optional"))
    }
    /// An integer parameter, if present.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(Value::as_i64)
    }
    /// A boolean parameter, if present.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.0.get(name).and_then(Value::as_bool)
    }
    /// Whether a parameter was given.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: ParamSchema = ParamSchema(&[
        Param::userid(),
        Param::int("limit", Some(0), Some(10)).opt(),
        Param::boolean("full").opt(),
        Param::enumeration("type", &["vm", "node"]).opt(),
    ]);

    fn raw(pairs: &[(&str, &str)]) -> RawParams {
        let mut r = RawParams::default();
        for (k, v) in pairs {
            r.insert(k.to_string(), Raw::Text(v.to_string()));
        }
        r
    }

    fn errors(r: Result<Params, ApiError>) -> BTreeMap<String, String> {
        match r {
            Err(ApiError::Params(m)) => m,
            other => panic!("expected param errors, got {other:?}"),
        }
    }

    #[test]
    fn accepts_and_types() {
        let p = S
            .validate(raw(&[
                ("userid", "a@pve"),
                ("limit", "3"),
                ("full", "1"),
                ("type", "vm"),
            ]))
            .unwrap();
        assert_eq!(p.str("userid"), Some("a@pve"));
        assert_eq!(p.int("limit"), Some(3));
        assert_eq!(p.bool("full"), Some(true));
    }

    #[test]
    fn reports_every_error() {
        let e = errors(S.validate(raw(&[
            ("limit", "11"),
            ("full", "maybe"),
            ("type", "x"),
            ("bogus", "1"),
        ])));
        assert_eq!(e["userid"], "property is missing and it is not optional");
        assert_eq!(e["limit"], "value must have a maximum value of 10");
        assert!(e["full"].starts_with("type check ('boolean') failed"));
        assert!(e["type"].contains("enumeration"));
        assert!(e["bogus"].contains("not defined in schema"));
    }

    #[test]
    fn json_values() {
        let mut r = RawParams::default();
        r.insert("userid".into(), Raw::Json(Value::from("a@pve")));
        r.insert("limit".into(), Raw::Json(Value::from("x")));
        r.insert("full".into(), Raw::Json(Value::from(true)));
        let e = errors(S.validate(r));
        assert!(e["limit"].contains("integer"));
        assert!(!e.contains_key("full"));
    }

    #[test]
    fn userid_format() {
        assert!(is_userid("root@pam"));
        assert!(is_userid("a.b-c@pve"));
        for bad in [
            "root", "@pam", "a@", "../x@pve", "a b@pve", "a:b@pve", "a!b@pve", "a@p",
        ] {
            assert!(!is_userid(bad), "{bad}");
        }
        assert!(is_tokenid("t1"));
        assert!(!is_tokenid("t"));
        assert!(!is_tokenid("1t"));
    }

    #[test]
    fn duplicates_rejected() {
        let e = errors(S.validate(raw(&[("userid", "a@pve"), ("userid", "b@pve")])));
        assert_eq!(e["userid"], "duplicate parameter");
    }
}
