//! Which DNS servers a container may reach in allowlist mode: only those its creator or the
//! daemon chose, never what a file inside the container says.
//!
//! Why it exists: the container's `/etc/resolv.conf` is bind-mounted read-write, so root in
//! the container can write `nameserver <any address>` into it. Had the agent read that file,
//! port 53 to any address would open at its next reading: a full tunnel. Instead, the
//! resolvers are derived the way dockerd derives what it writes into that file
//! (libnetwork's sandbox DNS setup, Docker 20.10):
//! - `--dns` (`HostConfig.Dns`), else the daemon's `dns` setting (`/etc/docker/daemon.json`),
//!   else the host's resolv.conf (the systemd-resolved upstream file when the host's only
//!   names a loopback stub);
//! - on the default bridge those servers are the container's, loopback ones left out, and
//!   when none is left Docker falls back to Google's public servers;
//! - on a user-defined network the container asks Docker's embedded server (127.0.0.11),
//!   which forwards from inside the container's namespace to those same servers (loopback
//!   ones are forwarded from the host's namespace, so they need nothing here);
//! - `--network none` has no resolvers; `--network container:X` has X's.
//!
//! What it must never do: read anything from the container's filesystem.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::docker::{parse_resolv_conf, ContainerInfo};

/// Docker's embedded DNS server, on user-defined networks.
pub const EMBEDDED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));

/// The servers Docker falls back to on the default bridge when the host has none it can
/// use (`libnetwork/resolvconf`'s defaults).
const DOCKER_DEFAULTS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8844)),
];

/// The daemon's side of DNS: what dockerd itself would hand a container without `--dns`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonDns {
    /// `dns` in the daemon's configuration file.
    pub configured: Vec<IpAddr>,
    /// The host's resolv.conf as dockerd reads it.
    pub host: Vec<IpAddr>,
}

impl DaemonDns {
    /// Reads the daemon's configuration and the host's resolv.conf. Unreadable files count
    /// as empty: then Docker's own defaults apply, as they would for dockerd.
    pub fn read() -> Self {
        DaemonDns {
            configured: daemon_json_dns(Path::new("/etc/docker/daemon.json")),
            host: host_resolvers(
                Path::new("/etc/resolv.conf"),
                Path::new("/run/systemd/resolve/resolv.conf"),
            ),
        }
    }
}

/// How a container's network is set up, as far as DNS is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetKind {
    /// The default bridge (`default`, `bridge`): resolv.conf names the servers themselves.
    DefaultBridge,
    /// A user-defined network: Docker's embedded server forwards.
    UserDefined,
    /// `--network none`.
    None,
}

impl NetKind {
    /// The kind of a `HostConfig.NetworkMode` (for `container:X`, ask about X instead).
    pub fn of(network_mode: &str) -> NetKind {
        match network_mode {
            "" | "default" | "bridge" => NetKind::DefaultBridge,
            "none" => NetKind::None,
            _ => NetKind::UserDefined,
        }
    }
}

/// The resolvers of a container whose DNS is set up by `info` (for `container:X`, pass X).
pub fn trusted(info: &ContainerInfo, daemon: &DaemonDns) -> Vec<IpAddr> {
    let own: Vec<IpAddr> = info.dns.iter().filter_map(|d| d.parse().ok()).collect();
    let chosen = if !own.is_empty() {
        own
    } else if !daemon.configured.is_empty() {
        daemon.configured.clone()
    } else {
        daemon.host.clone()
    };
    let mut list = match NetKind::of(&info.network_mode) {
        NetKind::None => return Vec::new(),
        NetKind::UserDefined => {
            let mut l = vec![EMBEDDED];
            l.extend(chosen.into_iter().filter(|a| !a.is_loopback()));
            l
        }
        NetKind::DefaultBridge => {
            let kept: Vec<IpAddr> = if info.dns.is_empty() {
                // dockerd drops the host's loopback servers (they mean nothing in the
                // container) and falls back to its defaults when none are left.
                chosen.into_iter().filter(|a| !a.is_loopback()).collect()
            } else {
                chosen
            };
            if kept.is_empty() {
                DOCKER_DEFAULTS.to_vec()
            } else {
                kept
            }
        }
    };
    let mut seen = Vec::new();
    list.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    list
}

