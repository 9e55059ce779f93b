//! Helper-image mode (`--image`): rules are applied by a short-lived helper container, for
//! daemons whose namespaces the agent cannot enter (a remote `DOCKER_HOST`, or an agent
//! without access to the host's PIDs). This is egresstrator 0.2's mechanism, kept as an
//! option: it costs a container start per apply (~100+ ms) instead of ~1 ms.
//!
//! The helper joins the target's network namespace (`--network container:<id>`), holds the
//! NET_ADMIN capability and no other, gets the rendered rules as files, runs the backend's
//! loader, and is removed afterwards; its output is logged. It never joins the host's
//! namespace: host-network containers are refused before a helper is created.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder, WaitContainerOptions,
};
use egresstrator_core::merge::Family;
use egresstrator_core::render::{iptables, nft};
use futures_util::StreamExt;

use crate::archive::{self, Entry};
use crate::docker::DockerClient;
use crate::rendered::{Backend, Rendered};

/// The image `helper-image build` makes when no tag is given.
pub const DEFAULT_IMAGE: &str = "egresstrator-helper:latest";
/// Label on every helper container, so operators (and the agent) can tell them apart.
pub const HELPER_LABEL: &str = "egresstrator.helper";

/// Why a helper could not apply the rules.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("helper container for {target}: {what}: {error}")]
    Docker {
        target: String,
        what: &'static str,
        error: bollard::errors::Error,
    },
    #[error("helper container for {target} exited with status {status}: {output}")]
    Failed {
        target: String,
        status: i64,
        output: String,
    },
    #[error("helper container for {target}: {source}")]
    Tar {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("helper image: {0}")]
    Image(String),
}

impl HelperError {
    /// The target container is gone (Docker refuses to join a namespace that no longer exists).
    pub fn is_gone(&self) -> bool {
        match self {
            HelperError::Docker { error, .. } => matches!(
                error,
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }
            ),
            _ => false,
        }
    }
}

/// The files and script that load `rendered`.
fn apply_files(rendered: &Rendered) -> Vec<Entry> {
    match (rendered.backend, &rendered.ruleset) {
        (Backend::Nft, _) => vec![
            file("egresstrator/rules.nft", rendered.text.clone()),
            script("exec nft -f /egresstrator/rules.nft\n"),
        ],
        (Backend::IptablesRestore, _) | (Backend::Iptables, None) => vec![
            file("egresstrator/rules.iptables", rendered.text.clone()),
            file("egresstrator/clear.nft", nft::render_clear()),
            script(&format!(
                "set -e\niptables-restore -w {} < /egresstrator/rules.iptables\n{NFT_STAND_IN_OUT}",
                iptables::LOCK_WAIT_SECS
            )),
        ],
        (Backend::Iptables, Some(ruleset)) => {
            let mut v = per_family_files(|fam, jump| iptables::render_family(ruleset, fam, jump));
            v.push(file("egresstrator/clear.nft", nft::render_clear()));
            v.push(script(&format!("{IPTABLES_APPLY}{NFT_STAND_IN_OUT}")));
            v
        }
    }
}

/// After an iptables load succeeded: remove the nft deny-all that stands in when an iptables
/// load fails (see `enforce::load`).
const NFT_STAND_IN_OUT: &str = "exec nft -f /egresstrator/clear.nft\n";

/// The files and script that remove egresstrator's rules with `backend`.
fn clear_files(backend: Backend) -> Vec<Entry> {
    match backend {
        Backend::Nft => vec![
            file("egresstrator/rules.nft", nft::render_clear()),
            script("exec nft -f /egresstrator/rules.nft\n"),
        ],
        Backend::Iptables | Backend::IptablesRestore => {
            let mut v = per_family_files(iptables::render_clear);
            v.push(script(IPTABLES_APPLY));
            v
        }
    }
}

/// One `iptables-restore` input per family and per state of OUTPUT's jump to our chain (the
/// helper checks which applies), and the script that picks them.
fn per_family_files(render: impl Fn(Family, iptables::Jump) -> String) -> Vec<Entry> {
    let mut v = Vec::new();
    for fam in [Family::V4, Family::V6] {
        for (state, jump) in [
            ("present", iptables::Jump::Present),
            ("missing", iptables::Jump::Missing),
        ] {
            v.push(file(
                &format!("egresstrator/rules-{}-{state}", fam_tag(fam)),
                render(fam, jump),
            ));
        }
    }
    v
}

