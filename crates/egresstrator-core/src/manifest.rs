//! Protect mode's manifest: the list of every ACL key under the kv-path, kept in the
//! kv-path's own key (`egress/acl/` itself).
//!
//! Why it exists: in protect mode an ACL key protects its destinations, so a key that is not
//! read protects nothing. Consul answers a token that may not read one key with the other
//! keys and no sign of the missing one (1.8 adds no marker; newer versions send
//! `X-Consul-Results-Filtered-By-ACLs`, which the client refuses), and a token that may read
//! none of them with the same 404 as an empty prefix. A rotated token would thus open every
//! protected destination. The manifest says what "complete" is: every name it lists must be
//! among the keys read, or the answer is incomplete and policy fails closed.
//!
//! A manifest was chosen over checking the token's own rules at start: reading a policy's
//! rules needs `acl:read`, which an agent's token should not have; rules can change after
//! start; and prefix, exact and deny rules would have to be evaluated like Consul does. A
//! manifest is one more key under the kv-path, read by the same query, and its check is a
//! set comparison.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::acl::{AclName, AclNameError};

/// Why the keys read cannot be taken for the whole protected set.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ManifestError {
    #[error("protect mode needs the manifest, the kv-path's own key listing every acl key, so that a key the token cannot read fails closed instead of leaving what it protects open; it is missing or the token may not read it")]
    Missing,
    #[error("the manifest (the kv-path's own key) line {line}: {error}")]
    Invalid { line: usize, error: AclNameError },
    #[error("the manifest lists {}, but the kv-path has no such key or the token may not read it", quote(.names))]
    Unread { names: Vec<String> },
}

fn quote(names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("acl '{n}'")).collect();
    list.join(", ")
}

/// The names a manifest lists: separated by whitespace or commas, `#` starts a comment.
pub fn parse(text: &str) -> Result<BTreeSet<AclName>, ManifestError> {
    let mut names = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for word in line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
        {
            let name = AclName::parse(word)
                .map_err(|error| ManifestError::Invalid { line: i + 1, error })?;
            names.insert(name);
        }
    }
    Ok(names)
}

/// Checks that every name `manifest` lists is among `keys` (the names read under the
/// kv-path). Keys that the manifest does not list are fine: they protect too.
pub fn check<'a>(
    manifest: Option<&str>,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), ManifestError> {
    let listed = parse(manifest.ok_or(ManifestError::Missing)?)?;
    let read: BTreeSet<&str> = keys.into_iter().collect();
    let unread: Vec<String> = listed
        .iter()
        .filter(|n| !read.contains(n.as_str()))
        .map(ToString::to_string)
        .collect();
    if unread.is_empty() {
        Ok(())
    } else {
        Err(ManifestError::Unread { names: unread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_must_have_been_read() {
        assert_eq!(check(Some("db web"), ["web", "db", "extra"]), Ok(()));
        assert_eq!(check(Some("# none yet\n"), []), Ok(()));
        assert_eq!(
            check(Some("db,\nweb # the web tier\n"), ["web"]),
            Err(ManifestError::Unread {
                names: vec!["db".into()]
            })
        );
        assert_eq!(check(None, ["web"]), Err(ManifestError::Missing));
        let err = check(Some("db ../x"), ["db"]).expect_err("bad name");
        assert!(
            err.to_string()
                .starts_with("the manifest (the kv-path's own key) line 1: invalid acl name"),
            "{err}"
        );
        assert_eq!(
            check(Some("a b"), []).expect_err("unread").to_string(),
            "the manifest lists acl 'a', acl 'b', but the kv-path has no such key or the token may not read it"
        );
    }
}
