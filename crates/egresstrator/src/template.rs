//! `--template`: consul-template files, as egresstrator 0.2 users wrote them.
//!
//! The file is parsed once at start (errors name the file, line and column) and rendered for
//! each container with `EGRESSTRATOR_ACL`, `CONSUL_PATH` and the container's id and name in
//! its environment, as 0.2's helper container had them. Data comes from the agent's policy
//! snapshot, so a template sees exactly what the watches see, and every KV key and service it
//! reads is watched. Reads outside the kv-path are refused: egresstrator never reads Consul
//! outside it, whatever a template asks for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use egresstrator_core::acl::ServiceRef;
use egresstrator_template::{
    CatalogQuery, CatalogService, DataSource, Dependencies, KvEntry, KvRef, ServiceInstance,
    ServiceQuery, Template,
};

use crate::enforce::PolicySnapshot;

/// What a rendered template is: `iptables-restore` input (0.2's default) or an nft script.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TemplateFormat {
    #[default]
    Iptables,
    Nft,
}

/// A parsed template file.
#[derive(Clone, Debug)]
pub struct TemplateConfig {
    pub path: PathBuf,
    pub template: Template,
    pub format: TemplateFormat,
}

impl TemplateConfig {
    /// Reads and parses the file; syntax errors and unknown functions are reported here.
    pub fn load(path: &Path, format: TemplateFormat) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read template {}: {e}", path.display()))?;
        let name = path.display().to_string();
        let template = egresstrator_template::parse(&name, &text).map_err(|e| e.to_string())?;
        Ok(TemplateConfig {
            path: path.to_path_buf(),
            template,
            format,
        })
    }
}

/// Who the template is rendered for.
#[derive(Clone, Debug)]
pub struct TemplateEnv {
    pub acls: Vec<String>,
    pub kv_path: String,
    pub container_id: String,
    pub container_name: String,
}

/// A rendered template and what it read.
#[derive(Clone, Debug)]
pub struct Output {
    pub text: String,
    pub deps: Dependencies,
}

/// Why a render gave no usable output. `services` are the services it asked for (to watch).
#[derive(Clone, Debug)]
pub struct RenderFailure {
    pub message: String,
    pub services: Vec<ServiceRef>,
    /// True when the failure is only a service not answered yet.
    pub pending: bool,
}

/// The service reference a template query maps to.
pub fn service_ref(q: &ServiceQuery) -> ServiceRef {
    ServiceRef {
        tag: q.tag.clone(),
        service: q.name.clone(),
        datacenter: q.datacenter.clone(),
    }
}

/// Renders the template for one workload from a policy snapshot.
pub fn render(
    cfg: &TemplateConfig,
    snapshot: &PolicySnapshot,
    env: &TemplateEnv,
) -> Result<Output, RenderFailure> {
    let vars = BTreeMap::from([
        ("EGRESSTRATOR_ACL".to_owned(), env.acls.join(",")),
        ("CONSUL_PATH".to_owned(), env.kv_path.clone()),
        (
            "EGRESSTRATOR_CONTAINER_ID".to_owned(),
            env.container_id.clone(),
        ),
        (
            "EGRESSTRATOR_CONTAINER_NAME".to_owned(),
            env.container_name.clone(),
        ),
    ]);
    let source = Source {
        vars: &vars,
        snapshot,
        kv_path: &env.kv_path,
    };
    match cfg.template.render(&source) {
        Ok(r) => {
            let services = r.deps.services.iter().map(service_ref).collect();
            if let Some(k) = r.deps.missing.iter().next() {
                return Err(RenderFailure {
                    message: format!(
                        "template {} reads key {k}, which does not exist",
                        cfg.path.display()
                    ),
                    services,
                    pending: false,
                });
            }
            Ok(Output {
                text: r.output,
                deps: r.deps,
            })
        }
        Err(e) => {
            let services: Vec<ServiceRef> =
                e.dependencies().services.iter().map(service_ref).collect();
            let pending = e.to_string().contains(NOT_YET);
            Err(RenderFailure {
                message: e.to_string(),
                services,
                pending,
            })
        }
    }
}

const NOT_YET: &str = "has not been resolved from consul yet";

struct Source<'a> {
    vars: &'a BTreeMap<String, String>,
    snapshot: &'a PolicySnapshot,
    kv_path: &'a str,
}

impl Source<'_> {
    /// The key relative to the kv-path, or an error for anything outside it.
    fn inside(&self, r: &KvRef, what: &str) -> Result<String, String> {
        if r.datacenter.is_some() {
            return Err(format!(
                "{what} {r}: reads from another datacenter are not supported"
            ));
        }
        let path = r.path.trim_start_matches('/');
        let root = self.kv_path.trim_end_matches('/');
        if path == root {
            return Ok(String::new());
        }
        match path.strip_prefix(self.kv_path) {
            Some(rel) => Ok(rel.to_owned()),
            None => Err(format!(
                "{what} {path} is outside the kv-path {}: egresstrator never reads consul outside it",
                self.kv_path
            )),
        }
    }
}

impl DataSource for Source<'_> {
    fn env(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn key(&self, key: &KvRef) -> Result<Option<String>, String> {
        let rel = self.inside(key, "key")?;
        Ok(self.snapshot.values.get(&rel).cloned())
    }

    fn list(&self, prefix: &KvRef) -> Result<Vec<KvEntry>, String> {
        let rel = self.inside(prefix, "prefix")?;
        Ok(self
            .snapshot
            .values
            .iter()
            .filter(|(k, _)| k.starts_with(&rel))
            .map(|(k, v)| KvEntry {
                path: format!("{}{k}", self.kv_path),
                value: v.clone(),
                ..Default::default()
            })
            .collect())
    }

    fn service(&self, query: &ServiceQuery) -> Result<Vec<ServiceInstance>, String> {
        let r = service_ref(query);
        self.snapshot
            .details
            .get(&r)
            .cloned()
            .ok_or_else(|| format!("service {r} {NOT_YET}"))
    }

    fn services(&self, query: &CatalogQuery) -> Result<Vec<CatalogService>, String> {
        if query.datacenter.is_some() {
            return Err("services: other datacenters' catalogs are not supported".into());
        }
        self.snapshot
            .catalog
            .clone()
            .ok_or_else(|| "services: the catalog has not been read from consul yet".into())
    }

    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}
