//! Go template execution: walking the parsed tree against a dot and a data source.
//!
//! Follows Go's `text/template/exec.go`: the variable stack is marked and popped exactly
//! where Go does (a declaration in an `if`/`with`/`range` body is gone at its `{{end}}`;
//! each range iteration starts from a clean body scope), pipelines pass their value as the
//! last argument of the next command, `and`/`or` short-circuit and return the deciding
//! value, ranges over maps visit keys in sorted order, and `{{else}}` of a range runs only
//! when there was nothing to iterate. Output, recursion, the strings functions return, and
//! range iterations and template calls together are bounded, so a runaway template fails
//! instead of exhausting the agent.

use crate::data::DataSource;
use crate::fmt::action_string;
use crate::funcs::{self, CallError, Ctx, Func};
use crate::parse::{Arg, Cmd, Control, Node, Parsed, Pipe};
use crate::value::Value;

/// How deep `{{template}}` calls may nest.
pub(crate) const MAX_DEPTH: usize = 100;
/// The largest output a render may produce.
pub(crate) const MAX_OUTPUT: usize = 64 << 20;
/// The most range iterations and `{{template}}` calls a render may make, together (as many
/// elements as `loop` may make, and the largest int a range accepts). Without it nested
/// ranges, and a template that calls itself twice, multiply: `{{range 999999}}{{range
/// 999999}}{{end}}{{end}}` would run for hours. This bounds how often the template's text
/// runs, not what each function costs (see FUZZING.md).
pub(crate) const MAX_STEPS: u64 = 1_000_000;

/// An execution error at a byte offset.
pub(crate) struct ExecError {
    pub(crate) pos: usize,
    pub(crate) msg: String,
    pub(crate) data: bool,
}

type EResult<T> = Result<T, ExecError>;

fn fail<T>(pos: usize, msg: impl Into<String>) -> EResult<T> {
    Err(ExecError {
        pos,
        msg: msg.into(),
        data: false,
    })
}

enum Flow {
    Normal,
    Break,
    Continue,
}

pub(crate) struct Exec<'a> {
    tmpl: &'a Parsed,
    name: &'a str,
    pub(crate) ctx: Ctx<'a>,
    vars: Vec<(String, Value)>,
    depth: usize,
    steps: u64,
    pub(crate) out: String,
}

impl<'a> Exec<'a> {
    pub(crate) fn new(tmpl: &'a Parsed, name: &'a str, data: &'a dyn DataSource) -> Self {
        Exec {
            tmpl,
            name,
            ctx: Ctx::new(data),
            vars: Vec::new(),
            depth: 0,
            steps: 0,
            out: String::new(),
        }
    }

    pub(crate) fn run(&mut self, dot: &Value) -> EResult<()> {
        self.vars = vec![("$".to_owned(), dot.clone())];
        self.walk_list(dot, &self.tmpl.root)?;
        Ok(())
    }

    fn write(&mut self, pos: usize, s: &str) -> EResult<()> {
        if self.out.len() + s.len() > MAX_OUTPUT {
            return fail(pos, format!("output exceeds {} MiB", MAX_OUTPUT >> 20));
        }
        self.out.push_str(s);
        Ok(())
    }

