//! `/nodes/{node}/qemu/{vmid}/firewall/{rules,options}`: a VM's own firewall. Its rules
//! filter the VM's NICs that have `firewall=1`, after the cluster rules; they are active
//! while both the cluster and the VM firewall are enabled (options `enable`).
//!
//! Node-level rules (`/nodes/{node}/firewall`) are not served: gpve does not filter the
//! host's own traffic yet, and accepting rules it would not enforce would mislead.

use gpve_actors::network::firewall::{self as fw, FwConfigError, VmFirewall};
use serde_json::Value;

use crate::error::ApiError;
use crate::pve::cluster::firewall::{
    RULE_PARAMS, change_options, converge, pos, rule_from, rule_json, rules_json,
};
use crate::pve::nodes::qemu::{entry, vmid};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01, endpoint};
use crate::schema::{Format, Param, ParamSchema};

const AUDIT: Privilege = Privilege::Perm("/vms/{vmid}", &["VM.Audit"]);
const MODIFY: Privilege = Privilege::Perm("/vms/{vmid}", &["VM.Config.Network"]);

/// The VM named by the route (404 unless it is on this node) and its firewall.
async fn load(ctx: &Ctx) -> Result<(u32, VmFirewall), ApiError> {
    let id = vmid(ctx)?;
    entry(ctx, id).await?;
    Ok((id, fw::load_vm(&ctx.state.store, id).await?))
}

/// Changes the VM's firewall document, validated against the cluster configuration.
async fn update_vm<F>(ctx: &Ctx, change: F) -> Result<(), ApiError>
where
    F: Fn(&fw::ClusterFirewall, &mut VmFirewall) -> Result<(), FwConfigError>
        + Send
        + Sync
        + Clone
        + 'static,
{
    let id = vmid(ctx)?;
    entry(ctx, id).await?;
    // Rules name aliases, IP sets and groups of the cluster: checked against a snapshot
    // read just before; a concurrent removal of one of those is caught by the actor's
    // compile, which then leaves the previous ruleset in place and reports it.
    let cluster = fw::load_cluster(&ctx.state.store).await?;
    fw::update_doc(
        &ctx.state.store,
        fw::vm_key(id),
        move |d: &mut VmFirewall| change(&cluster, d),
    )
    .await??;
    converge(ctx).await
}

pub const RULES_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid()]),
    privilege: AUDIT,
    description: "List the VM's firewall rules.",
};

pub async fn rules_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let (_, f) = load(&ctx).await?;
    Ok(Reply::Data(rules_json(&f.rules)))
}

static VM_RULE_PARAMS: std::sync::LazyLock<Vec<Param>> = std::sync::LazyLock::new(|| {
    let mut p = vec![Param::node(), Param::vmid()];
    p.extend_from_slice(RULE_PARAMS);
    p
});

pub static RULES_POST: std::sync::LazyLock<Endpoint> = std::sync::LazyLock::new(|| Endpoint {
    method: Method::Post,
    params: ParamSchema(Box::leak(VM_RULE_PARAMS.clone().into_boxed_slice())),
    privilege: MODIFY,
    description: "Create a VM firewall rule (at pos, default first). type=group includes a security group.",
});

pub async fn rules_post(ctx: Ctx) -> Result<Reply, ApiError> {
    let rule = rule_from(&ctx.params);
    let at = ctx.params.int("pos").and_then(|p| usize::try_from(p).ok());
    update_vm(&ctx, move |c, d| {
        fw::check_rule(c, &rule)?;
        fw::insert_rule(&mut d.rules, at, rule.clone())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const RULE_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::int("pos", Some(0), None),
    ]),
    privilege: AUDIT,
    description: "Get one VM firewall rule.",
};

pub async fn rule_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = pos(&ctx)?;
    let (_, f) = load(&ctx).await?;
    let r = f.rules.get(p).ok_or(FwConfigError::NoRule(p))?;
    Ok(Reply::Data(rule_json(p, r)))
}

pub const RULE_DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::int("pos", Some(0), None),
        Param::string("digest", 64, Some(Format::Text)).opt(),
    ]),
    privilege: MODIFY,
    description: "Delete a VM firewall rule.",
};

pub async fn rule_delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = pos(&ctx)?;
    update_vm(&ctx, move |_, d| {
        fw::delete_rule(&mut d.rules, p).map(|_| ())
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}

pub const OPTIONS_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid()]),
    privilege: AUDIT,
    description: "Get the VM firewall options (enable default 0, policy_in default DROP, policy_out default ACCEPT).",
};

pub async fn options_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let (_, f) = load(&ctx).await?;
    let o = &f.options;
    Ok(Reply::Data(serde_json::json!({
        "enable": bool01(o.enable),
        "policy_in": o.policy_in.clone().unwrap_or_else(|| "DROP".into()),
        "policy_out": o.policy_out.clone().unwrap_or_else(|| "ACCEPT".into()),
    })))
}

pub const OPTIONS_PUT: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::boolean("enable").opt(),
        Param::enumeration("policy_in", &["ACCEPT", "REJECT", "DROP"]).opt(),
        Param::enumeration("policy_out", &["ACCEPT", "REJECT", "DROP"]).opt(),
        Param::string("delete", 256, Some(Format::ConfigIdList)).opt(),
        Param::string("digest", 64, Some(Format::Text)).opt(),
    ]),
    privilege: MODIFY,
    description: "Set the VM firewall options (enable, policy_in, policy_out).",
};

pub async fn options_put(ctx: Ctx) -> Result<Reply, ApiError> {
    let params = ctx.params.clone();
    update_vm(&ctx, move |_, d| change_options(&mut d.options, &params)).await?;
    Ok(Reply::Data(Value::Null))
}

/// Every VM firewall route.
pub fn router() -> crate::router::Routes {
    crate::router::Routes::new()
        .route(
            "/nodes/{node}/qemu/{vmid}/firewall/rules",
            endpoint(&RULES_GET, rules_get).merge(endpoint(&RULES_POST, rules_post)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/firewall/rules/{pos}",
            endpoint(&RULE_GET, rule_get).merge(endpoint(&RULE_DELETE, rule_delete)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/firewall/options",
            endpoint(&OPTIONS_GET, options_get).merge(endpoint(&OPTIONS_PUT, options_put)),
        )
}
