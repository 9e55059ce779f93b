//! The functions a template can call: Go's built-ins and consul-template's.
//!
//! Names are resolved at parse time (an unknown name is a parse error, as in Go). Each
//! function keeps consul-template's argument order, which puts the value being worked on
//! last so that it can be piped: `$s | split ","` is `split "," $s`, `$l | contains "x"` is
//! `contains "x" $l`. Data functions go through [`DataSource`] and record what they read in
//! [`Dependencies`]; everything else is pure.
//!
//! Semantics follow consul-template's `template/funcs.go` (noted per function where they
//! surprise): `split` trims the whole string first and yields an empty list for an empty
//! string; `in`/`contains` also search substrings when the haystack is a string; `key`
//! renders an absent key as "" but marks the render incomplete, since consul-template
//! would wait for the key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;

use crate::data::{self, DataSource, Dependencies, KeyPair, ServiceQuery};
use crate::fmt::{quote, sprint, sprintf, sprintln};
use crate::value::{equal, less, Value};

/// Every function a template may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    // Go built-ins.
    And,
    Or,
    Not,
    Len,
    Index,
    Slice,
    Print,
    Printf,
    Println,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Html,
    Js,
    Urlquery,
    // consul-template: data.
    Env,
    EnvOrDefault,
    Key,
    KeyExists,
    KeyOrDefault,
    Ls,
    SafeLs,
    Tree,
    SafeTree,
    Service,
    Services,
    Timestamp,
    // consul-template: helpers.
    ByKey,
    ByTag,
    Contains,
    ContainsAll,
    ContainsAny,
    ContainsNone,
    ContainsNotAll,
    In,
    Join,
    Split,
    Indent,
    Loop,
    ParseBool,
    ParseFloat,
    ParseInt,
    ParseUint,
    RegexMatch,
    RegexReplaceAll,
    ReplaceAll,
    ToLower,
    ToUpper,
    ToTitle,
    Trim,
    TrimPrefix,
    TrimSuffix,
    TrimSpace,
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
    Minimum,
    Maximum,
}

/// Resolves a function name (consul-template's old snake_case aliases included).
pub(crate) fn lookup(name: &str) -> Option<Func> {
    use Func::*;
    Some(match name {
        "and" => And,
        "or" => Or,
        "not" => Not,
        "len" => Len,
        "index" => Index,
        "slice" => Slice,
        "print" => Print,
        "printf" => Printf,
        "println" => Println,
        "eq" => Eq,
        "ne" => Ne,
        "lt" => Lt,
        "le" => Le,
        "gt" => Gt,
        "ge" => Ge,
        "html" => Html,
        "js" => Js,
        "urlquery" => Urlquery,
        "env" => Env,
        "envOrDefault" => EnvOrDefault,
        "key" => Key,
        "keyExists" | "key_exists" => KeyExists,
        "keyOrDefault" | "key_or_default" => KeyOrDefault,
        "ls" => Ls,
        "safeLs" => SafeLs,
        "tree" => Tree,
        "safeTree" => SafeTree,
        "service" => Service,
        "services" => Services,
        "timestamp" => Timestamp,
        "byKey" => ByKey,
        "byTag" => ByTag,
        "contains" => Contains,
        "containsAll" => ContainsAll,
        "containsAny" => ContainsAny,
        "containsNone" => ContainsNone,
        "containsNotAll" => ContainsNotAll,
        "in" => In,
        "join" => Join,
        "split" => Split,
        "indent" => Indent,
        "loop" => Loop,
        "parseBool" => ParseBool,
        "parseFloat" => ParseFloat,
        "parseInt" => ParseInt,
        "parseUint" => ParseUint,
        "regexMatch" => RegexMatch,
        "regexReplaceAll" => RegexReplaceAll,
        "replaceAll" => ReplaceAll,
        "toLower" => ToLower,
        "toUpper" => ToUpper,
        "toTitle" => ToTitle,
        "trim" => Trim,
        "trimPrefix" => TrimPrefix,
        "trimSuffix" => TrimSuffix,
        "trimSpace" => TrimSpace,
        "add" => Add,
        "subtract" => Subtract,
        "multiply" => Multiply,
        "divide" => Divide,
        "modulo" => Modulo,
        "minimum" => Minimum,
        "maximum" => Maximum,
        _ => return None,
    })
}

