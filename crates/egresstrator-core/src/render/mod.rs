//! Rendering a [`Ruleset`](crate::ruleset::Ruleset) for a firewall backend.
//!
//! Renderers are pure: they return text, and the applier elsewhere loads it atomically inside
//! the target namespace. Output is deterministic, so its hash says whether a namespace needs
//! a new apply.

pub mod guard;
pub mod iptables;
pub mod nft;

use sha2::{Digest, Sha256};

/// Hex SHA-256 of rendered output; equal hashes mean an apply would change nothing.
pub fn hash(rendered: &str) -> String {
    let digest = Sha256::digest(rendered.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The workload's ACL names as one label for comments in rendered scripts: joined with `,`,
/// `-` when there are none.
///
/// Names from [`crate::policy::compile`] are validated (`[A-Za-z0-9._-]`), but a [`Ruleset`]
/// can be built by hand; anything else is replaced with `_` so that no name can end a comment
/// line or a quoted string and inject a command into a script.
///
/// [`Ruleset`]: crate::ruleset::Ruleset
pub(crate) fn acl_label(acls: &[String]) -> String {
    if acls.is_empty() {
        return "-".to_owned();
    }
    acls.iter()
        .map(|name| {
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_label_cannot_inject() {
        let acls = vec!["web".to_owned(), "x\"\nflush ruleset #".to_owned()];
        assert_eq!(acl_label(&acls), "web,x__flush_ruleset__");
        assert_eq!(acl_label(&[]), "-");
    }
}
