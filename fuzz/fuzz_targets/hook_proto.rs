//! The runtime hook's wire protocol (`egresstrator_core::hook_proto`): one JSON line each
//! way between `egresstrator-runc hook` and the agent.
//!
//! Input: a JSON line, decoded as a `HookRequest` and as a `HookReply` (each side decodes
//! what the other, or anyone who can reach the root-only socket, wrote). Checked: no panic;
//! whatever decodes encodes to JSON that decodes to the same value, through text and through
//! `serde_json::Value`, and the encoding is one line.
#![no_main]

use egresstrator_core::hook_proto::{HookReply, HookRequest};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let text = serde_json::to_string(v).expect("encodes");
    assert!(!text.contains('\n'), "not one line: {text}");
    let back: T = serde_json::from_str(&text).expect("decodes its own encoding");
    assert_eq!(&back, v);
    let value = serde_json::to_value(v).expect("to value");
    let back: T = serde_json::from_value(value).expect("from value");
    assert_eq!(&back, v);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<HookRequest>(data) {
        round_trip(&req);
    }
    if let Ok(reply) = serde_json::from_slice::<HookReply>(data) {
        round_trip(&reply);
    }
    // The agent reads one line at a time.
    if let Some(line) = data.split(|&b| b == b'\n').next() {
        if let Ok(req) = serde_json::from_slice::<HookRequest>(line) {
            round_trip(&req);
        }
    }
});