/// How many arguments a function takes: at least `.0`, at most `.1` (`None`: no limit).
pub(crate) fn arity(f: Func) -> (usize, Option<usize>) {
    use Func::*;
    match f {
        And | Or | Eq | Index | Slice => (1, None),
        Print | Println | Html | Js | Urlquery | Service => (0, None),
        Printf => (1, None),
        Not | Len | Env | Key | KeyExists | Ls | SafeLs | Tree | SafeTree | ByKey | ByTag
        | ParseBool | ParseFloat | ParseInt | ParseUint | ToLower | ToUpper | ToTitle
        | TrimSpace => (1, Some(1)),
        Services | Timestamp => (0, Some(1)),
        Loop => (1, Some(2)),
        Ne | Lt | Le | Gt | Ge | EnvOrDefault | KeyOrDefault | Contains | ContainsAll
        | ContainsAny | ContainsNone | ContainsNotAll | In | Join | Split | Indent | RegexMatch
        | Trim | TrimPrefix | TrimSuffix | Add | Subtract | Multiply | Divide | Modulo
        | Minimum | Maximum => (2, Some(2)),
        RegexReplaceAll | ReplaceAll => (3, Some(3)),
    }
}

/// Whether a literal `nil` may be passed: only to Go parameters of interface type. Go's
/// built-ins take `reflect.Value` and consul-template's string functions take `string`,
/// neither of which can hold nil.
pub(crate) fn accepts_nil(f: Func) -> bool {
    use Func::*;
    matches!(
        f,
        Print
            | Printf
            | Println
            | Html
            | Js
            | Urlquery
            | In
            | Contains
            | ContainsAll
            | ContainsAny
            | ContainsNone
            | ContainsNotAll
            | ByTag
            | Add
            | Subtract
            | Multiply
            | Divide
            | Modulo
            | Minimum
            | Maximum
    )
}

/// Why a call failed.
pub(crate) enum CallError {
    /// An argument of the wrong type (reported as is, like Go's argument checks).
    Arg(String),
    /// The function returned an error (reported as `error calling NAME: …`).
    Failed(String),
    /// The data source returned an error (reported like `Failed`, kept apart for the caller).
    Data(String),
}

type CallResult = Result<Value, CallError>;

/// What data functions need: the source, the dependency record and a regex cache.
pub(crate) struct Ctx<'a> {
    pub(crate) data: &'a dyn DataSource,
    pub(crate) deps: Dependencies,
    regexes: HashMap<String, Arc<Regex>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(data: &'a dyn DataSource) -> Self {
        Ctx {
            data,
            deps: Dependencies::default(),
            regexes: HashMap::new(),
        }
    }

    fn regex(&mut self, pattern: &str) -> Result<Arc<Regex>, CallError> {
        if let Some(re) = self.regexes.get(pattern) {
            return Ok(re.clone());
        }
        let re = Arc::new(
            Regex::new(pattern)
                .map_err(|e| CallError::Failed(format!("error parsing regexp: {e}")))?,
        );
        self.regexes.insert(pattern.to_owned(), re.clone());
        Ok(re)
    }
}

/// The most elements `loop` may produce: a typo must not exhaust memory.
const MAX_LOOP: i64 = 1_000_000;
/// The most parts `split` may produce (as many as `loop`).
const MAX_SPLIT: usize = 1_000_000;
/// The longest string a function may return: the bound on a render's whole output
/// (`exec::MAX_OUTPUT`). The caller checks every result; the functions whose result can be
/// many times their arguments (`indent`, `replaceAll`, `regexReplaceAll`) check before
/// they build it, so a template that doubles or multiplies a string fails instead of
/// exhausting memory.
pub(crate) const MAX_STRING: usize = 64 << 20;

fn too_long(name: &str) -> CallError {
    CallError::Failed(format!(
        "{name}: result longer than {} MiB",
        MAX_STRING >> 20
    ))
}

