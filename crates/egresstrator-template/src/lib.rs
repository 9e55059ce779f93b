//! egresstrator 0.2's custom templates: a pure Go `text/template` engine with
//! consul-template's functions.
//!
//! egresstrator 0.2 let operators pass a consul-template file (`--template`) that rendered
//! each container's `iptables-restore` input. Those files must keep working unchanged, so
//! this crate implements Go's template language as consul-template users write it, and
//! consul-template's functions with their argument order and semantics. No existing Rust
//! engine fitted: the output decides which packets a container may send, so `range … else`,
//! map order, trim markers and truthiness must match Go exactly and be deterministic.
//!
//! The crate is pure, like `egresstrator-core`: it never does I/O. Consul, the environment
//! and the clock come through the caller's [`DataSource`]; every dependency a render read
//! is returned with the output ([`Rendered::deps`]) so the caller can watch it.
//!
//! ```
//! use egresstrator_template::{parse, DataSource, KvRef, KvEntry, ServiceQuery,
//!     ServiceInstance, CatalogQuery, CatalogService};
//!
//! struct Env;
//! impl DataSource for Env {
//!     fn env(&self, name: &str) -> Option<String> {
//!         (name == "EGRESSTRATOR_ACL").then(|| "web,db".to_owned())
//!     }
//!     fn key(&self, _: &KvRef) -> Result<Option<String>, String> { Ok(None) }
//!     fn list(&self, _: &KvRef) -> Result<Vec<KvEntry>, String> { Ok(vec![]) }
//!     fn service(&self, _: &ServiceQuery) -> Result<Vec<ServiceInstance>, String> { Ok(vec![]) }
//!     fn services(&self, _: &CatalogQuery) -> Result<Vec<CatalogService>, String> { Ok(vec![]) }
//!     fn now_unix(&self) -> i64 { 0 }
//! }
//!
//! let t = parse("acl.tmpl", r#"{{range env "EGRESSTRATOR_ACL" | split ","}}[{{.}}]{{end}}"#)?;
//! assert_eq!(t.render(&Env)?.output, "[web][db]");
//! # Ok::<(), egresstrator_template::TemplateError>(())
//! ```
//!
//! # What is supported
//!
//! - Go syntax: text and actions, `{{/* comments */}}`, trim markers `{{- ` and ` -}}`,
//!   pipelines with `|` (the piped value is the last argument), parenthesized pipelines,
//!   variables (`$x := …`, `$x = …`, `$`) scoped as in Go, fields on the dot, variables
//!   and parenthesized values (`.A.B`, `$x.Key`, `(index $l 0).Key`), map keys as fields,
//!   `if`/`else if`/`else`, `range` over lists, maps (sorted keys), ints and nil with
//!   `$i, $v :=`, `{{else}}`, `{{break}}`, `{{continue}}`, `with`/`else with`/`else`,
//!   `define`/`template`/`block`, literals (strings with Go escapes, raw strings, ints in
//!   any base, floats, chars, `true`/`false`, `nil`).
//! - Go built-ins: `and` `or` (short-circuit, return the deciding value) `not` `len`
//!   `index` `slice` `print` `printf` `println` `eq` (n-ary) `ne` `lt` `le` `gt` `ge`
//!   `html` `js` `urlquery`.
//! - consul-template: `env` `envOrDefault` `key` `keyExists` `keyOrDefault` `ls` `safeLs`
//!   `tree` `safeTree` `service` `services` `timestamp` `byKey` `byTag` `contains`
//!   `containsAll` `containsAny` `containsNone` `containsNotAll` `in` `join` `split`
//!   `indent` `loop` `parseBool` `parseFloat` `parseInt` `parseUint` `regexMatch`
//!   `regexReplaceAll` `replaceAll` `toLower` `toUpper` `toTitle` `trim` `trimPrefix`
//!   `trimSuffix` `trimSpace` `add` `subtract` `multiply` `divide` `modulo` `minimum`
//!   `maximum` (and the old `key_exists`/`key_or_default` spellings).
//!
//! Not supported (a parse error names the function): consul-template's Vault, Nomad,
//! file, plugin, JSON/YAML/TOML, sockaddr and crypto functions, `call`, and methods on
//! values (`.Tags.Contains "x"`; use `.Tags | contains "x"`). Regular expressions use the
//! `regex` crate, which shares RE2's syntax with Go's `regexp` but makes `\d`, `\w`,
//! `\s` and `\b` Unicode-aware where Go's are ASCII-only.
//!
//! Modules: `lex` and `parse` turn text into a tree (errors at parse time, with line and
//! column, as Go finds them); `exec` walks it; `value` and `fmt` hold Go's rules for
//! values and printing; `funcs` the functions; `data` the caller's interface; `gotime`
//! Go's time layouts for `timestamp`.
//!
//! # Why not gotmpl
//!
//! We compared this engine with [gotmpl](https://crates.io/crates/gotmpl) 0.6.1, a Rust port
//! of Go's `text/template`. gotmpl rendered the 20 golden cases with the consul-template
//! functions the cases use added as closures. It passes 9 of the 20; this engine passes
//! all 20. Of the 10 cases that render, gotmpl matches Go on 9, the 0.2 default template
//! among them. It fails all 10 error cases:
//!
//! - It renders two templates that Go rejects. A `{{range}}` (or `{{if}}`, `{{with}}`,
//!   `{{define}}`) without `{{end}}` is closed silently at the end of the text. An
//!   unknown function is reported only when a call to it runs, and undefined variables are
//!   also found only at render time. A truncated or misspelt firewall template must fail,
//!   not render.
//! - Its runtime errors carry no line or column, and several parse errors are worded
//!   differently from Go's or point elsewhere (7 cases).
//! - It prints floats the Rust way where Go's `%v` applies (`1e+21`, `1e+08`), and has no
//!   `%T` (`printf-formatting`).
//!
//! Speed is no reason to switch. Both engines render the 0.2 default template in about
//! 0.1 ms: gotmpl is faster on tiny templates and slower where services or KV pairs are
//! ranged over (it has no structs). gotmpl's engine is smaller (about 0.3 MB against 0.5 MB,
//! both without `regex`), but it needs Rust 1.89, above the workspace's 1.88. We keep ours.
//! The method, the table and the command to reproduce are in `tools/gotmpl-compare/README.md`.

