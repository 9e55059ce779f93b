//! iptables rendering: `iptables-restore --noflush` / `ip6tables-restore --noflush` input, for
//! namespaces whose images or hosts expect iptables rather than a native nft table.
//!
//! egresstrator owns exactly two chains per family in the `filter` table,
//! [`OUTPUT_CHAIN`] and [`REFUSE_CHAIN`], plus one jump from `OUTPUT` into its own chain.
//! Declaring a chain with `:NAME - [0:0]` under `--noflush` flushes (or creates) just that
//! chain, and the whole script is one commit, so a re-apply replaces egresstrator's rules
//! atomically while every other tool's rules in the namespace survive. The script must never
//! be fed to `iptables-restore` without `--noflush`: that would flush the whole `filter`
//! table, other tools' rules included. [`restore_command`] gives the exact argv.
//!
//! Allowed traffic `RETURN`s, so the rest of `OUTPUT` (other tools' rules) still applies, the
//! same way an `accept` in the nft table still leaves other base chains to run. Refused traffic
//! goes (`-g`, as nft's `goto refuse`) to [`REFUSE_CHAIN`], which reports it through NFLOG
//! (rate-limited) and rejects it. In audit mode [`REFUSE_CHAIN`] reports and `RETURN`s: since it
//! was entered by `-g`, that returns to `OUTPUT` itself, so audited traffic meets other tools'
//! rules exactly as allowed traffic does (an `ACCEPT` would skip them). The rule order mirrors
//! [`super::nft`] exactly for every posture; [`crate::policy::decide`] is the specification both
//! are tested against.

use std::fmt::Write;

use super::{LOG_BURST, LOG_PREFIX_AUDIT, LOG_PREFIX_DENY, LOG_RATE_PER_SEC, NFLOG_GROUP};
use crate::merge::{disjoint, Family};
use crate::ruleset::{Dest, Posture, Proto, Ruleset};

/// egresstrator's chain, jumped to from the first rule of `OUTPUT`.
pub const OUTPUT_CHAIN: &str = "EGRESSTRATOR-OUTPUT";
/// Where refused packets go: logged, then rejected, so denied programs fail fast instead of
/// hanging (logged, then returned to `OUTPUT`, in audit mode).
pub const REFUSE_CHAIN: &str = "EGRESSTRATOR-REFUSE";
/// Seconds to wait for the xtables lock (`-w 5`): never forever, so a tool that holds the
/// lock cannot stall an apply; the apply then fails and is retried.
pub const LOCK_WAIT_SECS: &str = "5";

/// Whether `OUTPUT` already jumps to [`OUTPUT_CHAIN`] in the target namespace.
///
/// The applier finds out with [`check_jump_command`] before each apply. Exit status 0 means
/// [`Jump::Present`]; treat any other outcome as [`Jump::Missing`]: a duplicate jump is
/// harmless (the chain only `RETURN`s or refuses, so running it twice gives the same verdict),
/// while a missing jump would leave the workload unfiltered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Jump {
    /// `OUTPUT` already jumps to egresstrator's chain; the script leaves `OUTPUT` alone.
    Present,
    /// The script also inserts `-I OUTPUT 1 -j EGRESSTRATOR-OUTPUT`.
    Missing,
}

/// One `*-restore --noflush` script per IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesScripts {
    /// For `iptables-restore --noflush`.
    pub v4: String,
    /// For `ip6tables-restore --noflush`.
    pub v6: String,
}

/// Renders both families' scripts, for a namespace whose jump state is the same in both.
/// When the families differ (one `-C` succeeded, the other failed), use [`render_family`].
pub fn render(ruleset: &Ruleset, jump: Jump) -> IptablesScripts {
    IptablesScripts {
        v4: render_family(ruleset, Family::V4, jump),
        v6: render_family(ruleset, Family::V6, jump),
    }
}