fn wrong_type(expected: &str, got: &Value) -> CallError {
    match got {
        Value::Nil => CallError::Arg(format!("invalid value; expected {expected}")),
        _ => CallError::Arg(format!(
            "wrong type for value; expected {expected}; got {}",
            got.type_name()
        )),
    }
}

fn string(v: &Value) -> Result<&str, CallError> {
    v.as_str().ok_or_else(|| wrong_type("string", v))
}

fn int(v: &Value) -> Result<i64, CallError> {
    match v {
        Value::Int(i) => Ok(*i),
        _ => Err(wrong_type("int", v)),
    }
}

fn strings(v: &Value) -> Result<Vec<&str>, CallError> {
    match v {
        Value::List(items) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| wrong_type("[]string", v)))
            .collect(),
        _ => Err(wrong_type("[]string", v)),
    }
}

fn s(x: impl Into<Arc<str>>) -> CallResult {
    Ok(Value::Str(x.into()))
}

/// Calls a function on evaluated arguments (`and`/`or` are evaluated lazily by the caller).
pub(crate) fn call(f: Func, args: &[Value], ctx: &mut Ctx<'_>) -> CallResult {
    use Func::*;
    let a = |i: usize| args.get(i).unwrap_or(&Value::Nil);
    match f {
        And | Or => Ok(args.last().cloned().unwrap_or_default()),
        Not => Ok(Value::Bool(!a(0).truth())),
        Len => len(a(0)),
        Index => index(a(0), &args[1.min(args.len())..]),
        Slice => slice(a(0), &args[1.min(args.len())..]),
        Print => s(sprint(args)),
        Printf => s(sprintf(string(a(0))?, args.get(1..).unwrap_or(&[]))),
        Println => s(sprintln(args)),
        Eq => {
            if args.len() < 2 {
                return Err(CallError::Failed("missing argument for comparison".into()));
            }
            for b in &args[1..] {
                if equal(a(0), b).map_err(CallError::Failed)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        Ne => Ok(Value::Bool(!equal(a(0), a(1)).map_err(CallError::Failed)?)),
        Lt => Ok(Value::Bool(less(a(0), a(1)).map_err(CallError::Failed)?)),
        Le => Ok(Value::Bool(le(a(0), a(1))?)),
        Gt => Ok(Value::Bool(!le(a(0), a(1))?)),
        Ge => Ok(Value::Bool(!less(a(0), a(1)).map_err(CallError::Failed)?)),
        Html => s(html_escape(&eval_args(args))),
        Js => s(js_escape(&eval_args(args))),
        Urlquery => s(query_escape(&eval_args(args))),

        Env => {
            let name = string(a(0))?;
            ctx.deps.env.insert(name.to_owned());
            s(ctx.data.env(name).unwrap_or_default())
        }
        EnvOrDefault => {
            let name = string(a(0))?;
            let def = string(a(1))?;
            ctx.deps.env.insert(name.to_owned());
            s(ctx.data.env(name).unwrap_or_else(|| def.to_owned()))
        }
        Key => {
            let path = string(a(0))?;
            if path.is_empty() {
                return s("");
            }
            let k = data::parse_kv_ref("kv.get", path).map_err(CallError::Failed)?;
            ctx.deps.keys.insert(k.clone());
            match ctx.data.key(&k).map_err(CallError::Data)? {
                Some(v) => s(v),
                None => {
                    // consul-template blocks until the key exists.
                    ctx.deps.missing.insert(k);
                    s("")
                }
            }
        }
        KeyExists => {
            let path = string(a(0))?;
            if path.is_empty() {
                return Ok(Value::Bool(false));
            }
            let k = data::parse_kv_ref("kv.get", path).map_err(CallError::Failed)?;
            ctx.deps.keys.insert(k.clone());
            Ok(Value::Bool(
                ctx.data.key(&k).map_err(CallError::Data)?.is_some(),
            ))
        }
        KeyOrDefault => {
            let path = string(a(0))?;
            let def = string(a(1))?;
            if path.is_empty() {
                return s(def);
            }
            let k = data::parse_kv_ref("kv.get", path).map_err(CallError::Failed)?;
            ctx.deps.keys.insert(k.clone());
            match ctx.data.key(&k).map_err(CallError::Data)? {
                Some(v) if !v.is_empty() => s(v),
                _ => s(def),
            }
        }
        Ls | SafeLs | Tree | SafeTree => kv_list(f, string(a(0))?, ctx),
        Service => service(args, ctx),
        Services => {
            let parts: Vec<&str> = args.iter().map(string).collect::<Result<_, _>>()?;
            let q = data::parse_catalog_query(&parts.concat()).map_err(CallError::Failed)?;
            ctx.deps.catalog.insert(q.clone());
            let mut list = ctx.data.services(&q).map_err(CallError::Data)?;
            for c in &mut list {
                c.tags.sort();
            }
            list.sort_by(|x, y| x.name.cmp(&y.name));
            Ok(Value::list(
                list.into_iter()
                    .map(|c| Value::CatalogService(Arc::new(c)))
                    .collect(),
            ))
        }
        Timestamp => {
            let now = ctx.data.now_unix();
            match args.first() {
                None => s(crate::gotime::format(now, crate::gotime::RFC3339)),
                Some(v) => {
                    let layout = string(v)?;
                    if layout == "unix" {
                        s(now.to_string())
                    } else {
                        s(crate::gotime::format(now, layout))
                    }
                }
            }
        }

        ByKey => by_key(a(0)),
        ByTag => by_tag(a(0)),
        In => Ok(Value::Bool(contained(a(0), a(1)))),
        Contains => Ok(Value::Bool(contained(a(1), a(0)))),
        ContainsAll | ContainsAny | ContainsNone | ContainsNotAll => {
            let Value::List(needles) = a(0) else {
                return Err(wrong_type("[]interface {}", a(0)));
            };
            // consul-template's containsSomeFunc(retTrue, invert).
            let (ret_true, invert) = match f {
                ContainsAll => (true, true),
                ContainsAny => (false, false),
                ContainsNone => (true, false),
                _ => (false, true),
            };
            for n in needles.iter() {
                if contained(a(1), n) != invert {
                    return Ok(Value::Bool(!ret_true));
                }
            }
            Ok(Value::Bool(ret_true))
        }
        Join => s(strings(a(1))?.join(string(a(0))?)),
        Split => {
            let sep = string(a(0))?;
            let text = string(a(1))?.trim();
            if text.is_empty() {
                return Ok(Value::list(Vec::new()));
            }
            let n = if sep.is_empty() {
                text.chars().count()
            } else {
                text.matches(sep).count() + 1
            };
            if n > MAX_SPLIT {
                return Err(CallError::Failed(format!(
                    "split: more than {MAX_SPLIT} parts"
                )));
            }
            let parts: Vec<Value> = if sep.is_empty() {
                text.chars().map(|c| Value::str(c.to_string())).collect()
            } else {
                text.split(sep).map(Value::str).collect()
            };
            Ok(Value::list(parts))
        }
        Indent => {
            let n = int(a(0))?;
            let text = string(a(1))?;
            if n < 0 {
                return Err(CallError::Failed(
                    "indent value must be a positive integer".into(),
                ));
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let lines = text.matches('\n').count() + 1;
            if n.saturating_mul(lines).saturating_add(text.len()) > MAX_STRING {
                return Err(too_long("indent"));
            }
            let prefix = " ".repeat(n);
            let mut out = String::new();
            let mut at_line_start = true;
            for c in text.chars() {
                if at_line_start && c != '\n' {
                    out.push_str(&prefix);
                }
                out.push(c);
                at_line_start = c == '\n';
            }
            s(out)
        }
        Loop => {
            let to_int = |v: &Value| -> Result<i64, CallError> {
                match v {
                    Value::Int(i) => Ok(*i),
                    Value::Str(t) => parse_int(t),
                    _ => Err(CallError::Failed(format!(
                        "loop: bad argument type: {}",
                        v.type_name()
                    ))),
                }
            };
            let (start, stop) = if args.len() == 1 {
                (0, to_int(a(0))?)
            } else {
                (to_int(a(0))?, to_int(a(1))?)
            };
            if stop.saturating_sub(start) > MAX_LOOP {
                return Err(CallError::Failed(format!(
                    "loop: more than {MAX_LOOP} iterations"
                )));
            }
            Ok(Value::list((start..stop).map(Value::Int).collect()))
        }
        ParseBool => {
            let t = string(a(0))?;
            Ok(Value::Bool(match t {
                "" => false,
                "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                _ => {
                    return Err(CallError::Failed(format!(
                        "parseBool: strconv.ParseBool: parsing {}: invalid syntax",
                        quote(t)
                    )))
                }
            }))
        }
        ParseFloat => {
            let t = string(a(0))?;
            if t.is_empty() {
                return Ok(Value::Float(0.0));
            }
            t.parse::<f64>().map(Value::Float).map_err(|_| {
                CallError::Failed(format!(
                    "parseFloat: strconv.ParseFloat: parsing {}: invalid syntax",
                    quote(t)
                ))
            })
        }
        ParseInt => parse_int(string(a(0))?).map(Value::Int),
        ParseUint => {
            let t = string(a(0))?;
            if t.is_empty() {
                return Ok(Value::Int(0));
            }
            let bad = |why: &str| {
                CallError::Failed(format!(
                    "parseUint: strconv.ParseUint: parsing {}: {why}",
                    quote(t)
                ))
            };
            if !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("invalid syntax"));
            }
            let v: u64 = t.parse().map_err(|_| bad("value out of range"))?;
            i64::try_from(v)
                .map(Value::Int)
                .map_err(|_| bad("value out of range for this engine's int"))
        }
        RegexMatch => {
            let re = ctx.regex(string(a(0))?)?;
            Ok(Value::Bool(re.is_match(string(a(1))?)))
        }
        RegexReplaceAll => {
            let re = ctx.regex(string(a(0))?)?;
            let repl = string(a(1))?;
            let text = string(a(2))?;
            // `Regex::replace_all`, checking the length as it grows.
            let mut out = String::new();
            let mut last = 0;
            for caps in re.captures_iter(text) {
                let Some(m) = caps.get(0) else { continue };
                out.push_str(&text[last..m.start()]);
                caps.expand(repl, &mut out);
                last = m.end();
                if out.len() > MAX_STRING {
                    return Err(too_long("regexReplaceAll"));
                }
            }
            out.push_str(&text[last..]);
            s(out)
        }
        ReplaceAll => {
            let (from, to, text) = (string(a(0))?, string(a(1))?, string(a(2))?);
            let n = if from.is_empty() {
                text.chars().count() + 1
            } else {
                text.matches(from).count()
            };
            if n.saturating_mul(to.len()).saturating_add(text.len()) > MAX_STRING {
                return Err(too_long("replaceAll"));
            }
            s(go_replace_all(text, from, to))
        }
        ToLower => s(string(a(0))?.to_lowercase()),
        ToUpper => s(string(a(0))?.to_uppercase()),
        ToTitle => s(to_title(string(a(0))?)),
        Trim => {
            let cutset: Vec<char> = string(a(0))?.chars().collect();
            s(string(a(1))?.trim_matches(cutset.as_slice()))
        }
        TrimPrefix => {
            let text = string(a(1))?;
            s(text.strip_prefix(string(a(0))?).unwrap_or(text))
        }
        TrimSuffix => {
            let text = string(a(1))?;
            s(text.strip_suffix(string(a(0))?).unwrap_or(text))
        }
        TrimSpace => s(string(a(0))?.trim()),
        Add | Subtract | Multiply | Divide | Modulo | Minimum | Maximum => {
            // consul-template's math takes (b, a) so that `a | add b` reads naturally.
            arith(f, a(1), a(0))
        }
    }
}

