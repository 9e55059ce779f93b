//! The pure core of egresstrator: ACL grammar, policy compilation and ruleset rendering.
//!
//! Everything here is a function of plain data. This crate must never do I/O: no Docker,
//! no Consul, no namespaces, no clocks, no async runtime. That keeps the security-relevant
//! logic testable without root and lets golden tests pin exactly what reaches the kernel.
//!
//! Flow: [`acl`] parses Consul values → [`policy`] compiles a workload's ACLs into a
//! backend-neutral [`ruleset::Ruleset`] → [`render`] turns it into an nft script or
//! `iptables-restore --noflush` input. Name destinations: [`name`] is their grammar, and
//! [`dns_answer`] reads the DNS answers the agent's learner holds (pure, bounded).

pub mod acl;
pub mod dns_answer;
pub mod hook_proto;
pub mod manifest;
pub mod merge;
pub mod name;
pub mod policy;
pub mod render;
pub mod ruleset;

pub use acl::{Acl, AclName, AclTable};
pub use policy::{compile, CompileError, Compiled, Mode, PolicyInput, WorkloadPolicy};
pub use ruleset::{
    Dest, NameDest, NameRule, Origin, PortRange, Posture, Proto, ResolveRule, Rule, Ruleset,
};
