//! `/nodes/{node}/network`: the bridges gpve manages on a node, with Proxmox's
//! pending-then-apply model.
//!
//! `POST /network`, `PUT` and `DELETE /network/{iface}` change the *pending* configuration
//! only (Proxmox writes `/etc/network/interfaces.new`); `PUT /network` applies it (a task:
//! the network actor converges the kernel to it, creating, re-addressing and deleting
//! bridges); `DELETE /network` drops the pending changes. Only Linux bridges are managed:
//! other types are refused, and interfaces gpve did not create are not listed.

use gpve_actors::network::config::{self, BridgeUser, Iface, NetConfigError, parse_ports};
use gpve_network::NetHandle;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::pve::cluster::firewall::converge;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01, endpoint};
use crate::schema::{Format, Param, ParamSchema, Params};

impl From<NetConfigError> for ApiError {
    fn from(e: NetConfigError) -> Self {
        match e {
            NetConfigError::Field { field, reason } => ApiError::param(field, reason),
            NetConfigError::NotFound(_) => ApiError::NotFound(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

const IFACE_TYPES: &[&str] = &[
    "bridge",
    "bond",
    "eth",
    "alias",
    "vlan",
    "fabric",
    "OVSBridge",
    "OVSBond",
    "OVSPort",
    "OVSIntPort",
    "vnet",
    "unknown",
];

/// Links that exist in the node's namespace, by name (for `active`/`exists`).
async fn kernel_links() -> Vec<String> {
    match NetHandle::open(gpve_network::Netns::Current).await {
        Ok(h) => h
            .list_links()
            .await
            .map(|l| l.into_iter().map(|l| l.name).collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn iface_json(i: &Iface, applied: Option<&Iface>, exists: bool) -> Value {
    let mut v = json!({
        "iface": i.iface,
        "type": i.kind,
        "autostart": bool01(i.autostart),
        "active": bool01(exists && applied == Some(i)),
        "exists": bool01(exists),
        "families": ["inet"],
        "method": if i.cidr.is_some() { "static" } else { "manual" },
    });
    if let Some(c) = &i.cidr {
        v["cidr"] = json!(c);
        if let Some((addr, _)) = c.split_once('/') {
            v["address"] = json!(addr);
        }
    }
    if let Some(m) = i.mtu {
        v["mtu"] = json!(m);
    }
    if !i.bridge_ports.is_empty() {
        v["bridge_ports"] = json!(i.bridge_ports.join(" "));
    }
    if let Some(c) = &i.comments {
        v["comments"] = json!(c);
    }
    if applied != Some(i) {
        v["pending"] = json!(1);
    }
    v
}

pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::enumeration(
            "type",
            &[
                "bridge",
                "bond",
                "eth",
                "alias",
                "vlan",
                "fabric",
                "OVSBridge",
                "OVSBond",
                "OVSPort",
                "OVSIntPort",
                "vnet",
                "any_bridge",
                "any_local_bridge",
                "include_sdn",
            ],
        )
        .opt(),
    ]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Audit"]),
    description: "List the bridges gpve manages on the node, pending changes included (pending=1).",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let wanted = ctx.params.str("type").unwrap_or("bridge");
    if !matches!(wanted, "bridge" | "any_bridge" | "any_local_bridge") {
        return Ok(Reply::Data(json!([])));
    }
    let doc = config::load(&ctx.state.store, &node).await?;
    let links = kernel_links().await;
    let items: Vec<Value> = doc
        .effective()
        .values()
        .map(|i| {
            let exists = links.iter().any(|l| l == &i.iface);
            iface_json(i, doc.ifaces.get(&i.iface), exists)
        })
        .collect();
    Ok(Reply::Data(Value::Array(items)))
}

const IFACE_PARAMS: &[Param] = &[
    Param::node(),
    Param::string("iface", 20, Some(Format::Text)),
    Param::enumeration("type", IFACE_TYPES),
    Param::string("cidr", 64, Some(Format::Text)).opt(),
    Param::string("cidr6", 64, Some(Format::Text)).opt(),
    Param::string("address", 64, Some(Format::Text)).opt(),
    Param::string("netmask", 64, Some(Format::Text)).opt(),
    Param::int("mtu", Some(1280), Some(65_520)).opt(),
    Param::string("bridge_ports", 1024, Some(Format::Text)).opt(),
    Param::boolean("autostart").opt(),
    Param::boolean("bridge_vlan_aware").opt(),
    Param::string("comments", 4096, Some(Format::Text)).opt(),
];

/// Fields of a request over `base` (create: a blank bridge; update: the current one).
fn apply_fields(mut i: Iface, p: &Params) -> Result<Iface, ApiError> {
    if let Some(t) = p.str("type") {
        i.kind = t.to_string();
    }
    if p.has("address") || p.has("netmask") {
        return Err(ApiError::param(
            "address",
            "give the address as cidr=ADDRESS/PREFIX (address/netmask are not supported)",
        ));
    }
    if p.bool("bridge_vlan_aware") == Some(true) {
        return Err(ApiError::param(
            "bridge_vlan_aware",
            "VLAN-aware bridges are not supported by gpve yet",
        ));
    }
    if let Some(c) = p.str("cidr") {
        i.cidr = Some(c.to_string());
    }
    if let Some(c) = p.str("cidr6") {
        if i.cidr.is_some() {
            return Err(ApiError::param(
                "cidr6",
                "one address per bridge: give either cidr or cidr6",
            ));
        }
        i.cidr = Some(c.to_string());
    }
    if let Some(m) = p.int("mtu") {
        i.mtu = u32::try_from(m).ok();
    }
    if let Some(ports) = p.str("bridge_ports") {
        i.bridge_ports = parse_ports(ports)?;
    }
    if let Some(a) = p.bool("autostart") {
        i.autostart = a;
    }
    if let Some(c) = p.str("comments") {
        i.comments = Some(c.to_string());
    }
    i.validate()?;
    Ok(i)
}

pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(IFACE_PARAMS),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    description: "Create a bridge in the pending configuration (PUT /nodes/{node}/network applies it).",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let name = ctx.str("iface")?.to_string();
    let blank = Iface {
        iface: name.clone(),
        kind: "bridge".into(),
        cidr: None,
        mtu: None,
        bridge_ports: vec![],
        autostart: true,
        comments: None,
    };
    let iface = apply_fields(blank, &ctx.params)?;
    config::update(&ctx.state.store, &node, move |d| {
        if d.effective().len() >= config::BRIDGES_MAX {
            return Err(NetConfigError::TooMany);
        }
        if d.effective().contains_key(&name) {
            return Err(NetConfigError::Exists(name.clone()));
        }
        d.pending_mut().insert(name.clone(), iface.clone());
        Ok(())
    })
    .await??;
    Ok(Reply::Data(Value::Null))
}

pub const APPLY: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[Param::node(), Param::boolean("regenerate-frr").opt()]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    description: "Apply the pending network configuration (a task; refused if it removes a bridge a VM uses).",
};

pub async fn apply(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let user = ctx.userid()?.to_string();
    let users = config::bridge_users(&ctx.state.store, &node).await?;
    config::update(&ctx.state.store, &node, move |d| d.apply_pending(&users)).await??;
    let worker_ctx = ctx.clone();
    let upid = ctx
        .state
        .tasks
        .spawn("srvreload", "networking", &user, move |task| async move {
            converge(&worker_ctx).await.map_err(|e| e.to_string())?;
            task.log("network configuration applied".to_string())
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await?;
    Ok(Reply::Data(json!(upid.to_string())))
}

pub const REVERT: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::node()]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    description: "Drop the pending network changes.",
};

pub async fn revert(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    config::update(&ctx.state.store, &node, |d| d.pending = None).await?;
    Ok(Reply::Data(Value::Null))
}

fn iface_param(ctx: &Ctx) -> Result<String, ApiError> {
    let name = ctx.str("iface")?;
    gpve_network::IfName::new(name).map_err(|e| ApiError::param("iface", e.to_string()))?;
    Ok(name.to_string())
}

pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::string("iface", 20, Some(Format::Text)),
    ]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Audit"]),
    description: "Read one bridge (pending changes included).",
};

pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let name = iface_param(&ctx)?;
    let doc = config::load(&ctx.state.store, &node).await?;
    let i = doc
        .effective()
        .get(&name)
        .ok_or(NetConfigError::NotFound(name.clone()))?;
    let exists = kernel_links().await.contains(&name);
    Ok(Reply::Data(iface_json(i, doc.ifaces.get(&name), exists)))
}

