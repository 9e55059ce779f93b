//! Turns a list of destinations into an equivalent list of disjoint ones.
//!
//! nftables interval sets refuse overlapping elements, and fewer elements are cheaper to load
//! and to match. For each (family, protocol) the port axis is cut into elementary intervals;
//! each interval gets the aggregated union of the networks that cover it (overlapping and
//! adjacent CIDRs merged), and neighbouring intervals with identical networks are joined.
//! The result matches exactly the same (address, protocol, port) triples as the input.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::ruleset::{Dest, PortRange, Proto};

/// IP family of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// Disjoint destinations of one family, sorted by protocol, ports, then network.
pub fn disjoint(dests: &[Dest], family: Family) -> Vec<Dest> {
    let mut out = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let group: Vec<&Dest> = dests
            .iter()
            .filter(|d| d.proto == proto && Family::of(&d.net) == family)
            .collect();
        if group.is_empty() {
            continue;
        }
        // Cut points: every range start and every range end + 1.
        let mut cuts: BTreeSet<u32> = BTreeSet::new();
        for d in &group {
            cuts.insert(u32::from(d.ports.low));
            cuts.insert(u32::from(d.ports.high) + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        let mut pending: Option<(PortRange, Vec<IpNet>)> = None;
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            // Cut points come from u16 ports, so lo and hi fit in u16.
            let range = PortRange {
                low: lo as u16,
                high: hi as u16,
            };
            let nets: Vec<IpNet> = group
                .iter()
                .filter(|d| d.ports.low <= range.low && range.high <= d.ports.high)
                .map(|d| d.net)
                .collect();
            let nets = IpNet::aggregate(&nets);
            pending = match pending.take() {
                Some((prev, prev_nets))
                    if prev_nets == nets && u32::from(prev.high) + 1 == u32::from(range.low) =>
                {
                    Some((
                        PortRange {
                            low: prev.low,
                            high: range.high,
                        },
                        prev_nets,
                    ))
                }
                Some((prev, prev_nets)) => {
                    emit(&mut out, proto, prev, &prev_nets);
                    Some((range, nets))
                }
                None => Some((range, nets)),
            };
        }
        if let Some((prev, prev_nets)) = pending {
            emit(&mut out, proto, prev, &prev_nets);
        }
    }
    out
}

fn emit(out: &mut Vec<Dest>, proto: Proto, ports: PortRange, nets: &[IpNet]) {
    out.extend(nets.iter().map(|&net| Dest { net, proto, ports }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn d(s: &str) -> Dest {
        let (net, rest) = s.rsplit_once(':').expect("colon");
        let (proto, ports) = rest.split_once('/').expect("slash");
        let ports = match ports.split_once('-') {
            Some((a, b)) => PortRange {
                low: a.parse().expect("port"),
                high: b.parse().expect("port"),
            },
            None => PortRange::single(ports.parse().expect("port")),
        };
        Dest {
            net: net.parse().expect("net"),
            proto: if proto == "tcp" {
                Proto::Tcp
            } else {
                Proto::Udp
            },
            ports,
        }
    }

    fn show(v: &[Dest]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn adjacent_and_overlapping_cidrs_merge() {
        let v = [
            d("10.0.0.0/25:tcp/80"),
            d("10.0.0.128/25:tcp/80"),
            d("10.0.0.7/32:tcp/80"),
        ];
        assert_eq!(show(&disjoint(&v, Family::V4)), ["10.0.0.0/24:tcp/80"]);
    }

    #[test]
    fn overlapping_port_ranges_become_disjoint() {
        let v = [d("10.0.0.0/8:tcp/1-100"), d("10.1.0.0/16:tcp/50-200")];
        assert_eq!(
            show(&disjoint(&v, Family::V4)),
            ["10.0.0.0/8:tcp/1-100", "10.1.0.0/16:tcp/101-200",]
        );
    }

    #[test]
    fn families_and_protocols_stay_apart() {
        let v = [
            d("10.0.0.0/8:tcp/53"),
            d("10.0.0.0/8:udp/53"),
            d("2001:db8::/32:tcp/53"),
        ];
        assert_eq!(disjoint(&v, Family::V4).len(), 2);
        assert_eq!(show(&disjoint(&v, Family::V6)), ["[2001:db8::/32]:tcp/53"]);
    }

    fn arb_dest() -> impl Strategy<Value = Dest> {
        (any::<u32>(), 20u8..=32, any::<bool>(), 1u16..40, 0u16..20).prop_map(
            |(a, len, tcp, lo, span)| Dest {
                // Confine addresses to 10.0.0.0/16 so that overlaps are common.
                net: IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (a & 0xffff))), len)
                    .expect("valid len")
                    .trunc(),
                proto: if tcp { Proto::Tcp } else { Proto::Udp },
                ports: PortRange {
                    low: lo,
                    high: lo + span,
                },
            },
        )
    }

    proptest! {
        /// Merging never changes what matches, and its output never overlaps.
        #[test]
        fn merge_preserves_matches(v in prop::collection::vec(arb_dest(), 0..12),
                                   probes in prop::collection::vec((any::<u16>(), any::<bool>(), 1u16..70), 64)) {
            let m = disjoint(&v, Family::V4);
            for (low, tcp, port) in probes {
                let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | u32::from(low)));
                let proto = if tcp { Proto::Tcp } else { Proto::Udp };
                let before = v.iter().any(|d| d.matches(addr, proto, port));
                let after = m.iter().filter(|d| d.matches(addr, proto, port)).count();
                prop_assert_eq!(before, after > 0);
                prop_assert!(after <= 1, "overlapping output for {} {} {}", addr, proto, port);
            }
        }
    }
}
