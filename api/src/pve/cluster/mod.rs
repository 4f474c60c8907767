//! `/cluster`: cluster-wide views.

pub mod firewall;
pub mod ha;
pub mod nextid;
pub mod resources;
