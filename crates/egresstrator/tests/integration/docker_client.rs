//! The Docker client against a real dockerd (20.10, API 1.41 here).
//!
//! Runs containers from the local image `egresstrator-test:latest` (built by
//! `scripts/test-image.sh`, which this test runs when the image is missing). Containers are
//! named `egt-dc-…` and removed by a guard, also on failure. Needs root and a reachable
//! dockerd: without them the tests fail and say how to get them (`make test`).

use egresstrator::docker;
use egresstrator::netns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use docker::{ContainerEvent, DockerClient, DockerError};
use futures_util::StreamExt;

const IMAGE: &str = "egresstrator-test:latest";

/// Connects, or fails the test with how to get a dockerd when it cannot.
async fn client_or_skip(test: &str) -> Option<DockerClient> {
    // SAFETY: geteuid has no preconditions.
    let problem = if unsafe { libc::geteuid() } != 0 {
        Some("root".to_string())
    } else {
        match DockerClient::connect(None).await {
            Ok(client) => return Some(client),
            Err(error) => Some(format!("a reachable dockerd ({error})")),
        }
    };
    let why = format!("{test}: needs {}", problem.unwrap_or_default());
    panic!("{why}; run `make test`, which installs and starts everything the tests need");
}

/// Makes sure the test image exists, building it with the project's script if needed.
#[allow(clippy::unwrap_used)] // test helper: panics on failure
async fn ensure_image(client: &DockerClient) {
    if client.bollard().inspect_image(IMAGE).await.is_ok() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-image.sh");
    let status = Command::new("bash").arg(&script).status().unwrap();
    assert!(status.success(), "{} failed: {status}", script.display());
    assert!(
        client.bollard().inspect_image(IMAGE).await.is_ok(),
        "{} did not produce {IMAGE}",
        script.display()
    );
}

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "egt-dc-{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Removes the container on drop (synchronously, so it also runs while a test panics).
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Removes the network on drop; declare it before the containers that use it.
struct NetworkGuard(String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// Waits for an event of `id` with `action` on `events`.
#[allow(clippy::unwrap_used)] // test helper: panics on failure
async fn wait_for_event(
    events: &mut (impl futures_util::Stream<Item = Result<ContainerEvent, DockerError>> + Unpin),
    id: &str,
    action: &str,
) -> ContainerEvent {
    let wait = async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if event.id == id && event.action == action {
                return event;
            }
        }
        panic!("event stream ended before {action} of {id}");
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap_or_else(|_| panic!("no {action} event for {id} within 15 s"))
}