    /// Counts one range iteration or template call against [`MAX_STEPS`].
    fn step(&mut self, pos: usize) -> EResult<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return fail(
                pos,
                format!("exceeded {MAX_STEPS} range iterations and template calls"),
            );
        }
        Ok(())
    }

    fn walk_list(&mut self, dot: &Value, list: &'a [Node]) -> EResult<Flow> {
        for node in list {
            match self.walk(dot, node)? {
                Flow::Normal => {}
                flow => return Ok(flow),
            }
        }
        Ok(Flow::Normal)
    }

    fn walk(&mut self, dot: &Value, node: &'a Node) -> EResult<Flow> {
        match node {
            Node::Text(t) => {
                self.write(0, t)?;
                Ok(Flow::Normal)
            }
            Node::Action(pipe) => {
                let v = self.eval_pipeline(dot, pipe)?;
                if pipe.decl.is_empty() {
                    self.write(pipe.pos, &action_string(&v))?;
                }
                Ok(Flow::Normal)
            }
            Node::If(c) => self.walk_if_or_with(dot, c, false),
            Node::With(c) => self.walk_if_or_with(dot, c, true),
            Node::Range(c) => self.walk_range(dot, c),
            Node::Template { pos, name, pipe } => {
                self.walk_template(dot, *pos, name, pipe.as_ref())?;
                Ok(Flow::Normal)
            }
            Node::Break => Ok(Flow::Break),
            Node::Continue => Ok(Flow::Continue),
        }
    }

    fn walk_if_or_with(&mut self, dot: &Value, c: &'a Control, with: bool) -> EResult<Flow> {
        let mark = self.vars.len();
        let val = self.eval_pipeline(dot, &c.pipe)?;
        let flow = if val.truth() {
            if with {
                self.walk_list(&val, &c.list)?
            } else {
                self.walk_list(dot, &c.list)?
            }
        } else if let Some(else_list) = &c.else_list {
            self.walk_list(dot, else_list)?
        } else {
            Flow::Normal
        };
        self.vars.truncate(mark);
        Ok(flow)
    }

    fn walk_range(&mut self, dot: &Value, c: &'a Control) -> EResult<Flow> {
        let mark = self.vars.len();
        let val = self.eval_pipeline(dot, &c.pipe)?;
        let decl = &c.pipe.decl;
        let items: Vec<(Value, Value)> = match &val {
            Value::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::Int(i64::try_from(i).unwrap_or(i64::MAX)), v.clone()))
                .collect(),
            // Sorted key order (BTreeMap), as Go's fmtsort: output must be deterministic.
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| (Value::str(k.as_str()), v.clone()))
                .collect(),
            Value::Int(n) => {
                if decl.len() > 1 {
                    return fail(
                        c.pipe.pos,
                        format!("can't use {n} to iterate over more than one variable"),
                    );
                }
                if u64::try_from(*n).is_ok_and(|n| n > MAX_STEPS) {
                    return fail(c.pipe.pos, format!("range over {n} is too large"));
                }
                (0..*n).map(|i| (Value::Int(i), Value::Int(i))).collect()
            }
            Value::Nil => Vec::new(),
            other => {
                return fail(
                    c.pipe.pos,
                    format!("range can't iterate over {}", action_string(other)),
                )
            }
        };
        if items.is_empty() {
            let flow = match &c.else_list {
                Some(else_list) => self.walk_list(dot, else_list)?,
                None => Flow::Normal,
            };
            self.vars.truncate(mark);
            return Ok(flow);
        }
        let body_mark = self.vars.len();
        for (index, elem) in items {
            self.step(c.pipe.pos)?;
            if c.pipe.is_assign {
                match decl.as_slice() {
                    [one] => self.set_var(one.pos, &one.name, elem.clone())?,
                    [i, e] => {
                        self.set_var(i.pos, &i.name, index)?;
                        self.set_var(e.pos, &e.name, elem.clone())?;
                    }
                    _ => {}
                }
            } else {
                // The pipeline pushed the declared variables: the last is the element, the
                // one before it (if any) the index.
                if !decl.is_empty() {
                    if let Some(top) = self.vars.get_mut(body_mark - 1) {
                        top.1 = elem.clone();
                    }
                }
                if decl.len() > 1 {
                    if let Some(second) = self.vars.get_mut(body_mark - 2) {
                        second.1 = index;
                    }
                }
            }
            let flow = self.walk_list(&elem, &c.list)?;
            self.vars.truncate(body_mark);
            if let Flow::Break = flow {
                break;
            }
        }
        self.vars.truncate(mark);
        Ok(Flow::Normal)
    }

    fn walk_template(
        &mut self,
        dot: &Value,
        pos: usize,
        name: &str,
        pipe: Option<&'a Pipe>,
    ) -> EResult<()> {
        let body: &'a [Node] = match self.tmpl.defs.get(name) {
            Some(b) => b,
            None if name == self.name => &self.tmpl.root,
            None => return fail(pos, format!("no such template {}", crate::fmt::quote(name))),
        };
        self.step(pos)?;
        if self.depth >= MAX_DEPTH {
            return fail(
                pos,
                format!("exceeded maximum template depth ({MAX_DEPTH})"),
            );
        }
        let new_dot = match pipe {
            Some(p) => self.eval_pipeline(dot, p)?,
            None => Value::Nil,
        };
        let saved = std::mem::replace(&mut self.vars, vec![("$".to_owned(), new_dot.clone())]);
        self.depth += 1;
        let result = self.walk_list(&new_dot, body);
        self.depth -= 1;
        self.vars = saved;
        result.map(|_| ())
    }

    fn set_var(&mut self, pos: usize, name: &str, value: Value) -> EResult<()> {
        match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => fail(pos, format!("undefined variable: {name}")),
        }
    }

    fn var_value(&self, pos: usize, name: &str) -> EResult<Value> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => fail(pos, format!("undefined variable: {name}")),
        }
    }

    fn eval_pipeline(&mut self, dot: &Value, pipe: &'a Pipe) -> EResult<Value> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            value = Some(self.eval_command(dot, cmd, value)?);
        }
        let value = value.unwrap_or_default();
        for d in &pipe.decl {
            if pipe.is_assign {
                self.set_var(d.pos, &d.name, value.clone())?;
            } else {
                self.vars.push((d.name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    fn not_a_function(&self, cmd: &Cmd, fin: &Option<Value>) -> EResult<()> {
        if cmd.args.len() > 1 || fin.is_some() {
            let first = &cmd.args[0];
            return fail(
                first.pos(),
                format!("can't give argument to non-function {}", first.describe()),
            );
        }
        Ok(())
    }

    fn eval_command(&mut self, dot: &Value, cmd: &'a Cmd, fin: Option<Value>) -> EResult<Value> {
        let Some(first) = cmd.args.first() else {
            return fail(cmd.pos, "empty command");
        };
        let has_args = cmd.args.len() > 1 || fin.is_some();
        match first {
            Arg::Field { pos, names } => self.eval_fields(dot.clone(), names, *pos, has_args),
            Arg::Chain { pos, base, fields } => {
                let b = self.eval_arg(dot, base)?;
                self.eval_fields(b, fields, *pos, has_args)
            }
            Arg::Func { pos, name, func } => {
                self.eval_call(dot, *func, name, *pos, &cmd.args[1..], fin)
            }
            Arg::Variable { pos, name, fields } => {
                let v = self.var_value(*pos, name)?;
                if fields.is_empty() {
                    self.not_a_function(cmd, &fin)?;
                    Ok(v)
                } else {
                    self.eval_fields(v, fields, *pos, has_args)
                }
            }
            Arg::Pipe(p) => {
                self.not_a_function(cmd, &fin)?;
                self.eval_pipeline(dot, p)
            }
            Arg::Nil(pos) => fail(*pos, "nil is not a command"),
            literal => {
                self.not_a_function(cmd, &fin)?;
                self.eval_arg(dot, literal)
            }
        }
    }

    /// `.A.B.C` on a receiver. Only the last field may receive arguments, and fields are
    /// not methods, so arguments are an error (Go's wording).
    fn eval_fields(
        &self,
        mut receiver: Value,
        names: &[String],
        pos: usize,
        has_args: bool,
    ) -> EResult<Value> {
        for (i, name) in names.iter().enumerate() {
            let last = i + 1 == names.len();
            let was_map = matches!(receiver, Value::Map(_));
            let is_nil = matches!(receiver, Value::Nil);
            receiver = match receiver.field(name) {
                Ok(Some(v)) => v,
                Ok(None) | Err(()) => {
                    return fail(
                        pos,
                        format!(
                            "can't evaluate field {name} in type {}",
                            receiver.type_name()
                        ),
                    )
                }
            };
            if last && has_args && !is_nil {
                let msg = if was_map {
                    format!("{name} is not a method but has arguments")
                } else {
                    format!("{name} has arguments but cannot be invoked as function")
                };
                return fail(pos, msg);
            }
        }
        Ok(receiver)
    }

    /// Evaluates an operand used as a function argument.
    fn eval_arg(&mut self, dot: &Value, arg: &'a Arg) -> EResult<Value> {
        Ok(match arg {
            Arg::Dot(_) => dot.clone(),
            Arg::Nil(_) => Value::Nil,
            Arg::Bool(_, b) => Value::Bool(*b),
            Arg::Int(_, i) => Value::Int(*i),
            Arg::Float(_, f) => Value::Float(*f),
            Arg::Str(_, s) => Value::str(s.as_str()),
            Arg::Field { pos, names } => self.eval_fields(dot.clone(), names, *pos, false)?,
            Arg::Variable { pos, name, fields } => {
                let v = self.var_value(*pos, name)?;
                self.eval_fields(v, fields, *pos, false)?
            }
            Arg::Pipe(p) => self.eval_pipeline(dot, p)?,
            // A function named as an argument is called with no arguments, as in Go.
            Arg::Func { pos, name, func } => self.eval_call(dot, *func, name, *pos, &[], None)?,
            Arg::Chain { pos, base, fields } => {
                let b = self.eval_arg(dot, base)?;
                self.eval_fields(b, fields, *pos, false)?
            }
        })
    }

    fn eval_call(
        &mut self,
        dot: &Value,
        func: Func,
        name: &str,
        pos: usize,
        args: &'a [Arg],
        fin: Option<Value>,
    ) -> EResult<Value> {
        let got = args.len() + usize::from(fin.is_some());
        let (min, max) = funcs::arity(func);
        if got < min || max.is_some_and(|m| got > m) {
            let want = match max {
                None => format!("at least {min}"),
                Some(m) if m == min => min.to_string(),
                Some(m) if m == min + 1 => format!("{min} or {m}"),
                Some(m) => format!("{min} to {m}"),
            };
            return fail(
                pos,
                format!("wrong number of args for {name}: want {want} got {got}"),
            );
        }
        if matches!(func, Func::And | Func::Or) {
            // Short-circuit: evaluate left to right, stop at the deciding value.
            let want = matches!(func, Func::Or);
            let mut v = Value::Nil;
            for a in args {
                if let Arg::Nil(p) = a {
                    return fail(*p, format!("cannot pass nil to {name}"));
                }
                v = self.eval_arg(dot, a)?;
                if v.truth() == want {
                    return Ok(v);
                }
            }
            if let Some(f) = fin {
                v = f;
            }
            return Ok(v);
        }
        let mut vals = Vec::with_capacity(got);
        for a in args {
            if let Arg::Nil(p) = a {
                if !funcs::accepts_nil(func) {
                    return fail(*p, format!("cannot pass nil to {name}"));
                }
            }
            vals.push(self.eval_arg(dot, a)?);
        }
        if let Some(f) = fin {
            vals.push(f);
        }
        let result = funcs::call(func, &vals, &mut self.ctx);
        if let Ok(Value::Str(s)) = &result {
            // Bounded like the output, so a string doubled in a loop fails.
            if s.len() > funcs::MAX_STRING {
                return fail(
                    pos,
                    format!(
                        "error calling {name}: result longer than {} MiB",
                        funcs::MAX_STRING >> 20
                    ),
                );
            }
        }
        result.map_err(|e| match e {
            CallError::Arg(msg) => ExecError {
                pos,
                msg: format!("{name}: {msg}"),
                data: false,
            },
            CallError::Failed(msg) => ExecError {
                pos,
                msg: format!("error calling {name}: {msg}"),
                data: false,
            },
            CallError::Data(msg) => ExecError {
                pos,
                msg: format!("error calling {name}: {msg}"),
                data: true,
            },
        })
    }
}
