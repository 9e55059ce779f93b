//! Rendering a [`Ruleset`](crate::ruleset::Ruleset) for a firewall backend.
//!
//! Renderers are pure: they return text, and the applier elsewhere loads it atomically inside
//! the target namespace. Output is deterministic, so its hash says whether a namespace needs
//! a new apply.

pub mod guard;
pub mod iptables;
pub mod nft;

use sha2::{Digest, Sha256};

use crate::ruleset::Ruleset;

/// The NFLOG group every refused (or, in audit mode, would-be-refused) packet is logged to:
/// 0x6567, ASCII `eg`. The agent binds a `NETLINK_NETFILTER` socket to this group *inside each
/// container's network namespace* (nfnetlink_log keeps one set of groups per namespace), so
/// the number only has to avoid what other tools inside the same namespace use; those
/// commonly take the low groups (0, 1, 2: ulogd's and tcpdump's examples). Only one socket
/// can bind a group in a namespace; a second socket's bind fails (`EPERM` on 6.x). With none bound,
/// the kernel discards the records and the verdict is unchanged.
pub const NFLOG_GROUP: u16 = 0x6567;

/// NFLOG prefix of a packet the ruleset refused.
pub const LOG_PREFIX_DENY: &str = "egresstrator deny";

/// NFLOG prefix of a packet an audit-mode ruleset would have refused and accepted instead.
pub const LOG_PREFIX_AUDIT: &str = "egresstrator audit";

/// Sustained records per second a namespace may log (per IP family with iptables, which
/// keeps one bucket in `iptables` and one in `ip6tables`; one for both with nft).
///
/// Why a limit at all: logging is per packet, and refused packets cost their sender nothing.
/// Measured here (kernel 6.18, one core): a loop of 500 refused UDP `sendto`s takes about 4 ms,
/// so one workload could push well over 100,000 records a second into the agent and the
/// host's netlink buffers. With the limit, 100 containers flooding at once give the agent
/// 2,000 records a second, which a single task parses without noticing.
///
/// Why 20: a refused program fails fast (TCP reset, `EPERM` on UDP `sendto`), so a misbehaving
/// retry loop is the only source of sustained refusals, and a sample of 20 a second names its
/// destination as well as all of them would. The limit counts packets, not destinations: while
/// one destination floods, others may go unlogged, until the flood stops.
pub const LOG_RATE_PER_SEC: u32 = 20;

/// Records a namespace may log at once before [`LOG_RATE_PER_SEC`] applies (the token bucket's
/// size; the kernel starts it full, and refills it at every apply, since each apply replaces
/// the rules).
///
/// Why 40: what an operator rolling out default-deny needs to see is the set of destinations a
/// workload tries, and those come in bursts, mostly at start: DNS to each resolver, a few
/// services, each over IPv4 and IPv6, with a retry or two. 40 covers a start of that shape
/// completely, and then sustains [`LOG_RATE_PER_SEC`]. Measured: 500 refused datagrams sent
/// back to back yield exactly 40 records.
pub const LOG_BURST: u32 = 40;

/// Hex SHA-256 of rendered output; equal hashes mean an apply would change nothing.
pub fn hash(rendered: &str) -> String {
    let digest = Sha256::digest(rendered.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The posture as rendered scripts name it in their header and the nft table comment:
/// `allowlist`, `protect (audit)`, `deny-all` (never audited, see [`Ruleset::audits`]).
pub(crate) fn posture_comment(ruleset: &Ruleset) -> String {
    if ruleset.audits() {
        format!("{} (audit)", ruleset.posture)
    } else {
        ruleset.posture.to_string()
    }
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

    #[test]
    fn posture_comment_says_audit_except_for_deny_all() {
        let mut r = Ruleset::deny_all();
        r.audit = true;
        assert_eq!(posture_comment(&r), "deny-all");
        r.posture = crate::ruleset::Posture::Protect;
        assert_eq!(posture_comment(&r), "protect (audit)");
        r.audit = false;
        assert_eq!(posture_comment(&r), "protect");
    }

    /// The prefixes must fit both backends: iptables' `--nflog-prefix` takes at most 63 bytes,
    /// and they are written inside double quotes in both scripts.
    #[test]
    fn prefixes_fit_both_backends() {
        for p in [LOG_PREFIX_DENY, LOG_PREFIX_AUDIT] {
            assert!(p.len() < 64);
            assert!(p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' '));
        }
        assert_ne!(NFLOG_GROUP, 0);
    }
}
