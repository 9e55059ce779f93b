//! Rendering a [`Ruleset`](crate::ruleset::Ruleset) for a firewall backend.
//!
//! Renderers are pure: they return text, and the applier elsewhere loads it atomically inside
//! the target namespace. Output is deterministic, so its hash says whether a namespace needs
//! a new apply.

pub mod nft;

use sha2::{Digest, Sha256};

/// Hex SHA-256 of rendered output; equal hashes mean an apply would change nothing.
pub fn hash(rendered: &str) -> String {
    let digest = Sha256::digest(rendered.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
