//! `/cluster`: cluster-wide views.

pub mod firewall;
pub mod nextid;
pub mod resources;
