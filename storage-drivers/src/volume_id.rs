//! Proxmox-style volume identifiers: `STORAGE:VOLNAME`.
//!
//! | content   | volname form                     | example                                |
//! |-----------|----------------------------------|----------------------------------------|
//! | images    | `VMID/NAME.EXT` (file layouts)   | `local:100/vm-100-disk-0.qcow2`        |
//! | images    | `NAME` (block/subvolume layouts) | `local-btrfs:vm-100-disk-0`            |
//! | iso       | `iso/NAME.iso`                   | `local:iso/debian-12.iso`              |
//! | backup    | `backup/NAME`                    | `local:backup/vzdump-qemu-100-….vma.zst` |
//! | snippets  | `snippets/NAME`                  | `local:snippets/user-data.yaml`        |
//!
//! Parsing is pure and strict: every name becomes exactly one file-name component, so a
//! parsed id can never name a path outside its storage root (`..`, `/`, NUL, control
//! characters, leading `-` or `.` and overlong names are refused). The filesystem-level
//! check (symlinks) lives in [`crate::fsutil`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest storage id accepted (Proxmox uses the same kind of short identifiers).
pub const MAX_STORAGE_ID_BYTES: usize = 64;
/// Longest volume name component; well below Linux NAME_MAX (255) so that temporary
/// names (`.gpve-tmp.<node>.<pid>.<n>.<name>`) built from it still fit.
pub const MAX_NAME_BYTES: usize = 180;
/// Highest VMID Proxmox accepts.
pub const MAX_VMID: u32 = 999_999_999;
/// Lowest VMID Proxmox accepts (0–99 are reserved).
pub const MIN_VMID: u32 = 100;
/// Longest snapshot name (Proxmox `pve-configid` limit).
pub const MAX_SNAPSHOT_NAME_BYTES: usize = 40;

/// Errors from parsing or building volume identifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeIdError {
    #[error("volume id {0:?} has no `storage:` prefix")]
    MissingStorage(String),
    #[error("storage id {0:?} is invalid: use a letter, then letters, digits, `-`, `_` or `.`")]
    InvalidStorage(String),
    #[error("volume name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("VMID {0:?} is invalid: it must be an integer from 100 to 999999999")]
    InvalidVmid(String),
    #[error("image name {name:?} does not belong to VMID {vmid}")]
    VmidMismatch { name: String, vmid: u32 },
    #[error("content type {0:?} is unknown: use images, iso, backup or snippets")]
    UnknownContent(String),
    #[error(
        "snapshot name {0:?} is invalid: use a letter, then up to 39 letters, digits, `-` or `_`"
    )]
    InvalidSnapshotName(String),
}

/// What a volume holds, as in Proxmox's `content` storage option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    /// VM disk images.
    Images,
    /// ISO images (installation media).
    Iso,
    /// Backup archives (`dump/`).
    Backup,
    /// Snippets (cloud-init user data, hook scripts).
    Snippets,
}

impl Content {
    /// The Proxmox spelling (`images`, `iso`, `backup`, `snippets`).
    pub fn as_str(self) -> &'static str {
        match self {
            Content::Images => "images",
            Content::Iso => "iso",
            Content::Backup => "backup",
            Content::Snippets => "snippets",
        }
    }

    /// All content types, in a stable order.
    pub const ALL: [Content; 4] = [
        Content::Images,
        Content::Iso,
        Content::Backup,
        Content::Snippets,
    ];
}

impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Content {
    type Err = VolumeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "images" => Ok(Content::Images),
            "iso" => Ok(Content::Iso),
            "backup" => Ok(Content::Backup),
            "snippets" => Ok(Content::Snippets),
            other => Err(VolumeIdError::UnknownContent(other.to_owned())),
        }
    }
}

/// On-disk format of a VM disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    Raw,
    Qcow2,
}

impl VolumeFormat {
    /// The qemu-img format name, which is also the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Raw => "raw",
            VolumeFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for VolumeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VolumeFormat {
    type Err = VolumeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(VolumeFormat::Raw),
            "qcow2" => Ok(VolumeFormat::Qcow2),
            _ => Err(VolumeIdError::InvalidName {
                name: s.to_owned(),
                reason: "the format must be raw or qcow2",
            }),
        }
    }
}

/// A parsed volume identifier. Invariants (enforced by the constructors, fields are
/// private): `storage` is a valid storage id; `name` is one safe file-name component;
/// `vmid` is `Some` exactly for [`Content::Images`] and matches the name's `vm-VMID-`
/// (or `base-VMID-`) prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    storage: String,
    content: Content,
    vmid: Option<u32>,
    name: String,
}

