//! Proxmox-style role-based access control: privileges, roles, ACLs on paths, and the one
//! evaluator that answers "may this principal do P on path X".
//!
//! Everything here is pure (no store, no clock) so the precedence rules are unit-tested
//! directly; [`db`] loads an [`AccessConfig`] from the store and [`Authz`] caches one
//! request's answers.
//!
//! Precedence, as Proxmox's `PVE::AccessControl::roles`:
//! - the path is walked from `/` down; at each level the principal's own entries (that
//!   apply: on the final path, or propagating) replace everything inherited, else its
//!   groups' entries replace it, else the inherited set stays;
//! - a `NoAccess` role in the final set removes every privilege;
//! - `root@pam` has every privilege everywhere (its privilege-separated tokens do not);
//! - a VM in a pool (or a storage in a pool) also gets the roles of `/pool/{pool}`;
//! - a privilege-separated token gets only its own ACL entries, intersected with its
//!   user's privileges: a token never exceeds its user.

pub mod authz;
pub mod db;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use authz::Authz;

/// Every privilege Proxmox VE 9 knows, in a fixed order (bit `i` of [`Privs`] is entry `i`).
pub const PRIVILEGES: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Group.Allocate",
    "Mapping.Audit",
    "Mapping.Modify",
    "Mapping.Use",
    "Permissions.Modify",
    "Pool.Allocate",
    "Pool.Audit",
    "Realm.Allocate",
    "Realm.AllocateUser",
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "Sys.AccessNetwork",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Incoming",
    "Sys.Modify",
    "Sys.PowerMgmt",
    "Sys.Syslog",
    "User.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.FileRead",
    "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.FileWrite",
    "VM.GuestAgent.Unrestricted",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Replicate",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// Any one of these allows changing a VM's configuration (`/nodes/{node}/qemu/{vmid}/config`).
pub const VM_CONFIG_PRIVS: &[&str] = &[
    "VM.Config.Disk",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.HWType",
    "VM.Config.Options",
    "VM.Config.Cloudinit",
];

/// Parameters of a VM config change that are not configuration keys.
const VM_CONFIG_META: &[&str] = &[
    "node",
    "vmid",
    "digest",
    "skiplock",
    "force",
    "delete",
    "revert",
    "background_delay",
];

/// The privilege a VM configuration key needs on `/vms/{vmid}`, as Proxmox's
/// `check_vm_modify_config_perm`; `None` for keys only `root@pam` may set (`args`,
/// `hookscript`: they run code on the host). `value` tells a CD-ROM drive from a disk.
pub fn vm_config_privilege(key: &str, value: Option<&str>) -> Option<&'static str> {
    let base = key.trim_end_matches(|c: char| c.is_ascii_digit());
    Some(match base {
        "args" | "hookscript" => return None,
        "memory" | "balloon" | "shares" => "VM.Config.Memory",
        "cores" | "sockets" | "cpu" | "cpulimit" | "cpuunits" | "vcpus" | "numa" | "affinity" => {
            "VM.Config.CPU"
        }
        "net" => "VM.Config.Network",
        "ide" | "sata" | "scsi" | "virtio" | "efidisk" | "tpmstate" | "unused" => {
            if value.is_some_and(|v| v.contains("media=cdrom")) {
                "VM.Config.CDROM"
            } else {
                "VM.Config.Disk"
            }
        }
        "cicustom" | "cipassword" | "citype" | "ciupgrade" | "ciuser" | "ipconfig"
        | "nameserver" | "searchdomain" | "sshkeys" => "VM.Config.Cloudinit",
        "vga" | "hostpci" | "usb" | "serial" | "parallel" | "audio" | "rng" | "machine"
        | "bios" | "scsihw" | "keyboard" | "tablet" | "watchdog" | "ivshmem" | "virtiofs"
        | "spice_enhancements" | "smbios" | "arch" | "kvm" | "acpi" | "localtime" | "hugepages"
        | "keephugepages" | "amd-sev" | "intel-tdx" => "VM.Config.HWType",
        _ => "VM.Config.Options",
    })
}

