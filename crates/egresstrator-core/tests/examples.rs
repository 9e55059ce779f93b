//! Every example ACL under `examples/acl/` parses without an error: the examples the README
//! points to must stay true to the grammar.

use std::path::Path;

use egresstrator_core::acl::{parse_acl, AclName};

#[test]
fn example_acls_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/acl");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        AclName::parse(name).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(&path).expect("readable");
        let acl = parse_acl(name, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!acl.lines.is_empty(), "{} has no entries", path.display());
        assert!(
            acl.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            acl.warnings
        );
        seen += 1;
    }
    assert!(seen >= 3, "expected the example ACLs in {}", dir.display());
}
