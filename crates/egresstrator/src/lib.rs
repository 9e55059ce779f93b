//! egresstrator: per-container egress firewalls for Docker, from policy kept in Consul.
//!
//! The library holds the I/O edge around `egresstrator-core`: Docker and Consul clients, the
//! namespace applier and the agent. The `egresstrator` binary only parses arguments and
//! dispatches; integration tests drive these modules against real components.

pub mod agent;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod conntrack;
pub mod consul;
pub mod docker;
pub mod enforce;
pub mod guard;
pub mod helper;
pub mod hook;
pub mod limits;
pub mod netns;
pub mod nft;
pub mod overrides;
pub mod policy_watch;
pub mod resolvers;
pub mod status;
pub mod tar;
pub mod template;
pub mod trim;
