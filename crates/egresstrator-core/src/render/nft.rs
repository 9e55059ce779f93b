//! nftables rendering: one `inet egresstrator` table per namespace, replaced atomically.
//!
//! The script creates the table if missing, deletes it and recreates it, in one transaction:
//! the namespace never sees a moment without a complete ruleset, and rules other tools keep
//! in other tables are never touched. Destinations sit in concatenated interval sets
//! (address . protocol . port), so matching cost does not grow with the number of lines.
//!
//! Every refusal goes through one chain, `refuse`, which first reports the packet to the agent
//! through NFLOG (group [`NFLOG_GROUP`], rate-limited) and then rejects it; in audit mode it
//! reports and accepts instead (see [`Ruleset::audit`]).

use std::fmt::Write;

use super::{LOG_BURST, LOG_PREFIX_AUDIT, LOG_PREFIX_DENY, LOG_RATE_PER_SEC, NFLOG_GROUP};
use crate::merge::{disjoint, Family};
use crate::ruleset::{Dest, Posture, Rule, Ruleset};

/// The nftables family and name of egresstrator's table.
pub const TABLE: &str = "inet egresstrator";

/// Renders the complete, self-replacing nft script for a ruleset.
///
/// The table is replaced in one transaction: `add table` (creates it if missing, so the
/// delete cannot fail), `delete table`, then the new table. A workload that made a table of
/// this name first loses it whole; nothing of it merges into ours. The first line is `add
/// table`, not an empty `table … {}` block: libnftables allocates four 128 KiB hash tables
/// for every table block it parses, and writing them cost ~0.2 ms of a 10-rule load's
/// ~1.1 ms (BENCHMARKS.md, "Closer to the floor, part 5").
pub fn render(ruleset: &Ruleset) -> String {
    let mut s = String::new();
    // Only [A-Za-z0-9._-,] reach the script, so a name can end neither this line nor the
    // quoted comment below.
    let acls = super::acl_label(&ruleset.acls);
    let posture = super::posture_comment(ruleset);
    let _ = writeln!(s, "# egresstrator: posture {posture} acls {acls}");
    if ruleset.learns_names() {
        // Names hold only [a-z0-9.*-] (`crate::name`), so they cannot end the comment line.
        for n in &ruleset.names {
            let _ = writeln!(
                s,
                "# name {} ({}): addresses from its DNS answers go to @{LEARNED4}/@{LEARNED6}",
                n.dest, n.origin
            );
        }
        for n in &ruleset.resolvable {
            let _ = writeln!(s, "# may resolve {} ({})", n.pattern, n.origin);
        }
        if ruleset.dns_filter {
            let _ = writeln!(
                s,
                "# DNS filter: queries for other names are refused by the agent"
            );
        }
    }
    let _ = writeln!(s, "add table {TABLE}");
    let _ = writeln!(s, "delete table {TABLE}");
    let _ = writeln!(s, "table {TABLE} {{");
    // Kept by the kernel, so `nft list table` tells an operator what is in force.
    let _ = writeln!(
        s,
        "\tcomment \"{}\"",
        table_comment(&format!("egresstrator {posture} acls={acls}"))
    );

    let allow = dests(&ruleset.allow);
    let deny = dests(&ruleset.deny);
    set(&mut s, "allow4", Family::V4, &allow);
    set(&mut s, "allow6", Family::V6, &allow);
    if ruleset.posture == Posture::Protect {
        set(&mut s, "deny4", Family::V4, &deny);
        set(&mut s, "deny6", Family::V6, &deny);
    }
    addr_set(&mut s, "dns4", Family::V4, ruleset);
    addr_set(&mut s, "dns6", Family::V6, ruleset);
    if ruleset.learns_names() {
        // Filled by the agent from the container's own DNS answers, each element for its
        // answer's TTL (see `crate::name` and the agent's fqdn learner).
        for (name, addr) in [(LEARNED4, "ipv4_addr"), (LEARNED6, "ipv6_addr")] {
            let _ = writeln!(
                s,
                "\tset {name} {{\n\t\ttype {addr} . inet_proto . inet_service\n\t\tflags interval,timeout\n\t}}"
            );
        }
    }

    s.push_str("\tchain refuse {\n");
    // Report first, within the limit (see LOG_RATE_PER_SEC for the numbers): a packet over the
    // limit does not match this rule and goes on to the verdict below all the same, so the
    // limit bounds the records and never changes what passes.
    let prefix = if ruleset.audits() {
        LOG_PREFIX_AUDIT
    } else {
        LOG_PREFIX_DENY
    };
    let _ = writeln!(
        s,
        "\t\tlimit rate {LOG_RATE_PER_SEC}/second burst {LOG_BURST} packets log prefix \"{prefix}\" group {NFLOG_GROUP}"
    );
    if ruleset.audits() {
        // Audit: what would be refused leaves. `accept` ends only this table's chain; other
        // tables' output chains still run, as for any allowed packet.
        s.push_str("\t\taccept\n");
    } else {
        // Rejecting (not dropping) makes denied programs fail fast instead of hanging.
        s.push_str(
            "\t\tmeta l4proto tcp reject with tcp reset\n\
             \t\treject with icmpx admin-prohibited\n",
        );
    }
    s.push_str("\t}\n");
    s.push_str("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n");
    // Loopback never leaves the namespace.
    s.push_str("\t\toifname \"lo\" accept\n");
    // Replies on accepted connections, and packets of connections this ruleset (or an
    // earlier one) allowed. Entries a new ruleset denies are cut from conntrack by the agent.
    s.push_str("\t\tct state established,related accept\n");
    // IPv6 does not work without neighbour discovery and MLD; they never leave the link.
    s.push_str(
        "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld-listener-report, mld2-listener-report } accept\n",
    );
    match ruleset.posture {
        Posture::DenyAll => {
            s.push_str("\t\tgoto refuse\n");
        }
        Posture::Allowlist => {
            // DNS, over UDP and TCP, to the workload's own resolvers only.
            s.push_str("\t\tmeta l4proto { tcp, udp } th dport 53 ip daddr @dns4 accept\n");
            s.push_str("\t\tmeta l4proto { tcp, udp } th dport 53 ip6 daddr @dns6 accept\n");
            s.push_str("\t\tip daddr . meta l4proto . th dport @allow4 accept\n");
            s.push_str("\t\tip6 daddr . meta l4proto . th dport @allow6 accept\n");
            learned_rules(&mut s, ruleset);
            s.push_str("\t\tgoto refuse\n");
        }
        Posture::Protect => {
            s.push_str("\t\tudp dport 53 ip daddr @dns4 accept\n");
            s.push_str("\t\tudp dport 53 ip6 daddr @dns6 accept\n");
            s.push_str("\t\tudp dport 53 goto refuse\n");
            s.push_str("\t\tudp dport 123 goto refuse\n");
            // A new TCP connection must start with a bare SYN.
            s.push_str("\t\ttcp flags & (fin|syn|rst|ack) != syn ct state new goto refuse\n");
            // Named ACLs grant access to what they name, even inside a protected range.
            s.push_str("\t\tip daddr . meta l4proto . th dport @allow4 accept\n");
            s.push_str("\t\tip6 daddr . meta l4proto . th dport @allow6 accept\n");
            learned_rules(&mut s, ruleset);
            s.push_str("\t\tip daddr . meta l4proto . th dport @deny4 goto refuse\n");
            s.push_str("\t\tip6 daddr . meta l4proto . th dport @deny6 goto refuse\n");
        }
    }
    s.push_str("\t}\n}\n");
    s
}