/// Renders the `--noflush` restore script of one family.
pub fn render_family(ruleset: &Ruleset, family: Family, jump: Jump) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# egresstrator: posture {} acls {} family {}",
        super::posture_comment(ruleset),
        super::acl_label(&ruleset.acls),
        family_name(family)
    );
    s.push_str("*filter\n");
    // Under --noflush, declaring a user chain flushes it if it exists and creates it if not.
    let _ = writeln!(s, ":{OUTPUT_CHAIN} - [0:0]");
    let _ = writeln!(s, ":{REFUSE_CHAIN} - [0:0]");
    let icmp_reject = match family {
        Family::V4 => "icmp-admin-prohibited",
        Family::V6 => "icmp6-adm-prohibited",
    };
    // Report first, within the limit (see LOG_RATE_PER_SEC): NFLOG does not end the chain, and
    // a packet over the limit skips only this rule. Options in the order `iptables -S` prints
    // them, so a listing reads like the script.
    let prefix = if ruleset.audits() {
        LOG_PREFIX_AUDIT
    } else {
        LOG_PREFIX_DENY
    };
    let _ = writeln!(
        s,
        "-A {REFUSE_CHAIN} -m limit --limit {LOG_RATE_PER_SEC}/sec --limit-burst {LOG_BURST} \
         -j NFLOG --nflog-prefix \"{prefix}\" --nflog-group {NFLOG_GROUP}"
    );
    if ruleset.audits() {
        // Back to OUTPUT (the chain was entered by -g), as allowed traffic: see module docs.
        let _ = writeln!(s, "-A {REFUSE_CHAIN} -j RETURN");
    } else {
        let _ = writeln!(
            s,
            "-A {REFUSE_CHAIN} -p tcp -j REJECT --reject-with tcp-reset"
        );
        let _ = writeln!(s, "-A {REFUSE_CHAIN} -j REJECT --reject-with {icmp_reject}");
    }

    let out = |s: &mut String, rule: &str| {
        let _ = writeln!(s, "-A {OUTPUT_CHAIN} {rule}");
    };
    let ret = "-j RETURN";
    // Goto, not jump: a RETURN in the refuse chain (audit) must not come back here.
    let refuse = format!("-g {REFUSE_CHAIN}");
    // Loopback never leaves the namespace.
    out(&mut s, &format!("-o lo {ret}"));
    // Replies on accepted connections, and packets of connections this ruleset (or an earlier
    // one) allowed. Entries a new ruleset denies are cut from conntrack by the agent.
    out(
        &mut s,
        &format!("-m conntrack --ctstate ESTABLISHED,RELATED {ret}"),
    );
    if family == Family::V6 {
        // IPv6 does not work without neighbour discovery and MLD; they never leave the link.
        // Same types, same order as the nft set; MLD reports have no iptables name.
        for t in [
            "neighbour-solicitation",
            "neighbour-advertisement",
            "router-solicitation",
            "131",
            "143",
        ] {
            out(
                &mut s,
                &format!("-p ipv6-icmp -m icmp6 --icmpv6-type {t} {ret}"),
            );
        }
    }
    let dns = dns_nets(ruleset, family);
    let allow = dests(ruleset, Rules::Allow, family);
    match ruleset.posture {
        Posture::DenyAll => out(&mut s, &refuse),
        Posture::Allowlist => {
            // DNS, over TCP and UDP, to the workload's own resolvers only.
            for net in &dns {
                for p in [Proto::Tcp, Proto::Udp] {
                    out(&mut s, &format!("-d {net} -p {p} -m {p} --dport 53 {ret}"));
                }
            }
            for d in &allow {
                out(&mut s, &format!("{} {ret}", dest_match(d)));
            }
            out(&mut s, &refuse);
        }
        Posture::Protect => {
            for net in &dns {
                out(&mut s, &format!("-d {net} -p udp -m udp --dport 53 {ret}"));
            }
            out(&mut s, &format!("-p udp -m udp --dport 53 {refuse}"));
            out(&mut s, &format!("-p udp -m udp --dport 123 {refuse}"));
            // A new TCP connection must start with a bare SYN (`! --syn` is the nft rule's
            // `tcp flags & (fin|syn|rst|ack) != syn`).
            out(
                &mut s,
                &format!("-p tcp -m tcp ! --syn -m conntrack --ctstate NEW {refuse}"),
            );
            // Named ACLs grant access to what they name, even inside a protected range, so
            // allows come before denies.
            for d in &allow {
                out(&mut s, &format!("{} {ret}", dest_match(d)));
            }
            for d in &dests(ruleset, Rules::Deny, family) {
                out(&mut s, &format!("{} {refuse}", dest_match(d)));
            }
            // Falling off the end of a user chain returns to OUTPUT: default allow.
        }
    }
    if jump == Jump::Missing {
        let _ = writeln!(s, "-I OUTPUT 1 -j {OUTPUT_CHAIN}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The `--noflush` script that removes egresstrator's jump and chains from one family, and
/// nothing else, in one commit.
///
/// `jump` must say whether `OUTPUT` jumps to [`OUTPUT_CHAIN`] (ask with
/// [`check_jump_command`]): `-D` of a missing rule fails the whole script. The chains are
/// declared first, which creates them if they are absent, so `-X` never meets a missing chain.
/// The script fails as a whole (changing nothing) when the jump is present more than once or
/// another chain jumps into egresstrator's; the applier then falls back to
/// [`clear_commands`], which handles both.
pub fn render_clear(family: Family, jump: Jump) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# egresstrator: clear family {}", family_name(family));
    s.push_str("*filter\n");
    if jump == Jump::Present {
        let _ = writeln!(s, "-D OUTPUT -j {OUTPUT_CHAIN}");
    }
    // Declaring flushes, which also drops OUTPUT_CHAIN's references to REFUSE_CHAIN.
    let _ = writeln!(s, ":{OUTPUT_CHAIN} - [0:0]");
    let _ = writeln!(s, ":{REFUSE_CHAIN} - [0:0]");
    let _ = writeln!(s, "-X {OUTPUT_CHAIN}");
    let _ = writeln!(s, "-X {REFUSE_CHAIN}");
    s.push_str("COMMIT\n");
    s
}

/// The argv that loads a script of [`render_family`] or [`render_clear`] (on stdin).
/// `--noflush` is what keeps other tools' rules; `-w` waits for the xtables lock.
pub fn restore_command(family: Family) -> Vec<String> {
    argv(&[restore_program(family), "-w", LOCK_WAIT_SECS, "--noflush"])
}

/// The argv whose exit status tells [`Jump::Present`] (0) from [`Jump::Missing`] (anything
/// else).
pub fn check_jump_command(family: Family) -> Vec<String> {
    argv(&[
        program(family),
        "-w",
        LOCK_WAIT_SECS,
        "-C",
        "OUTPUT",
        "-j",
        OUTPUT_CHAIN,
    ])
}

/// Step-by-step removal of egresstrator's jump and chains, for when [`render_clear`] fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClearCommands {
    /// `-D OUTPUT -j EGRESSTRATOR-OUTPUT`. Run it until it fails (the jump may be present
    /// more than once, e.g. after two appliers raced); each success removes one jump. Bound
    /// the loop (say 64 runs) so a misbehaving tool cannot hang the applier.
    pub delete_jump: Vec<String>,
    /// Then run each of these once, in order, ignoring failures: each fails only when what it
    /// removes is already gone (`-F`/`-X` of a missing chain). Flushing both chains before
    /// deleting either drops the reference from [`OUTPUT_CHAIN`] to [`REFUSE_CHAIN`].
    /// Afterwards the applier should confirm with `-S EGRESSTRATOR-OUTPUT` failing.
    pub remove_chains: Vec<Vec<String>>,
}