/// Whether `key` of a config request is a configuration key (not `node`, `digest`, ...).
pub fn is_vm_config_key(key: &str) -> bool {
    !VM_CONFIG_META.contains(&key)
}

/// Proxmox's privilege groups per category: (category, root-only, admin, user, audit).
/// The built-in roles are derived from them exactly as `PVE::AccessControl::create_roles`.
type PrivGroup = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);
const PRIV_GROUPS: &[PrivGroup] = &[
    (
        "VM",
        &[],
        &[
            "VM.Config.Disk",
            "VM.Config.CPU",
            "VM.Config.Memory",
            "VM.Config.Network",
            "VM.Config.HWType",
            "VM.Config.Options",
            "VM.Allocate",
            "VM.Clone",
            "VM.Migrate",
            "VM.Replicate",
            "VM.Snapshot",
            "VM.Snapshot.Rollback",
            "VM.GuestAgent.FileRead",
            "VM.GuestAgent.FileWrite",
            "VM.GuestAgent.FileSystemMgmt",
            "VM.GuestAgent.Unrestricted",
        ],
        &[
            "VM.Config.CDROM",
            "VM.Config.Cloudinit",
            "VM.Console",
            "VM.Backup",
            "VM.PowerMgmt",
            "VM.GuestAgent.Audit",
        ],
        &["VM.Audit"],
    ),
    (
        "Sys",
        &[
            "Sys.PowerMgmt",
            "Sys.Modify",
            "Sys.Incoming",
            "Sys.AccessNetwork",
        ],
        &["Permissions.Modify", "Sys.Console", "Sys.Syslog"],
        &[],
        &["Sys.Audit"],
    ),
    (
        "Datastore",
        &[],
        &["Datastore.Allocate", "Datastore.AllocateTemplate"],
        &["Datastore.AllocateSpace"],
        &["Datastore.Audit"],
    ),
    ("SDN", &[], &["SDN.Allocate"], &["SDN.Use"], &["SDN.Audit"]),
    (
        "User",
        &["Realm.Allocate"],
        &["Realm.AllocateUser", "User.Modify", "Group.Allocate"],
        &[],
        &[],
    ),
    ("Pool", &[], &["Pool.Allocate"], &[], &["Pool.Audit"]),
    (
        "Mapping",
        &[],
        &["Mapping.Modify"],
        &["Mapping.Use"],
        &["Mapping.Audit"],
    ),
];

/// The role that denies everything below where it is set.
pub const NO_ACCESS: &str = "NoAccess";
/// The built-in administrator (the only user with it by construction is `root@pam`).
pub const ROOT_USER: &str = "root@pam";

/// Failures of RBAC input (names, paths, privilege lists).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RbacError {
    #[error("unknown privilege '{0}'")]
    UnknownPrivilege(String),
    #[error("invalid ACL path '{0}'")]
    InvalidPath(String),
    #[error("role '{0}' is built in and cannot be changed")]
    BuiltinRole(String),
    #[error("no such role '{0}'")]
    NoSuchRole(String),
}

/// A set of privileges (bit `i` is [`PRIVILEGES`]`[i]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Privs(pub u64);

impl Privs {
    /// No privilege.
    pub const NONE: Privs = Privs(0);

    /// Every privilege.
    pub fn all() -> Privs {
        Privs((1u64 << PRIVILEGES.len()) - 1)
    }

    /// The bit of one privilege name.
    pub fn of(name: &str) -> Result<Privs, RbacError> {
        PRIVILEGES
            .iter()
            .position(|p| *p == name)
            .map(|i| Privs(1 << i))
            .ok_or_else(|| RbacError::UnknownPrivilege(name.to_string()))
    }

