//! `/cluster/firewall`: cluster rules, security groups, IP sets, aliases and options, and the
//! rule-list handlers shared with `/nodes/{node}/qemu/{vmid}/firewall` (in
//! `pve/nodes/firewall.rs`). Every write is validated against the whole cluster
//! configuration in the same store transaction (400 with the `errors` map), committed, and
//! then the node's network actor re-applies the ruleset before the call answers.

use std::time::Duration;

use gpve_actors::network::firewall::{
    self as fw, Alias, ClusterFirewall, FwConfigError, Group, IpSetConf, IpSetEntry, RuleConf,
};
use gpve_actors::network::{NetworkMsg, actor_path};
use gpve_network::firewall::Cidr;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01, endpoint};
use crate::schema::{Format, Param, ParamSchema, Params};

/// How long a write waits for the network actor to converge.
pub const CONVERGE_TIMEOUT_MS: u64 = 15_000;

impl From<FwConfigError> for ApiError {
    fn from(e: FwConfigError) -> Self {
        match e {
            FwConfigError::Field { field, reason } => ApiError::param(field, reason),
            FwConfigError::NoRule(_) | FwConfigError::NotFound { .. } => {
                ApiError::NotFound(e.to_string())
            }
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// Asks the network actor to converge to the store and waits for it.
pub async fn converge(ctx: &Ctx) -> Result<(), ApiError> {
    let path = actor_path(crate::tree::ROOT);
    let actor = ctx
        .state
        .node
        .directory
        .lookup_ref::<NetworkMsg>(&path)
        .ok_or_else(|| {
            ApiError::Unavailable("saved, but the network actor is not running".into())
        })?;
    let answer = actor
        .call(
            |reply| NetworkMsg::Reconcile(Some(reply)),
            Some(Duration::from_millis(CONVERGE_TIMEOUT_MS)),
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("saved, but the network actor: {e}")))?;
    match answer {
        ractor::rpc::CallResult::Success(Ok(())) => Ok(()),
        ractor::rpc::CallResult::Success(Err(e)) => Err(ApiError::Internal(format!(
            "saved, but the node's network did not converge: {e}"
        ))),
        _ => Err(ApiError::Unavailable(format!(
            "saved, but the network actor did not answer within {CONVERGE_TIMEOUT_MS} ms"
        ))),
    }
}

/// Parameters of a rule (create).
pub const RULE_PARAMS: &[Param] = &[
    Param::enumeration("type", &["in", "out", "group"]),
    Param::string("action", 64, Some(Format::Text)),
    Param::string("macro", 128, Some(Format::Text)).opt(),
    Param::string("proto", 32, Some(Format::Text)).opt(),
    Param::string("source", 512, Some(Format::Text)).opt(),
    Param::string("dest", 512, Some(Format::Text)).opt(),
    Param::string("dport", 256, Some(Format::Text)).opt(),
    Param::string("sport", 256, Some(Format::Text)).opt(),
    Param::string("iface", 20, Some(Format::Text)).opt(),
    Param::string("comment", 4096, Some(Format::Text)).opt(),
    Param::int("enable", Some(0), Some(1)).opt(),
    Param::int("pos", Some(0), None).opt(),
    Param::string("digest", 64, Some(Format::Text)).opt(),
];

/// A rule from request parameters (unchecked).
pub fn rule_from(params: &Params) -> RuleConf {
    let s = |k: &str| params.str(k).filter(|v| !v.is_empty()).map(str::to_string);
    RuleConf {
        kind: s("type").unwrap_or_default(),
        action: s("action").unwrap_or_default(),
        macro_name: s("macro"),
        proto: s("proto"),
        source: s("source"),
        dest: s("dest"),
        dport: s("dport"),
        sport: s("sport"),
        iface: s("iface"),
        comment: s("comment"),
        enable: params.int("enable").unwrap_or(0) == 1,
    }
}

/// A rule as Proxmox lists it.
pub fn rule_json(pos: usize, r: &RuleConf) -> Value {
    let mut v = json!({
        "pos": pos,
        "type": r.kind,
        "action": r.action,
        "enable": bool01(r.enable),
    });
    for (k, val) in [
        ("macro", &r.macro_name),
        ("proto", &r.proto),
        ("source", &r.source),
        ("dest", &r.dest),
        ("dport", &r.dport),
        ("sport", &r.sport),
        ("iface", &r.iface),
        ("comment", &r.comment),
    ] {
        if let Some(val) = val {
            v[k] = json!(val);
        }
    }
    v
}

pub fn rules_json(rules: &[RuleConf]) -> Value {
    Value::Array(
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule_json(i, r))
            .collect(),
    )
}

/// The `pos` path parameter.
pub fn pos(ctx: &Ctx) -> Result<usize, ApiError> {
    ctx.params
        .int("pos")
        .and_then(|p| usize::try_from(p).ok())
        .ok_or_else(|| ApiError::param("pos", "property is missing and it is not optional"))
}

/// Changes the cluster document in one transaction; `change` validates and may refuse.
pub async fn update_cluster<T, F>(ctx: &Ctx, change: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Fn(&mut ClusterFirewall) -> Result<T, FwConfigError> + Send + Sync + Clone + 'static,
{
    let out = fw::update_doc(&ctx.state.store, fw::cluster_key(), change).await??;
    converge(ctx).await?;
    Ok(out)
}

fn options_json(o: &fw::FwOptions) -> Value {
    let mut v = json!({ "enable": bool01(o.enable) });
    if let Some(p) = &o.policy_in {
        v["policy_in"] = json!(p);
    }
    if let Some(p) = &o.policy_out {
        v["policy_out"] = json!(p);
    }
    v
}

/// Applies `enable`, `policy_in`, `policy_out` and `delete` from a request to options.
pub fn change_options(o: &mut fw::FwOptions, params: &Params) -> Result<(), FwConfigError> {
    if let Some(e) = params.bool("enable") {
        o.enable = e;
    }
    if let Some(p) = params.str("policy_in") {
        o.policy_in = Some(p.to_string());
    }
    if let Some(p) = params.str("policy_out") {
        o.policy_out = Some(p.to_string());
    }
    for key in params
        .str("delete")
        .unwrap_or("")
        .split([',', ';', ' '])
        .filter(|k| !k.is_empty())
    {
        match key {
            "enable" => o.enable = false,
            "policy_in" => o.policy_in = None,
            "policy_out" => o.policy_out = None,
            other => {
                return Err(FwConfigError::Field {
                    field: "delete",
                    reason: format!("option {other:?} is not known"),
                });
            }
        }
    }
    o.validate()
}

// ---------------------------------------------------------------------------------------
// rules

pub const RULES_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "List cluster firewall rules (applied to every guest NIC with firewall=1, before the guest's own rules).",
};

pub async fn rules_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let c = fw::load_cluster(&ctx.state.store).await?;
    Ok(Reply::Data(rules_json(&c.rules)))
}