/// Loads the per-family script matching whether OUTPUT already jumps to our chain. Stops at
/// the first family that fails (`set -e`), so the helper reports the failure and the caller
/// fails both families closed.
const IPTABLES_APPLY: &str = r#"set -e
for fam in v4 v6; do
    if [ "$fam" = v4 ]; then ipt=iptables; else ipt=ip6tables; fi
    if "$ipt" -w 5 -C OUTPUT -j EGRESSTRATOR-OUTPUT 2>/dev/null; then state=present; else state=missing; fi
    "$ipt-restore" -w 5 --noflush < "/egresstrator/rules-$fam-$state"
done
"#;

fn fam_tag(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn file(path: &str, text: String) -> Entry {
    Entry::File {
        path: path.to_owned(),
        mode: 0o644,
        data: text.into_bytes(),
    }
}

fn script(body: &str) -> Entry {
    Entry::File {
        path: "egresstrator/apply".to_owned(),
        mode: 0o755,
        data: format!("#!/bin/sh\nset -e\n{body}").into_bytes(),
    }
}

/// Applies `ruleset` in the namespace of container `target` through a helper container.
pub async fn apply(
    docker: &DockerClient,
    image: &str,
    target: &str,
    rendered: &Rendered,
) -> Result<Duration, HelperError> {
    run(docker, image, target, apply_files(rendered)).await
}

/// Removes egresstrator's rules from container `target`'s namespace through a helper.
pub async fn clear(
    docker: &DockerClient,
    image: &str,
    target: &str,
    backend: Backend,
) -> Result<Duration, HelperError> {
    run(docker, image, target, clear_files(backend)).await
}

async fn run(
    docker: &DockerClient,
    image: &str,
    target: &str,
    mut files: Vec<Entry>,
) -> Result<Duration, HelperError> {
    let started = Instant::now();
    let d = docker.bollard();
    let err = |what: &'static str| {
        let target = target.to_owned();
        move |error| HelperError::Docker {
            target: target.clone(),
            what,
            error,
        }
    };
    files.insert(
        0,
        Entry::Dir {
            path: "egresstrator".into(),
            mode: 0o755,
        },
    );
    let archive = archive::write(&files).map_err(|source| HelperError::Tar {
        target: target.to_owned(),
        source,
    })?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "egresstrator-helper-{}-{nanos}",
        &target[..target.len().min(12)]
    );
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["/bin/sh".into(), "/egresstrator/apply".into()]),
        labels: Some(HashMap::from([(
            HELPER_LABEL.to_owned(),
            target.to_owned(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{target}")),
            // NET_ADMIN to load the rules, and nothing else.
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = d
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await
        .map_err(err("create"))?;
    let id = created.id;
    let result = async {
        d.upload_to_container(
            &id,
            Some(UploadToContainerOptionsBuilder::new().path("/").build()),
            bollard::body_full(archive.into()),
        )
        .await
        .map_err(err("upload rules"))?;
        d.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(err("start"))?;
        let mut wait = d.wait_container(&id, None::<WaitContainerOptions>);
        let status = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(err("wait")(e)),
            None => -1,
        };
        let mut logs = d.logs(
            &id,
            Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
        );
        let mut output = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            output.push_str(&chunk.to_string());
        }
        let output = output.trim().to_owned();
        if !output.is_empty() {
            tracing::info!(target = %&target[..target.len().min(12)], helper = %name, "helper output: {output}");
        }
        if status != 0 {
            return Err(HelperError::Failed {
                target: target.to_owned(),
                status,
                output,
            });
        }
        Ok(started.elapsed())
    }
    .await;
    let _ = d
        .remove_container(
            &id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    result
}

/// The agent's image (`egresstrator image build`) when no tag is given.
pub const AGENT_IMAGE: &str = concat!("egresstrator:", env!("CARGO_PKG_VERSION"));

/// Builds the helper image locally, without a registry: `sh`, `nft` and the iptables tools
/// of this machine with the libraries they load, imported as `tag`.
pub async fn build_image(docker: &DockerClient, tag: &str) -> Result<String, HelperError> {
    import_tools(docker, tag, &[], &[]).await
}

/// Builds the agent's image the same way: the helper's tools and this `egresstrator` binary as `/usr/bin/egresstrator`, its entrypoint.
pub async fn build_agent_image(docker: &DockerClient, tag: &str) -> Result<String, HelperError> {
    let me = std::env::current_exe()
        .map_err(|e| HelperError::Image(format!("cannot find this binary: {e}")))?;
    import_tools(
        docker,
        tag,
        &[("egresstrator", Some(me))],
        &[
            r#"ENTRYPOINT ["/usr/bin/egresstrator"]"#.to_owned(),
            r#"CMD ["run"]"#.to_owned(),
        ],
    )
    .await
}

async fn import_tools(
    docker: &DockerClient,
    tag: &str,
    extra: &[(&str, Option<PathBuf>)],
    changes: &[String],
) -> Result<String, HelperError> {
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    let mut links: Vec<(String, String)> = Vec::new();
    // Given binaries go to /usr/bin under their own name, wherever they were built.
    let mut placed: Vec<(PathBuf, String)> = Vec::new();
    let base = [
        "sh",
        "nft",
        "iptables",
        "iptables-restore",
        "ip6tables",
        "ip6tables-restore",
    ]
    .map(|t| (t, None));
    for (tool, given) in base.iter().chain(extra) {
        let path = given.clone().or_else(|| which(tool)).ok_or_else(|| {
            HelperError::Image(format!("{tool} is not installed on this machine"))
        })?;
        let real = std::fs::canonicalize(&path)
            .map_err(|e| HelperError::Image(format!("{}: {e}", path.display())))?;
        if given.is_some() {
            for lib in libraries(&real)? {
                files.insert(lib);
            }
            placed.push((real, format!("/usr/bin/{tool}")));
            continue;
        }
        // Multi-call binaries (xtables-nft-multi) dispatch on the name they are called by,
        // so every tool is a link under its own name.
        links.push((format!("bin/{tool}"), real.to_string_lossy().into_owned()));
        files.insert(real.clone());
        for lib in libraries(&real)? {
            files.insert(lib);
        }
    }
    for extra in ["/etc/protocols", "/etc/services", "/etc/ethertypes"] {
        if Path::new(extra).exists() {
            files.insert(PathBuf::from(extra));
        }
    }
    // iptables loads its matches and targets (REJECT, conntrack, multiport…) at run time.
    for dir in xtables_dirs() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| HelperError::Image(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "so") {
                for lib in libraries(&p)? {
                    files.insert(lib);
                }
                files.insert(p);
            }
        }
    }
    let mut entries = Vec::new();
    let mut dirs = BTreeSet::new();
    for f in &files {
        let mut p = f.parent();
        while let Some(d) = p {
            if d != Path::new("/") {
                dirs.insert(d.to_path_buf());
            }
            p = d.parent();
        }
    }
    dirs.insert(PathBuf::from("/bin"));
    if !placed.is_empty() {
        dirs.insert(PathBuf::from("/usr"));
        dirs.insert(PathBuf::from("/usr/bin"));
    }
    dirs.insert(PathBuf::from("/tmp"));
    dirs.insert(PathBuf::from("/run"));
    for d in dirs {
        entries.push(Entry::Dir {
            path: d.to_string_lossy().into_owned(),
            mode: 0o755,
        });
    }
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(f)
            .map_err(|e| HelperError::Image(format!("{}: {e}", f.display())))?;
        let data =
            std::fs::read(f).map_err(|e| HelperError::Image(format!("{}: {e}", f.display())))?;
        entries.push(Entry::File {
            path: f.to_string_lossy().into_owned(),
            mode: meta.permissions().mode() & 0o7777,
            data,
        });
    }
    for (src, dest) in &placed {
        let data = std::fs::read(src)
            .map_err(|e| HelperError::Image(format!("{}: {e}", src.display())))?;
        entries.push(Entry::File {
            path: dest.clone(),
            mode: 0o755,
            data,
        });
    }
    for (link, target) in links {
        if !files.contains(Path::new(&format!("/{link}"))) {
            entries.push(Entry::Symlink { path: link, target });
        }
    }
    let archive = archive::write(&entries).map_err(|e| HelperError::Image(e.to_string()))?;
    let (repo, tag_part) = match tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (tag, "latest"),
    };
    let opts = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag_part)
        .changes(changes.to_vec())
        .build();
    let mut stream =
        docker
            .bollard()
            .create_image(Some(opts), Some(bollard::body_full(archive.into())), None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| HelperError::Image(format!("docker import of {tag} failed: {e}")))?;
    }
    Ok(format!("{repo}:{tag_part}"))
}

/// Directories holding iptables extensions on this machine.
fn xtables_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for base in ["/usr/lib", "/usr/lib64", "/lib"] {
        let direct = Path::new(base).join("xtables");
        if direct.is_dir() {
            dirs.push(direct);
        }
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                let d = e.path().join("xtables");
                if d.is_dir() && !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
    }
    dirs
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The shared libraries `bin` loads, from `ldd`.
fn libraries(bin: &Path) -> Result<Vec<PathBuf>, HelperError> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| HelperError::Image(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x…)" or "/lib64/ld-linux… (0x…)"
        let candidate = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = candidate.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
            // Keep the path the loader asks for, and the file it points to.
            if let Ok(real) = std::fs::canonicalize(p) {
                libs.push(real);
            }
        }
    }
    Ok(libs)
}
