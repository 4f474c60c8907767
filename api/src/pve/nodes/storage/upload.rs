//! `POST /nodes/{node}/storage/{storage}/upload`: upload an ISO image or a snippet.
//!
//! The multipart body is streamed chunk by chunk into a temporary file inside the target
//! storage, next to the volume's final path, never held in memory; the route has its own
//! size bound ([`MAX_UPLOAD_BYTES`]) instead of the API's 512 KiB body limit. The file is
//! fsynced, its checksum verified when one was given, and a task (`imgcopy`, as Proxmox
//! names it) publishes it with an atomic rename that refuses to replace an existing
//! volume. A temporary left by a crash carries the driver's temporary prefix and is removed
//! when the storage is next mounted.
//!
//! Text fields (`content`, `checksum`, ...) must precede the file part, as every Proxmox
//! client sends them.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use gpve_actors::storage::config;
use gpve_actors::storage::{VolumeMsg, error_chain};
use gpve_storage_drivers::{Content, VolumeId};
use serde_json::json;
use sha2::Digest;
use sha2::digest::DynDigest;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::pve::storage::{service, storage_param_decl};
use crate::router::{Endpoint, Method, Privilege, Reply, StreamCtx};
use crate::schema::{Param, ParamSchema, Raw};

/// Largest accepted upload, in bytes.
pub const MAX_UPLOAD_BYTES: u64 = 64 << 30;
/// Largest accepted text field of the multipart body, in bytes.
pub const MAX_TEXT_FIELD_BYTES: usize = 4096;
/// Most multipart parts accepted before the file.
pub const MAX_TEXT_FIELDS: usize = 16;
/// An upload that sends nothing for this long is aborted.
pub const UPLOAD_IDLE_TIMEOUT_MS: u64 = 60_000;

/// `POST /nodes/{node}/storage/{storage}/upload`. `snippets` is a gpve extension of the
/// content enumeration; `vztmpl` and `import` are refused by the handler with a reason.
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::enumeration("content", &["iso", "vztmpl", "import", "snippets"]),
        Param::string("filename", 255, None),
        Param::string("checksum", 256, None).opt(),
        Param::enumeration(
            "checksum-algorithm",
            &["md5", "sha1", "sha224", "sha256", "sha384", "sha512"],
        )
        .opt(),
        Param::string("tmpfilename", 255, None).opt(),
    ]),
    privilege: Privilege::Perm("/storage/{storage}", &["Datastore.AllocateTemplate"]),
    description: "Upload templates, ISO images and snippets.",
};

fn multipart_err(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::PayloadTooLarge
        }
        other => ApiError::BadRequest(format!("invalid multipart body: {other}")),
    }
}

fn hasher(algorithm: &str) -> Result<Box<dyn DynDigest + Send>, ApiError> {
    Ok(match algorithm {
        "sha224" => Box::new(sha2::Sha224::new()),
        "sha256" => Box::new(sha2::Sha256::new()),
        "sha384" => Box::new(sha2::Sha384::new()),
        "sha512" => Box::new(sha2::Sha512::new()),
        other => {
            return Err(ApiError::param(
                "checksum-algorithm",
                format!("'{other}' is not supported by gpve (use a SHA-2 algorithm)"),
            ));
        }
    })
}

async fn next_chunk(field: &mut multer::Field<'_>) -> Result<Option<bytes::Bytes>, ApiError> {
    match tokio::time::timeout(Duration::from_millis(UPLOAD_IDLE_TIMEOUT_MS), field.chunk()).await {
        Ok(r) => r.map_err(multipart_err),
        Err(_) => Err(ApiError::BadRequest(format!(
            "the upload stalled for {UPLOAD_IDLE_TIMEOUT_MS} ms"
        ))),
    }
}

