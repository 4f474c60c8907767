//! `gpvectl user|group|role|acl|audit`: users, groups, roles, ACL entries and the audit
//! log, over the Proxmox `/access` API and gpve's `/api/v1/audit`.

use anyhow::bail;
use clap::Subcommand;
use gpve_api::client::Client;
use gpve_api::client::audit::AuditQuery;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::output::{self, Format, Table};

pub const ACCESS_HELP: &str = "\
How access works (as in Proxmox VE):
  A user (alice@pve) or API token (alice@pve!ci) gets ROLES on PATHS. A role is a set
  of privileges (VM.PowerMgmt, VM.Audit, Datastore.AllocateSpace, ...; `gpvectl role
  list` shows them). Paths: /, /vms, /vms/100, /storage/local, /nodes/n1, /pool/p1,
  /access/groups, /sdn/... . An entry propagates to the paths below unless
  --no-propagate. A deeper entry replaces what is inherited; a user's own entry wins
  over its groups' at the same level; NoAccess denies everything.

Examples:
  gpvectl user create alice@pve --password-stdin < pw.txt
  gpvectl group create ops --comment 'on call'
  gpvectl user create bob@pve --groups ops
  gpvectl acl set /vms/100 --role PVEVMUser --user alice@pve
  gpvectl acl set / --role PVEAuditor --group ops
  gpvectl acl set /vms/100 --role PVEVMUser --token 'alice@pve!ci'
  gpvectl acl delete /vms/100 --role PVEVMUser --user alice@pve
  gpvectl role create VMStarter --privs VM.PowerMgmt,VM.Audit
  gpvectl audit list --user alice@pve --since 1700000000
  gpvectl audit verify";

/// `gpvectl user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Users (pam: root only; pve: users stored in gpve).
    List,
    /// Create a user in the pve realm (USER@pve).
    Create {
        userid: String,
        /// Read the password from the first line of stdin (else: no password login).
        #[arg(long)]
        password_stdin: bool,
        /// Comma-separated groups (they must exist).
        #[arg(long)]
        groups: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Delete a user (and its tokens).
    Delete { userid: String },
}

/// `gpvectl group ...`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    List,
    Create {
        groupid: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Delete a group (members stay; its ACL entries go).
    Delete {
        groupid: String,
    },
}

/// `gpvectl role ...`.
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Built-in and custom roles with their privileges.
    List,
    /// A custom role.
    Create {
        roleid: String,
        /// Comma-separated privileges, e.g. VM.PowerMgmt,VM.Audit.
        #[arg(long)]
        privs: String,
    },
    /// Delete a custom role (and the ACL entries naming it).
    Delete { roleid: String },
}

/// Who an ACL entry is for.
#[derive(Debug, clap::Args)]
pub struct AclSubject {
    /// Role to grant or remove.
    #[arg(long)]
    role: String,
    #[arg(long, required_unless_present_any = ["group", "token"])]
    user: Option<String>,
    #[arg(long)]
    group: Option<String>,
    /// USER@REALM!TOKENID.
    #[arg(long)]
    token: Option<String>,
}

/// `gpvectl acl ...`.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Entries you may see (those where you can modify or audit permissions).
    List,
    /// Grant a role on a path.
    Set {
        path: String,
        #[command(flatten)]
        who: AclSubject,
        /// Apply to this path only, not below it.
        #[arg(long)]
        no_propagate: bool,
    },
    /// Remove a role from a path.
    Delete {
        path: String,
        #[command(flatten)]
        who: AclSubject,
    },
}

/// `gpvectl audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit records, oldest first (needs Sys.Audit on /).
    List {
        #[arg(long)]
        user: Option<String>,
        /// Only request paths starting with this (e.g. /api2/json/access).
        #[arg(long)]
        path: Option<String>,
        /// Unix seconds.
        #[arg(long)]
        since: Option<i64>,
        /// Unix seconds.
        #[arg(long)]
        until: Option<i64>,
        /// The newest N records.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Check the hash chain; fails naming the first altered or missing record.
    Verify,
}

/// No parameters.
fn none() -> BTreeMap<&'static str, String> {
    BTreeMap::new()
}