/// The `dns` list of dockerd's configuration file, if it has one.
fn daemon_json_dns(path: &Path) -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("dns")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str()?.trim().parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The host's nameservers as dockerd reads them: when `/etc/resolv.conf` names only loopback
/// servers (a systemd-resolved stub), dockerd uses resolved's upstream file instead.
fn host_resolvers(etc: &Path, resolved: &Path) -> Vec<IpAddr> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| parse_resolv_conf(&t))
            .unwrap_or_default()
    };
    let list = read(etc);
    if !list.is_empty() && list.iter().all(IpAddr::is_loopback) {
        let upstream = read(resolved);
        if !upstream.is_empty() {
            return upstream;
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mode: &str, dns: &[&str]) -> ContainerInfo {
        ContainerInfo {
            id: "c".into(),
            started_at: None,
            name: "c".into(),
            running: true,
            pid: None,
            sandbox_key: None,
            network_mode: mode.into(),
            env: Vec::new(),
            labels: Default::default(),
            resolv_conf_path: None,
            dns: dns.iter().map(|s| (*s).to_owned()).collect(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            privileged: false,
            bounding: None,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    fn daemon(configured: &[&str], host: &[&str]) -> DaemonDns {
        DaemonDns {
            configured: ips(configured),
            host: ips(host),
        }
    }

    #[test]
    fn default_bridge_uses_dns_then_daemon_then_host_then_dockers_defaults() {
        let d = daemon(&[], &["10.0.0.2", "127.0.0.53"]);
        assert_eq!(
            trusted(&info("default", &["10.9.9.9"]), &d),
            ips(&["10.9.9.9"])
        );
        assert_eq!(trusted(&info("bridge", &[]), &d), ips(&["10.0.0.2"]));
        let d = daemon(&["10.5.5.5"], &["10.0.0.2"]);
        assert_eq!(trusted(&info("default", &[]), &d), ips(&["10.5.5.5"]));
        let d = daemon(&[], &["127.0.0.53"]);
        assert_eq!(trusted(&info("default", &[]), &d), DOCKER_DEFAULTS.to_vec());
    }

    #[test]
    fn user_defined_network_is_the_embedded_server_and_its_upstreams() {
        let d = daemon(&[], &["10.0.0.2", "127.0.0.53"]);
        assert_eq!(
            trusted(&info("my-net", &[]), &d),
            ips(&["127.0.0.11", "10.0.0.2"])
        );
        assert_eq!(
            trusted(&info("my-net", &["10.231.27.10", "127.0.0.1"]), &d),
            ips(&["127.0.0.11", "10.231.27.10"])
        );
    }

    #[test]
    fn none_has_no_resolvers_and_bad_dns_entries_are_ignored() {
        let d = daemon(&[], &["10.0.0.2"]);
        assert!(trusted(&info("none", &["10.1.1.1"]), &d).is_empty());
        assert_eq!(
            trusted(&info("default", &["not-an-ip", "10.1.1.1", "10.1.1.1"]), &d),
            ips(&["10.1.1.1"])
        );
    }

    #[test]
    fn resolved_stub_is_replaced_by_its_upstreams() {
        let dir = std::env::temp_dir().join(format!("egt-resolvers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let etc = dir.join("resolv.conf");
        let up = dir.join("upstream.conf");
        std::fs::write(&etc, "nameserver 127.0.0.53\n").expect("write");
        std::fs::write(&up, "nameserver 10.3.3.3\n").expect("write");
        assert_eq!(host_resolvers(&etc, &up), ips(&["10.3.3.3"]));
        std::fs::write(&etc, "nameserver 10.2.2.2\nnameserver 127.0.0.53\n").expect("write");
        assert_eq!(host_resolvers(&etc, &up), ips(&["10.2.2.2", "127.0.0.53"]));
        let json = dir.join("daemon.json");
        std::fs::write(&json, r#"{"dns": ["10.4.4.4", "x"], "runtimes": {}}"#).expect("write");
        assert_eq!(daemon_json_dns(&json), ips(&["10.4.4.4"]));
        assert!(daemon_json_dns(&dir.join("missing.json")).is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
