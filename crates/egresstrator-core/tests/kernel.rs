//! The iptables and nft scripts against the real kernel, in throwaway namespaces: the
//! apply / re-apply / clear sequences the applier will run, and that other tools' rules
//! survive every one of them.

// Test code: a panic is how a test fails (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Netns;
use egresstrator_core::merge::Family;
use egresstrator_core::render::iptables::{
    self, check_jump_command, clear_commands, render_clear, render_family, restore_command, Jump,
};
use egresstrator_core::render::nft;
use egresstrator_core::{AclTable, Mode, PolicyInput, Ruleset, WorkloadPolicy};

const TOOLS: &[&str] = &["ip", "nft", "iptables", "ip6tables", "iptables-restore"];

fn ruleset(mode: Mode, acl: &str) -> Ruleset {
    let acls = AclTable::parse([
        ("web", acl),
        ("db", "10.9.0.0/24:tcp/5432\n[fd00:9::/64]:tcp/5432"),
    ]);
    let services = Default::default();
    let input = PolicyInput {
        mode,
        acls: &acls,
        services: &services,
        dns_allow: &[],
    };
    let workload = WorkloadPolicy {
        acls: egresstrator_core::acl::parse_acl_list("web").expect("names"),
        resolvers: vec![
            "172.17.0.53".parse().expect("ip"),
            "fd00::53".parse().expect("ip"),
        ],
    };
    egresstrator_core::compile(&workload, &input)
        .expect("compiles")
        .ruleset
}

fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn jump_state(ns: &Netns, family: Family) -> Jump {
    if ns
        .run(&argv(&check_jump_command(family)), "")
        .status
        .success()
    {
        Jump::Present
    } else {
        Jump::Missing
    }
}

/// What the applier does: check the jump, then restore with --noflush.
fn apply(ns: &Netns, family: Family, r: &Ruleset) {
    let script = render_family(r, family, jump_state(ns, family));
    ns.ok(&argv(&restore_command(family)), &script);
}