mod data;
mod error;
mod exec;
mod fmt;
mod funcs;
mod gotime;
mod lex;
mod parse;
mod value;

use std::sync::Arc;

pub use data::{
    CatalogQuery, CatalogService, DataSource, Dependencies, HealthFilter, KeyPair, KvEntry, KvRef,
    ServiceInstance, ServiceQuery,
};
pub use error::{ErrorKind, TemplateError};
pub use value::Value;

/// A parsed template, ready to render any number of times (cheap to clone, `Send + Sync`).
#[derive(Clone, Debug)]
pub struct Template {
    name: Arc<str>,
    text: Arc<str>,
    parsed: Arc<parse::Parsed>,
}

/// A render's output and everything it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The rendered text.
    pub output: String,
    /// What the render read, for the caller to watch.
    pub deps: Dependencies,
}

impl Rendered {
    /// False when the template read data that does not exist yet and consul-template would
    /// have waited for it instead of rendering (`key` of an absent key, `safeLs`/`safeTree`
    /// of an empty prefix; see [`Dependencies::missing`]). A caller that must fail closed
    /// should not apply an incomplete output.
    pub fn is_complete(&self) -> bool {
        self.deps.missing.is_empty()
    }
}

/// Parses a template. `name` is used in error messages (`web.tmpl:12:7: …`) and by
/// `{{template "name"}}`.
pub fn parse(name: &str, text: &str) -> Result<Template, TemplateError> {
    match parse::parse(text) {
        Ok(parsed) => Ok(Template {
            name: name.into(),
            text: text.into(),
            parsed: Arc::new(parsed),
        }),
        Err(e) => Err(TemplateError::at(
            name,
            text,
            e.pos,
            ErrorKind::Parse,
            e.msg,
            Dependencies::default(),
        )),
    }
}

impl Template {
    /// The name given to [`parse`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of the templates defined with `{{define}}` or `{{block}}`.
    pub fn defined_templates(&self) -> impl Iterator<Item = &str> {
        self.parsed.defs.keys().map(String::as_str)
    }

    /// Renders with a nil dot, as consul-template does.
    pub fn render(&self, data: &dyn DataSource) -> Result<Rendered, TemplateError> {
        self.render_with_dot(data, &Value::Nil)
    }

    /// Renders with `dot` as the template's `.` and `$`.
    pub fn render_with_dot(
        &self,
        data: &dyn DataSource,
        dot: &Value,
    ) -> Result<Rendered, TemplateError> {
        let mut exec = exec::Exec::new(&self.parsed, &self.name, data);
        match exec.run(dot) {
            Ok(()) => Ok(Rendered {
                output: std::mem::take(&mut exec.out),
                deps: std::mem::take(&mut exec.ctx.deps),
            }),
            Err(e) => Err(TemplateError::at(
                &self.name,
                &self.text,
                e.pos,
                if e.data {
                    ErrorKind::Data
                } else {
                    ErrorKind::Render
                },
                e.msg,
                std::mem::take(&mut exec.ctx.deps),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
