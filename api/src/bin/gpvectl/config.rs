//! `gpvectl`'s config file: which server, how to trust it, and the session.
//! It holds credentials (a ticket or an API token secret), so it is written 0600 in a
//! 0700 directory, atomically (write a temp file, then rename).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gpve_api::client::TicketAuth;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// `https://host:port/`.
    pub server: String,
    /// Pinned SHA-256 fingerprint of the server certificate (`AB:CD:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// CA bundle to verify the server against, instead of a fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `USER@REALM` of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketAuth>,
    /// `USER@REALM!TOKENID=SECRET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `--config`, else `$GPVE_CONFIG` (both handled by clap), else
/// `$XDG_CONFIG_HOME/gpve/config.yaml`, else `~/.config/gpve/config.yaml`.
pub fn default_path() -> anyhow::Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("gpve").join("config.yaml"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home)
            .join(".config")
            .join("gpve")
            .join("config.yaml")),
        None => bail!("HOME is not set: pass --config FILE or set GPVE_CONFIG"),
    }
}

/// `Ok(None)` when the file does not exist (not logged in yet).
pub fn load(path: &Path) -> anyhow::Result<Option<Config>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let config = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a valid gpvectl config", path.display()))?;
    Ok(Some(config))
}

pub fn save(path: &Path, config: &Config) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    let text = serde_yaml::to_string(config).context("cannot serialize the config")?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.yaml".into());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` only applies on creation; a stale temp file must not keep wider bits.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_private_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("config.yaml");
        assert_eq!(load(&path).expect("missing is fine"), None);
        let config = Config {
            server: "https://127.0.0.1:8006/".into(),
            fingerprint: Some("AB".into()),
            token: Some("root@pam!ci=secret".into()),
            ..Config::default()
        };
        save(&path, &config).expect("save");
        save(&path, &config).expect("save again");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("stat dir")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(load(&path).expect("load"), Some(config));
        std::fs::write(&path, "server: [unclosed").expect("corrupt");
        let err = load(&path).expect_err("corrupt config");
        assert!(format!("{err:#}").contains("not a valid gpvectl config"));
    }
}