/// The non-atomic fallback of [`render_clear`], as argument vectors (program first).
pub fn clear_commands(family: Family) -> ClearCommands {
    let p = program(family);
    ClearCommands {
        delete_jump: argv(&[p, "-w", LOCK_WAIT_SECS, "-D", "OUTPUT", "-j", OUTPUT_CHAIN]),
        remove_chains: vec![
            argv(&[p, "-w", LOCK_WAIT_SECS, "-F", OUTPUT_CHAIN]),
            argv(&[p, "-w", LOCK_WAIT_SECS, "-F", REFUSE_CHAIN]),
            argv(&[p, "-w", LOCK_WAIT_SECS, "-X", OUTPUT_CHAIN]),
            argv(&[p, "-w", LOCK_WAIT_SECS, "-X", REFUSE_CHAIN]),
        ],
    }
}

/// `iptables` or `ip6tables`.
pub fn program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// `iptables-restore` or `ip6tables-restore`.
pub fn restore_program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

#[derive(Clone, Copy)]
enum Rules {
    Allow,
    Deny,
}

fn dests(ruleset: &Ruleset, which: Rules, family: Family) -> Vec<Dest> {
    let rules = match which {
        Rules::Allow => &ruleset.allow,
        Rules::Deny => &ruleset.deny,
    };
    let all: Vec<Dest> = rules.iter().map(|r| r.dest).collect();
    disjoint(&all, family)
}

