//! The ACL grammar: `parse_acl` (one Consul value, line by line), `parse_acl_list`
//! (`EGRESSTRATOR_ACL`, `--rules`), `AclName::parse` and `parse_service_ref`.
//!
//! Input: any text, used as an ACL value, as an ACL list and line by line as names and
//! service references. Checked: no panic; line numbers point at real lines, in order, and
//! errors and entries never share a line; every accepted destination and service reference
//! prints in a form that parses back to itself (with no warning: what is printed is already
//! canonical); an accepted name never contains `/` or `..`; an accepted list is bounded,
//! free of duplicates and parses back from its own join.
#![no_main]

use std::collections::BTreeSet;

use egresstrator_core::acl::{
    parse_acl, parse_acl_list, parse_service_ref, AclName, Entry, LIST_MAX_BYTES, LIST_MAX_NAMES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let nlines = text.lines().count();

    match parse_acl("fuzz", text) {
        Ok(acl) => {
            let mut prev = 0;
            for line in &acl.lines {
                assert!(
                    line.line > prev && line.line <= nlines,
                    "line {}",
                    line.line
                );
                prev = line.line;
                let printed = match &line.entry {
                    Entry::Net(d) => {
                        assert!(d.ports.low >= 1 && d.ports.low <= d.ports.high, "{d}");
                        assert_eq!(d.net.trunc(), d.net, "{d} keeps host bits");
                        d.to_string()
                    }
                    Entry::Service(s) => s.to_string(),
                    Entry::Resolve(p) => format!("{p}:dns"),
                    Entry::Name(n) => {
                        assert!(n.ports.low >= 1 && n.ports.low <= n.ports.high, "{n}");
                        n.to_string()
                    }
                };
                let again = parse_acl("fuzz", &printed)
                    .unwrap_or_else(|e| panic!("{printed:?} does not parse back: {e}"));
                assert_eq!(again.lines.len(), 1, "{printed:?}");
                assert_eq!(again.lines[0].entry, line.entry, "{printed:?}");
                assert!(
                    again.warnings.is_empty(),
                    "{printed:?}: {:?}",
                    again.warnings
                );
            }
            for w in &acl.warnings {
                assert!(acl.lines.iter().any(|l| l.line == w.line), "{w}");
            }
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            let mut prev = 0;
            for err in &e.errors {
                assert!(err.line > prev && err.line <= nlines, "{err}");
                prev = err.line;
                assert!(!err.to_string().is_empty());
            }
        }
    }

    match parse_acl_list(text) {
        Ok(names) => {
            assert!(text.len() <= LIST_MAX_BYTES);
            assert!(names.len() <= LIST_MAX_NAMES);
            let set: BTreeSet<&AclName> = names.iter().collect();
            assert_eq!(set.len(), names.len(), "duplicates kept");
            for n in &names {
                assert!(
                    !n.as_str().contains('/') && !n.as_str().contains(".."),
                    "{n}"
                );
                assert!(n.as_str() != "." && !n.as_str().is_empty());
            }
            let joined: Vec<&str> = names.iter().map(AclName::as_str).collect();
            assert_eq!(
                parse_acl_list(&joined.join(",")).ok().as_ref(),
                Some(&names)
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    for line in text.lines().take(64) {
        if let Ok(n) = AclName::parse(line) {
            assert_eq!(n.as_str(), line);
            assert!(!line.contains('/') && !line.contains("..") && line.len() <= 128);
        }
        if let Ok(r) = parse_service_ref(line) {
            assert_eq!(
                parse_service_ref(&r.to_string()).as_ref(),
                Ok(&r),
                "{line:?}"
            );
        }
    }
});