    /// The set of several names; fails on the first unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Privs, RbacError> {
        names
            .into_iter()
            .try_fold(Privs::NONE, |acc, n| Ok(acc.union(Privs::of(n)?)))
    }

    pub fn union(self, o: Privs) -> Privs {
        Privs(self.0 | o.0)
    }

    pub fn intersect(self, o: Privs) -> Privs {
        Privs(self.0 & o.0)
    }

    /// Whether every privilege of `o` is in `self`.
    pub fn contains(self, o: Privs) -> bool {
        self.0 & o.0 == o.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names, in [`PRIVILEGES`] order.
    pub fn names(self) -> Vec<&'static str> {
        PRIVILEGES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, p)| *p)
            .collect()
    }
}

fn set(names: &[&[&str]]) -> Privs {
    // The tables above only name known privileges (unit-tested), so unknown names cannot
    // occur; they would be dropped rather than panic.
    names
        .iter()
        .flat_map(|l| l.iter())
        .filter_map(|n| Privs::of(n).ok())
        .fold(Privs::NONE, Privs::union)
}

/// The built-in roles and their privileges, as Proxmox derives them.
pub fn builtin_roles() -> BTreeMap<String, Privs> {
    let mut roles = BTreeMap::new();
    roles.insert("Administrator".to_string(), Privs::all());
    roles.insert(NO_ACCESS.to_string(), Privs::NONE);
    let mut admin = Privs::NONE;
    let mut auditor = Privs::NONE;
    for (cat, _root, adm, user, audit) in PRIV_GROUPS {
        roles.insert(format!("PVE{cat}Admin"), set(&[adm, user, audit]));
        if !user.is_empty() {
            roles.insert(format!("PVE{cat}User"), set(&[user, audit]));
        }
        admin = admin.union(set(&[adm, user, audit]));
        auditor = auditor.union(set(&[audit]));
    }
    roles.insert("PVEAdmin".to_string(), admin);
    roles.insert("PVEAuditor".to_string(), auditor);
    roles.insert("PVEPoolUser".to_string(), set(&[&["Pool.Audit"]]));
    roles.insert(
        "PVETemplateUser".to_string(),
        set(&[&["VM.Clone", "VM.Audit"]]),
    );
    roles
}

/// Whether `roleid` names a built-in role.
pub fn is_builtin_role(roleid: &str) -> bool {
    builtin_roles().contains_key(roleid)
}