#[tokio::test]
async fn container_lifecycle_inspect_events_and_netns() {
    let Some(client) = client_or_skip("container_lifecycle_inspect_events_and_netns").await else {
        return;
    };
    ensure_image(&client).await;

    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let mut events = client.events(Some(since));

    // A network of the test's own (Docker picks a free subnet): the test does not depend on
    // the default bridge, and its container can only reach hosts of this test.
    let network = format!("{}-net", unique_name());
    client
        .bollard()
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _network_guard = NetworkGuard(network.clone());

    let name = unique_name();
    let _guard = ContainerGuard(name.clone());
    let body = ContainerCreateBody {
        image: Some(IMAGE.to_string()),
        cmd: Some(vec!["sleep".to_string(), "600".to_string()]),
        env: Some(vec![
            "EGRESSTRATOR_ENABLE=1".to_string(),
            "EGRESSTRATOR_ACL=web,db".to_string(),
            "DUP=first".to_string(),
            "DUP=second".to_string(),
            "WITH_EQUALS=a=b".to_string(),
        ]),
        labels: Some(HashMap::from([
            ("egresstrator.test".to_string(), "yes".to_string()),
            ("com.example.team".to_string(), "net".to_string()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some(network.clone()),
            dns: Some(vec!["10.231.0.53".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = client
        .bollard()
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await
        .unwrap();
    client
        .bollard()
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();

    let info = client.inspect(&name).await.unwrap();
    assert_eq!(info.id, created.id);
    assert_eq!(info.id.len(), 64);
    assert_eq!(info.name, name);
    assert!(info.running);
    let pid = info.pid.expect("a running container has a pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let sandbox_key = info.sandbox_key.clone().expect("sandbox key");
    assert!(
        sandbox_key.starts_with("/var/run/docker/netns/"),
        "{sandbox_key:?}"
    );
    assert_eq!(info.network_mode, network);
    assert_eq!(info.env_var("EGRESSTRATOR_ENABLE"), Some("1"));
    assert_eq!(info.env_var("EGRESSTRATOR_ACL"), Some("web,db"));
    assert_eq!(info.env_var("DUP"), Some("second"));
    assert_eq!(info.env_var("WITH_EQUALS"), Some("a=b"));
    assert_eq!(
        info.labels.get("egresstrator.test").map(String::as_str),
        Some("yes")
    );
    // Labels merge the image's (the test image carries its own) with the container's.
    assert_eq!(
        info.labels.get("com.example.team").map(String::as_str),
        Some("net")
    );
    assert_eq!(info.dns, vec!["10.231.0.53"]);
    let resolv_conf = info.resolv_conf_path.clone().expect("resolv.conf path");
    // On a user-defined network the container asks Docker's embedded resolver, which
    // forwards to the `--dns` servers: resolv.conf and HostConfig.Dns differ.
    let resolvers = docker::parse_resolv_conf(&std::fs::read_to_string(&resolv_conf).unwrap());
    assert_eq!(
        resolvers,
        vec!["127.0.0.11".parse::<std::net::IpAddr>().unwrap()]
    );
    // Inspect by id gives the same answer.
    assert_eq!(client.inspect(&info.id).await.unwrap(), info);

    // Both ways into the container's namespace lead to the same one, which is not ours.
    let netns_path = info.netns_path().unwrap();
    assert_eq!(netns_path, PathBuf::from(format!("/proc/{pid}/ns/net")));
    let by_pid = netns::netns_id(&netns_path).unwrap();
    assert_eq!(by_pid, netns::netns_id(&sandbox_key).unwrap());
    assert!(!netns::host_netns_ids().unwrap().contains(&by_pid));

    // The real use: a table applied into the container's namespace, seen from inside it.
    let spent = netns::apply_nft(
        sandbox_key.clone(),
        "add table inet egresstrator\ndelete table inet egresstrator\n\
         table inet egresstrator {\n  chain output {\n    \
         type filter hook output priority 0; policy accept;\n    tcp dport 9 drop\n  }\n}\n"
            .to_string(),
    )
    .await
    .unwrap();
    let listed = netns::run_program(
        netns_path.clone(),
        "nft",
        vec![
            "list".into(),
            "table".into(),
            "inet".into(),
            "egresstrator".into(),
        ],
        vec![],
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("tcp dport 9 drop"),
        "{listed:?}"
    );
    eprintln!("applied a table into container {name} in {spent:?}");

    assert!(client.list_running().await.unwrap().contains(&info.id));

    let started = wait_for_event(&mut events, &info.id, "start").await;
    assert!(
        started.time_nano >= since * 1_000_000_000,
        "{started:?} is older than {since}"
    );

    client
        .bollard()
        .remove_container(
            &info.id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
        .unwrap();
    wait_for_event(&mut events, &info.id, "die").await;
    wait_for_event(&mut events, &info.id, "destroy").await;
    assert!(!client.list_running().await.unwrap().contains(&info.id));
    assert!(matches!(
        client.inspect(&info.id).await,
        Err(DockerError::NotFound { .. })
    ));
    // The namespace went with it: the pid's file is gone; Docker unmounts the sandbox key
    // at once but may delete the file only later, so that one is gone or no longer nsfs.
    let result = netns::run_in_netns(&netns_path, || Ok(()));
    assert!(
        matches!(result, Err(netns::NetnsError::Gone { .. })),
        "{result:?}"
    );
    let result = netns::run_in_netns(&sandbox_key, || Ok(()));
    assert!(
        matches!(&result, Err(error) if error.is_gone()),
        "{result:?}"
    );
}

/// The agent's start path reads Docker's record on disk at the `start` event instead of
/// asking the daemon: read right when each event arrives, for containers started at once, the
/// record must tell exactly what inspect tells; after the container stopped it must tell
/// nothing (the agent then asks the API), and after a restart the new run.
#[tokio::test]
async fn the_record_read_at_the_start_event_tells_what_inspect_tells() {
    let Some(client) =
        client_or_skip("the_record_read_at_the_start_event_tells_what_inspect_tells").await
    else {
        return;
    };
    ensure_image(&client).await;
    let root = client.root_dir().await.unwrap();
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let mut events = client.events(Some(since));

    let mut guards = Vec::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        let name = unique_name();
        guards.push(ContainerGuard(name.clone()));
        let body = ContainerCreateBody {
            image: Some(IMAGE.to_string()),
            cmd: Some(vec!["sleep".to_string(), "600".to_string()]),
            env: Some(vec![
                "EGRESSTRATOR_ENABLE=1".to_string(),
                format!("EGRESSTRATOR_ACL=web{i}"),
            ]),
            labels: Some(HashMap::from([(
                "egresstrator.test".to_string(),
                i.to_string(),
            )])),
            host_config: Some(HostConfig {
                dns: Some(vec!["10.231.0.53".to_string()]),
                cap_drop: Some(vec!["NET_RAW".to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = client
            .bollard()
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .unwrap();
        ids.push(created.id);
    }
    // Started all at once: dockerd is busy with the others while each event arrives.
    let starts = ids.iter().map(|id| {
        client
            .bollard()
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
    });
    for started in futures_util::future::join_all(starts).await {
        started.unwrap();
    }
    let mut recorded = HashMap::new();
    while recorded.len() < ids.len() {
        let event = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("start events within 15 s")
            .expect("event stream open")
            .unwrap();
        if event.action == "start" && ids.contains(&event.id) {
            let record = docker::read_started_record(&root, &event.id).unwrap();
            recorded.insert(event.id.clone(), record);
        }
    }
    for id in &ids {
        let record = recorded[id]
            .clone()
            .expect("a running record at the start event");
        let inspected = client.inspect(id).await.unwrap();
        assert_eq!(record, inspected, "record and inspect differ for {id}");
        assert!(record.pid.is_some() && record.sandbox_key.is_some());
    }

    // Stopped: the record shows no running process, so it is not used.
    let stopped = &ids[0];
    client
        .bollard()
        .stop_container(
            stopped,
            Some(
                bollard::query_parameters::StopContainerOptionsBuilder::new()
                    .t(0)
                    .build(),
            ),
        )
        .await
        .unwrap();
    wait_for_event(&mut events, stopped, "die").await;
    assert_eq!(docker::read_started_record(&root, stopped).unwrap(), None);

    // Restarted: the record read at the new start event tells the new run.
    let before = recorded[&ids[1]].clone().unwrap();
    client
        .bollard()
        .restart_container(
            &ids[1],
            Some(
                bollard::query_parameters::RestartContainerOptionsBuilder::new()
                    .t(0)
                    .build(),
            ),
        )
        .await
        .unwrap();
    wait_for_event(&mut events, &ids[1], "start").await;
    let after = docker::read_started_record(&root, &ids[1])
        .unwrap()
        .unwrap();
    assert_ne!(after.pid, before.pid);
    assert_ne!(after.started_at, before.started_at);
    assert_eq!(after, client.inspect(&ids[1]).await.unwrap());
}

#[tokio::test]
async fn unknown_container_is_not_found() {
    let Some(client) = client_or_skip("unknown_container_is_not_found").await else {
        return;
    };
    let name = format!("egt-dc-no-such-container-{}", std::process::id());
    match client.inspect(&name).await {
        Err(error @ DockerError::NotFound { .. }) => {
            assert_eq!(error.to_string(), format!("container {name} not found"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn explicit_hosts() {
    let Some(_client) = client_or_skip("explicit_hosts").await else {
        return;
    };
    for host in ["unix:///var/run/docker.sock", "/var/run/docker.sock"] {
        let client = DockerClient::connect(Some(host)).await.unwrap();
        client.list_running().await.unwrap();
    }

    let error = DockerClient::connect(Some("unix:///run/egt-no-such.sock"))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("failed to connect to docker at unix:///run/egt-no-such.sock: "),
        "{error}"
    );
    let error = DockerClient::connect(Some("ftp://example"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DockerError::UnsupportedHost { ref host } if host == "ftp://example"),
        "{error:?}"
    );
    // A tcp:// host where nothing listens (loopback, closed port) fails on connect.
    let error = DockerClient::connect(Some("tcp://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(matches!(error, DockerError::Connect { .. }), "{error:?}");
}
