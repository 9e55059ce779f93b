//! DNS name patterns of ACL lines: `api.example.com` and `*.example.com`.
//!
//! Names are checked strictly, the way a resolver would put them on the wire: labels of 1 to
//! 63 letters, digits and hyphens, not starting or ending with a hyphen, at most 253
//! characters in all, at least two labels, and a last label that is not all digits (so
//! `10.0.0` is never taken for a name). Internationalized names are written in their `xn--`
//! form; IDNA itself is left out. Matching is case-insensitive: patterns are kept in lower
//! case and the names they are matched against are lowered first.
//!
//! A wildcard `*.example.com` matches **one or more** labels left of `example.com`
//! (`api.example.com`, `a.b.example.com`), never `example.com` itself. The `*` must be the
//! whole leftmost label.

use std::fmt;

use serde::Serialize;

/// Longest name accepted, in characters, without the trailing dot (RFC 1035's 255 octets on
/// the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// A validated name pattern.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamePattern {
    /// `*.` was written: matches names with one or more labels in front of `name`.
    wildcard: bool,
    /// Lower case, no trailing dot.
    name: String,
}

impl NamePattern {
    /// Parses `api.example.com`, `API.Example.com.` or `*.example.com`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = normalize(rest)?;
        if name.split('.').count() < 2 {
            return Err(format!(
                "{s:?} has a single label; write the fully qualified name"
            ));
        }
        Ok(NamePattern { wildcard, name })
    }

    /// Like [`NamePattern::parse`], but a single label is accepted too: `NAME:dns` lines may
    /// name what Docker's embedded server answers (other containers: `db`).
    pub fn parse_resolvable(s: &str) -> Result<Self, String> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        Ok(NamePattern {
            wildcard,
            name: normalize(rest)?,
        })
    }

    /// Whether `qname` (any case, trailing dot or not) is matched.
    pub fn matches(&self, qname: &str) -> bool {
        let q = qname.strip_suffix('.').unwrap_or(qname);
        if q.len() > MAX_NAME_LEN {
            return false;
        }
        if !self.wildcard {
            return q.eq_ignore_ascii_case(&self.name);
        }
        // One or more whole labels in front: "x.example.com" ends with ".example.com" and
        // has something before that dot.
        let suffix_len = self.name.len() + 1;
        q.len() > suffix_len
            && q.is_char_boundary(q.len() - suffix_len)
            && q[q.len() - suffix_len..]
                .strip_prefix('.')
                .is_some_and(|tail| tail.eq_ignore_ascii_case(&self.name))
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The name without `*.`.
    pub fn base(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

impl Serialize for NamePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Checks a plain name (no wildcard) and returns it in lower case without a trailing dot.
pub fn normalize(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name of {} characters is longer than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{s:?} has an empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label {label:?} is longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "character {ch:?} is not allowed in a name (letters, digits and '-'; a '*' only as the whole first label)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} ends in a numeric label; not a DNS name"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_case_insensitively() {
        let p = NamePattern::parse("API.Example.com.").unwrap();
        assert_eq!(p.to_string(), "api.example.com");
        assert!(p.matches("api.example.com"));
        assert!(p.matches("Api.EXAMPLE.com."));
        assert!(!p.matches("x.api.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("api.example.co"));
    }

    #[test]
    fn a_wildcard_matches_one_or_more_labels_but_not_the_apex() {
        let p = NamePattern::parse("*.example.com").unwrap();
        assert!(p.is_wildcard());
        assert_eq!(p.base(), "example.com");
        assert!(p.matches("api.example.com"));
        assert!(p.matches("a.b.EXAMPLE.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches(".example.com"));
        assert!(!p.matches("example.com.evil.net"));
    }

    #[test]
    fn resolvable_names_may_be_single_labels() {
        let p = NamePattern::parse_resolvable("db").unwrap();
        assert!(p.matches("DB"));
        assert!(!p.matches("db.example.com"));
        assert!(NamePattern::parse("db").is_err());
        assert!(NamePattern::parse_resolvable("d_b").is_err());
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        for (bad, why) in [
            ("localhost", "single label"),
            ("*.com", "single label"),
            ("a..b.com", "empty label"),
            ("-a.example.com", "'-'"),
            ("a-.example.com", "'-'"),
            ("a_b.example.com", "not allowed"),
            ("a.*.example.com", "not allowed"),
            ("**.example.com", "not allowed"),
            ("10.0.0.1", "numeric"),
            ("", "empty"),
            ("ex\u{e4}mple.com", "not allowed"),
        ] {
            let err = NamePattern::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(NamePattern::parse(&long_label).unwrap_err().contains("63"));
        let long = format!("{}com", "abcdefghi.".repeat(26));
        assert!(NamePattern::parse(&long).unwrap_err().contains("253"));
        assert!(NamePattern::parse(&format!("{}com", "abcdefghi.".repeat(25))).is_ok());
    }
}