fn dns_nets(ruleset: &Ruleset, family: Family) -> Vec<ipnet::IpNet> {
    let nets: Vec<_> = ruleset
        .dns
        .iter()
        .filter(|n| Family::of(n) == family)
        .copied()
        .collect();
    ipnet::IpNet::aggregate(&nets)
}

fn dest_match(d: &Dest) -> String {
    let ports = if d.ports.low == d.ports.high {
        d.ports.low.to_string()
    } else {
        format!("{}:{}", d.ports.low, d.ports.high)
    };
    format!("-d {} -p {p} -m {p} --dport {ports}", d.net, p = d.proto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Origin, PortRange, Rule};

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

    fn body(script: &str) -> Vec<&str> {
        script.lines().filter(|l| l.starts_with('-')).collect()
    }

    fn allowlist() -> Ruleset {
        Ruleset {
            posture: Posture::Allowlist,
            acls: vec!["web".into()],
            allow: vec![
                rule("10.0.0.0/25", Proto::Tcp, 80, 80),
                rule("10.0.0.128/25", Proto::Tcp, 80, 80),
                rule("2001:db8::/32", Proto::Udp, 1000, 2000),
            ],
            deny: vec![],
            dns: vec!["172.17.0.1/32".parse().expect("net")],
            names: vec![],
            resolvable: vec![],
            learn_from: vec![],
            dns_filter: false,
            audit: false,
        }
    }

    #[test]
    fn allowlist_v4_exact() {
        let s = render(&allowlist(), Jump::Missing);
        assert_eq!(
            s.v4,
            "# egresstrator: posture allowlist acls web family ipv4\n\
             *filter\n\
             :EGRESSTRATOR-OUTPUT - [0:0]\n\
             :EGRESSTRATOR-REFUSE - [0:0]\n\
             -A EGRESSTRATOR-REFUSE -m limit --limit 20/sec --limit-burst 40 -j NFLOG --nflog-prefix \"egresstrator deny\" --nflog-group 25959\n\
             -A EGRESSTRATOR-REFUSE -p tcp -j REJECT --reject-with tcp-reset\n\
             -A EGRESSTRATOR-REFUSE -j REJECT --reject-with icmp-admin-prohibited\n\
             -A EGRESSTRATOR-OUTPUT -o lo -j RETURN\n\
             -A EGRESSTRATOR-OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN\n\
             -A EGRESSTRATOR-OUTPUT -d 172.17.0.1/32 -p tcp -m tcp --dport 53 -j RETURN\n\
             -A EGRESSTRATOR-OUTPUT -d 172.17.0.1/32 -p udp -m udp --dport 53 -j RETURN\n\
             -A EGRESSTRATOR-OUTPUT -d 10.0.0.0/24 -p tcp -m tcp --dport 80 -j RETURN\n\
             -A EGRESSTRATOR-OUTPUT -g EGRESSTRATOR-REFUSE\n\
             -I OUTPUT 1 -j EGRESSTRATOR-OUTPUT\n\
             COMMIT\n"
        );
    }

    #[test]
    fn allowlist_v6_has_nd_and_ranges() {
        let s = render(&allowlist(), Jump::Present);
        let b = body(&s.v6);
        assert!(b.contains(&"-A EGRESSTRATOR-REFUSE -j REJECT --reject-with icmp6-adm-prohibited"));
        assert!(b.contains(
            &"-A EGRESSTRATOR-OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-solicitation -j RETURN"
        ));
        assert!(b.contains(
            &"-A EGRESSTRATOR-OUTPUT -d 2001:db8::/32 -p udp -m udp --dport 1000:2000 -j RETURN"
        ));
        // The v4 resolver is not in the v6 script.
        assert!(!s.v6.contains("--dport 53"));
        assert!(!s.v6.contains("-I OUTPUT"));
        assert_eq!(
            b.last(),
            Some(&"-A EGRESSTRATOR-OUTPUT -g EGRESSTRATOR-REFUSE")
        );
    }

    #[test]
    fn protect_order_mirrors_nft() {
        let r = Ruleset {
            posture: Posture::Protect,
            acls: vec!["web".into()],
            allow: vec![rule("10.0.0.0/24", Proto::Tcp, 80, 80)],
            deny: vec![rule("10.0.0.0/16", Proto::Tcp, 80, 80)],
            dns: crate::policy::default_dns_allow(),
            names: vec![],
            resolvable: vec![],
            learn_from: vec![],
            dns_filter: false,
            audit: false,
        };
        let s = render_family(&r, Family::V4, Jump::Present);
        let b: Vec<String> = body(&s)
            .iter()
            .filter_map(|l| l.strip_prefix("-A EGRESSTRATOR-OUTPUT "))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            b,
            [
                "-o lo -j RETURN",
                "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                "-d 10.0.0.0/8 -p udp -m udp --dport 53 -j RETURN",
                "-d 172.16.0.0/12 -p udp -m udp --dport 53 -j RETURN",
                "-d 192.168.0.0/16 -p udp -m udp --dport 53 -j RETURN",
                "-p udp -m udp --dport 53 -g EGRESSTRATOR-REFUSE",
                "-p udp -m udp --dport 123 -g EGRESSTRATOR-REFUSE",
                "-p tcp -m tcp ! --syn -m conntrack --ctstate NEW -g EGRESSTRATOR-REFUSE",
                "-d 10.0.0.0/24 -p tcp -m tcp --dport 80 -j RETURN",
                "-d 10.0.0.0/16 -p tcp -m tcp --dport 80 -g EGRESSTRATOR-REFUSE",
            ]
        );
    }

    #[test]
    fn deny_all_refuses_after_loopback_and_replies() {
        let s = render(&Ruleset::deny_all(), Jump::Present);
        for script in [&s.v4, &s.v6] {
            let b = body(script);
            assert_eq!(b[3], "-A EGRESSTRATOR-OUTPUT -o lo -j RETURN");
            assert_eq!(
                b.last(),
                Some(&"-A EGRESSTRATOR-OUTPUT -g EGRESSTRATOR-REFUSE")
            );
            assert!(!script.contains("--dport"));
        }
        assert!(s
            .v4
            .starts_with("# egresstrator: posture deny-all acls - family ipv4\n"));
    }

    fn refuse_chain(script: &str) -> Vec<&str> {
        body(script)
            .into_iter()
            .filter(|l| l.starts_with("-A EGRESSTRATOR-REFUSE "))
            .collect()
    }

    #[test]
    fn audit_logs_and_returns_to_output_but_never_for_deny_all() {
        let r = Ruleset {
            audit: true,
            ..allowlist()
        };
        let s = render(&r, Jump::Missing);
        for script in [&s.v4, &s.v6] {
            assert_eq!(
                refuse_chain(script),
                [
                    "-A EGRESSTRATOR-REFUSE -m limit --limit 20/sec --limit-burst 40 -j NFLOG --nflog-prefix \"egresstrator audit\" --nflog-group 25959",
                    "-A EGRESSTRATOR-REFUSE -j RETURN",
                ]
            );
            // Everything else is the real ruleset, and its refusals go (-g) to the chain, so
            // the RETURN lands in OUTPUT, not back in EGRESSTRATOR-OUTPUT.
            assert!(script.contains("-A EGRESSTRATOR-OUTPUT -g EGRESSTRATOR-REFUSE\n"));
            assert!(!script.contains("-j EGRESSTRATOR-REFUSE"));
            assert!(!script.contains("ACCEPT"));
        }
        assert!(s
            .v4
            .starts_with("# egresstrator: posture allowlist (audit) acls web family ipv4\n"));
        let enforcing = render(&allowlist(), Jump::Missing);
        let rest = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with("-A EGRESSTRATOR-REFUSE "))
                .map(|l| l.replace(" (audit)", ""))
                .collect()
        };
        assert_eq!(rest(&s.v4), rest(&enforcing.v4));
        assert_eq!(rest(&s.v6), rest(&enforcing.v6));

        let closed = Ruleset {
            audit: true,
            ..Ruleset::deny_all()
        };
        assert_eq!(
            render(&closed, Jump::Present),
            render(&Ruleset::deny_all(), Jump::Present)
        );
    }

    #[test]
    fn refusals_are_logged_before_the_reject() {
        let s = render(&Ruleset::deny_all(), Jump::Present);
        assert_eq!(
            refuse_chain(&s.v6),
            [
                "-A EGRESSTRATOR-REFUSE -m limit --limit 20/sec --limit-burst 40 -j NFLOG --nflog-prefix \"egresstrator deny\" --nflog-group 25959",
                "-A EGRESSTRATOR-REFUSE -p tcp -j REJECT --reject-with tcp-reset",
                "-A EGRESSTRATOR-REFUSE -j REJECT --reject-with icmp6-adm-prohibited",
            ]
        );
    }

    #[test]
    fn only_egresstrator_chains_are_declared() {
        // A declared built-in chain (`:OUTPUT ACCEPT`) would reset its policy and, without
        // --noflush, every other tool's rules: only our own chains may be declared.
        let s = render(&allowlist(), Jump::Missing);
        for script in [&s.v4, &s.v6] {
            let declared: Vec<&str> = script.lines().filter(|l| l.starts_with(':')).collect();
            assert_eq!(
                declared,
                [
                    ":EGRESSTRATOR-OUTPUT - [0:0]",
                    ":EGRESSTRATOR-REFUSE - [0:0]"
                ]
            );
            let touches_output: Vec<&str> =
                script.lines().filter(|l| l.contains(" OUTPUT ")).collect();
            assert_eq!(touches_output, ["-I OUTPUT 1 -j EGRESSTRATOR-OUTPUT"]);
        }
    }

    #[test]
    fn clear_script_and_commands() {
        assert_eq!(
            render_clear(Family::V6, Jump::Present),
            "# egresstrator: clear family ipv6\n*filter\n-D OUTPUT -j EGRESSTRATOR-OUTPUT\n\
             :EGRESSTRATOR-OUTPUT - [0:0]\n:EGRESSTRATOR-REFUSE - [0:0]\n\
             -X EGRESSTRATOR-OUTPUT\n-X EGRESSTRATOR-REFUSE\nCOMMIT\n"
        );
        assert!(!render_clear(Family::V4, Jump::Missing).contains("-D"));
        let c = clear_commands(Family::V4);
        assert_eq!(
            c.delete_jump,
            [
                "iptables",
                "-w",
                "5",
                "-D",
                "OUTPUT",
                "-j",
                "EGRESSTRATOR-OUTPUT"
            ]
        );
        assert_eq!(c.remove_chains.len(), 4);
        assert!(c.remove_chains.iter().all(|a| a[0] == "iptables"));
        assert_eq!(clear_commands(Family::V6).delete_jump[0], "ip6tables");
        assert_eq!(
            restore_command(Family::V6),
            ["ip6tables-restore", "-w", "5", "--noflush"]
        );
        assert_eq!(
            check_jump_command(Family::V4),
            [
                "iptables",
                "-w",
                "5",
                "-C",
                "OUTPUT",
                "-j",
                "EGRESSTRATOR-OUTPUT"
            ]
        );
    }
}
