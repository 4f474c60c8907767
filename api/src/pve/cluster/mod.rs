//! `/cluster`: cluster-wide views.

pub mod nextid;
pub mod resources;
