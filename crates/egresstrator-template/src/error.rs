//! The one error type: what went wrong, in which template, at which line and column.
//!
//! Operators fix templates from these messages, so each names the file and points at the
//! offending token (`web.tmpl:12:7: function "foo" not defined`). A render error also
//! carries what the render had read so far, so the caller can watch that data and retry
//! once it changes (the render may have failed on a bad KV value).

use crate::data::Dependencies;

/// Which stage failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text is not a valid template (found by [`crate::parse`]).
    Parse,
    /// Execution failed: a type error, a bad argument, an undefined template.
    Render,
    /// The data source returned an error (Consul unreachable, say): retrying may help.
    Data,
}

/// A template error with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name}:{line}:{column}: {message}")]
pub struct TemplateError {
    /// The template's name.
    pub name: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Which stage failed.
    pub kind: ErrorKind,
    /// What failed, without the position.
    pub message: String,
    deps: Box<Dependencies>,
}

impl TemplateError {
    pub(crate) fn at(
        name: &str,
        text: &str,
        pos: usize,
        kind: ErrorKind,
        message: String,
        deps: Dependencies,
    ) -> Self {
        let pos = pos.min(text.len());
        let before = text.get(..pos).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        TemplateError {
            name: name.to_owned(),
            line,
            column,
            kind,
            message,
            deps: Box::new(deps),
        }
    }

    /// What the render read before it failed (empty for parse errors).
    pub fn dependencies(&self) -> &Dependencies {
        &self.deps
    }
}
