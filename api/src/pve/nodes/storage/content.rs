//! `/nodes/{node}/storage/{storage}/content[/{volume}]`: list, allocate, inspect, annotate
//! and delete volumes. Each volume operation runs in that volume's actor, so operations on
//! one volume are serialised and never wait on a lock.

use gpve_actors::storage::volume::{MAX_NOTES_BYTES, read_meta};
use gpve_actors::storage::{VolumeMsg, usage};
use gpve_storage_drivers::{
    Content, StorageError, VolumeFormat, VolumeId, VolumeInfo, VolumeLocation,
};
use serde_json::{Value, json};

use super::node_storage;
use crate::error::ApiError;
use crate::pve::storage::{service, storage_param, storage_param_decl};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Param, ParamSchema};

/// Longest accepted volume parameter, in bytes (storage id + `:` + volume name).
pub const MAX_VOLUME_PARAM_BYTES: usize = 256;
/// Largest disk `POST content` allocates: 1 PiB.
pub const MAX_ALLOC_BYTES: u64 = 1 << 50;

const CONTENT_TYPES: &[&str] = &[
    "images", "iso", "backup", "snippets", "rootdir", "vztmpl", "import",
];

/// Parse the `volume` parameter: a full volume id (`local:iso/x.iso`) or, as Proxmox also
/// accepts, just the part after `storage:`. Anything that could name a path outside the
/// storage is refused here, before any filesystem access.
pub fn parse_volume(storage: &str, raw: &str) -> Result<VolumeId, ApiError> {
    let full = if raw.contains(':') {
        raw.to_string()
    } else {
        format!("{storage}:{raw}")
    };
    let id: VolumeId = full
        .parse()
        .map_err(|e: gpve_storage_drivers::VolumeIdError| {
            ApiError::param("volume", e.to_string())
        })?;
    if id.storage() != storage {
        return Err(ApiError::param(
            "volume",
            format!("volume {id} does not belong to storage '{storage}'"),
        ));
    }
    Ok(id)
}

/// Proxmox's `format` field of a volume.
pub fn format_name(info: &VolumeInfo) -> String {
    match (info.id.content(), info.format) {
        (_, Some(f)) => f.to_string(),
        (Content::Images, None) => "raw".into(),
        (Content::Iso, _) => "iso".into(),
        (Content::Snippets, _) => "snippet".into(),
        (Content::Backup, _) => info
            .id
            .name()
            .split_once('.')
            .map(|(_, ext)| ext.to_string())
            .unwrap_or_else(|| "backup".into()),
    }
}

/// One volume in Proxmox's content-list shape.
pub fn volume_json(info: &VolumeInfo) -> Value {
    let mut v = json!({
        "volid": info.id.to_string(),
        "content": info.id.content().as_str(),
        "format": format_name(info),
        "size": info.size_bytes,
        "used": info.used_bytes,
    });
    if let Some(vmid) = info.id.vmid() {
        v["vmid"] = json!(vmid);
    }
    if let Some(p) = &info.parent {
        v["parent"] = json!(p.to_string());
    }
    v
}

/// Longest task id a UPID carries, in bytes.
pub const MAX_TASK_ID_BYTES: usize = 128;

/// A volume id as a UPID's id field. `:` separates UPID fields and clients put UPIDs in
/// URL paths unescaped, so every character but letters, digits, `.`, `_`, `-` and `@`
/// becomes `-` (`local:100/vm-100-disk-0.qcow2` → `local-100-vm-100-disk-0.qcow2`); cut
/// to [`MAX_TASK_ID_BYTES`].
pub fn task_id(id: &VolumeId) -> String {
    id.to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_TASK_ID_BYTES)
        .collect()
}

