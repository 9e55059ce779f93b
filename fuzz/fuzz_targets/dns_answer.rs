//! What the fqdn learner makes of a queued packet (`dns_answer::parse`): an IPv4 or IPv6
//! packet from port 53, UDP or TCP, carrying a DNS response. Everything in it comes from the
//! network and, through the resolver, from whoever controls a zone.
//!
//! Checked: no panic; an answer's chain starts at its question name and has no repeats and at
//! most `MAX_CHAIN + 1` names, all lower case without a trailing dot; at most `MAX_ADDRS`
//! addresses; the answer's resolver is the packet's source address.
#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;

use egresstrator_core::dns_answer::{dns_payload, parse, MAX_ADDRS, MAX_CHAIN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = dns_payload(data);
    let Some(answer) = parse(data) else {
        return;
    };
    let (src, _) = payload.expect("an answer has a payload");
    assert_eq!(answer.resolver, src);
    assert_eq!(answer.chain.first(), Some(&answer.qname));
    assert!(answer.chain.len() <= MAX_CHAIN + 1, "{:?}", answer.chain);
    let unique: BTreeSet<&String> = answer.chain.iter().collect();
    assert_eq!(unique.len(), answer.chain.len(), "{:?}", answer.chain);
    for name in &answer.chain {
        assert!(!name.is_empty() && !name.ends_with('.'), "{name:?}");
        assert_eq!(name, &name.to_ascii_lowercase());
    }
    assert!(answer.addrs.len() <= MAX_ADDRS);
    let _: Vec<IpAddr> = answer.addrs.iter().map(|(a, _)| *a).collect();
});
