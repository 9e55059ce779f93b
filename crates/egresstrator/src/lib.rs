//! egresstrator: per-container egress firewalls for Docker, from policy kept in Consul.
//!
//! The library holds the I/O edge around `egresstrator-core`: Docker and Consul clients, the
//! namespace applier and the agent. The `egresstrator` binary only parses arguments and
//! dispatches; integration tests drive these modules against real components.
//!
//! # Layout, in the order data flows
//!
//! 1. **Who is enabled, with what.** [`docker`] turns Docker's answers (inspect, events, its
//!    on-disk record for the runtime hook) into `ContainerInfo`; [`enforce::request`] reads
//!    what a container asks for (labels win over `EGRESSTRATOR_*`), [`overrides`] what `set`
//!    and `clear` decided; [`resolvers`] which DNS servers its creator or the daemon chose.
//!    [`hook`] receives the runtime hook's requests (`egresstrator-runc`, in `src/bin`).
//! 2. **What policy says.** [`consul`] reads the kv-path and services, [`policy_watch`] keeps
//!    them current (blocking queries, the snapshot on disk, protect mode's manifest), [`limits`]
//!    bounds what it reads.
//! 3. **What a namespace gets.** `agent::plan::decide` (pure) decides wait, up to date, or
//!    load, compiling with `egresstrator-core`; [`template`] renders `--template` instead.
//!    **This is the file that decides whether a container is loaded.**
//! 4. **Loading it.** [`enforce::load`] loads a plan or fails closed to deny-all; [`backend`]
//!    renders and loads per backend, with the raw-socket guard ([`guard`] verifies the kernel
//!    holds it); [`netns`] enters the namespace on a dedicated thread and checks its cookie;
//!    [`nft`] is libnftables; [`helper`] loads through a helper container instead;
//!    [`conntrack`] cuts connections the new rules deny.
//! 5. **Keeping it.** [`agent`] is the reconciler that ties these together: members and
//!    namespaces, retries, drift checks, hook answers. [`status`] serves `/status`,
//!    `/metrics` and `/healthz`; [`trim`] returns a burst's heap.
//! 6. **By hand.** [`commands`] (`set`, `clear`, `validate`, `explain`, `check`) and [`cli`].

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