/// The sets of addresses learned from DNS answers (see [`Ruleset::learns_names`]).
pub const LEARNED4: &str = "fqdn4";
pub const LEARNED6: &str = "fqdn6";

fn learned_rules(s: &mut String, ruleset: &Ruleset) {
    if ruleset.learns_names() {
        let _ = writeln!(
            s,
            "\t\tip daddr . meta l4proto . th dport @{LEARNED4} accept"
        );
        let _ = writeln!(
            s,
            "\t\tip6 daddr . meta l4proto . th dport @{LEARNED6} accept"
        );
    }
}

/// A listing of egresstrator's table without the elements of the learned sets: they come and
/// go with the workload's DNS answers and their timeouts count down, so they are not part of
/// what drift checks compare. Everything else of the listing is kept as it is.
pub fn without_learned(listing: &str) -> String {
    let mut out = String::with_capacity(listing.len());
    let mut in_learned_set = false;
    let mut in_elements = false;
    for line in listing.lines() {
        let t = line.trim();
        if in_elements {
            if t.ends_with('}') {
                in_elements = false;
            }
            continue;
        }
        if t == format!("set {LEARNED4} {{") || t == format!("set {LEARNED6} {{") {
            in_learned_set = true;
        } else if in_learned_set && t == "}" {
            in_learned_set = false;
        } else if in_learned_set && t.starts_with("elements = {") {
            in_elements = !t.ends_with('}');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// nft refuses a comment longer than this many bytes (`NFTNL_UDATA_COMMENT_MAXLEN`), and with
/// it the whole script.
pub const COMMENT_MAX: usize = 128;

/// Cuts a comment to [`COMMENT_MAX`] bytes, ending in `...` when cut. Eight ACLs with
/// ordinary names are enough to pass the limit, and a failed apply would fail the workload
/// closed over a comment.
fn table_comment(full: &str) -> String {
    if full.len() <= COMMENT_MAX {
        return full.to_owned();
    }
    let mut end = COMMENT_MAX - 3;
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &full[..end])
}

/// The script that removes egresstrator's table and nothing else (no error if absent).
pub fn render_clear() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

fn dests(rules: &[Rule]) -> Vec<Dest> {
    rules.iter().map(|r| r.dest).collect()
}

fn set(s: &mut String, name: &str, family: Family, dests: &[Dest]) {
    let addr_type = match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let _ = writeln!(
        s,
        "\tset {name} {{\n\t\ttype {addr_type} . inet_proto . inet_service\n\t\tflags interval"
    );
    let elems = disjoint(dests, family);
    if !elems.is_empty() {
        s.push_str("\t\telements = {\n");
        for d in elems {
            let _ = writeln!(s, "\t\t\t{} . {} . {},", Element(&d.net), d.proto, d.ports);
        }
        s.push_str("\t\t}\n");
    }
    s.push_str("\t}\n");
}

/// A network as a set element: a single address is written without its prefix length.
///
/// Same meaning (nft turns either into the one-address interval; `nft list` prints both
/// without it), but libnftables parses and evaluates an address faster than a prefix: with
/// 10,000 host elements, 7–11 ms less of a ~58 ms load (BENCHMARKS.md, "Closer to the
/// floor, part 8").
struct Element<'a>(&'a ipnet::IpNet);

impl std::fmt::Display for Element<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

fn addr_set(s: &mut String, name: &str, family: Family, ruleset: &Ruleset) {
    let addr_type = match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let _ = writeln!(
        s,
        "\tset {name} {{\n\t\ttype {addr_type}\n\t\tflags interval"
    );
    let nets: Vec<_> = ruleset
        .dns
        .iter()
        .filter(|n| Family::of(n) == family)
        .copied()
        .collect();
    let nets = ipnet::IpNet::aggregate(&nets);
    if !nets.is_empty() {
        let list: Vec<String> = nets.iter().map(|n| Element(n).to_string()).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str("\t}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lines_get_learned_sets_a_rule_and_a_comment_each() {
        let acl = crate::acl::parse_acl("web", "api.example.com:tcp/443\ndb:dns\n").unwrap();
        let table = crate::acl::AclTable::parse([("web", "api.example.com:tcp/443\ndb:dns\n")]);
        assert_eq!(acl.lines.len(), 2);
        let services = crate::policy::ServiceTable::new();
        let input = crate::policy::PolicyInput {
            mode: crate::policy::Mode::Allowlist,
            acls: &table,
            services: &services,
            dns_allow: &[],
        };
        let workload = crate::policy::WorkloadPolicy {
            acls: crate::acl::parse_acl_list("web").unwrap(),
            resolvers: vec!["172.17.0.1".parse().unwrap()],
        };
        let mut r = crate::policy::compile(&workload, &input).unwrap().ruleset;
        let s = render(&r);
        assert!(
            s.contains("# name api.example.com:tcp/443 (acl 'web' line 1)"),
            "{s}"
        );
        assert!(s.contains("# may resolve db (acl 'web' line 2)"), "{s}");
        assert!(s.contains("set fqdn4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval,timeout\n\t}"), "{s}");
        assert!(
            s.contains("\t\tip daddr . meta l4proto . th dport @fqdn4 accept\n"),
            "{s}"
        );
        assert!(!s.contains("DNS filter"), "{s}");
        r.dns_filter = true;
        assert!(render(&r).contains("# DNS filter"));
        // Without name lines (and no filter), no learned sets.
        r.names.clear();
        r.dns_filter = false;
        assert!(!render(&r).contains("fqdn4"));
    }

    #[test]
    fn learned_elements_are_left_out_of_a_listing_and_nothing_else() {
        let listing = "table inet egresstrator {\n\tset allow4 {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1 }\n\t}\n\tset fqdn4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval,timeout\n\t\telements = { 10.1.2.3 . tcp . 443 timeout 1m expires 59s,\n\t\t\t     10.1.2.4 . tcp . 80 timeout 5s expires 4s }\n\t}\n\tset fqdn6 {\n\t\ttype ipv6_addr . inet_proto . inet_service\n\t\tflags interval,timeout\n\t\telements = { fd00::1 . tcp . 443 timeout 1m expires 3s }\n\t}\n}\n";
        let out = without_learned(listing);
        assert!(out.contains("elements = { 10.0.0.1 }"), "{out}");
        assert!(!out.contains("10.1.2."), "{out}");
        assert!(!out.contains("fd00::1"), "{out}");
        assert!(out.contains("set fqdn6 {"), "{out}");
        // The same table with no learned elements lists the same.
        let empty = "table inet egresstrator {\n\tset allow4 {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1 }\n\t}\n\tset fqdn4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval,timeout\n\t}\n\tset fqdn6 {\n\t\ttype ipv6_addr . inet_proto . inet_service\n\t\tflags interval,timeout\n\t}\n}\n";
        assert_eq!(out, without_learned(empty));
    }
    use crate::ruleset::{Origin, PortRange, Proto};

    fn rule(net: &str, proto: Proto, low: u16, high: u16) -> Rule {
        Rule {
            dest: Dest {
                net: net.parse().expect("net"),
                proto,
                ports: PortRange { low, high },
            },
            origin: Origin {
                acl: "web".into(),
                line: 1,
                service: None,
            },
        }
    }

    #[test]
    fn allowlist_script_shape() {
        let r = Ruleset {
            posture: Posture::Allowlist,
            acls: vec!["web".into()],
            allow: vec![
                rule("10.0.0.0/24", Proto::Tcp, 80, 80),
                rule("2001:db8::/32", Proto::Udp, 1000, 2000),
                rule("10.0.1.7/32", Proto::Tcp, 443, 443),
                rule("2001:db9::7/128", Proto::Tcp, 443, 443),
            ],
            deny: vec![],
            dns: vec!["172.17.0.1/32".parse().expect("net")],
            names: vec![],
            resolvable: vec![],
            learn_from: vec![],
            dns_filter: false,
            audit: false,
        };
        let s = render(&r);
        assert!(s.starts_with("# egresstrator: posture allowlist acls web\nadd table inet egresstrator\ndelete table inet egresstrator\n"));
        assert!(s.contains("\t\t\t10.0.0.0/24 . tcp . 80,\n"));
        assert!(s.contains("\t\t\t2001:db8::/32 . udp . 1000-2000,\n"));
        // A single address is written without its prefix length; a network keeps it.
        assert!(s.contains("\t\t\t10.0.1.7 . tcp . 443,\n"), "{s}");
        assert!(s.contains("\t\t\t2001:db9::7 . tcp . 443,\n"), "{s}");
        assert!(s.contains("elements = { 172.17.0.1 }"), "{s}");
        assert!(!s.contains("deny4"));
        assert!(s.trim_end().ends_with("goto refuse\n\t}\n}"));
    }

    /// Regression: the table comment lists every ACL name, and nft rejects the whole script
    /// when a comment exceeds 128 bytes, so a workload naming many (or long) ACLs could never
    /// be enforced.
    #[test]
    fn table_comment_longer_than_128_bytes_is_cut() {
        let r = Ruleset {
            acls: (0..8).map(|i| format!("payments-service-{i}")).collect(),
            ..Ruleset::deny_all()
        };
        let s = render(&r);
        let comment = s
            .lines()
            .find_map(|l| l.strip_prefix("\tcomment \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("comment line");
        assert_eq!(comment.len(), COMMENT_MAX);
        assert!(comment.starts_with("egresstrator deny-all acls=payments-service-0,"));
        assert!(comment.ends_with("..."));
        // The script's first line keeps every name.
        assert!(s
            .lines()
            .next()
            .expect("line")
            .ends_with("payments-service-7"));
        assert_eq!(table_comment("short"), "short");
    }

    #[test]
    fn deny_all_has_no_destinations() {
        let s = render(&Ruleset::deny_all());
        assert!(!s.contains("elements"));
        assert!(s.contains("posture deny-all"));
    }

    fn refuse_chain(s: &str) -> &str {
        let start = s.find("\tchain refuse {\n").expect("refuse chain");
        let len = s[start..].find("\t}\n").expect("end of chain") + 3;
        &s[start..start + len]
    }

    #[test]
    fn refusals_are_logged_before_the_reject() {
        for r in [
            Ruleset::deny_all(),
            Ruleset {
                posture: Posture::Protect,
                ..Ruleset::deny_all()
            },
        ] {
            assert_eq!(
                refuse_chain(&render(&r)),
                "\tchain refuse {\n\
                 \t\tlimit rate 20/second burst 40 packets log prefix \"egresstrator deny\" group 25959\n\
                 \t\tmeta l4proto tcp reject with tcp reset\n\
                 \t\treject with icmpx admin-prohibited\n\
                 \t}\n"
            );
        }
    }

    #[test]
    fn audit_logs_and_accepts_but_never_for_deny_all() {
        let r = Ruleset {
            posture: Posture::Allowlist,
            acls: vec!["web".into()],
            allow: vec![rule("10.0.0.0/24", Proto::Tcp, 80, 80)],
            deny: vec![],
            dns: vec![],
            names: vec![],
            resolvable: vec![],
            learn_from: vec![],
            dns_filter: false,
            audit: true,
        };
        let s = render(&r);
        assert_eq!(
            refuse_chain(&s),
            "\tchain refuse {\n\
             \t\tlimit rate 20/second burst 40 packets log prefix \"egresstrator audit\" group 25959\n\
             \t\taccept\n\
             \t}\n"
        );
        assert!(s.starts_with("# egresstrator: posture allowlist (audit) acls web\n"));
        assert!(s.contains("\tcomment \"egresstrator allowlist (audit) acls=web\"\n"));
        // The rest of the ruleset is the real one.
        let enforcing = render(&Ruleset {
            audit: false,
            ..r.clone()
        });
        let strip = |s: &str| s.replace(refuse_chain(s), "").replace(" (audit)", "");
        assert_eq!(strip(&s), strip(&enforcing));

        let closed = Ruleset {
            audit: true,
            ..Ruleset::deny_all()
        };
        let s = render(&closed);
        assert_eq!(s, render(&Ruleset::deny_all()));
        assert!(!s.contains("audit"));
    }
}