pub const RULES_POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(RULE_PARAMS),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Create a cluster firewall rule (at pos, default first).",
};

pub async fn rules_post(ctx: Ctx) -> Result<Reply, ApiError> {
    let rule = rule_from(&ctx.params);
    let at = ctx.params.int("pos").and_then(|p| usize::try_from(p).ok());
    update_cluster(&ctx, move |c| {
        fw::check_rule(c, &rule)?;
        fw::insert_rule(&mut c.rules, at, rule.clone())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const RULE_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::int("pos", Some(0), None)]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "Get one cluster firewall rule.",
};

pub async fn rule_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = pos(&ctx)?;
    let c = fw::load_cluster(&ctx.state.store).await?;
    let r = c.rules.get(p).ok_or(FwConfigError::NoRule(p))?;
    Ok(Reply::Data(rule_json(p, r)))
}

pub const RULE_DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::int("pos", Some(0), None),
        Param::string("digest", 64, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Delete a cluster firewall rule.",
};

pub async fn rule_delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = pos(&ctx)?;
    update_cluster(&ctx, move |c| fw::delete_rule(&mut c.rules, p).map(|_| ())).await?;
    Ok(Reply::Data(Value::Null))
}

// ---------------------------------------------------------------------------------------
// options

pub const OPTIONS_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "Get cluster firewall options (enable, default 0: no guest is filtered while off).",
};

pub async fn options_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let c = fw::load_cluster(&ctx.state.store).await?;
    Ok(Reply::Data(options_json(&c.options)))
}

pub const OPTIONS_PUT: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        Param::int("enable", Some(0), Some(1)).opt(),
        Param::enumeration("policy_in", &["ACCEPT", "REJECT", "DROP"]).opt(),
        Param::enumeration("policy_out", &["ACCEPT", "REJECT", "DROP"]).opt(),
        Param::string("delete", 256, Some(Format::ConfigIdList)).opt(),
        Param::string("digest", 64, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Set cluster firewall options (policy_in/policy_out are stored for Proxmox clients; guests use their own).",
};