/// Normalise an ACL path as Proxmox does (`//` collapsed, trailing `/` dropped) and refuse
/// anything outside the known object tree: `.` and `..` components, odd characters, or
/// unknown top-level objects. Returns the canonical path.
pub fn normalize_path(path: &str) -> Result<String, RbacError> {
    let bad = || RbacError::InvalidPath(path.chars().take(128).collect());
    if path.len() > 512 {
        return Err(bad());
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for p in &parts {
        if *p == "." || *p == ".." {
            return Err(bad());
        }
        if !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@' | '!'))
        {
            return Err(bad());
        }
    }
    let ok = match parts.as_slice() {
        [] => true,
        ["access"] | ["access", "groups" | "realm"] => true,
        ["access", "groups" | "realm", _] => true,
        ["cluster"] | ["cluster", _] => true,
        ["nodes"] | ["nodes", _] => true,
        ["pool"] | ["pool", ..] => parts.len() <= 4,
        ["sdn", ..] => parts.len() <= 6,
        ["mapping", ..] => parts.len() <= 3,
        ["storage"] | ["storage", _] => true,
        ["vms"] => true,
        ["vms", id] => id.parse::<u32>().is_ok(),
        _ => false,
    };
    if !ok {
        return Err(bad());
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The role assignments on one ACL path: role id → propagate.
pub type RoleMap = BTreeMap<String, bool>;

/// All entries on one ACL path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclNode {
    /// userid → roles.
    #[serde(default)]
    pub users: BTreeMap<String, RoleMap>,
    /// groupid → roles.
    #[serde(default)]
    pub groups: BTreeMap<String, RoleMap>,
    /// `userid!tokenid` → roles.
    #[serde(default)]
    pub tokens: BTreeMap<String, RoleMap>,
}

impl AclNode {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.tokens.is_empty()
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User {
        userid: String,
        groups: BTreeSet<String>,
    },
    Token {
        userid: String,
        tokenid: String,
        privsep: bool,
        /// The user's groups (used for the user half of a privsep token's check).
        groups: BTreeSet<String>,
    },
}

impl Principal {
    pub fn userid(&self) -> &str {
        match self {
            Principal::User { userid, .. } | Principal::Token { userid, .. } => userid,
        }
    }
}

/// Everything the evaluator needs, loaded in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Built-in and custom roles.
    pub roles: BTreeMap<String, Privs>,
    /// Canonical path → entries.
    pub acl: BTreeMap<String, AclNode>,
    /// VM id → its pool.
    pub vm_pool: BTreeMap<u32, String>,
    /// Storage id → its pool.
    pub storage_pool: BTreeMap<String, String>,
}

/// Whose entries to read at each ACL level.
enum Subject<'a> {
    User(&'a str, &'a BTreeSet<String>),
    Token(&'a str),
}

impl AccessConfig {
    /// A configuration with only the built-in roles and no ACL.
    pub fn builtin() -> Self {
        AccessConfig {
            roles: builtin_roles(),
            ..Default::default()
        }
    }

    /// The roles `subject` holds on `path` (already normalised), per Proxmox precedence.
    fn roles_on(&self, subject: &Subject<'_>, path: &str) -> RoleMap {
        let mut roles = RoleMap::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut cur = String::new();
        for depth in 0..=parts.len() {
            if depth > 0 {
                cur.push('/');
                cur.push_str(parts[depth - 1]);
            }
            let level = if cur.is_empty() { "/" } else { cur.as_str() };
            let final_level = depth == parts.len();
            let Some(node) = self.acl.get(level) else {
                continue;
            };
            let applicable = |ri: &RoleMap, into: &mut Option<RoleMap>| {
                for (role, propagate) in ri {
                    if final_level || *propagate {
                        into.get_or_insert_with(RoleMap::new)
                            .insert(role.clone(), *propagate);
                    }
                }
            };
            match subject {
                Subject::Token(full) => {
                    let mut new = None;
                    if let Some(ri) = node.tokens.get(*full) {
                        applicable(ri, &mut new);
                    }
                    if let Some(n) = new {
                        roles = n;
                    }
                }
                Subject::User(userid, groups) => {
                    let mut new = None;
                    if let Some(ri) = node.users.get(*userid) {
                        applicable(ri, &mut new);
                    }
                    if let Some(n) = new {
                        roles = n;
                        continue;
                    }
                    for (g, ri) in &node.groups {
                        if groups.contains(g) {
                            applicable(ri, &mut new);
                        }
                    }
                    if let Some(n) = new {
                        roles = n;
                    }
                }
            }
        }
        if let Some(p) = roles.get(NO_ACCESS) {
            let p = *p;
            roles.clear();
            roles.insert(NO_ACCESS.to_string(), p);
        }
        roles
    }

    fn privs_of(&self, roles: &RoleMap) -> Privs {
        roles
            .keys()
            .filter_map(|r| self.roles.get(r))
            .fold(Privs::NONE, |a, p| a.union(*p))
    }

    /// Privileges of `subject` on `path`, with the pool of a VM or storage path added.
    fn subject_privs(&self, subject: &Subject<'_>, path: &str) -> Privs {
        let mut privs = self.privs_of(&self.roles_on(subject, path));
        let pool = match path.strip_prefix("/vms/") {
            Some(id) => id.parse::<u32>().ok().and_then(|id| self.vm_pool.get(&id)),
            None => path
                .strip_prefix("/storage/")
                .and_then(|s| self.storage_pool.get(s)),
        };
        if let Some(pool) = pool {
            privs = privs.union(self.privs_of(&self.roles_on(subject, &format!("/pool/{pool}"))));
        }
        privs
    }

    /// The privileges `principal` holds on `path`. An invalid path grants nothing.
    pub fn privileges(&self, principal: &Principal, path: &str) -> Privs {
        let Ok(path) = normalize_path(path) else {
            return Privs::NONE;
        };
        match principal {
            Principal::User { userid, groups } => {
                if userid == ROOT_USER {
                    return Privs::all();
                }
                self.subject_privs(&Subject::User(userid, groups), &path)
            }
            Principal::Token {
                userid,
                tokenid,
                privsep,
                groups,
            } => {
                let user = if userid == ROOT_USER {
                    Privs::all()
                } else {
                    self.subject_privs(&Subject::User(userid, groups), &path)
                };
                if !privsep {
                    return user;
                }
                let full = format!("{userid}!{tokenid}");
                self.subject_privs(&Subject::Token(&full), &path)
                    .intersect(user)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, groups: &[&str]) -> Principal {
        Principal::User {
            userid: id.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn grant(cfg: &mut AccessConfig, path: &str, kind: &str, who: &str, role: &str, prop: bool) {
        let node = cfg.acl.entry(path.to_string()).or_default();
        let map = match kind {
            "user" => &mut node.users,
            "group" => &mut node.groups,
            _ => &mut node.tokens,
        };
        map.entry(who.to_string())
            .or_default()
            .insert(role.to_string(), prop);
    }

    fn has(cfg: &AccessConfig, p: &Principal, path: &str, privs: &[&str]) -> bool {
        cfg.privileges(p, path)
            .contains(Privs::parse(privs.iter().copied()).unwrap())
    }

    #[test]
    fn tables_name_only_known_privileges_and_roles_match_proxmox() {
        for (_, a, b, c, d) in PRIV_GROUPS {
            for p in a.iter().chain(*b).chain(*c).chain(*d) {
                Privs::of(p).unwrap();
            }
        }
        let roles = builtin_roles();
        for r in [
            "Administrator",
            "NoAccess",
            "PVEAdmin",
            "PVEAuditor",
            "PVEVMAdmin",
            "PVEVMUser",
            "PVEDatastoreAdmin",
            "PVEDatastoreUser",
            "PVESysAdmin",
            "PVEUserAdmin",
            "PVEPoolAdmin",
            "PVEPoolUser",
            "PVESDNAdmin",
            "PVESDNUser",
            "PVETemplateUser",
            "PVEMappingAdmin",
            "PVEMappingUser",
        ] {
            assert!(roles.contains_key(r), "{r}");
        }
        let vmuser = roles["PVEVMUser"].names();
        assert_eq!(
            vmuser,
            vec![
                "VM.Audit",
                "VM.Backup",
                "VM.Config.CDROM",
                "VM.Config.Cloudinit",
                "VM.Console",
                "VM.GuestAgent.Audit",
                "VM.PowerMgmt"
            ]
        );
        // PVEAdmin lacks the root-only privileges (Sys.Modify, Sys.PowerMgmt, Realm.Allocate).
        let admin = roles["PVEAdmin"];
        assert!(!admin.contains(Privs::of("Sys.Modify").unwrap()));
        assert!(!admin.contains(Privs::of("Realm.Allocate").unwrap()));
        assert!(admin.contains(Privs::of("Permissions.Modify").unwrap()));
        assert_eq!(
            roles["PVEAuditor"].names(),
            vec![
                "Datastore.Audit",
                "Mapping.Audit",
                "Pool.Audit",
                "SDN.Audit",
                "Sys.Audit",
                "VM.Audit"
            ]
        );
        assert_eq!(roles["Administrator"], Privs::all());
        assert!(roles["NoAccess"].is_empty());
    }

    #[test]
    fn paths_are_normalised_and_tricks_refused() {
        assert_eq!(normalize_path("").unwrap(), "/");
        assert_eq!(normalize_path("//vms//100/").unwrap(), "/vms/100");
        assert_eq!(normalize_path("/storage/local").unwrap(), "/storage/local");
        assert_eq!(normalize_path("/pool/p1").unwrap(), "/pool/p1");
        assert_eq!(normalize_path("/sdn/zones/z1").unwrap(), "/sdn/zones/z1");
        for bad in [
            "/vms/../",
            "/vms/../access",
            "/vms/./100",
            "/vms/abc",
            "/nope",
            "/vms/100/extra",
            "/storage/a b",
            "/access/users",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn propagation_and_depth() {
        let mut cfg = AccessConfig::builtin();
        let alice = user("alice@pve", &[]);
        grant(&mut cfg, "/vms", "user", "alice@pve", "PVEVMUser", true);
        assert!(has(&cfg, &alice, "/vms/100", &["VM.PowerMgmt"]));
        assert!(has(&cfg, &alice, "/vms", &["VM.PowerMgmt"]));
        assert!(!has(&cfg, &alice, "/", &["VM.Audit"]));
        assert!(!has(&cfg, &alice, "/storage/local", &["Datastore.Audit"]));
        // Not propagated: applies only on the path itself.
        let bob = user("bob@pve", &[]);
        grant(&mut cfg, "/vms", "user", "bob@pve", "PVEVMAdmin", false);
        assert!(has(&cfg, &bob, "/vms", &["VM.Allocate"]));
        assert!(!has(&cfg, &bob, "/vms/100", &["VM.Allocate"]));
        // A deeper entry replaces the inherited roles (not a union).
        grant(
            &mut cfg,
            "/vms/101",
            "user",
            "alice@pve",
            "PVEAuditor",
            true,
        );
        assert!(has(&cfg, &alice, "/vms/101", &["VM.Audit"]));
        assert!(!has(&cfg, &alice, "/vms/101", &["VM.PowerMgmt"]));
        assert!(has(&cfg, &alice, "/vms/102", &["VM.PowerMgmt"]));
    }

    #[test]
    fn user_over_group_and_no_access() {
        let mut cfg = AccessConfig::builtin();
        let carol = user("carol@pve", &["ops"]);
        grant(&mut cfg, "/", "group", "ops", "PVEAdmin", true);
        assert!(has(&cfg, &carol, "/vms/7", &["VM.Allocate"]));
        // A user entry at the same level wins over the group entry.
        grant(&mut cfg, "/", "user", "carol@pve", "PVEAuditor", true);
        assert!(!has(&cfg, &carol, "/vms/7", &["VM.Allocate"]));
        assert!(has(&cfg, &carol, "/vms/7", &["VM.Audit"]));
        // A group entry deeper than the user entry still wins (deeper first).
        grant(&mut cfg, "/vms", "group", "ops", "PVEVMAdmin", true);
        assert!(has(&cfg, &carol, "/vms/7", &["VM.Allocate"]));
        // NoAccess combined with other roles at one level denies everything.
        grant(&mut cfg, "/vms/8", "group", "ops", NO_ACCESS, true);
        grant(&mut cfg, "/vms/8", "group", "ops", "PVEVMAdmin", true);
        assert!(cfg.privileges(&carol, "/vms/8").is_empty());
        // Other groups' entries do not apply.
        let dave = user("dave@pve", &["dev"]);
        assert!(cfg.privileges(&dave, "/vms/7").is_empty());
        // root@pam has everything, everywhere.
        assert_eq!(cfg.privileges(&user(ROOT_USER, &[]), "/x/y"), Privs::NONE);
        assert_eq!(
            cfg.privileges(&user(ROOT_USER, &[]), "/vms/1"),
            Privs::all()
        );
    }

    #[test]
    fn pools_extend_vm_paths() {
        let mut cfg = AccessConfig::builtin();
        let erin = user("erin@pve", &[]);
        cfg.vm_pool.insert(200, "tenant-a".into());
        cfg.storage_pool.insert("fast".into(), "tenant-a".into());
        grant(
            &mut cfg,
            "/pool/tenant-a",
            "user",
            "erin@pve",
            "PVEVMAdmin",
            true,
        );
        grant(
            &mut cfg,
            "/pool/tenant-a",
            "user",
            "erin@pve",
            "PVEDatastoreUser",
            true,
        );
        assert!(has(&cfg, &erin, "/vms/200", &["VM.Allocate"]));
        assert!(!has(&cfg, &erin, "/vms/201", &["VM.Allocate"]));
        assert!(has(
            &cfg,
            &erin,
            "/storage/fast",
            &["Datastore.AllocateSpace"]
        ));
        assert!(!has(
            &cfg,
            &erin,
            "/storage/slow",
            &["Datastore.AllocateSpace"]
        ));
    }

    #[test]
    fn privsep_tokens_never_exceed_their_user() {
        let mut cfg = AccessConfig::builtin();
        let tok = |privsep| Principal::Token {
            userid: "frank@pve".into(),
            tokenid: "ci".into(),
            privsep,
            groups: BTreeSet::new(),
        };
        grant(&mut cfg, "/vms", "user", "frank@pve", "PVEVMUser", true);
        // Without privilege separation the token is its user.
        assert!(has(&cfg, &tok(false), "/vms/1", &["VM.PowerMgmt"]));
        // With it, only its own entries count...
        assert!(cfg.privileges(&tok(true), "/vms/1").is_empty());
        // ...intersected with the user's: Administrator on the token gives only PVEVMUser.
        grant(
            &mut cfg,
            "/",
            "token",
            "frank@pve!ci",
            "Administrator",
            true,
        );
        assert!(has(&cfg, &tok(true), "/vms/1", &["VM.PowerMgmt"]));
        assert!(!has(&cfg, &tok(true), "/vms/1", &["VM.Allocate"]));
        assert!(cfg.privileges(&tok(true), "/storage/x").is_empty());
        // root's privsep tokens get exactly their own entries.
        let root_tok = Principal::Token {
            userid: ROOT_USER.into(),
            tokenid: "t".into(),
            privsep: true,
            groups: BTreeSet::new(),
        };
        assert!(cfg.privileges(&root_tok, "/").is_empty());
        grant(&mut cfg, "/vms", "token", "root@pam!t", "PVEAuditor", true);
        assert_eq!(
            cfg.privileges(&root_tok, "/vms/5"),
            builtin_roles()["PVEAuditor"]
        );
        assert!(cfg.privileges(&root_tok, "/storage/x").is_empty());
    }

    #[test]
    fn vm_config_keys_map_to_proxmox_privileges() {
        assert_eq!(
            vm_config_privilege("memory", None),
            Some("VM.Config.Memory")
        );
        assert_eq!(vm_config_privilege("net0", None), Some("VM.Config.Network"));
        assert_eq!(
            vm_config_privilege("scsi0", Some("local:8")),
            Some("VM.Config.Disk")
        );
        assert_eq!(
            vm_config_privilege("ide2", Some("none,media=cdrom")),
            Some("VM.Config.CDROM")
        );
        assert_eq!(
            vm_config_privilege("ipconfig0", None),
            Some("VM.Config.Cloudinit")
        );
        assert_eq!(vm_config_privilege("name", None), Some("VM.Config.Options"));
        assert_eq!(vm_config_privilege("args", None), None);
        assert!(!is_vm_config_key("digest") && is_vm_config_key("cores"));
    }

    #[test]
    fn privilege_parsing() {
        assert!(Privs::parse(["VM.Audit", "Sys.Audit"]).is_ok());
        assert_eq!(
            Privs::parse(["VM.Audit", "VM.Nope"]),
            Err(RbacError::UnknownPrivilege("VM.Nope".into()))
        );
        assert_eq!(Privs::all().names().len(), PRIVILEGES.len());
    }
}
