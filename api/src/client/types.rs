//! Typed return values of the endpoints the client wraps. Field names follow the Proxmox
//! VE schema; fields the client does not model are kept in `extra`, so printing a value
//! as JSON shows everything the server sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

type Extra = BTreeMap<String, serde_json::Value>;

/// `GET /version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repoid: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeEntry {
    pub node: String,
    pub status: String,
    #[serde(
        default,
        deserialize_with = "opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<f64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub maxcpu: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub mem: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub maxmem: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub uptime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_fingerprint: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `GET /nodes/{node}/status`: the schema allows additional properties, so the common
/// ones are typed and the rest is kept as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    #[serde(
        default,
        deserialize_with = "opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<f64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub uptime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadavg: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuinfo: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One entry of `GET /nodes/{node}/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskEntry {
    pub upid: String,
    #[serde(default)]
    pub node: String,
    #[serde(rename = "type", default)]
    pub task_type: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub user: String,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub starttime: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub endtime: Option<u64>,
    /// Absent while running; the exit status (`OK` or the error) once stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskStatus {
    pub upid: String,
    /// `running` or `stopped`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exitstatus: Option<String>,
    #[serde(default)]
    pub node: String,
    #[serde(rename = "type", default)]
    pub task_type: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub user: String,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub starttime: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl TaskStatus {
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }

    /// Proxmox counts `OK` and `WARNINGS: n` as success; anything else is the error text.
    pub fn succeeded(&self) -> bool {
        matches!(self.exitstatus.as_deref(), Some(s) if s == "OK" || s.starts_with("WARNINGS"))
    }
}

/// One line of `GET /nodes/{node}/tasks/{upid}/log`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskLogLine {
    #[serde(deserialize_with = "u64_lenient")]
    pub n: u64,
    pub t: String,
}

/// Query parameters of `GET /nodes/{node}/tasks` (all optional, Proxmox names).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typefilter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userfilter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statusfilter: Option<String>,
    /// Only failed tasks; sent as 0/1 like every Proxmox boolean.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_bool_01"
    )]
    pub errors: Option<bool>,
    /// `archive`, `active` or `all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// The `type` filter of `GET /cluster/resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    Vm,
    Storage,
    Node,
    Sdn,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::Storage => "storage",
            Self::Node => "node",
            Self::Sdn => "sdn",
        }
    }
}

/// One entry of `GET /cluster/resources`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterResource {
    pub id: String,
    /// `node`, `qemu`, `lxc`, `storage`, `sdn`, ...
    #[serde(rename = "type")]
    pub resource_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub vmid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<f64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub maxcpu: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub mem: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub maxmem: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub maxdisk: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub uptime: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /access/ticket`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TicketInfo {
    pub username: String,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(rename = "CSRFPreventionToken", default)]
    pub csrf_prevention_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustername: Option<String>,
}

/// One entry of `GET /access/users` (and the body of `GET /access/users/{userid}`, which
/// lacks `userid`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct UserEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable: Option<bool>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub expire: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firstname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lastname: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Parameters of `POST /access/users` and `PUT /access/users/{userid}`; booleans go out
/// as 0/1.
#[derive(Debug, Clone, Serialize, Default)]
pub struct UserSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_bool_01"
    )]
    pub enable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firstname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lastname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
}

/// One entry of `GET /access/users/{userid}/token`, and the token info elsewhere
/// (`tokenid` is then empty).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TokenEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tokenid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub expire: Option<u64>,
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub privsep: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Parameters of `POST`/`PUT /access/users/{userid}/token/{tokenid}`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TokenSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_bool_01"
    )]
    pub privsep: Option<bool>,
}

/// `POST /access/users/{userid}/token/{tokenid}`: the secret is only shown once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreatedToken {
    #[serde(rename = "full-tokenid")]
    pub full_tokenid: String,
    pub value: String,
    #[serde(default)]
    pub info: TokenEntry,
}

// Proxmox is loose with JSON types: integers sometimes arrive as strings
// (`/cluster/nextid`), booleans as 0/1. These accept every form real servers send.

#[derive(Deserialize)]
#[serde(untagged)]
enum Loose {
    Bool(bool),
    U64(u64),
    F64(f64),
    Str(String),
}

fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Loose>::deserialize(d)? {
        None => Ok(None),
        Some(Loose::U64(v)) => Ok(Some(v)),
        // Some servers send sizes as floats (e.g. `1.2e10`); truncation is intended.
        Some(Loose::F64(v)) if v >= 0.0 => Ok(Some(v as u64)),
        Some(Loose::Str(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an integer"))),
        Some(Loose::Bool(b)) => Ok(Some(u64::from(b))),
        Some(Loose::F64(v)) => Err(serde::de::Error::custom(format!(
            "{v} is not a non-negative integer"
        ))),
    }
}

fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    opt_u64(d)?.ok_or_else(|| serde::de::Error::custom("integer is null"))
}

fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<Loose>::deserialize(d)? {
        None => Ok(None),
        Some(Loose::U64(v)) => Ok(Some(v as f64)),
        Some(Loose::F64(v)) => Ok(Some(v)),
        Some(Loose::Str(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a number"))),
        Some(Loose::Bool(b)) => Ok(Some(if b { 1.0 } else { 0.0 })),
    }
}

fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Loose>::deserialize(d)? {
        None => Ok(None),
        Some(Loose::Bool(b)) => Ok(Some(b)),
        Some(Loose::U64(v)) => Ok(Some(v != 0)),
        Some(Loose::F64(v)) => Ok(Some(v != 0.0)),
        Some(Loose::Str(s)) => match s.trim() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a boolean"
            ))),
        },
    }
}

/// `/cluster/nextid` returns the VMID as a string.
pub(crate) fn parse_vmid(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        _ => None,
    }
}

fn opt_bool_01<S: serde::Serializer>(v: &Option<bool>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_u8(u8::from(*b)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_numbers_and_booleans_are_accepted() {
        let node: NodeEntry = serde_json::from_value(serde_json::json!({
            "node": "n1", "status": "online", "cpu": "0.25", "maxmem": 1024,
            "mem": "512", "uptime": 7.0, "level": ""
        }))
        .expect("node entry");
        assert_eq!(node.cpu, Some(0.25));
        assert_eq!(node.mem, Some(512));
        assert_eq!(node.uptime, Some(7));
        assert!(node.extra.contains_key("level"));

        let user: UserEntry = serde_json::from_value(serde_json::json!({
            "userid": "a@pve", "enable": 1
        }))
        .expect("user entry");
        assert_eq!(user.enable, Some(true));

        assert_eq!(parse_vmid(&serde_json::json!("100")), Some(100));
        assert_eq!(parse_vmid(&serde_json::json!(101)), Some(101));
        assert_eq!(parse_vmid(&serde_json::json!("x")), None);
    }

    #[test]
    fn booleans_go_out_as_0_and_1() {
        let spec = TokenSpec {
            privsep: Some(false),
            ..TokenSpec::default()
        };
        assert_eq!(
            serde_json::to_value(&spec).expect("serialize"),
            serde_json::json!({"privsep": 0})
        );
    }

    #[test]
    fn task_success_follows_proxmox_rules() {
        let mut st: TaskStatus = serde_json::from_value(serde_json::json!({
            "upid": "UPID:n1:1:2:3:t:i:u:", "status": "stopped", "exitstatus": "OK"
        }))
        .expect("status");
        assert!(st.succeeded() && !st.is_running());
        st.exitstatus = Some("WARNINGS: 2".into());
        assert!(st.succeeded());
        st.exitstatus = Some("command failed".into());
        assert!(!st.succeeded());
    }
}