pub async fn options_put(ctx: Ctx) -> Result<Reply, ApiError> {
    let params = ctx.params.clone();
    let enable = params.int("enable").map(|e| e == 1);
    update_cluster(&ctx, move |c| {
        if let Some(e) = enable {
            c.options.enable = e;
        }
        change_options(&mut c.options, &params)
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

// ---------------------------------------------------------------------------------------
// aliases

pub const ALIASES_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "List aliases (names usable as rule source/dest).",
};

pub async fn aliases_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let c = fw::load_cluster(&ctx.state.store).await?;
    Ok(Reply::Data(Value::Array(
        c.aliases
            .iter()
            .map(|(n, a)| json!({ "name": n, "cidr": a.cidr, "comment": a.comment }))
            .collect(),
    )))
}

pub const ALIASES_POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::string("name", 64, Some(Format::Text)),
        Param::string("cidr", 64, Some(Format::Text)),
        Param::string("comment", 4096, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Create an alias: a name for an address or network.",
};

fn check_cidr(field: &'static str, s: &str) -> Result<(), FwConfigError> {
    s.parse::<Cidr>()
        .map(|_| ())
        .map_err(|e| FwConfigError::Field {
            field,
            reason: e.to_string(),
        })
}

pub async fn aliases_post(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("name")?.to_string();
    let cidr = ctx.str("cidr")?.to_string();
    let comment = ctx.params.str("comment").map(str::to_string);
    fw::check_name("name", &name)?;
    check_cidr("cidr", &cidr)?;
    update_cluster(&ctx, move |c| {
        if c.aliases.contains_key(&name) {
            return Err(FwConfigError::Exists {
                kind: "alias",
                name: name.clone(),
            });
        }
        c.aliases.insert(
            name.clone(),
            Alias {
                cidr: cidr.clone(),
                comment: comment.clone(),
            },
        );
        Ok(())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const ALIAS_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::string("name", 64, Some(Format::Text))]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "Read an alias.",
};

pub async fn alias_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("name")?;
    let c = fw::load_cluster(&ctx.state.store).await?;
    let a = c.aliases.get(name).ok_or_else(|| FwConfigError::NotFound {
        kind: "alias",
        name: name.to_string(),
    })?;
    Ok(Reply::Data(
        json!({ "name": name, "cidr": a.cidr, "comment": a.comment }),
    ))
}

/// Who in the cluster configuration refers to `word` as an address (`alias` or `+ipset`).
fn addr_user(c: &ClusterFirewall, word: &str) -> Option<String> {
    let uses = |r: &RuleConf| r.source.as_deref() == Some(word) || r.dest.as_deref() == Some(word);
    if let Some(i) = c.rules.iter().position(uses) {
        return Some(format!("cluster rule {i}"));
    }
    c.groups.iter().find_map(|(g, grp)| {
        grp.rules
            .iter()
            .position(uses)
            .map(|i| format!("rule {i} of security group {g}"))
    })
}

pub const ALIAS_DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::string("name", 64, Some(Format::Text))]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Delete an alias (refused while a cluster or group rule uses it).",
};

pub async fn alias_delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("name")?.to_string();
    update_cluster(&ctx, move |c| {
        if let Some(user) = addr_user(c, &name) {
            return Err(FwConfigError::InUse {
                kind: "alias",
                name: name.clone(),
                user,
            });
        }
        c.aliases
            .remove(&name)
            .map(|_| ())
            .ok_or_else(|| FwConfigError::NotFound {
                kind: "alias",
                name: name.clone(),
            })
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

// ---------------------------------------------------------------------------------------
// IP sets

pub const IPSETS_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "List IP sets (referenced in rules as +name).",
};

pub async fn ipsets_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let c = fw::load_cluster(&ctx.state.store).await?;
    Ok(Reply::Data(Value::Array(
        c.ipsets
            .iter()
            .map(|(n, s)| json!({ "name": n, "comment": s.comment }))
            .collect(),
    )))
}

pub const IPSETS_POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::string("name", 64, Some(Format::Text)),
        Param::string("comment", 4096, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Create an empty IP set.",
};

