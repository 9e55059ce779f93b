//! Integration tests, built as one binary: real dockerd, real Consul, real namespaces.
//! Run them with `make test`, which installs and starts everything they need.

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_image;
mod common;
mod consul;
mod dns_server;
mod docker_client;
mod docker_tls;
mod e2e;
mod fail_closed;
mod flows;
mod fqdn;
mod health;
mod helper_image;
mod lifecycle;
mod modes;
mod netns_apply;
mod podman;
mod runtime_cmd;
mod shim;
mod tamper;
mod template;
