//! Applying rulesets into throwaway network namespaces (`ip netns add egt-bench-<run>-…`),
//! with the agent's own applier (`egresstrator::netns`), to time each backend against the
//! size of an ACL. Every namespace is deleted when its guard drops, also on error.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use egresstrator_core::acl::AclName;
use egresstrator_core::policy::ServiceTable;
use egresstrator_core::render;
use egresstrator_core::render::iptables::{self, Jump};
use egresstrator_core::{compile, AclTable, Mode, PolicyInput, Ruleset, WorkloadPolicy};

/// The ACL name used for generated rulesets.
pub const ACL: &str = "bench";

/// An ACL of `n` distinct, non-adjacent /32s (none can be merged with another), one port.
pub fn generated_acl(n: usize) -> String {
    let mut text = String::with_capacity(n * 24);
    for i in 0..n {
        // Stride 1021 (prime, > 1) keeps every address apart from the next, so merging finds
        // nothing; 10.0.0.0/8 holds 16,431 of them.
        let offset = 1 + (i as u32).wrapping_mul(1021) % 0x00FF_FFFE;
        let addr = Ipv4Addr::from(0x0A00_0000 | offset);
        text.push_str(&format!("{addr}/32:tcp/443\n"));
    }
    text
}

/// Compiles `acl_text` as the only ACL of an allowlist workload.
pub fn ruleset(acl_text: &str) -> Result<Ruleset> {
    let table = AclTable::parse([(ACL, acl_text)]);
    let name = AclName::parse(ACL).with_context(|| format!("acl name {ACL:?}"))?;
    let workload = WorkloadPolicy {
        acls: vec![name],
        resolvers: Vec::new(),
    };
    let services = ServiceTable::new();
    let input = PolicyInput {
        mode: Mode::Allowlist,
        acls: &table,
        services: &services,
        dns_allow: &[],
    };
    let compiled = compile(&workload, &input)
        .with_context(|| format!("cannot compile the generated acl '{ACL}'"))?;
    Ok(compiled.ruleset)
}

/// A throwaway network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(name: String) -> Result<Netns> {
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .with_context(|| format!("cannot run `ip netns add {name}`"))?;
        if !out.status.success() {
            bail!(
                "ip netns add {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Netns { name })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Deletes every leftover namespace whose name starts with `prefix`.
pub fn delete_netns_with_prefix(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(prefix) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// One nft apply: time inside the namespace (as the agent reports it) and wall time around
/// the call (thread start and namespace entry included).
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub inside_ms: f64,
    pub wall_ms: f64,
}

pub async fn apply_nft(netns: &Netns, script: &str) -> Result<Timed> {
    let t = Instant::now();
    let inside = egresstrator::netns::apply_nft(netns.path(), script.to_string())
        .await
        .with_context(|| format!("nft apply into netns {} failed", netns.name))?;
    Ok(Timed {
        inside_ms: inside.as_secs_f64() * 1000.0,
        wall_ms: t.elapsed().as_secs_f64() * 1000.0,
    })
}

/// One iptables apply: `iptables-restore -w --noflush` then `ip6tables-restore -w --noflush`
/// spawned inside the namespace, as the iptables backend does. Returns the wall time of both.
pub async fn apply_iptables(netns: &Netns, scripts: &iptables::IptablesScripts) -> Result<f64> {
    let mut total = 0.0;
    for (family, script) in [
        (egresstrator_core::merge::Family::V4, &scripts.v4),
        (egresstrator_core::merge::Family::V6, &scripts.v6),
    ] {
        let argv = iptables::restore_command(family);
        let Some((program, args)) = argv.split_first() else {
            bail!("empty restore command for {family:?}");
        };
        let t = Instant::now();
        let out = egresstrator::netns::run_program(
            netns.path(),
            program,
            args.to_vec(),
            script.as_bytes().to_vec(),
        )
        .await
        .with_context(|| format!("{program} in netns {} failed to run", netns.name))?;
        total += t.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "{program} in netns {} exited with {}: {}",
                netns.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(total)
}

/// Renders both backends' input for a ruleset applied into a fresh namespace.
pub fn render_all(ruleset: &Ruleset) -> (String, iptables::IptablesScripts) {
    (
        render::nft::render(ruleset),
        iptables::render(ruleset, Jump::Missing),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_acl_has_distinct_unmergeable_lines() {
        let text = generated_acl(10_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_000);
        let mut addrs: Vec<u32> = lines
            .iter()
            .map(|l| {
                let ip: Ipv4Addr = l.split('/').next().unwrap().parse().unwrap();
                u32::from(ip)
            })
            .collect();
        addrs.sort_unstable();
        assert!(
            addrs.windows(2).all(|w| w[1] > w[0] + 1),
            "adjacent or equal"
        );
        assert!(addrs.iter().all(|a| a >> 24 == 10));
    }

    #[test]
    fn generated_acl_compiles_to_n_rules() {
        let ruleset = ruleset(&generated_acl(1000)).unwrap();
        assert_eq!(ruleset.allow.len(), 1000);
        let (nft, ipt) = render_all(&ruleset);
        assert!(nft.contains("10.0.0.1"));
        assert!(ipt.v4.contains("COMMIT"));
    }
}
