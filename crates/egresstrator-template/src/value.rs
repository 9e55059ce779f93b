//! The values a template computes with, and Go's rules for them.
//!
//! Go templates are dynamically typed over Go values; this enum is the small subset that
//! consul-template functions produce (strings, ints, floats, bools, lists, string-keyed maps
//! and the KV/service records). Truthiness, printing and comparison follow Go's
//! `text/template` and `fmt` exactly where a firewall template can observe them, because
//! a different truth value or a different printed number changes the rules that reach the
//! kernel.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::data::{CatalogService, KeyPair, ServiceInstance};

/// A template value.
#[derive(Clone, Debug, Default)]
pub enum Value {
    /// Go's nil / "no value": a missing map key, a nil dot, an untyped `nil`.
    #[default]
    Nil,
    /// A bool.
    Bool(bool),
    /// Any Go integer.
    Int(i64),
    /// A float64.
    Float(f64),
    /// A string.
    Str(Arc<str>),
    /// A slice.
    List(Arc<Vec<Value>>),
    /// A map with string keys (ranged over in sorted key order, as Go does).
    Map(Arc<BTreeMap<String, Value>>),
    /// A KV pair from `ls`/`tree`.
    KeyPair(Arc<KeyPair>),
    /// A service instance from `service`.
    Service(Arc<ServiceInstance>),
    /// A catalog entry from `services`.
    CatalogService(Arc<CatalogService>),
}

impl Value {
    /// A string value.
    pub fn str(s: impl Into<Arc<str>>) -> Self {
        Value::Str(s.into())
    }

    /// A list value.
    pub fn list(items: Vec<Value>) -> Self {
        Value::List(Arc::new(items))
    }

    /// A map value.
    pub fn map(entries: BTreeMap<String, Value>) -> Self {
        Value::Map(Arc::new(entries))
    }

    /// The Go type name used in error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Str(_) => "string",
            Value::List(l) => {
                if !l.is_empty() && l.iter().all(|v| matches!(v, Value::Str(_))) {
                    "[]string"
                } else {
                    "[]interface {}"
                }
            }
            Value::Map(_) => "map[string]interface {}",
            Value::KeyPair(_) => "*dep.KeyPair",
            Value::Service(_) => "*dep.HealthService",
            Value::CatalogService(_) => "*dep.CatalogSnippet",
        }
    }

    /// Go's `isTrue`: false, 0, nil and empty strings, lists and maps are false; records
    /// (pointers to structs in Go) are true.
    pub(crate) fn truth(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::KeyPair(_) | Value::Service(_) | Value::CatalogService(_) => true,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A field of a record or a key of a map, as `.Name` reads it. `Ok(None)` when the value
    /// has no such field (the caller reports Go's "can't evaluate field" error).
    pub(crate) fn field(&self, name: &str) -> Result<Option<Value>, ()> {
        let s = |x: &str| Some(Value::str(x));
        let u = |x: u64| Some(Value::Int(i64::try_from(x).unwrap_or(i64::MAX)));
        Ok(match self {
            Value::Nil => Some(Value::Nil),
            Value::Map(m) => Some(m.get(name).cloned().unwrap_or(Value::Nil)),
            Value::KeyPair(kp) => match name {
                "Path" => s(&kp.path),
                "Key" => s(&kp.key),
                "Value" => s(&kp.value),
                "CreateIndex" => u(kp.create_index),
                "ModifyIndex" => u(kp.modify_index),
                "LockIndex" => u(kp.lock_index),
                "Flags" => u(kp.flags),
                "Session" => s(&kp.session),
                _ => None,
            },
            Value::Service(sv) => match name {
                "Node" => s(&sv.node),
                "NodeID" => s(&sv.node_id),
                "NodeAddress" => s(&sv.node_address),
                "Address" => s(&sv.address),
                "ID" => s(&sv.id),
                "Name" => s(&sv.name),
                "Tags" => Some(string_list(&sv.tags)),
                "Status" => s(&sv.status),
                "Port" => Some(Value::Int(i64::from(sv.port))),
                "ServiceMeta" => Some(string_map(&sv.service_meta)),
                "NodeMeta" => Some(string_map(&sv.node_meta)),
                _ => None,
            },
            Value::CatalogService(cs) => match name {
                "Name" => s(&cs.name),
                "Tags" => Some(string_list(&cs.tags)),
                _ => None,
            },
            _ => return Err(()),
        })
    }
}

pub(crate) fn string_list(items: &[String]) -> Value {
    Value::list(items.iter().map(|s| Value::str(s.as_str())).collect())
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::map(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::str(v.as_str())))
            .collect(),
    )
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::str(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::list(v)
    }
}

impl From<BTreeMap<String, Value>> for Value {
    fn from(m: BTreeMap<String, Value>) -> Self {
        Value::map(m)
    }
}

/// Go's `basicKind` classes for comparisons.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Float,
    Str,
    Other,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Bool(_) => Kind::Bool,
        Value::Int(_) => Kind::Int,
        Value::Float(_) => Kind::Float,
        Value::Str(_) => Kind::Str,
        _ => Kind::Other,
    }
}

pub(crate) const ERR_BAD_COMPARISON_TYPE: &str = "invalid type for comparison";
pub(crate) const ERR_BAD_COMPARISON: &str = "incompatible types for comparison";

