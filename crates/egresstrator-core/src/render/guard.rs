//! The raw-socket guard: a `netdev` table whose `egress` chain, on every interface of the
//! namespace, lets out only what the namespace's own IP stack routed.
//!
//! Why it exists: a workload with `CAP_NET_RAW` (Docker grants it by default) can write whole
//! frames through an `AF_PACKET` socket. Those frames never pass the `inet` output hook, so the
//! policy table never sees them, and the replies come back in. The `egress` hook of the
//! `netdev` family sits in the device's transmit path (`__dev_queue_xmit`, and on newer kernels
//! also the `PACKET_QDISC_BYPASS` path), so it sees every packet socket's frame. One path it
//! does not see: an `AF_XDP` socket's copy-mode transmit (`__dev_direct_xmit`) runs no
//! netfilter hook at all; that needs `CAP_NET_RAW`, which the runtime shim takes away.
//!
//! What tells the two apart must be something the workload cannot forge:
//! - a packet mark or priority is NOT: since Linux 5.17, `SO_MARK` and `SO_PRIORITY` may be
//!   set with `CAP_NET_RAW` alone (measured here: a packet socket's frame carrying the right
//!   mark passed a mark-based guard);
//! - `ct` expressions are refused in the `netdev` family;
//! - the route is: a packet the IP stack sends carries the route it was sent on (its `dst`),
//!   and a frame written to a packet socket carries none. `meta rtclassid` reads the route's
//!   realm and does not match at all when there is no route, so "rtclassid in 0-4294967295"
//!   means "routed by this namespace's IP stack". Those packets went through the `inet`
//!   output hook, where the policy already decided.
//!
//! `lo` is guarded too: a frame written to `lo` is *received* by the namespace and, with IPv4
//! forwarding on (Docker containers inherit the host's `ip_forward=1`), routed out of `eth0`
//! with a route attached, past the output hook (measured). On `lo`'s own egress it has no
//! route yet, so it is dropped there.
//!
//! ARP is let through: it is link-local and the namespace cannot reach its neighbours without
//! it (IPv6 neighbour discovery is IP and is routed). Nothing else is.
//!
//! Interfaces are named in the chain, so the guard must be loaded again whenever the
//! namespace's interfaces change (`docker network connect`); the applier lists them inside the
//! namespace at every load.

use std::fmt::Write;

/// The family and name of the guard's table.
pub const TABLE: &str = "netdev egresstrator";

/// The kernel's limit on devices per netdev chain (`NFT_NETDEVICE_MAX`).
const DEVICES_PER_CHAIN: usize = 256;

/// An interface name that cannot be written into the guard safely.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interface {name:?} cannot be guarded: its name has characters outside [A-Za-z0-9._+@-]")]
pub struct DeviceNameError {
    pub name: String,
}

/// True for names the guard accepts: what Docker, Podman and the kernel's own fallback
/// tunnels use (`eth0`, `ip6_vti0`, `veth1a2b@`-free names). A name is quoted in the script,
/// and these characters can neither end the quote nor the line.
pub fn device_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'@' | b'-'))
}

/// The guard for a namespace with these interfaces: the self-replacing script (`add table`
/// creates it if missing, then it is deleted and created again; see `super::nft::render`),
/// to be run in the same transaction as the policy. Interfaces whose names cannot be written
/// safely are left out and returned as errors, so the caller can report the namespace as
/// bypassable through them.
pub fn render(devices: &[String]) -> (String, Vec<DeviceNameError>) {
    let mut errors = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for d in devices {
        if device_name_ok(d) {
            if !names.contains(&d.as_str()) {
                names.push(d);
            }
        } else {
            errors.push(DeviceNameError { name: d.clone() });
        }
    }
    names.sort_unstable();
    let mut s = String::new();
    let _ = writeln!(s, "add table {TABLE}");
    let _ = writeln!(s, "delete table {TABLE}");
    let _ = writeln!(s, "table {TABLE} {{");
    s.push_str("\tcomment \"egresstrator guard: only packets routed by this namespace leave\"\n");
    for (i, chunk) in names.chunks(DEVICES_PER_CHAIN).enumerate() {
        let chain = if i == 0 {
            "egress".to_owned()
        } else {
            format!("egress_{i}")
        };
        let list: Vec<String> = chunk.iter().map(|n| format!("\"{n}\"")).collect();
        let _ = writeln!(s, "\tchain {chain} {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook egress devices = {{ {} }} priority filter; policy drop;",
            list.join(", ")
        );
        // Routed by the IP stack, so it went through the inet output hook (see module docs).
        s.push_str("\t\tmeta rtclassid 0-4294967295 accept\n");
        s.push_str("\t\tmeta protocol arp accept\n");
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    (s, errors)
}

/// The script that removes the guard and nothing else (no error if absent).
pub fn render_clear() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_interface_is_in_one_drop_chain() {
        let (s, errors) = render(&names(&["eth1", "lo", "eth0", "eth0"]));
        assert!(errors.is_empty());
        assert_eq!(
            s,
            "add table netdev egresstrator\n\
             delete table netdev egresstrator\n\
             table netdev egresstrator {\n\
             \tcomment \"egresstrator guard: only packets routed by this namespace leave\"\n\
             \tchain egress {\n\
             \t\ttype filter hook egress devices = { \"eth0\", \"eth1\", \"lo\" } priority filter; policy drop;\n\
             \t\tmeta rtclassid 0-4294967295 accept\n\
             \t\tmeta protocol arp accept\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn names_that_could_break_the_script_are_refused() {
        let (s, errors) = render(&names(&["eth0", "x\"}", "a b", "", "ip6_vti0"]));
        assert_eq!(
            errors.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["x\"}", "a b", ""]
        );
        assert!(s.contains("{ \"eth0\", \"ip6_vti0\" }"));
        assert!(!device_name_ok("sixteen-chars-xx"));
        assert!(device_name_ok("fifteen-chars-x"));
    }

    #[test]
    fn more_devices_than_one_chain_takes_are_split() {
        let many: Vec<String> = (0..300).map(|i| format!("d{i:03}")).collect();
        let (s, errors) = render(&many);
        assert!(errors.is_empty());
        assert_eq!(s.matches("hook egress").count(), 2);
        assert!(s.contains("chain egress_1 {"));
        assert_eq!(s.matches("\"d").count(), 300);
    }
}