/// Stream the file part into `tmp`; returns the byte count and the digest.
async fn receive(
    field: &mut multer::Field<'_>,
    tmp: &Path,
    mut digest: Option<Box<dyn DynDigest + Send>>,
) -> Result<(u64, Option<Vec<u8>>), ApiError> {
    let io_err = |e: std::io::Error| ApiError::Internal(format!("writing {}: {e}", tmp.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .await
        .map_err(io_err)?;
    let mut total: u64 = 0;
    while let Some(chunk) = next_chunk(field).await? {
        total += chunk.len() as u64;
        if total > MAX_UPLOAD_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        if let Some(d) = digest.as_mut() {
            d.update(&chunk);
        }
        file.write_all(&chunk).await.map_err(io_err)?;
    }
    file.sync_all().await.map_err(io_err)?;
    Ok((total, digest.map(|d| d.finalize().to_vec())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn post(ctx: StreamCtx, body: Body) -> Result<Reply, ApiError> {
    let ctype = ctx
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ctype)
        .map_err(|_| ApiError::BadRequest("the upload must be multipart/form-data".into()))?;
    let limits = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(MAX_UPLOAD_BYTES + 1024 * 1024)
            .per_field(MAX_UPLOAD_BYTES),
    );
    let mut mp = multer::Multipart::with_constraints(body.into_data_stream(), boundary, limits);

    // Text fields, then the file part (named `filename`, its file name is the volume name).
    let mut raw = ctx.raw;
    let mut fields = 0;
    let mut file = loop {
        let Some(mut field) = mp.next_field().await.map_err(multipart_err)? else {
            return Err(ApiError::param(
                "filename",
                "property is missing and it is not optional",
            ));
        };
        let name = field.name().unwrap_or("").to_string();
        if let Some(file_name) = field.file_name() {
            if name != "filename" {
                return Err(ApiError::BadRequest(format!(
                    "the file part must be named 'filename', not '{}'",
                    name.chars().take(64).collect::<String>()
                )));
            }
            raw.insert(name, Raw::Text(file_name.to_string()));
            break field;
        }
        fields += 1;
        if fields > MAX_TEXT_FIELDS {
            return Err(ApiError::BadRequest("too many multipart fields".into()));
        }
        let mut text = Vec::new();
        while let Some(chunk) = next_chunk(&mut field).await? {
            text.extend_from_slice(&chunk);
            if text.len() > MAX_TEXT_FIELD_BYTES {
                return Err(ApiError::param(&name, "value too long"));
            }
        }
        let text = String::from_utf8(text).map_err(|_| ApiError::param(&name, "not UTF-8"))?;
        raw.insert(name, Raw::Text(text));
    };
    let params = POST.params.validate(raw)?;

    let node = params.req_str("node")?;
    if node != ctx.state.config.node_name {
        return Err(ApiError::NoSuchNode(node.to_string()));
    }
    let storage = params.req_str("storage")?;
    config::validate_storage_id(storage)?;
    let cfg = config::get(&ctx.state.store, storage).await?;
    if !cfg.available_on(node) {
        return Err(ApiError::NotFound(format!(
            "storage '{storage}' is not available on node '{node}'"
        )));
    }
    let content = match params.req_str("content")? {
        "iso" => Content::Iso,
        "snippets" => Content::Snippets,
        other => {
            return Err(ApiError::param(
                "content",
                format!("uploading '{other}' is not supported by gpve (use iso or snippets)"),
            ));
        }
    };
    let filename = params.req_str("filename")?;
    let id = VolumeId::file(storage, content, filename)
        .map_err(|e| ApiError::param("filename", e.to_string()))?;
    let digest = match (params.str("checksum-algorithm"), params.str("checksum")) {
        (Some(alg), Some(sum)) => Some((hasher(alg)?, sum.trim().to_ascii_lowercase())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ApiError::param(
                "checksum",
                "needed with checksum-algorithm",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::param(
                "checksum-algorithm",
                "needed with checksum",
            ));
        }
    };

    let svc = service(&ctx.state);
    let tmp = svc.upload_target(&id).await?;
    let (hasher, expected) = match digest {
        Some((h, e)) => (Some(h), Some(e)),
        None => (None, None),
    };
    let received = receive(&mut file, &tmp, hasher).await;
    // multer hands out one field at a time: release the file part before asking for more.
    drop(file);
    let trailing = match &received {
        Ok(_) => mp
            .next_field()
            .await
            .map(|f| f.is_some())
            .map_err(multipart_err),
        Err(_) => Ok(false),
    };
    let (size_bytes, got) = match (received, trailing) {
        (Ok(r), Ok(false)) => r,
        (Ok(_), Ok(true)) => {
            gpve_storage_drivers::fsutil::remove_any(&tmp);
            return Err(ApiError::BadRequest(
                "parameters must precede the file in the multipart body".into(),
            ));
        }
        (Err(e), _) | (_, Err(e)) => {
            gpve_storage_drivers::fsutil::remove_any(&tmp);
            return Err(e);
        }
    };
    if let (Some(expected), Some(got)) = (expected, got)
        && hex(&got) != expected
    {
        gpve_storage_drivers::fsutil::remove_any(&tmp);
        return Err(ApiError::param(
            "checksum",
            format!("checksum mismatch: the upload has {}", hex(&got)),
        ));
    }

    let user = match &ctx.identity {
        Some(i) => i.userid().to_string(),
        None => return Err(ApiError::Unauthorized),
    };
    let task_id = super::content::task_id(&id);
    let upid = ctx
        .state
        .tasks
        .spawn("imgcopy", &task_id, &user, move |task| async move {
            task.log(format!("received {size_bytes} bytes for {id}"))
                .await
                .map_err(|e| e.to_string())?;
            svc.volume(&id, true, |reply| VolumeMsg::Publish { tmp, reply })
                .await
                .map_err(|e| error_chain(&e))?;
            task.log(format!("published {id}"))
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await;
    match upid {
        Ok(upid) => Ok(Reply::Data(json!(upid.to_string()))),
        Err(e) => Err(e.into()),
    }
}
