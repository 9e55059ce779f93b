//! The policy data every container is planned from at one moment: the ACL table, the service
//! instances it references, and what templates read. Made by the policy watcher (or, for a
//! one-shot command, by `enforce::snapshot`), read by the planner and the template engine.
//! Plain data: nothing here reads Consul.

use std::collections::BTreeMap;

use egresstrator_core::acl::ServiceRef;
use egresstrator_core::policy::ServiceTable;
use egresstrator_core::AclTable;

/// Policy data shared by every container at one moment: the ACL table and the services it
/// references.
#[derive(Clone, Debug, Default)]
pub struct PolicySnapshot {
    pub acls: AclTable,
    pub services: ServiceTable,
    pub warnings: Vec<String>,
    /// The raw values under the kv-path, by name relative to it (for templates).
    pub values: BTreeMap<String, String>,
    /// Every instance of each watched service, in any health state (for templates).
    pub details: BTreeMap<ServiceRef, Vec<egresstrator_template::ServiceInstance>>,
    /// The catalog's services and tags (template mode only).
    pub catalog: Option<Vec<egresstrator_template::CatalogService>>,
}