impl VolumeId {
    /// A disk image in a per-VMID directory (`STORAGE:VMID/NAME.EXT`, the dir layout).
    /// The name must carry a `.raw` or `.qcow2` extension.
    pub fn image(storage: &str, vmid: u32, name: &str) -> Result<Self, VolumeIdError> {
        validate_storage(storage)?;
        let name_vmid = image_name_vmid(name)?;
        if name_vmid != vmid {
            return Err(VolumeIdError::VmidMismatch {
                name: name.to_owned(),
                vmid,
            });
        }
        if format_of_name(name).is_none() {
            return Err(VolumeIdError::InvalidName {
                name: name.to_owned(),
                reason: "an image in a VMID directory needs a .raw or .qcow2 extension",
            });
        }
        Ok(Self {
            storage: storage.to_owned(),
            content: Content::Images,
            vmid: Some(vmid),
            name: name.to_owned(),
        })
    }

    /// A disk image without a VMID directory (`STORAGE:vm-VMID-disk-N`, the btrfs, LVM,
    /// ZFS and RBD layout). The name must not carry a format extension.
    pub fn flat_image(storage: &str, name: &str) -> Result<Self, VolumeIdError> {
        validate_storage(storage)?;
        let vmid = image_name_vmid(name)?;
        if name.contains('.') {
            return Err(VolumeIdError::InvalidName {
                name: name.to_owned(),
                reason: "a flat image name has no extension and no `.`",
            });
        }
        Ok(Self {
            storage: storage.to_owned(),
            content: Content::Images,
            vmid: Some(vmid),
            name: name.to_owned(),
        })
    }

    /// A file volume of a non-image content type (`iso/NAME`, `backup/NAME`, `snippets/NAME`).
    pub fn file(storage: &str, content: Content, name: &str) -> Result<Self, VolumeIdError> {
        validate_storage(storage)?;
        validate_component(name)?;
        match content {
            Content::Images => {
                return Err(VolumeIdError::InvalidName {
                    name: name.to_owned(),
                    reason: "use VolumeId::image or VolumeId::flat_image for disk images",
                });
            }
            Content::Iso => {
                let lower = name.to_ascii_lowercase();
                if !(lower.ends_with(".iso") || lower.ends_with(".img")) {
                    return Err(VolumeIdError::InvalidName {
                        name: name.to_owned(),
                        reason: "an ISO name must end in .iso or .img",
                    });
                }
            }
            Content::Backup | Content::Snippets => {}
        }
        Ok(Self {
            storage: storage.to_owned(),
            content,
            vmid: None,
            name: name.to_owned(),
        })
    }

    /// The Proxmox disk name `vm-VMID-disk-N`, with `.EXT` when `format` is given (dir
    /// layout) and flat otherwise.
    pub fn disk(
        storage: &str,
        vmid: u32,
        index: u32,
        format: Option<VolumeFormat>,
    ) -> Result<Self, VolumeIdError> {
        match format {
            Some(fmt) => Self::image(storage, vmid, &format!("vm-{vmid}-disk-{index}.{fmt}")),
            None => Self::flat_image(storage, &format!("vm-{vmid}-disk-{index}")),
        }
    }

    pub fn storage(&self) -> &str {
        &self.storage
    }
    pub fn content(&self) -> Content {
        self.content
    }
    pub fn vmid(&self) -> Option<u32> {
        self.vmid
    }
    /// The last component: a file name (dir) or subvolume/LV name (flat layouts).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True for `VMID/NAME.EXT` image ids (the dir layout).
    pub fn is_vmid_dir_image(&self) -> bool {
        self.content == Content::Images && format_of_name(&self.name).is_some()
    }

    /// The format named by the extension, for `VMID/NAME.EXT` images.
    pub fn format_from_name(&self) -> Option<VolumeFormat> {
        if self.content == Content::Images {
            format_of_name(&self.name)
        } else {
            None
        }
    }

    /// The part after `STORAGE:`.
    pub fn volname(&self) -> String {
        match (self.content, self.vmid) {
            (Content::Images, Some(vmid)) if self.is_vmid_dir_image() => {
                format!("{vmid}/{}", self.name)
            }
            (Content::Images, _) => self.name.clone(),
            (content, _) => format!("{content}/{}", self.name),
        }
    }

    /// The disk index N of a `vm-VMID-disk-N` name, if it has that shape.
    pub fn disk_index(&self) -> Option<u32> {
        let vmid = self.vmid?;
        disk_index_of(&self.name, vmid)
    }

    /// The same volume name on another storage (for cross-storage clones).
    pub fn with_storage(&self, storage: &str) -> Result<Self, VolumeIdError> {
        validate_storage(storage)?;
        Ok(Self {
            storage: storage.to_owned(),
            ..self.clone()
        })
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.storage, self.volname())
    }
}