/// Form parameters as the client wants them: a map.
fn map(form: Vec<(&'static str, String)>) -> BTreeMap<&'static str, String> {
    form.into_iter().collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn rows(data: &Value, cols: &[&str]) -> Vec<Vec<String>> {
    data.as_array()
        .map(|a| {
            a.iter()
                .map(|item| cols.iter().map(|c| s(&item[*c])).collect())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run_user(c: &Client, cmd: UserCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        UserCommand::List => {
            let data: Value = c.get("/access/users", &none()).await?;
            output::print(format, &data, "users", || Table {
                headers: vec!["USERID", "ENABLE", "GROUPS", "COMMENT"],
                rows: rows(&data, &["userid", "enable", "groups", "comment"]),
            })
        }
        UserCommand::Create {
            userid,
            password_stdin,
            groups,
            comment,
        } => {
            let mut form: Vec<(&'static str, String)> = vec![("userid", userid.clone())];
            if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                form.push(("password", line.trim_end_matches(['\r', '\n']).to_string()));
            }
            if let Some(g) = groups {
                form.push(("groups", g));
            }
            if let Some(cm) = comment {
                form.push(("comment", cm));
            }
            let _: Value = c.post("/access/users", &map(form)).await?;
            println!("user {userid} created");
            Ok(())
        }
        UserCommand::Delete { userid } => {
            let _: Value = c
                .delete(&format!("/access/users/{userid}"), &none())
                .await?;
            println!("user {userid} deleted");
            Ok(())
        }
    }
}

pub async fn run_group(c: &Client, cmd: GroupCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List => {
            let data: Value = c.get("/access/groups", &none()).await?;
            output::print(format, &data, "groups", || Table {
                headers: vec!["GROUPID", "USERS", "COMMENT"],
                rows: rows(&data, &["groupid", "users", "comment"]),
            })
        }
        GroupCommand::Create { groupid, comment } => {
            let mut form: Vec<(&'static str, String)> = vec![("groupid", groupid.clone())];
            if let Some(cm) = comment {
                form.push(("comment", cm));
            }
            let _: Value = c.post("/access/groups", &map(form)).await?;
            println!("group {groupid} created");
            Ok(())
        }
        GroupCommand::Delete { groupid } => {
            let _: Value = c
                .delete(&format!("/access/groups/{groupid}"), &none())
                .await?;
            println!("group {groupid} deleted");
            Ok(())
        }
    }
}

pub async fn run_role(c: &Client, cmd: RoleCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        RoleCommand::List => {
            let data: Value = c.get("/access/roles", &none()).await?;
            output::print(format, &data, "roles", || Table {
                headers: vec!["ROLEID", "BUILTIN", "PRIVS"],
                rows: rows(&data, &["roleid", "special", "privs"]),
            })
        }
        RoleCommand::Create { roleid, privs } => {
            let _: Value = c
                .post(
                    "/access/roles",
                    &map(vec![("roleid", roleid.clone()), ("privs", privs)]),
                )
                .await?;
            println!("role {roleid} created");
            Ok(())
        }
        RoleCommand::Delete { roleid } => {
            let _: Value = c
                .delete(&format!("/access/roles/{roleid}"), &none())
                .await?;
            println!("role {roleid} deleted");
            Ok(())
        }
    }
}

fn acl_form(path: String, who: AclSubject) -> Vec<(&'static str, String)> {
    let mut form = vec![("path", path), ("roles", who.role)];
    if let Some(u) = who.user {
        form.push(("users", u));
    }
    if let Some(g) = who.group {
        form.push(("groups", g));
    }
    if let Some(t) = who.token {
        form.push(("tokens", t));
    }
    form
}

pub async fn run_acl(c: &Client, cmd: AclCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        AclCommand::List => {
            let data: Value = c.get("/access/acl", &none()).await?;
            output::print(format, &data, "ACL entries", || Table {
                headers: vec!["PATH", "TYPE", "UGID", "ROLE", "PROPAGATE"],
                rows: rows(&data, &["path", "type", "ugid", "roleid", "propagate"]),
            })
        }
        AclCommand::Set {
            path,
            who,
            no_propagate,
        } => {
            let mut form = acl_form(path, who);
            form.push(("propagate", if no_propagate { "0" } else { "1" }.into()));
            let _: Value = c.put("/access/acl", &map(form)).await?;
            println!("ACL updated");
            Ok(())
        }
        AclCommand::Delete { path, who } => {
            let mut form = acl_form(path, who);
            form.push(("delete", "1".into()));
            let _: Value = c.put("/access/acl", &map(form)).await?;
            println!("ACL entry removed");
            Ok(())
        }
    }
}

pub async fn run_audit(c: &Client, cmd: AuditCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List {
            user,
            path,
            since,
            until,
            limit,
        } => {
            let recs = c
                .audit(&AuditQuery {
                    user,
                    path,
                    since,
                    until,
                    limit: Some(limit),
                })
                .await?;
            output::print(format, &recs, "audit records", || Table {
                headers: vec![
                    "SEQ", "TIME_MS", "KIND", "USER", "TOKEN", "METHOD", "PATH", "STATUS",
                ],
                rows: recs
                    .iter()
                    .map(|r| {
                        vec![
                            r.seq.to_string(),
                            r.time_ms.to_string(),
                            format!("{:?}", r.kind).to_lowercase(),
                            r.user.clone(),
                            r.token.clone().unwrap_or_default(),
                            r.method.clone(),
                            r.path.clone(),
                            r.status.map(|s| s.to_string()).unwrap_or_else(|| {
                                if r.kind == gpve_api::audit::AuditKind::Request {
                                    "-".into()
                                } else {
                                    String::new()
                                }
                            }),
                        ]
                    })
                    .collect(),
            })
        }
        AuditCommand::Verify => {
            let v = c.audit_verify().await?;
            if v.ok == 1 {
                println!(
                    "audit log intact: {} records, hash chain verified",
                    v.records.unwrap_or(0)
                );
                Ok(())
            } else {
                bail!(
                    "audit log broken at record {}: {}",
                    v.seq.unwrap_or(0),
                    v.reason.unwrap_or_default()
                )
            }
        }
    }
}
