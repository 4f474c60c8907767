//! gpve's Proxmox-compatible REST API, the Rust client library and the binaries.
//!
//! - [`pve`]: the routes under `/api2/json` (the module tree is the URL tree);
//! - [`router`]: the pipeline every route shares (auth, CSRF, parameter schema, privilege);
//! - [`schema`]: declarative parameter schemas; [`error`]: `ApiError` → HTTP status;
//! - [`auth`], [`access_db`]: tickets, CSRF tokens, passwords, API tokens, users;
//! - [`rbac`]: privileges, roles, ACLs, pools and the permission evaluator; [`audit`]: the
//!   hash-chained audit log;
//! - [`v1`]: gpve's own API under `/api/v1` (actor introspection); [`metrics`]: `/metrics`
//!   and the request-metrics layer;
//! - [`datadir`], [`server`]: `gpve-server init` and `gpve-server run`.

pub mod access_db;
pub mod agent;
pub mod audit;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod datadir;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod pve;
pub mod rbac;
pub mod router;
pub mod schema;
pub mod server;
pub mod state;
pub mod tenancy;
pub mod tree;
pub mod v1;
pub mod vcluster;
pub mod watch;