impl FromStr for VolumeId {
    type Err = VolumeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (storage, volname) = s
            .split_once(':')
            .ok_or_else(|| VolumeIdError::MissingStorage(s.to_owned()))?;
        match volname.split_once('/') {
            None => Self::flat_image(storage, volname),
            Some((prefix, name)) => {
                if prefix.bytes().all(|b| b.is_ascii_digit()) {
                    let vmid = parse_vmid(prefix)?;
                    Self::image(storage, vmid, name)
                } else {
                    // `iso`, `backup`, `snippets`; `images` is spelled `VMID/…` instead.
                    let content: Content = prefix.parse()?;
                    if content == Content::Images {
                        return Err(VolumeIdError::UnknownContent(prefix.to_owned()));
                    }
                    Self::file(storage, content, name)
                }
            }
        }
    }
}

impl Serialize for VolumeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VolumeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A validated snapshot name (`[A-Za-z][A-Za-z0-9_-]{0,39}`, as Proxmox's `pve-configid`).
/// No `.`, `/` or `@`, so it is safe inside file names and btrfs `NAME@SNAP` paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SnapshotName(String);

impl SnapshotName {
    pub fn new(name: &str) -> Result<Self, VolumeIdError> {
        let mut chars = name.chars();
        let ok = name.len() <= MAX_SNAPSHOT_NAME_BYTES
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(VolumeIdError::InvalidSnapshotName(name.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SnapshotName {
    type Err = VolumeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The smallest N such that `vm-VMID-disk-N` is not among `existing` names (either layout;
/// extensions are ignored so `vm-100-disk-0.raw` and `vm-100-disk-0.qcow2` both take 0).
pub fn next_free_disk_index<'a>(vmid: u32, existing: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut used: Vec<u32> = existing
        .into_iter()
        .filter_map(|n| disk_index_of(n, vmid))
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut next = 0;
    for n in used {
        if n == next {
            next += 1;
        } else if n > next {
            break;
        }
    }
    next
}

fn disk_index_of(name: &str, vmid: u32) -> Option<u32> {
    let stem = name.split_once('.').map_or(name, |(s, _)| s);
    let rest = stem.strip_prefix(&format!("vm-{vmid}-disk-"))?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 9 {
        return None;
    }
    rest.parse().ok()
}

fn format_of_name(name: &str) -> Option<VolumeFormat> {
    let (_, ext) = name.rsplit_once('.')?;
    ext.parse().ok()
}

fn parse_vmid(s: &str) -> Result<u32, VolumeIdError> {
    // Leading zeros would give two spellings of one VMID.
    if s.is_empty() || s.starts_with('0') || s.len() > 9 {
        return Err(VolumeIdError::InvalidVmid(s.to_owned()));
    }
    let vmid: u32 = s
        .parse()
        .map_err(|_| VolumeIdError::InvalidVmid(s.to_owned()))?;
    if !(MIN_VMID..=MAX_VMID).contains(&vmid) {
        return Err(VolumeIdError::InvalidVmid(s.to_owned()));
    }
    Ok(vmid)
}

/// `vm-VMID-…` or `base-VMID-…` → VMID.
fn image_name_vmid(name: &str) -> Result<u32, VolumeIdError> {
    validate_component(name)?;
    let rest = name
        .strip_prefix("vm-")
        .or_else(|| name.strip_prefix("base-"))
        .ok_or_else(|| VolumeIdError::InvalidName {
            name: name.to_owned(),
            reason: "an image name starts with vm-VMID- or base-VMID-",
        })?;
    let (vmid, tail) = rest
        .split_once('-')
        .ok_or_else(|| VolumeIdError::InvalidName {
            name: name.to_owned(),
            reason: "an image name has the shape vm-VMID-SUFFIX",
        })?;
    if tail.is_empty() || tail.starts_with('.') {
        return Err(VolumeIdError::InvalidName {
            name: name.to_owned(),
            reason: "an image name has a suffix after vm-VMID-",
        });
    }
    parse_vmid(vmid)
}

fn validate_storage(s: &str) -> Result<(), VolumeIdError> {
    let mut chars = s.chars();
    let ok = !s.is_empty()
        && s.len() <= MAX_STORAGE_ID_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VolumeIdError::InvalidStorage(s.to_owned()))
    }
}

/// One safe file-name component. Beyond what the kernel forbids this also refuses:
/// a leading `.` (hidden files; keeps user names disjoint from our `.gpve-tmp.` names),
/// a leading `-` (would read as an option to qemu-img or btrfs), `:` and `,` (QEMU's
/// protocol prefix and `-drive` option separators), whitespace and backslashes.
pub(crate) fn validate_component(name: &str) -> Result<(), VolumeIdError> {
    let bad = |reason| {
        Err(VolumeIdError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("it is longer than 180 bytes");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are not names");
    }
    if name.starts_with('.') {
        return bad("it starts with `.`");
    }
    if name.starts_with('-') {
        return bad("it starts with `-`");
    }
    for c in name.chars() {
        if c == '/' {
            return bad("it contains `/`");
        }
        if c == '\0' {
            return bad("it contains NUL");
        }
        if c.is_control() {
            return bad("it contains a control character");
        }
        if c.is_whitespace() {
            return bad("it contains whitespace");
        }
        if matches!(c, ':' | ',' | '\\' | '@') {
            return bad("it contains one of `:` `,` `\\` `@`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_form() {
        for s in [
            "local:100/vm-100-disk-0.qcow2",
            "local:100/vm-100-disk-12.raw",
            "local:100/base-100-disk-0.qcow2",
            "local-btrfs:vm-100-disk-0",
            "local:iso/debian-12.5.0-amd64-netinst.iso",
            "local:backup/vzdump-qemu-100-2024_01_01-00_00_00.vma.zst",
            "local:snippets/user-data.yaml",
        ] {
            let id: VolumeId = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.to_string(), s);
        }
        let id: VolumeId = "local:100/vm-100-disk-3.qcow2".parse().unwrap();
        assert_eq!(id.storage(), "local");
        assert_eq!(id.vmid(), Some(100));
        assert_eq!(id.content(), Content::Images);
        assert_eq!(id.format_from_name(), Some(VolumeFormat::Qcow2));
        assert_eq!(id.disk_index(), Some(3));
        let flat: VolumeId = "b:vm-101-disk-0".parse().unwrap();
        assert_eq!(flat.vmid(), Some(101));
        assert!(!flat.is_vmid_dir_image());
        let iso: VolumeId = "local:iso/x.iso".parse().unwrap();
        assert_eq!((iso.content(), iso.vmid()), (Content::Iso, None));
    }

    #[test]
    fn rejects_escapes_and_junk() {
        let long = format!("local:snippets/{}", "a".repeat(MAX_NAME_BYTES + 1));
        let bad = [
            "vm-100-disk-0",              // no storage
            ":vm-100-disk-0",             // empty storage
            "1local:vm-100-disk-0",       // storage starts with digit
            "lo/cal:vm-100-disk-0",       // slash in storage
            "local:iso/../../etc/passwd", // traversal
            "local:iso/..",               // dot-dot
            "local:snippets/../x",        // slash in name
            "local:snippets//etc/passwd", // absolute
            "local:/etc/passwd",          // absolute
            "local:100/../101/vm-101-disk-0.raw",
            "local:100/vm-101-disk-0.raw",    // vmid mismatch
            "local:100/vm-100-disk-0",        // no extension in vmid dir
            "local:100/vm-100-disk-0.vmdk",   // unsupported extension
            "local:0100/vm-100-disk-0.raw",   // leading zero
            "local:99/vm-99-disk-0.raw",      // reserved vmid
            "local:snippets/a\0b",            // NUL
            "local:snippets/a\nb",            // control
            "local:snippets/a b",             // whitespace
            "local:snippets/.hidden",         // hidden / temp namespace
            "local:snippets/-rf",             // option injection
            "local:snippets/a,b",             // qemu option separator
            "local:iso/notaniso.txt",         // iso extension
            "local:images/vm-100-disk-0.raw", // images spelled by vmid
            "local:rootdir/x",                // unknown content
            "local:vm-100-disk-0.raw",        // flat with extension
            "local:vm-100-",                  // empty suffix
            "local:ct-100-disk-0",            // wrong prefix
            long.as_str(),
        ];
        for s in bad {
            assert!(s.parse::<VolumeId>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn allocates_next_free_disk() {
        assert_eq!(next_free_disk_index(100, []), 0);
        let names = [
            "vm-100-disk-0.qcow2",
            "vm-100-disk-1",
            "vm-100-disk-3.raw",
            "vm-101-disk-2.raw",
            "vm-100-cloudinit.qcow2",
            "vm-100-disk-x.raw",
        ];
        assert_eq!(next_free_disk_index(100, names), 2);
        assert_eq!(next_free_disk_index(101, names), 0);
        assert_eq!(next_free_disk_index(100, ["vm-100-disk-1"]), 0);
    }

    #[test]
    fn snapshot_names() {
        assert!(SnapshotName::new("before-upgrade_1").is_ok());
        for bad in ["", "1abc", "a/b", "a@b", "a.b", "..", &"a".repeat(41)] {
            assert!(SnapshotName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_as_string() {
        let id: VolumeId = "local:100/vm-100-disk-0.raw".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"local:100/vm-100-disk-0.raw\"");
        let back: VolumeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<VolumeId>("\"local:iso/../x.iso\"").is_err());
    }
}
