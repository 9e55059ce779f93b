//! Bounds on inputs from Consul and Docker that the agent reads: one input beyond its bound
//! fails its own containers closed, with an error naming the limit, and never stalls or
//! bloats the agent. (ACL lists from a container's environment or labels are bounded where
//! they are parsed: `egresstrator_core::acl::LIST_MAX_BYTES` and `LIST_MAX_NAMES`. Docker's
//! on-disk records are read up to `docker::RECORD_MAX`.)

/// Bytes of one KV value under the kv-path (Consul's own default `kv_max_value_size`).
pub const KV_VALUE_BYTES: usize = 512 * 1024;