fn save(ns: &Netns, family: Family) -> Vec<String> {
    let prog = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    ns.ok(&[prog, "-S"], "")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ours(rules: &[String]) -> Vec<&String> {
    rules
        .iter()
        .filter(|l| l.contains("EGRESSTRATOR"))
        .collect()
}

fn others_rules(ns: &Netns, family: Family) {
    let prog = iptables::program(family);
    let dest = match family {
        Family::V4 => "192.0.2.1",
        Family::V6 => "2001:db8::1",
    };
    ns.ok(&[prog, "-A", "OUTPUT", "-d", dest, "-j", "DROP"], "");
    ns.ok(&[prog, "-N", "OTHER-TOOL"], "");
    ns.ok(&[prog, "-A", "OTHER-TOOL", "-j", "ACCEPT"], "");
}

fn assert_others_survive(ns: &Netns, family: Family) {
    let rules = save(ns, family);
    let dest = match family {
        Family::V4 => "192.0.2.1/32",
        Family::V6 => "2001:db8::1/128",
    };
    assert!(
        rules.contains(&format!("-A OUTPUT -d {dest} -j DROP")),
        "{rules:#?}"
    );
    assert!(
        rules.contains(&"-A OTHER-TOOL -j ACCEPT".to_owned()),
        "{rules:#?}"
    );
}

#[test]
fn iptables_apply_reapply_clear_keep_other_tools_rules() {
    if !common::kernel_ready("iptables_apply_reapply_clear", TOOLS) {
        return;
    }
    for family in [Family::V4, Family::V6] {
        let ns = Netns::new();
        others_rules(&ns, family);
        assert_eq!(jump_state(&ns, family), Jump::Missing);

        let first = ruleset(Mode::Allowlist, "10.0.0.0/24:tcp/80\n[fd00::/64]:tcp/80");
        apply(&ns, family, &first);
        assert_eq!(jump_state(&ns, family), Jump::Present);
        let rules = save(&ns, family);
        // Our jump is the first rule of OUTPUT, before the other tool's DROP.
        let output: Vec<&String> = rules
            .iter()
            .filter(|l| l.starts_with("-A OUTPUT"))
            .collect();
        assert_eq!(output[0], "-A OUTPUT -j EGRESSTRATOR-OUTPUT", "{rules:#?}");
        assert_others_survive(&ns, family);

        // Re-apply another ruleset: the chains are replaced, not appended to, and the jump is
        // not duplicated.
        let second = ruleset(Mode::Protect, "10.1.0.0/24:tcp/443\n[fd00:1::/64]:tcp/443");
        apply(&ns, family, &second);
        let rules = save(&ns, family);
        let jumps = rules
            .iter()
            .filter(|l| *l == "-A OUTPUT -j EGRESSTRATOR-OUTPUT")
            .count();
        assert_eq!(jumps, 1, "{rules:#?}");
        let text = rules.join("\n");
        assert!(!text.contains("--dport 80 "), "old rules left: {text}");
        assert!(text.contains("--dport 443 -j RETURN"), "{text}");
        assert!(
            text.contains("--dport 5432 -g EGRESSTRATOR-REFUSE"),
            "{text}"
        );
        assert_others_survive(&ns, family);

        // Atomic clear.
        let clear = render_clear(family, jump_state(&ns, family));
        ns.ok(&argv(&restore_command(family)), &clear);
        assert!(
            ours(&save(&ns, family)).is_empty(),
            "{:#?}",
            save(&ns, family)
        );
        assert_others_survive(&ns, family);
        // Clearing a clean namespace is fine too.
        let clear = render_clear(family, jump_state(&ns, family));
        ns.ok(&argv(&restore_command(family)), &clear);
        assert!(ours(&save(&ns, family)).is_empty());
    }
}

/// Two appliers raced and the jump is there twice: the atomic clear fails without changing
/// anything, and the step-by-step fallback removes everything of ours.
#[test]
fn iptables_clear_fallback_handles_duplicate_jumps() {
    if !common::kernel_ready("iptables_clear_fallback", TOOLS) {
        return;
    }
    for family in [Family::V4, Family::V6] {
        let ns = Netns::new();
        others_rules(&ns, family);
        let r = ruleset(Mode::Allowlist, "10.0.0.0/24:tcp/80");
        for _ in 0..2 {
            let script = render_family(&r, family, Jump::Missing);
            ns.ok(&argv(&restore_command(family)), &script);
        }
        let before = save(&ns, family);
        assert_eq!(
            before
                .iter()
                .filter(|l| *l == "-A OUTPUT -j EGRESSTRATOR-OUTPUT")
                .count(),
            2
        );
        let clear = render_clear(family, Jump::Present);
        let out = ns.run(&argv(&restore_command(family)), &clear);
        assert!(!out.status.success(), "atomic clear should refuse");
        assert_eq!(
            save(&ns, family),
            before,
            "a failed clear changed something"
        );

        let steps = clear_commands(family);
        let mut deleted = 0;
        while deleted < 64 && ns.run(&argv(&steps.delete_jump), "").status.success() {
            deleted += 1;
        }
        assert_eq!(deleted, 2);
        for cmd in &steps.remove_chains {
            ns.ok(&argv(cmd), "");
        }
        assert!(
            ours(&save(&ns, family)).is_empty(),
            "{:#?}",
            save(&ns, family)
        );
        assert_others_survive(&ns, family);
        // Every removal step fails harmlessly once things are gone.
        for cmd in &steps.remove_chains {
            assert!(!ns.run(&argv(cmd), "").status.success());
        }
        assert_others_survive(&ns, family);
    }
}

/// The nft script replaces only its own table, and its clear leaves other tables alone.
#[test]
fn nft_apply_reapply_clear_keep_other_tables() {
    if !common::kernel_ready("nft_apply_reapply_clear", TOOLS) {
        return;
    }
    let ns = Netns::new();
    ns.ok(
        &["nft", "-f", "-"],
        "table inet other {\n chain c {\n  type filter hook output priority 10;\n  tcp dport 9 drop\n }\n}\n",
    );
    let first = ruleset(Mode::Allowlist, "10.0.0.0/24:tcp/80");
    ns.ok(&["nft", "-f", "-"], &nft::render(&first));
    let second = ruleset(Mode::Protect, "10.1.0.0/24:tcp/443");
    ns.ok(&["nft", "-f", "-"], &nft::render(&second));
    let listed = ns.ok(&["nft", "list", "table", "inet", "egresstrator"], "");
    assert!(listed.contains("10.1.0.0/24 . tcp . 443"), "{listed}");
    assert!(!listed.contains("10.0.0.0/24 . tcp . 80"), "{listed}");
    assert!(
        listed.contains("comment \"egresstrator protect acls=web\""),
        "{listed}"
    );
    ns.ok(&["nft", "-f", "-"], &nft::render_clear());
    ns.ok(&["nft", "-f", "-"], &nft::render_clear());
    let all = ns.ok(&["nft", "list", "ruleset"], "");
    assert!(!all.contains("egresstrator"), "{all}");
    assert!(all.contains("tcp dport 9 drop"), "{all}");
}

/// Regression: nft refuses comments over 128 bytes; a workload naming many ACLs must load.
#[test]
fn nft_table_comment_longer_than_128_bytes_loads() {
    if !common::kernel_ready("nft_table_comment_longer_than_128_bytes_loads", TOOLS) {
        return;
    }
    let r = Ruleset {
        acls: (0..8)
            .map(|i| format!("a-rather-long-acl-name-for-service-{i}"))
            .collect(),
        ..Ruleset::deny_all()
    };
    let ns = Netns::new();
    ns.ok(&["nft", "-f", "-"], &nft::render(&r));
}
