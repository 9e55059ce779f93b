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
//!    [`nft`] is libnftables; [`helper`] loads through a helper container instead (its tar archives from [`archive`]);
//!    [`conntrack`] cuts connections the new rules deny; [`keeper`] keeps netfilter's hook
//!    switches on so that loads into fresh namespaces do not pay for them.
//! 5. **Keeping it.** [`agent`] is the reconciler that ties these together: members and
//!    namespaces, retries, drift checks, hook answers; [`state_dir`] keeps the policy
//!    snapshot and [`overrides`] on disk; [`instance`] keeps a second agent off the same
//!    Docker daemon and state dir. [`status`] serves `/status`, `/metrics`,
//!    `/healthz` and `/monitor`; [`trim`] returns a burst's heap.
//! 6. **Seeing what is refused.** Each ruleset logs what it refuses; [`nflog`] reads those
//!    records inside each namespace (over `netlink`, shared with [`nft`]'s generation reader), the agent attributes them ([`flows`]), and [`client`] is
//!    `egresstrator monitor` (and `status`).
//! 7. **By hand.** [`commands`] (`set`, `clear`, `validate`, `explain`, `check`),
//!    [`runtime`] (`runtime install|uninstall`), [`doctor`] and [`cli`].

pub mod agent;
pub mod archive;
pub mod backend;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod commands;
pub mod conntrack;
pub mod consul;
pub mod cookie;
pub mod docker;
pub mod doctor;
pub mod enforce;
pub mod flows;
pub mod guard;
pub mod helper;
pub mod hook;
pub mod ifnames;
pub mod instance;
pub mod keeper;
pub mod limits;
pub(crate) mod netlink;
pub mod netns;
pub mod nflog;
pub mod nfqueue;
pub mod nft;
pub mod overrides;
pub mod policy_watch;
pub mod quiet;
pub mod rendered;
pub mod resolvers;
pub mod runtime;
pub mod snapshot;
pub mod state_dir;
pub mod status;
pub mod template;
pub mod trim;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The crate's modules depend on each other in one direction: no module reaches back to
    /// one that (through others) depends on it. Read from the sources: every `crate::name`
    /// outside a module's tests is an edge.
    #[test]
    fn modules_form_no_cycle() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut files = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    if !path.ends_with("bin") {
                        dirs.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        for path in files {
            let rel = path.strip_prefix(&src).expect("under src");
            let module = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.insert(name);
                }
            }
        }
        // Depth-first search for a path back to the start.
        fn reaches(
            graph: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            seen: &mut BTreeSet<String>,
        ) -> bool {
            graph
                .get(from)
                .into_iter()
                .flatten()
                .any(|d| d == to || (seen.insert(d.clone()) && reaches(graph, d, to, seen)))
        }
        let cyclic: Vec<&String> = graph
            .keys()
            .filter(|m| reaches(&graph, m, m, &mut BTreeSet::new()))
            .collect();
        assert!(
            cyclic.is_empty(),
            "modules in a cycle: {cyclic:?}; graph: {graph:?}"
        );
    }
}
