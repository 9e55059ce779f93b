//! The runtime hook's wire protocol: one JSON line from `egresstrator-runc hook` to the agent,
//! one JSON line back. Both sides use these types, so a renamed field breaks the build rather
//! than the link between them.

use serde::{Deserialize, Serialize};

/// What the hook sends: the container being created, before its first instruction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRequest {
    /// The container id (Docker's, which is also the OCI id).
    pub id: String,
    /// The paused init's pid (its namespace is the container's).
    pub pid: u32,
    /// `process.env` of the bundle's config.json (`KEY=VALUE`). The agent prefers Docker's
    /// own record of the container and uses this only when it cannot read that record.
    #[serde(default)]
    pub env: Vec<String>,
    /// The bundle asks runc for a new network namespace (not one joined by path): it was
    /// created for this container, nothing has run in it yet, so there are no connections
    /// to cut and no other backend's rules to remove after the first load.
    #[serde(default)]
    pub fresh_netns: bool,
    /// Not a request but a notice: the hook gave up waiting and loaded its own deny-all,
    /// which may have landed on top of the agent's ruleset.
    #[serde(default)]
    pub fell_back: bool,
    /// The bundle's `process.capabilities.bounding` (as the shim left it): the capabilities
    /// the workload will run with at most. `None` when the bundle has none.
    #[serde(default)]
    pub bounding: Option<Vec<String>>,
}

/// What the agent answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookReply {
    /// True when the container's ruleset (or, for a container that is not enabled, nothing)
    /// is in force.
    pub ok: bool,
    #[serde(default)]
    pub posture: Option<String>,
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names are the protocol: pin them, so a rename is a visible decision.
    #[test]
    fn field_names_are_stable() {
        let r = HookRequest {
            id: "c1".into(),
            pid: 42,
            env: vec!["A=1".into()],
            fresh_netns: true,
            fell_back: false,
            bounding: Some(vec!["CAP_CHOWN".into()]),
        };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"id":"c1","pid":42,"env":["A=1"],"fresh_netns":true,"fell_back":false,"bounding":["CAP_CHOWN"]}"#
        );
        let old: HookRequest =
            serde_json::from_str(r#"{"id":"c","pid":1,"env":[],"resolv_conf":"/x"}"#)
                .expect("an older hook's request still parses");
        assert!(!old.fresh_netns && !old.fell_back && old.bounding.is_none());
        let reply: HookReply = serde_json::from_str(r#"{"ok":true}"#).expect("reply");
        assert!(reply.ok && reply.error.is_none());
    }
}