pub async fn ipsets_post(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("name")?.to_string();
    let comment = ctx.params.str("comment").map(str::to_string);
    fw::check_name("name", &name)?;
    update_cluster(&ctx, move |c| {
        if c.ipsets.contains_key(&name) {
            return Err(FwConfigError::Exists {
                kind: "IP set",
                name: name.clone(),
            });
        }
        c.ipsets.insert(
            name.clone(),
            IpSetConf {
                comment: comment.clone(),
                entries: vec![],
            },
        );
        Ok(())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const IPSET_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::string("name", 64, Some(Format::Text))]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "List the entries of an IP set.",
};

pub async fn ipset_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("name")?;
    let c = fw::load_cluster(&ctx.state.store).await?;
    let s = c.ipsets.get(name).ok_or_else(|| FwConfigError::NotFound {
        kind: "IP set",
        name: name.to_string(),
    })?;
    Ok(Reply::Data(Value::Array(
        s.entries
            .iter()
            .map(|e| json!({ "cidr": e.cidr, "comment": e.comment, "nomatch": 0 }))
            .collect(),
    )))
}

pub const IPSET_POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::string("name", 64, Some(Format::Text)),
        Param::string("cidr", 64, Some(Format::Text)),
        Param::string("comment", 4096, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Add an address or network to an IP set (nomatch entries are not supported).",
};

pub async fn ipset_post(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("name")?.to_string();
    let cidr = ctx.str("cidr")?.to_string();
    let comment = ctx.params.str("comment").map(str::to_string);
    check_cidr("cidr", &cidr)?;
    update_cluster(&ctx, move |c| {
        let set = c
            .ipsets
            .get_mut(&name)
            .ok_or_else(|| FwConfigError::NotFound {
                kind: "IP set",
                name: name.clone(),
            })?;
        if set.entries.iter().any(|e| e.cidr == cidr) {
            return Err(FwConfigError::Exists {
                kind: "entry",
                name: cidr.clone(),
            });
        }
        set.entries.push(IpSetEntry {
            cidr: cidr.clone(),
            comment: comment.clone(),
        });
        Ok(())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const IPSET_DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::string("name", 64, Some(Format::Text))]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Delete an IP set (refused while a cluster or group rule uses it).",
};

pub async fn ipset_delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("name")?.to_string();
    update_cluster(&ctx, move |c| {
        if let Some(user) = addr_user(c, &format!("+{name}")) {
            return Err(FwConfigError::InUse {
                kind: "IP set",
                name: name.clone(),
                user,
            });
        }
        c.ipsets
            .remove(&name)
            .map(|_| ())
            .ok_or_else(|| FwConfigError::NotFound {
                kind: "IP set",
                name: name.clone(),
            })
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

// ---------------------------------------------------------------------------------------
// security groups

pub const GROUPS_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "List security groups.",
};

pub async fn groups_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let c = fw::load_cluster(&ctx.state.store).await?;
    Ok(Reply::Data(Value::Array(
        c.groups
            .iter()
            .map(|(n, g)| json!({ "group": n, "comment": g.comment }))
            .collect(),
    )))
}

pub const GROUPS_POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::string("group", 64, Some(Format::Text)),
        Param::string("comment", 4096, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Create an empty security group (VM rules include it with type=group, action=NAME).",
};

pub async fn groups_post(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("group")?.to_string();
    let comment = ctx.params.str("comment").map(str::to_string);
    fw::check_name("group", &name)?;
    update_cluster(&ctx, move |c| {
        if c.groups.contains_key(&name) {
            return Err(FwConfigError::Exists {
                kind: "security group",
                name: name.clone(),
            });
        }
        c.groups.insert(
            name.clone(),
            Group {
                comment: comment.clone(),
                rules: vec![],
            },
        );
        Ok(())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const GROUP_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::string("group", 64, Some(Format::Text))]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "List the rules of a security group.",
};

pub async fn group_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("group")?;
    let c = fw::load_cluster(&ctx.state.store).await?;
    let g = c.groups.get(name).ok_or_else(|| FwConfigError::NotFound {
        kind: "security group",
        name: name.to_string(),
    })?;
    Ok(Reply::Data(rules_json(&g.rules)))
}

/// Group rules are `in`/`out` only (a group cannot include a group).
const GROUP_RULE_PARAMS: &[Param] = &[
    Param::string("group", 64, Some(Format::Text)),
    Param::enumeration("type", &["in", "out"]),
    Param::string("action", 64, Some(Format::Text)),
    Param::string("macro", 128, Some(Format::Text)).opt(),
    Param::string("proto", 32, Some(Format::Text)).opt(),
    Param::string("source", 512, Some(Format::Text)).opt(),
    Param::string("dest", 512, Some(Format::Text)).opt(),
    Param::string("dport", 256, Some(Format::Text)).opt(),
    Param::string("sport", 256, Some(Format::Text)).opt(),
    Param::string("iface", 20, Some(Format::Text)).opt(),
    Param::string("comment", 4096, Some(Format::Text)).opt(),
    Param::int("enable", Some(0), Some(1)).opt(),
    Param::int("pos", Some(0), None).opt(),
    Param::string("digest", 64, Some(Format::Text)).opt(),
];

pub const GROUP_POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(GROUP_RULE_PARAMS),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Create a rule in a security group.",
};