/// Parse Proxmox's disk size: a number of KiB, or with `M` / `G` suffix (MiB, GiB).
pub fn parse_size_bytes(s: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::param(
            "size",
            "use a number of KiB, or a number with suffix M or G",
        )
    };
    let (num, unit) = match s.as_bytes().last() {
        Some(b'M') => (&s[..s.len() - 1], 1u64 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1u64 << 30),
        _ => (s, 1u64 << 10),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(unit).ok_or_else(bad)?;
    if bytes == 0 || bytes > MAX_ALLOC_BYTES {
        return Err(ApiError::param(
            "size",
            format!("the size must be between 1 KiB and {MAX_ALLOC_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// `GET /nodes/{node}/storage/{storage}/content`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::enumeration("content", CONTENT_TYPES).opt(),
        Param::vmid().opt(),
    ]),
    privilege: Privilege::Any(
        "/storage/{storage}",
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    ),
    description: "List storage content.",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let id = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &id).await?;
    let content = match ctx.params.str("content") {
        // Content types gpve cannot hold are simply empty, as on a storage without them.
        Some(c) => match c.parse::<Content>() {
            Ok(c) => Some(c),
            Err(_) => return Ok(Reply::Data(json!([]))),
        },
        None => None,
    };
    let vmid = ctx.params.int("vmid").map(|v| v as u32);
    let vols = service(&ctx.state).list(&id, content, vmid).await?;
    Ok(Reply::Data(Value::Array(
        vols.iter().map(volume_json).collect(),
    )))
}

/// `POST /nodes/{node}/storage/{storage}/content`: allocate a disk image. Proxmox answers
/// with the new volume id (synchronously); so does gpve. An empty `filename` allocates the
/// next free `vm-VMID-disk-N` (a gpve extension).
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::vmid(),
        Param::string("filename", 180, None),
        Param::string("size", 32, None),
        Param::enumeration("format", &["raw", "qcow2", "subvol", "vmdk"]).opt(),
    ]),
    privilege: Privilege::Perm("/storage/{storage}", &["Datastore.AllocateSpace"]),
    description: "Allocate disk images.",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let storage = storage_param(&ctx)?.to_string();
    let cfg = node_storage(&ctx, &storage).await?;
    let vmid = ctx
        .params
        .int("vmid")
        .map(|v| v as u32)
        .ok_or_else(|| ApiError::param("vmid", "property is missing and it is not optional"))?;
    let size_bytes = parse_size_bytes(ctx.str("size")?)?;
    let filename = ctx.str("filename")?;
    let format = match ctx.params.str("format") {
        Some("raw") => Some(VolumeFormat::Raw),
        Some("qcow2") => Some(VolumeFormat::Qcow2),
        Some(other) => {
            return Err(ApiError::param(
                "format",
                format!("format '{other}' is not supported by gpve (use raw or qcow2)"),
            ));
        }
        None => None,
    };
    let dir_layout = cfg.kind == gpve_actors::storage::StorageType::Dir;
    let svc = service(&ctx.state);
    let info = if filename.is_empty() {
        let fmt = format.unwrap_or(VolumeFormat::Raw);
        svc.allocate(&storage, vmid, fmt, size_bytes).await?
    } else {
        let id = if dir_layout {
            let name = match (format, filename.rsplit_once('.')) {
                (Some(f), Some((_, ext))) if ext != f.as_str() => {
                    return Err(ApiError::param(
                        "filename",
                        format!("the extension '.{ext}' does not match the format {f}"),
                    ));
                }
                (_, Some((_, "raw" | "qcow2"))) => filename.to_string(),
                (f, _) => format!("{filename}.{}", f.unwrap_or(VolumeFormat::Raw)),
            };
            VolumeId::image(&storage, vmid, &name)
        } else {
            if format.is_some_and(|f| f != VolumeFormat::Raw) {
                return Err(ApiError::param(
                    "format",
                    "this storage holds raw images only",
                ));
            }
            VolumeId::flat_image(&storage, filename)
        }
        .map_err(|e| ApiError::param("filename", e.to_string()))?;
        if id.vmid() != Some(vmid) {
            return Err(ApiError::param(
                "filename",
                format!("the name must start with vm-{vmid}- or base-{vmid}-"),
            ));
        }
        svc.volume(&id, true, |reply| VolumeMsg::Create { size_bytes, reply })
            .await?
    };
    Ok(Reply::Data(json!(info.id.to_string())))
}

/// `GET /nodes/{node}/storage/{storage}/content/{volume}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::string("volume", MAX_VOLUME_PARAM_BYTES, None),
    ]),
    privilege: Privilege::Any(
        "/storage/{storage}",
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    ),
    description: "Get volume attributes.",
};

pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let storage = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &storage).await?;
    let id = parse_volume(&storage, ctx.str("volume")?)?;
    let svc = service(&ctx.state);
    let info = svc
        .volume(&id, false, |reply| VolumeMsg::Info { reply })
        .await?;
    let location = svc
        .volume(&id, false, |reply| VolumeMsg::Location { reply })
        .await?;
    let meta = read_meta(&ctx.state.store, &id).await?;
    let mut v = volume_json(&info);
    v["path"] = match location {
        VolumeLocation::File(p) | VolumeLocation::Block(p) => json!(p.to_string_lossy()),
        VolumeLocation::Uri(u) => json!(u),
    };
    v["protected"] = bool01(meta.protected);
    if let Some(n) = meta.notes {
        v["notes"] = json!(n);
    }
    Ok(Reply::Data(v))
}

/// `PUT /nodes/{node}/storage/{storage}/content/{volume}`: notes and protection.
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::string("volume", MAX_VOLUME_PARAM_BYTES, None),
        Param::string("notes", MAX_NOTES_BYTES, None).opt(),
        Param::boolean("protected").opt(),
    ]),
    privilege: Privilege::Perm("/storage/{storage}", &["Datastore.AllocateSpace"]),
    description: "Update volume attributes.",
};

pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let storage = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &storage).await?;
    let id = parse_volume(&storage, ctx.str("volume")?)?;
    let notes = ctx.params.str("notes").map(str::to_string);
    let protected = ctx.params.bool("protected");
    service(&ctx.state)
        .volume(&id, false, |reply| VolumeMsg::SetMeta {
            notes,
            protected,
            reply,
        })
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /nodes/{node}/storage/{storage}/content/{volume}`: answers a UPID, as Proxmox.
/// What can be refused up front (no such volume, used by a VM, protected) is refused
/// before the task starts, so the client gets the reason as an HTTP error; the volume
/// actor checks again when the task runs.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::string("volume", MAX_VOLUME_PARAM_BYTES, None),
        Param::int("delay", Some(1), Some(30)).opt(),
    ]),
    privilege: Privilege::Perm("/storage/{storage}", &["Datastore.Allocate"]),
    description: "Delete volume.",
};

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let storage = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &storage).await?;
    let id = parse_volume(&storage, ctx.str("volume")?)?;
    let user = ctx.userid()?.to_string();
    let svc = service(&ctx.state);
    svc.volume(&id, false, |reply| VolumeMsg::Info { reply })
        .await?;
    if let Some(vmid) = usage::volume_user(&ctx.state.store, &id).await? {
        return Err(StorageError::VolumeInUse {
            volume: id,
            user: format!("VM {vmid}"),
        }
        .into());
    }
    if read_meta(&ctx.state.store, &id).await?.protected {
        return Err(gpve_actors::storage::StorageServiceError::Protected(id).into());
    }
    let task_id = task_id(&id);
    let upid = ctx
        .state
        .tasks
        .spawn("imgdel", &task_id, &user, move |task| async move {
            task.log(format!("removing volume {id}"))
                .await
                .map_err(|e| e.to_string())?;
            svc.volume(&id, true, |reply| VolumeMsg::Delete { reply })
                .await
                .map_err(|e| gpve_actors::storage::error_chain(&e))?;
            task.log("removed").await.map_err(|e| e.to_string())?;
            Ok(())
        })
        .await?;
    Ok(Reply::Data(json!(upid.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size_bytes("1024").unwrap(), 1 << 20);
        for bad in ["", "G", "0", "-1G", "4T", "4.5G", "99999999999999999999G"] {
            assert!(parse_size_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        assert_eq!(
            parse_volume("local", "iso/a.iso").unwrap().to_string(),
            "local:iso/a.iso"
        );
        assert!(parse_volume("local", "other:iso/a.iso").is_err());
        for bad in [
            "../etc/passwd",
            "iso/../../x.iso",
            "100/../../../etc",
            "iso/.x.iso",
            "snippets/a/b",
        ] {
            assert!(parse_volume("local", bad).is_err(), "{bad}");
        }
    }
}