const UPDATE_PARAMS: &[Param] = &[
    Param::node(),
    Param::string("iface", 20, Some(Format::Text)),
    Param::enumeration("type", IFACE_TYPES),
    Param::string("cidr", 64, Some(Format::Text)).opt(),
    Param::string("cidr6", 64, Some(Format::Text)).opt(),
    Param::string("address", 64, Some(Format::Text)).opt(),
    Param::string("netmask", 64, Some(Format::Text)).opt(),
    Param::int("mtu", Some(1280), Some(65_520)).opt(),
    Param::string("bridge_ports", 1024, Some(Format::Text)).opt(),
    Param::boolean("autostart").opt(),
    Param::boolean("bridge_vlan_aware").opt(),
    Param::string("comments", 4096, Some(Format::Text)).opt(),
    Param::string("delete", 256, Some(Format::ConfigIdList)).opt(),
];

pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(UPDATE_PARAMS),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    description: "Change a bridge in the pending configuration.",
};

pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let name = iface_param(&ctx)?;
    let doc = config::load(&ctx.state.store, &node).await?;
    let mut current = doc
        .effective()
        .get(&name)
        .cloned()
        .ok_or(NetConfigError::NotFound(name.clone()))?;
    for key in ctx
        .params
        .str("delete")
        .unwrap_or("")
        .split([',', ';', ' '])
        .filter(|k| !k.is_empty())
    {
        match key {
            "cidr" | "cidr6" => current.cidr = None,
            "mtu" => current.mtu = None,
            "bridge_ports" => current.bridge_ports.clear(),
            "comments" => current.comments = None,
            other => {
                return Err(ApiError::param(
                    "delete",
                    format!("{other:?} cannot be deleted"),
                ));
            }
        }
    }
    let next = apply_fields(current, &ctx.params)?;
    config::update(&ctx.state.store, &node, move |d| {
        if !d.effective().contains_key(&name) {
            return Err(NetConfigError::NotFound(name.clone()));
        }
        d.pending_mut().insert(name.clone(), next.clone());
        Ok(())
    })
    .await??;
    Ok(Reply::Data(Value::Null))
}

pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::node(),
        Param::string("iface", 20, Some(Format::Text)),
    ]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    description: "Remove a bridge from the pending configuration (refused while a VM's NIC uses it).",
};

/// The first VM NIC on `bridge`.
fn user_of<'a>(users: &'a [BridgeUser], bridge: &str) -> Option<&'a BridgeUser> {
    users.iter().find(|u| u.bridge == bridge)
}

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let name = iface_param(&ctx)?;
    let users = config::bridge_users(&ctx.state.store, &node).await?;
    if let Some(u) = user_of(&users, &name) {
        return Err(NetConfigError::InUse {
            bridge: name,
            vmid: u.vmid,
            nic: u.nic.clone(),
        }
        .into());
    }
    config::update(&ctx.state.store, &node, move |d| {
        d.pending_mut()
            .remove(&name)
            .map(|_| ())
            .ok_or(NetConfigError::NotFound(name.clone()))
    })
    .await??;
    Ok(Reply::Data(Value::Null))
}

/// Every `/nodes/{node}/network` route.
pub fn router() -> crate::router::Routes {
    crate::router::Routes::new()
        .route(
            "/nodes/{node}/network",
            endpoint(&LIST, list)
                .merge(endpoint(&CREATE, create))
                .merge(endpoint(&APPLY, apply))
                .merge(endpoint(&REVERT, revert)),
        )
        .route(
            "/nodes/{node}/network/{iface}",
            endpoint(&READ, read)
                .merge(endpoint(&UPDATE, update))
                .merge(endpoint(&DELETE, delete)),
        )
}