fn parse_int(t: &str) -> Result<i64, CallError> {
    if t.is_empty() {
        return Ok(0);
    }
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CallError::Failed(format!(
            "parseInt: strconv.ParseInt: parsing {}: invalid syntax",
            quote(t)
        )));
    }
    t.parse::<i64>().map_err(|_| {
        CallError::Failed(format!(
            "parseInt: strconv.ParseInt: parsing {}: value out of range",
            quote(t)
        ))
    })
}

fn le(a: &Value, b: &Value) -> Result<bool, CallError> {
    if less(a, b).map_err(CallError::Failed)? {
        return Ok(true);
    }
    equal(a, b).map_err(CallError::Failed)
}

fn len(v: &Value) -> CallResult {
    let n = match v {
        Value::Str(s) => s.len(),
        Value::List(l) => l.len(),
        Value::Map(m) => m.len(),
        Value::Nil => return Err(CallError::Failed("len of nil pointer".into())),
        other => {
            return Err(CallError::Failed(format!(
                "len of type {}",
                other.type_name()
            )))
        }
    };
    Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

fn index_arg(idx: &Value, cap: usize) -> Result<usize, CallError> {
    let Value::Int(i) = idx else {
        return Err(CallError::Failed(format!(
            "cannot index slice/array with type {}",
            idx.type_name()
        )));
    };
    match usize::try_from(*i) {
        Ok(u) if u <= cap => Ok(u),
        _ => Err(CallError::Failed(format!("index out of range: {i}"))),
    }
}

/// Go's `index`: `index x 1 2` is `x[1][2]`; a missing map key yields nil.
fn index(item: &Value, indexes: &[Value]) -> CallResult {
    let mut cur = item.clone();
    if matches!(cur, Value::Nil) {
        return Err(CallError::Failed("index of untyped nil".into()));
    }
    for idx in indexes {
        cur = match &cur {
            Value::List(l) => {
                let i = index_arg(idx, l.len())?;
                l.get(i)
                    .cloned()
                    .ok_or_else(|| CallError::Failed(format!("index out of range: {i}")))?
            }
            Value::Str(st) => {
                let i = index_arg(idx, st.len())?;
                let b = st
                    .as_bytes()
                    .get(i)
                    .copied()
                    .ok_or_else(|| CallError::Failed(format!("index out of range: {i}")))?;
                Value::Int(i64::from(b))
            }
            Value::Map(m) => match idx {
                Value::Str(k) => m.get(&**k).cloned().unwrap_or(Value::Nil),
                Value::Nil => {
                    return Err(CallError::Failed(
                        "value is nil; should be of type string".into(),
                    ))
                }
                other => {
                    return Err(CallError::Failed(format!(
                        "value has type {}; should be string",
                        other.type_name()
                    )))
                }
            },
            Value::Nil => return Err(CallError::Failed("index of nil pointer".into())),
            other => {
                return Err(CallError::Failed(format!(
                    "can't index item of type {}",
                    other.type_name()
                )))
            }
        };
    }
    Ok(cur)
}

/// Go's `slice`: `slice x 1 2` is `x[1:2]`.
fn slice(item: &Value, indexes: &[Value]) -> CallResult {
    if matches!(item, Value::Nil) {
        return Err(CallError::Failed("slice of untyped nil".into()));
    }
    if indexes.len() > 3 {
        return Err(CallError::Failed(format!(
            "too many slice indexes: {}",
            indexes.len()
        )));
    }
    let cap = match item {
        Value::Str(st) => {
            if indexes.len() == 3 {
                return Err(CallError::Failed("cannot 3-index slice a string".into()));
            }
            st.len()
        }
        Value::List(l) => l.len(),
        other => {
            return Err(CallError::Failed(format!(
                "can't slice item of type {}",
                other.type_name()
            )))
        }
    };
    let mut idx = [0usize, cap, cap];
    for (i, v) in indexes.iter().enumerate() {
        idx[i] = index_arg(v, cap)?;
    }
    if idx[0] > idx[1] {
        return Err(CallError::Failed(format!(
            "invalid slice index: {} > {}",
            idx[0], idx[1]
        )));
    }
    if indexes.len() == 3 && idx[1] > idx[2] {
        return Err(CallError::Failed(format!(
            "invalid slice index: {} > {}",
            idx[1], idx[2]
        )));
    }
    match item {
        Value::Str(st) => st
            .get(idx[0]..idx[1])
            .map(Value::str)
            .ok_or_else(|| CallError::Failed("slice bounds split a UTF-8 character".into())),
        Value::List(l) => Ok(Value::list(l[idx[0]..idx[1]].to_vec())),
        _ => Ok(Value::Nil),
    }
}

/// Go's `evalArgs` for html/js/urlquery: one string as is, anything else through Sprint.
fn eval_args(args: &[Value]) -> String {
    match args {
        [Value::Str(s)] => s.to_string(),
        _ => sprint(args),
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 || c.is_control() => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `strings.Replace(s, from, to, -1)`: an empty `from` inserts `to` around every rune.
fn go_replace_all(text: &str, from: &str, to: &str) -> String {
    if !from.is_empty() {
        return text.replace(from, to);
    }
    let mut out = String::from(to);
    for c in text.chars() {
        out.push(c);
        out.push_str(to);
    }
    out
}

/// consul-template's `toTitle` (`cases.Title` without lowering): the first letter of each
/// word upper-cased.
fn to_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_letter = false;
    for c in s.chars() {
        if !prev_letter && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_letter = c.is_alphanumeric() || c == '\'';
    }
    out
}

/// consul-template's `in(l, v)`: `v` is an element of list `l` (same type, equal value),
/// or a substring of string `l`.
fn contained(haystack: &Value, needle: &Value) -> bool {
    match haystack {
        Value::List(items) => items.iter().any(|item| match (item, needle) {
            (Value::Int(x), Value::Int(y)) => x == y,
            (Value::Float(x), Value::Float(y)) => x == y,
            (Value::Str(x), Value::Str(y)) => x == y,
            _ => false,
        }),
        Value::Str(h) => match needle {
            Value::Str(n) => h.contains(&**n),
            _ => false,
        },
        _ => false,
    }
}

fn kv_list(f: Func, prefix: &str, ctx: &mut Ctx<'_>) -> CallResult {
    if prefix.is_empty() {
        return Ok(Value::list(Vec::new()));
    }
    let p = data::parse_kv_ref("kv.list", prefix).map_err(CallError::Failed)?;
    ctx.deps.prefixes.insert(p.clone());
    let mut entries = ctx.data.list(&p).map_err(CallError::Data)?;
    entries.sort_by(|x, y| x.path.cmp(&y.path));
    let recursive = matches!(f, Func::Tree | Func::SafeTree);
    let mut out = Vec::new();
    for e in entries {
        let rel = e.path.strip_prefix(p.path.as_str()).unwrap_or(&e.path);
        let key = rel.trim_start_matches('/');
        // ls: only non-empty top-level keys; tree: everything but folders.
        let keep = if recursive {
            !key.is_empty() && !key.ends_with('/')
        } else {
            !key.is_empty() && !key.contains('/')
        };
        if keep {
            out.push(Value::KeyPair(Arc::new(KeyPair {
                key: key.to_owned(),
                path: e.path.clone(),
                value: e.value,
                create_index: e.create_index,
                modify_index: e.modify_index,
                lock_index: e.lock_index,
                flags: e.flags,
                session: e.session,
            })));
        }
    }
    if out.is_empty() && matches!(f, Func::SafeLs | Func::SafeTree) {
        // safeLs/safeTree refuse to render on an empty prefix.
        ctx.deps.missing.insert(p);
    }
    Ok(Value::list(out))
}

fn service(args: &[Value], ctx: &mut Ctx<'_>) -> CallResult {
    let parts: Vec<&str> = args.iter().map(string).collect::<Result<_, _>>()?;
    if parts.first().is_none_or(|p| p.is_empty()) {
        return Ok(Value::list(Vec::new()));
    }
    let q = ServiceQuery::parse(&parts.join("|")).map_err(CallError::Failed)?;
    ctx.deps.services.insert(q.clone());
    let mut list = ctx.data.service(&q).map_err(CallError::Data)?;
    list.retain(|i| q.accepts(&i.status));
    for i in &mut list {
        if i.address.is_empty() {
            i.address = i.effective_address().to_owned();
        }
        i.tags.sort();
    }
    if q.near.is_none() {
        list.sort_by(|x, y| x.node.cmp(&y.node).then_with(|| x.id.cmp(&y.id)));
    }
    Ok(Value::list(
        list.into_iter()
            .map(|i| Value::Service(Arc::new(i)))
            .collect(),
    ))
}

/// consul-template's `byKey`: groups `tree` pairs by their first path segment.
fn by_key(v: &Value) -> CallResult {
    let Value::List(items) = v else {
        return Err(wrong_type("[]*dep.KeyPair", v));
    };
    let mut groups: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for item in items.iter() {
        let Value::KeyPair(kp) = item else {
            return Err(wrong_type("[]*dep.KeyPair", v));
        };
        let (top, rest) = kp.key.split_once('/').unwrap_or((&kp.key, ""));
        if rest.is_empty() {
            continue;
        }
        let mut pair = (**kp).clone();
        pair.key = rest.to_owned();
        groups
            .entry(top.to_owned())
            .or_default()
            .insert(rest.to_owned(), Value::KeyPair(Arc::new(pair)));
    }
    Ok(Value::map(
        groups
            .into_iter()
            .map(|(k, m)| (k, Value::map(m)))
            .collect(),
    ))
}

/// consul-template's `byTag`: services grouped by each of their tags.
fn by_tag(v: &Value) -> CallResult {
    let items = match v {
        Value::Nil => return Ok(Value::map(BTreeMap::new())),
        Value::List(items) => items,
        _ => {
            return Err(CallError::Failed(format!(
                "byTag: wrong argument type {}",
                v.type_name()
            )))
        }
    };
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in items.iter() {
        let tags = match item {
            Value::Service(s) => &s.tags,
            Value::CatalogService(c) => &c.tags,
            other => {
                return Err(CallError::Failed(format!(
                    "byTag: wrong argument type {}",
                    other.type_name()
                )))
            }
        };
        for t in tags {
            groups.entry(t.clone()).or_default().push(item.clone());
        }
    }
    Ok(Value::map(
        groups
            .into_iter()
            .map(|(k, l)| (k, Value::list(l)))
            .collect(),
    ))
}

fn arith(f: Func, a: &Value, b: &Value) -> CallResult {
    let name = match f {
        Func::Add => "add",
        Func::Subtract => "subtract",
        Func::Multiply => "multiply",
        Func::Divide => "divide",
        Func::Modulo => "modulo",
        Func::Minimum => "minimum",
        _ => "maximum",
    };
    let unknown = |v: &Value| {
        CallError::Failed(format!(
            "{name}: unknown type for {} ({})",
            quote(&crate::fmt::action_string(v)),
            v.type_name()
        ))
    };
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => {
            let (x, y) = (*x, *y);
            let r = match f {
                Func::Add => x.checked_add(y),
                Func::Subtract => x.checked_sub(y),
                Func::Multiply => x.checked_mul(y),
                Func::Divide | Func::Modulo if y == 0 => {
                    return Err(CallError::Failed(
                        "runtime error: integer divide by zero".into(),
                    ))
                }
                Func::Divide => x.checked_div(y),
                Func::Modulo => x.checked_rem(y),
                Func::Minimum => Some(x.min(y)),
                _ => Some(x.max(y)),
            };
            r.map(Value::Int)
                .ok_or_else(|| CallError::Failed(format!("{name}: integer overflow")))
        }
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            if f == Func::Modulo {
                return Err(unknown(if matches!(a, Value::Float(_)) { a } else { b }));
            }
            let as_f = |v: &Value| match v {
                Value::Int(i) => *i as f64,
                Value::Float(x) => *x,
                _ => 0.0,
            };
            let (x, y) = (as_f(a), as_f(b));
            Ok(match f {
                Func::Add => Value::Float(x + y),
                Func::Subtract => Value::Float(x - y),
                Func::Multiply => Value::Float(x * y),
                Func::Divide => Value::Float(x / y),
                // Go keeps the original operand's type for min/max.
                Func::Minimum => {
                    if x < y {
                        a.clone()
                    } else {
                        b.clone()
                    }
                }
                _ => {
                    if x > y {
                        a.clone()
                    } else {
                        b.clone()
                    }
                }
            })
        }
        (Value::Int(_) | Value::Float(_), other) => Err(unknown(other)),
        (other, _) => Err(unknown(other)),
    }
}
