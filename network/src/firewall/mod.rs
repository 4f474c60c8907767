//! The nftables firewall: a Proxmox-like ruleset model ([`model`]), compiled to a plan of
//! nftables objects ([`plan`]) and applied atomically through nftnl ([`nft`]).

pub mod model;
pub mod nft;
pub mod plan;

pub use model::{
    Action, AddrMatch, Cidr, Direction, FirewallRule, GuestFirewall, IpSet, PortSpec, Proto,
    RuleError, Ruleset,
};
pub use nft::NftError;
pub use plan::{CompileOptions, NftPlan, TABLE_NAME, compile};

use crate::netns::Netns;

/// Errors of [`Firewall`].
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("the ruleset is invalid")]
    Invalid(#[from] RuleError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// The project's nftables tables in one network namespace.
#[derive(Debug, Clone)]
pub struct Firewall {
    netns: Netns,
    opts: CompileOptions,
}

impl Firewall {
    /// Probes (once per process) what the kernel supports, for [`Firewall::apply`].
    pub fn new(netns: Netns) -> Self {
        Self {
            netns,
            opts: CompileOptions {
                reject_supported: bridge_reject_supported(),
            },
        }
    }

    pub fn options(&self) -> CompileOptions {
        self.opts
    }

    /// Validates, compiles and installs `ruleset`, replacing the previous one atomically.
    /// Blocking (one netlink round trip); call from `spawn_blocking` in async code.
    pub fn apply(&self, ruleset: &Ruleset) -> Result<NftPlan, FirewallError> {
        let plan = compile(ruleset, &self.opts)?;
        self.apply_plan(&plan)?;
        Ok(plan)
    }

    /// Installs an already compiled plan (same atomicity as [`Firewall::apply`]).
    pub fn apply_plan(&self, plan: &NftPlan) -> Result<(), FirewallError> {
        Ok(nft::apply_plan(&self.netns, plan)?)
    }

    /// Removes the project's tables; other tables are never touched.
    pub fn remove(&self) -> Result<(), FirewallError> {
        Ok(nft::remove_tables(&self.netns)?)
    }
}

/// Whether REJECT can be used on this kernel (cached [`nft::probe_bridge_reject`]; a probe
/// that cannot run counts as unsupported).
pub fn bridge_reject_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| nft::probe_bridge_reject().unwrap_or(false))
}