pub async fn group_post(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("group")?.to_string();
    let rule = rule_from(&ctx.params);
    let at = ctx.params.int("pos").and_then(|p| usize::try_from(p).ok());
    update_cluster(&ctx, move |c| {
        fw::check_rule(c, &rule)?;
        let g = c
            .groups
            .get_mut(&name)
            .ok_or_else(|| FwConfigError::NotFound {
                kind: "security group",
                name: name.clone(),
            })?;
        fw::insert_rule(&mut g.rules, at, rule.clone())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const GROUP_DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::string("group", 64, Some(Format::Text))]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Delete a security group (refused while it has rules or a cluster rule includes it).",
};

pub async fn group_delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("group")?.to_string();
    update_cluster(&ctx, move |c| {
        let g = c.groups.get(&name).ok_or_else(|| FwConfigError::NotFound {
            kind: "security group",
            name: name.clone(),
        })?;
        if !g.rules.is_empty() {
            return Err(FwConfigError::InUse {
                kind: "security group",
                name: name.clone(),
                user: format!("its own {} rules (delete them first)", g.rules.len()),
            });
        }
        if let Some(i) = c
            .rules
            .iter()
            .position(|r| r.kind == "group" && r.action == name)
        {
            return Err(FwConfigError::InUse {
                kind: "security group",
                name: name.clone(),
                user: format!("cluster rule {i}"),
            });
        }
        c.groups.remove(&name);
        Ok(())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const GROUP_RULE_DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::string("group", 64, Some(Format::Text)),
        Param::int("pos", Some(0), None),
        Param::string("digest", 64, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Delete a rule of a security group.",
};

pub async fn group_rule_delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ctx.str("group")?.to_string();
    let p = pos(&ctx)?;
    update_cluster(&ctx, move |c| {
        let g = c
            .groups
            .get_mut(&name)
            .ok_or_else(|| FwConfigError::NotFound {
                kind: "security group",
                name: name.clone(),
            })?;
        fw::delete_rule(&mut g.rules, p).map(|_| ())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

/// Every `/cluster/firewall` route.
pub fn router() -> crate::router::Routes {
    crate::router::Routes::new()
        .route(
            "/cluster/firewall/rules",
            endpoint(&RULES_GET, rules_get).merge(endpoint(&RULES_POST, rules_post)),
        )
        .route(
            "/cluster/firewall/rules/{pos}",
            endpoint(&RULE_GET, rule_get).merge(endpoint(&RULE_DELETE, rule_delete)),
        )
        .route(
            "/cluster/firewall/options",
            endpoint(&OPTIONS_GET, options_get).merge(endpoint(&OPTIONS_PUT, options_put)),
        )
        .route(
            "/cluster/firewall/aliases",
            endpoint(&ALIASES_GET, aliases_get).merge(endpoint(&ALIASES_POST, aliases_post)),
        )
        .route(
            "/cluster/firewall/aliases/{name}",
            endpoint(&ALIAS_GET, alias_get).merge(endpoint(&ALIAS_DELETE, alias_delete)),
        )
        .route(
            "/cluster/firewall/ipset",
            endpoint(&IPSETS_GET, ipsets_get).merge(endpoint(&IPSETS_POST, ipsets_post)),
        )
        .route(
            "/cluster/firewall/ipset/{name}",
            endpoint(&IPSET_GET, ipset_get)
                .merge(endpoint(&IPSET_POST, ipset_post))
                .merge(endpoint(&IPSET_DELETE, ipset_delete)),
        )
        .route(
            "/cluster/firewall/groups",
            endpoint(&GROUPS_GET, groups_get).merge(endpoint(&GROUPS_POST, groups_post)),
        )
        .route(
            "/cluster/firewall/groups/{group}",
            endpoint(&GROUP_GET, group_get)
                .merge(endpoint(&GROUP_POST, group_post))
                .merge(endpoint(&GROUP_DELETE, group_delete)),
        )
        .route(
            "/cluster/firewall/groups/{group}/{pos}",
            endpoint(&GROUP_RULE_DELETE, group_rule_delete),
        )
}