/// Go's `eq` for two values (the n-ary form is built on this).
pub(crate) fn equal(a: &Value, b: &Value) -> Result<bool, String> {
    let (ka, kb) = (kind(a), kind(b));
    if ka != kb {
        // Go: different basic kinds are an error, unless one side is nil (then unequal).
        if matches!(a, Value::Nil) || matches!(b, Value::Nil) {
            return Ok(matches!(a, Value::Nil) && matches!(b, Value::Nil));
        }
        if ka == Kind::Other && kb == Kind::Other {
            return other_equal(a, b);
        }
        return Err(ERR_BAD_COMPARISON.to_owned());
    }
    Ok(match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        _ => return other_equal(a, b),
    })
}

fn other_equal(a: &Value, b: &Value) -> Result<bool, String> {
    match (a, b) {
        (Value::Nil, Value::Nil) => Ok(true),
        (Value::List(_), _) | (_, Value::List(_)) => {
            Err(format!("non-comparable type {}", a.type_name()))
        }
        (Value::Map(_), _) | (_, Value::Map(_)) => {
            Err(format!("non-comparable type {}", a.type_name()))
        }
        // Records are pointers in Go: equal only when they are the same record.
        (Value::KeyPair(x), Value::KeyPair(y)) => Ok(Arc::ptr_eq(x, y)),
        (Value::Service(x), Value::Service(y)) => Ok(Arc::ptr_eq(x, y)),
        (Value::CatalogService(x), Value::CatalogService(y)) => Ok(Arc::ptr_eq(x, y)),
        _ => Err(ERR_BAD_COMPARISON.to_owned()),
    }
}

/// Go's `lt`: both sides must be ints, floats or strings of the same kind.
pub(crate) fn less(a: &Value, b: &Value) -> Result<bool, String> {
    let basic = |v: &Value| match kind(v) {
        Kind::Other => Err(ERR_BAD_COMPARISON_TYPE.to_owned()),
        k => Ok(k),
    };
    let (ka, kb) = (basic(a)?, basic(b)?);
    if ka != kb {
        return Err(ERR_BAD_COMPARISON.to_owned());
    }
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x < y),
        (Value::Float(x), Value::Float(y)) => Ok(x < y),
        (Value::Str(x), Value::Str(y)) => Ok(x.as_bytes() < y.as_bytes()),
        _ => Err(ERR_BAD_COMPARISON_TYPE.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_go() {
        assert!(!Value::Nil.truth());
        assert!(!Value::Bool(false).truth());
        assert!(Value::Bool(true).truth());
        assert!(!Value::Int(0).truth());
        assert!(Value::Int(-1).truth());
        assert!(!Value::Float(0.0).truth());
        assert!(Value::Float(0.5).truth());
        assert!(!Value::str("").truth());
        assert!(Value::str("0").truth());
        assert!(!Value::list(vec![]).truth());
        assert!(Value::list(vec![Value::Nil]).truth());
        assert!(!Value::map(BTreeMap::new()).truth());
        assert!(Value::KeyPair(Arc::new(KeyPair::default())).truth());
    }

    #[test]
    fn equality_follows_go() {
        assert!(equal(&Value::Int(1), &Value::Int(1)).unwrap());
        assert!(!equal(&Value::str("a"), &Value::str("b")).unwrap());
        assert!(equal(&Value::Nil, &Value::Nil).unwrap());
        assert!(!equal(&Value::Nil, &Value::str("")).unwrap());
        assert_eq!(
            equal(&Value::Int(1), &Value::Float(1.0)).unwrap_err(),
            ERR_BAD_COMPARISON
        );
        assert_eq!(
            equal(&Value::str("1"), &Value::Int(1)).unwrap_err(),
            ERR_BAD_COMPARISON
        );
        assert!(equal(&Value::list(vec![]), &Value::list(vec![])).is_err());
        let kp = Arc::new(KeyPair::default());
        assert!(equal(&Value::KeyPair(kp.clone()), &Value::KeyPair(kp)).unwrap());
    }

    #[test]
    fn ordering_follows_go() {
        assert!(less(&Value::Int(1), &Value::Int(2)).unwrap());
        assert!(less(&Value::str("a"), &Value::str("b")).unwrap());
        assert!(!less(&Value::Float(2.0), &Value::Float(1.5)).unwrap());
        assert_eq!(
            less(&Value::Bool(false), &Value::Bool(true)).unwrap_err(),
            ERR_BAD_COMPARISON_TYPE
        );
        assert_eq!(
            less(&Value::Int(1), &Value::Float(2.0)).unwrap_err(),
            ERR_BAD_COMPARISON
        );
        assert_eq!(
            less(&Value::Nil, &Value::Int(2)).unwrap_err(),
            ERR_BAD_COMPARISON_TYPE
        );
    }

    #[test]
    fn fields_of_records_and_maps() {
        let kp = Value::KeyPair(Arc::new(KeyPair {
            key: "web".into(),
            value: "v".into(),
            path: "p/web".into(),
            ..KeyPair::default()
        }));
        assert_eq!(kp.field("Key").unwrap().unwrap().as_str(), Some("web"));
        assert_eq!(kp.field("Path").unwrap().unwrap().as_str(), Some("p/web"));
        assert!(kp.field("Nope").unwrap().is_none());
        let m = Value::map(BTreeMap::from([("a".to_owned(), Value::Int(1))]));
        assert!(matches!(m.field("a"), Ok(Some(Value::Int(1)))));
        assert!(matches!(m.field("b"), Ok(Some(Value::Nil))));
        assert!(Value::str("x").field("a").is_err());
    }
}
