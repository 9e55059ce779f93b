//! Go template parsing: tokens to a tree of actions, pipelines and control structures.
//!
//! Mirrors Go's `text/template/parse/parse.go` so that the same templates are accepted and
//! rejected for the same reasons, at parse time: unknown functions, undefined variables,
//! unbalanced `{{end}}`s, `{{break}}` outside `{{range}}`, non-executable pipeline stages.
//! Variable scope is tracked as Go does: a declaration lives until the `{{end}}` of the
//! control structure it appears in (or the end of the template).

use std::collections::BTreeMap;

use crate::funcs::{self, Func};
use crate::lex::{lex, Kw, Tok, Token};

/// A node of a template body.
#[derive(Debug)]
pub(crate) enum Node {
    Text(String),
    /// `{{pipeline}}`: prints the value unless the pipeline declares variables.
    Action(Pipe),
    If(Control),
    With(Control),
    Range(Control),
    /// `{{template "name" pipeline}}` (also what `{{block}}` leaves in place).
    Template {
        pos: usize,
        name: String,
        pipe: Option<Pipe>,
    },
    Break,
    Continue,
}

#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) pipe: Pipe,
    pub(crate) list: Vec<Node>,
    pub(crate) else_list: Option<Vec<Node>>,
}

#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) pos: usize,
    pub(crate) decl: Vec<VarDecl>,
    pub(crate) is_assign: bool,
    pub(crate) cmds: Vec<Cmd>,
}

#[derive(Debug)]
pub(crate) struct VarDecl {
    pub(crate) pos: usize,
    pub(crate) name: String,
}

#[derive(Debug)]
pub(crate) struct Cmd {
    pub(crate) pos: usize,
    pub(crate) args: Vec<Arg>,
}

/// An operand of a command.
#[derive(Debug)]
pub(crate) enum Arg {
    Dot(usize),
    Nil(usize),
    Bool(usize, bool),
    Int(usize, i64),
    Float(usize, f64),
    Str(usize, String),
    /// `.A.B` on the dot.
    Field {
        pos: usize,
        names: Vec<String>,
    },
    /// `$x` or `$x.A.B`.
    Variable {
        pos: usize,
        name: String,
        fields: Vec<String>,
    },
    Func {
        pos: usize,
        name: String,
        func: Func,
    },
    /// `( pipeline )`.
    Pipe(Box<Pipe>),
    /// `(pipeline).A.B` and other fields on a non-field term.
    Chain {
        pos: usize,
        base: Box<Arg>,
        fields: Vec<String>,
    },
}

impl Arg {
    pub(crate) fn pos(&self) -> usize {
        match self {
            Arg::Dot(p)
            | Arg::Nil(p)
            | Arg::Bool(p, _)
            | Arg::Int(p, _)
            | Arg::Float(p, _)
            | Arg::Str(p, _) => *p,
            Arg::Field { pos, .. }
            | Arg::Variable { pos, .. }
            | Arg::Func { pos, .. }
            | Arg::Chain { pos, .. } => *pos,
            Arg::Pipe(p) => p.pos,
        }
    }

    /// How Go prints the node in messages (`$x`, `.Key`, `"text"`).
    pub(crate) fn describe(&self) -> String {
        match self {
            Arg::Dot(_) => ".".to_owned(),
            Arg::Nil(_) => "nil".to_owned(),
            Arg::Bool(_, b) => b.to_string(),
            Arg::Int(_, i) => i.to_string(),
            Arg::Float(_, f) => f.to_string(),
            Arg::Str(_, s) => crate::fmt::quote(s),
            Arg::Field { names, .. } => names.iter().map(|n| format!(".{n}")).collect(),
            Arg::Variable { name, fields, .. } => {
                let mut s = name.clone();
                for f in fields {
                    s.push('.');
                    s.push_str(f);
                }
                s
            }
            Arg::Func { name, .. } => name.clone(),
            Arg::Pipe(_) => "(…)".to_owned(),
            Arg::Chain { base, fields, .. } => {
                let mut s = base.describe();
                for f in fields {
                    s.push('.');
                    s.push_str(f);
                }
                s
            }
        }
    }
}

/// A parse error at a byte offset.
#[derive(Debug)]
pub(crate) struct ParseError {
    pub(crate) pos: usize,
    pub(crate) msg: String,
}

type PResult<T> = Result<T, ParseError>;

/// The parsed template set: the main body and every `{{define}}`/`{{block}}`.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) root: Vec<Node>,
    pub(crate) defs: BTreeMap<String, Vec<Node>>,
}

pub(crate) fn parse(src: &str) -> PResult<Parsed> {
    let mut p = Parser {
        nesting: 0,
        toks: lex(src),
        i: 0,
        vars: vec!["$".to_owned()],
        range_depth: 0,
        defs: BTreeMap::new(),
        src_len: src.len(),
    };
    let root = p.parse_top()?;
    Ok(Parsed { root, defs: p.defs })
}

/// What ended an item list.
enum Stop {
    End(usize),
    /// `{{else}}`; `Some(kw)` when an `if`/`with` follows (`{{else if …}}`).
    Else(usize, Option<(Kw, usize)>),
}

enum Item {
    Node(Node),
    Stop(Stop),
}

/// How deeply controls and parentheses may nest: parsing and execution recurse on the
/// nesting, and the agent may run on small thread stacks.
const MAX_NESTING: usize = 100;

struct Parser {
    nesting: usize,
    toks: Vec<Token>,
    i: usize,
    vars: Vec<String>,
    range_depth: usize,
    defs: BTreeMap<String, Vec<Node>>,
    src_len: usize,
}

fn err<T>(pos: usize, msg: impl Into<String>) -> PResult<T> {
    Err(ParseError {
        pos,
        msg: msg.into(),
    })
}

/// Go's `item.String()` for messages.
fn describe(t: &Token) -> String {
    let val = match &t.tok {
        Tok::Eof => return "EOF".to_owned(),
        Tok::Error(m) => return m.clone(),
        Tok::Keyword(k) => return format!("<{}>", k.as_str()),
        Tok::Text(s) => s.clone(),
        Tok::LeftDelim => "{{".to_owned(),
        Tok::RightDelim => "}}".to_owned(),
        Tok::Space => " ".to_owned(),
        Tok::Variable(s) | Tok::Ident(s) | Tok::Number(s) => s.clone(),
        Tok::CharConst(s) | Tok::Str(s) | Tok::RawStr(s) => s.clone(),
        Tok::Field(s) => format!(".{s}"),
        Tok::Dot => ".".to_owned(),
        Tok::Bool(b) => b.to_string(),
        Tok::Char(c) => c.to_string(),
        Tok::Pipe => "|".to_owned(),
        Tok::LParen => "(".to_owned(),
        Tok::RParen => ")".to_owned(),
        Tok::Assign => "=".to_owned(),
        Tok::Declare => ":=".to_owned(),
    };
    if val.chars().count() > 10 {
        let short: String = val.chars().take(10).collect();
        format!("{}...", crate::fmt::quote(&short))
    } else {
        crate::fmt::quote(&val)
    }
}

impl Parser {
    fn next(&mut self) -> Token {
        let t = self.peek();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn peek(&self) -> Token {
        self.toks.get(self.i).cloned().unwrap_or(Token {
            tok: Tok::Eof,
            pos: self.src_len,
        })
    }

    fn backup(&mut self) {
        self.i = self.i.saturating_sub(1);
    }

    fn next_non_space(&mut self) -> Token {
        loop {
            let t = self.next();
            if t.tok != Tok::Space {
                return t;
            }
        }
    }

    fn peek_non_space(&mut self) -> Token {
        let t = self.next_non_space();
        self.backup();
        t
    }

    fn unexpected<T>(&self, t: &Token, context: &str) -> PResult<T> {
        if let Tok::Error(m) = &t.tok {
            return err(t.pos, m.clone());
        }
        err(t.pos, format!("unexpected {} in {context}", describe(t)))
    }

    fn expect_right_delim(&mut self, context: &str) -> PResult<Token> {
        let t = self.next_non_space();
        if t.tok != Tok::RightDelim {
            return self.unexpected(&t, context);
        }
        Ok(t)
    }

    fn parse_top(&mut self) -> PResult<Vec<Node>> {
        let mut root = Vec::new();
        loop {
            let t = self.peek();
            match t.tok {
                Tok::Eof => return Ok(root),
                Tok::LeftDelim => {
                    let save = self.i;
                    self.next();
                    let kw = self.next_non_space();
                    if kw.tok == Tok::Keyword(Kw::Define) {
                        self.parse_definition(kw.pos)?;
                        continue;
                    }
                    self.i = save;
                }
                _ => {}
            }
            match self.text_or_action()? {
                Item::Node(n) => root.push(n),
                Item::Stop(Stop::End(pos)) => return err(pos, "unexpected {{end}}"),
                Item::Stop(Stop::Else(pos, _)) => return err(pos, "unexpected {{else}}"),
            }
        }
    }

    /// `{{define "name"}} … {{end}}`: parsed with a fresh variable scope.
    fn parse_definition(&mut self, pos: usize) -> PResult<()> {
        const CONTEXT: &str = "define clause";
        let t = self.next_non_space();
        let name = self.template_name(&t, CONTEXT)?;
        self.expect_right_delim(CONTEXT)?;
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
        let saved_depth = std::mem::replace(&mut self.range_depth, 0);
        let (list, stop) = self.item_list(pos, "{{define}}")?;
        self.vars = saved_vars;
        self.range_depth = saved_depth;
        match stop {
            Stop::End(_) => {}
            Stop::Else(p, _) => return err(p, "unexpected {{else}} in define clause"),
        }
        self.add_def(pos, name, list)
    }

    /// Go's `Tree.add`: a later definition may replace an empty one, not a non-empty one.
    fn add_def(&mut self, pos: usize, name: String, list: Vec<Node>) -> PResult<()> {
        let empty = |l: &[Node]| {
            l.iter()
                .all(|n| matches!(n, Node::Text(t) if t.trim().is_empty()))
        };
        match self.defs.get(&name) {
            Some(old) if !empty(old) && !empty(&list) => err(
                pos,
                format!(
                    "template: multiple definition of template {}",
                    crate::fmt::quote(&name)
                ),
            ),
            Some(old) if !empty(old) => Ok(()),
            _ => {
                self.defs.insert(name, list);
                Ok(())
            }
        }
    }

    fn template_name(&mut self, t: &Token, context: &str) -> PResult<String> {
        match &t.tok {
            Tok::Str(raw) => unquote(raw).map_err(|m| ParseError { pos: t.pos, msg: m }),
            Tok::RawStr(raw) => Ok(unquote_raw(raw)),
            _ => self.unexpected(t, context),
        }
    }

    /// Nodes up to `{{end}}` or `{{else}}`. `opener` names the construct for the EOF error.
    fn item_list(&mut self, open_pos: usize, opener: &str) -> PResult<(Vec<Node>, Stop)> {
        let mut list = Vec::new();
        loop {
            if self.peek_non_space().tok == Tok::Eof {
                return err(
                    open_pos,
                    format!("unexpected EOF: {opener} has no matching {{{{end}}}}"),
                );
            }
            match self.text_or_action()? {
                Item::Node(n) => list.push(n),
                Item::Stop(s) => return Ok((list, s)),
            }
        }
    }

    fn text_or_action(&mut self) -> PResult<Item> {
        let t = self.next_non_space();
        match t.tok {
            Tok::Text(s) => Ok(Item::Node(Node::Text(s))),
            Tok::LeftDelim => self.action(),
            _ => self.unexpected(&t, "input"),
        }
    }

    fn action(&mut self) -> PResult<Item> {
        let t = self.next_non_space();
        let node = match t.tok {
            Tok::Keyword(Kw::Block) => self.block_control(t.pos)?,
            Tok::Keyword(Kw::Break) => self.branch_control(t.pos, "break")?,
            Tok::Keyword(Kw::Continue) => self.branch_control(t.pos, "continue")?,
            Tok::Keyword(Kw::Else) => return self.else_control(t.pos).map(Item::Stop),
            Tok::Keyword(Kw::End) => {
                self.expect_right_delim("end")?;
                return Ok(Item::Stop(Stop::End(t.pos)));
            }
            Tok::Keyword(Kw::If) => Node::If(self.parse_control("if", t.pos)?),
            Tok::Keyword(Kw::Range) => Node::Range(self.parse_control("range", t.pos)?),
            Tok::Keyword(Kw::With) => Node::With(self.parse_control("with", t.pos)?),
            Tok::Keyword(Kw::Template) => self.template_control()?,
            _ => {
                self.backup();
                // Variables declared here persist until the enclosing {{end}}.
                Node::Action(self.pipeline("command", &Tok::RightDelim)?)
            }
        };
        Ok(Item::Node(node))
    }

    fn branch_control(&mut self, pos: usize, which: &str) -> PResult<Node> {
        let t = self.next_non_space();
        if t.tok != Tok::RightDelim {
            return self.unexpected(&t, &format!("{{{{{which}}}}}"));
        }
        if self.range_depth == 0 {
            return err(pos, format!("{{{{{which}}}}} outside {{{{range}}}}"));
        }
        Ok(if which == "break" {
            Node::Break
        } else {
            Node::Continue
        })
    }

    fn else_control(&mut self, pos: usize) -> PResult<Stop> {
        let peek = self.peek_non_space();
        if let Tok::Keyword(kw @ (Kw::If | Kw::With)) = peek.tok {
            // Leave the keyword pending: the caller parses `{{else if x}}` as
            // `{{else}}{{if x}}…{{end}}{{end}}`.
            return Ok(Stop::Else(pos, Some((kw, peek.pos))));
        }
        self.expect_right_delim("else")?;
        Ok(Stop::Else(pos, None))
    }

    fn parse_control(&mut self, context: &str, pos: usize) -> PResult<Control> {
        self.enter(pos)?;
        let nvars = self.vars.len();
        let result = self.parse_control_inner(context, pos);
        self.vars.truncate(nvars);
        self.nesting -= 1;
        result
    }

    fn enter(&mut self, pos: usize) -> PResult<()> {
        if self.nesting >= MAX_NESTING {
            return err(
                pos,
                format!("template nesting exceeds {MAX_NESTING} levels"),
            );
        }
        self.nesting += 1;
        Ok(())
    }

    fn parse_control_inner(&mut self, context: &str, pos: usize) -> PResult<Control> {
        let pipe = self.pipeline(context, &Tok::RightDelim)?;
        if context == "range" {
            self.range_depth += 1;
        }
        let opener = format!("{{{{{context}}}}}");
        let listed = self.item_list(pos, &opener);
        if context == "range" {
            self.range_depth -= 1;
        }
        let (list, stop) = listed?;
        let else_list = match stop {
            Stop::End(_) => None,
            Stop::Else(else_pos, chained) => match chained {
                Some((Kw::If, kw_pos)) if context == "if" => {
                    self.next_non_space();
                    Some(vec![Node::If(self.parse_control("if", kw_pos)?)])
                }
                Some((Kw::With, kw_pos)) if context == "with" => {
                    self.next_non_space();
                    Some(vec![Node::With(self.parse_control("with", kw_pos)?)])
                }
                Some((kw, kw_pos)) => {
                    return err(
                        kw_pos,
                        format!(
                            "unexpected <{}> after {{{{else}}}} in {{{{{context}}}}}",
                            kw.as_str()
                        ),
                    )
                }
                None => {
                    let (else_list, stop) = self.item_list(else_pos, "{{else}}")?;
                    if let Stop::Else(p, _) = stop {
                        return err(p, "expected end; found {{else}}");
                    }
                    Some(else_list)
                }
            },
        };
        Ok(Control {
            pipe,
            list,
            else_list,
        })
    }

    fn template_control(&mut self) -> PResult<Node> {
        const CONTEXT: &str = "template clause";
        let t = self.next_non_space();
        let name = self.template_name(&t, CONTEXT)?;
        let pipe = if self.next_non_space().tok != Tok::RightDelim {
            self.backup();
            Some(self.pipeline(CONTEXT, &Tok::RightDelim)?)
        } else {
            None
        };
        Ok(Node::Template {
            pos: t.pos,
            name,
            pipe,
        })
    }

    /// `{{block "name" pipeline}} body {{end}}`: defines `name` and invokes it.
    fn block_control(&mut self, pos: usize) -> PResult<Node> {
        const CONTEXT: &str = "block clause";
        let t = self.next_non_space();
        let name = self.template_name(&t, CONTEXT)?;
        let pipe = self.pipeline(CONTEXT, &Tok::RightDelim)?;
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
        let saved_depth = std::mem::replace(&mut self.range_depth, 0);
        let listed = self.item_list(pos, "{{block}}");
        self.vars = saved_vars;
        self.range_depth = saved_depth;
        let (list, stop) = listed?;
        if let Stop::Else(p, _) = stop {
            return err(p, "unexpected {{else}} in block clause");
        }
        self.add_def(pos, name.clone(), list)?;
        Ok(Node::Template {
            pos: t.pos,
            name,
            pipe: Some(pipe),
        })
    }

    fn pipeline(&mut self, context: &str, end: &Tok) -> PResult<Pipe> {
        let pos = self.peek_non_space().pos;
        let mut pipe = Pipe {
            pos,
            decl: Vec::new(),
            is_assign: false,
            cmds: Vec::new(),
        };
        // Declarations: `$x :=`, `$x =`, `$i, $v :=` (range only).
        loop {
            let v = self.peek_non_space();
            let Tok::Variable(name) = &v.tok else { break };
            let var_index = self.i;
            self.next();
            let next = self.peek_non_space();
            match next.tok {
                Tok::Assign | Tok::Declare => {
                    pipe.is_assign = next.tok == Tok::Assign;
                    self.next_non_space();
                    pipe.decl.push(VarDecl {
                        pos: v.pos,
                        name: name.clone(),
                    });
                    self.vars.push(name.clone());
                    break;
                }
                Tok::Char(',') => {
                    self.next_non_space();
                    pipe.decl.push(VarDecl {
                        pos: v.pos,
                        name: name.clone(),
                    });
                    self.vars.push(name.clone());
                    if context == "range" && pipe.decl.len() < 2 {
                        match self.peek_non_space().tok {
                            Tok::Variable(_) | Tok::RightDelim | Tok::RParen => continue,
                            _ => return err(next.pos, "range can only initialize variables"),
                        }
                    }
                    return err(next.pos, format!("too many declarations in {context}"));
                }
                _ => {
                    // `$x` is an operand, not a declaration: push it back.
                    self.i = var_index;
                    break;
                }
            }
        }
        loop {
            let t = self.next_non_space();
            if &t.tok == end {
                if pipe.cmds.is_empty() {
                    return err(t.pos, format!("missing value for {context}"));
                }
                for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
                    if let Some(
                        Arg::Bool(p, _)
                        | Arg::Dot(p)
                        | Arg::Nil(p)
                        | Arg::Int(p, _)
                        | Arg::Float(p, _)
                        | Arg::Str(p, _),
                    ) = c.args.first()
                    {
                        return err(
                            *p,
                            format!("non executable command in pipeline stage {}", i + 1),
                        );
                    }
                }
                return Ok(pipe);
            }
            match t.tok {
                Tok::Bool(_)
                | Tok::CharConst(_)
                | Tok::Dot
                | Tok::Field(_)
                | Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Keyword(Kw::Nil)
                | Tok::RawStr(_)
                | Tok::Str(_)
                | Tok::Variable(_)
                | Tok::LParen => {
                    self.backup();
                    let cmd = self.command()?;
                    pipe.cmds.push(cmd);
                }
                _ => return self.unexpected(&t, context),
            }
        }
    }

    fn command(&mut self) -> PResult<Cmd> {
        let pos = self.peek_non_space().pos;
        let mut args = Vec::new();
        loop {
            self.peek_non_space();
            if let Some(op) = self.operand()? {
                args.push(op);
            }
            let t = self.next();
            match t.tok {
                Tok::Space => continue,
                Tok::RightDelim | Tok::RParen => self.backup(),
                Tok::Pipe => {}
                _ => return self.unexpected(&t, "operand"),
            }
            break;
        }
        if args.is_empty() {
            return err(pos, "empty command");
        }
        Ok(Cmd { pos, args })
    }

    fn operand(&mut self) -> PResult<Option<Arg>> {
        let Some(node) = self.term()? else {
            return Ok(None);
        };
        if !matches!(self.peek().tok, Tok::Field(_)) {
            return Ok(Some(node));
        }
        let chain_pos = self.peek().pos;
        let mut fields = Vec::new();
        while let Tok::Field(f) = self.peek().tok {
            self.next();
            fields.push(f);
        }
        Ok(Some(match node {
            Arg::Field { pos, mut names } => {
                names.extend(fields);
                Arg::Field { pos, names }
            }
            Arg::Variable {
                pos,
                name,
                fields: mut fs,
            } => {
                fs.extend(fields);
                Arg::Variable {
                    pos,
                    name,
                    fields: fs,
                }
            }
            Arg::Bool(..)
            | Arg::Str(..)
            | Arg::Int(..)
            | Arg::Float(..)
            | Arg::Nil(_)
            | Arg::Dot(_) => {
                return err(
                    chain_pos,
                    format!(
                        "unexpected . after term {}",
                        crate::fmt::quote(&node.describe())
                    ),
                )
            }
            other => Arg::Chain {
                pos: other.pos(),
                base: Box::new(other),
                fields,
            },
        }))
    }

    fn term(&mut self) -> PResult<Option<Arg>> {
        let t = self.next_non_space();
        let pos = t.pos;
        Ok(Some(match t.tok {
            Tok::Ident(name) => match funcs::lookup(&name) {
                Some(func) => Arg::Func { pos, name, func },
                None => {
                    return err(
                        pos,
                        format!("function {} not defined", crate::fmt::quote(&name)),
                    )
                }
            },
            Tok::Dot => Arg::Dot(pos),
            Tok::Keyword(Kw::Nil) => Arg::Nil(pos),
            Tok::Variable(name) => {
                if !self.vars.contains(&name) {
                    return err(
                        pos,
                        format!("undefined variable {}", crate::fmt::quote(&name)),
                    );
                }
                Arg::Variable {
                    pos,
                    name,
                    fields: Vec::new(),
                }
            }
            Tok::Field(name) => Arg::Field {
                pos,
                names: vec![name],
            },
            Tok::Bool(b) => Arg::Bool(pos, b),
            Tok::Number(text) => number(pos, &text)?,
            Tok::CharConst(text) => {
                let c = unquote_char(&text).map_err(|m| ParseError { pos, msg: m })?;
                Arg::Int(pos, i64::from(u32::from(c)))
            }
            Tok::LParen => {
                self.enter(pos)?;
                let pipe = self.pipeline("parenthesized pipeline", &Tok::RParen);
                self.nesting -= 1;
                Arg::Pipe(Box::new(pipe?))
            }
            Tok::Str(raw) => Arg::Str(pos, unquote(&raw).map_err(|m| ParseError { pos, msg: m })?),
            Tok::RawStr(raw) => Arg::Str(pos, unquote_raw(&raw)),
            _ => {
                self.backup();
                return Ok(None);
            }
        }))
    }
}

/// A number literal: ints stay ints, anything with `.`, `e` or `E` (outside hex) is a
/// float64, as Go's `idealConstant` decides.
fn number(pos: usize, text: &str) -> PResult<Arg> {
    let bad = || ParseError {
        pos,
        msg: format!("illegal number syntax: {}", crate::fmt::quote(text)),
    };
    if text.ends_with('i') {
        return err(pos, format!("complex number {text} is not supported"));
    }
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    let is_hex = lower.starts_with("0x");
    if is_hex && lower.contains('p') {
        return err(pos, format!("hexadecimal float {text} is not supported"));
    }
    if !is_hex && (lower.contains('.') || lower.contains('e')) {
        let clean: String = text.chars().filter(|c| *c != '_').collect();
        return clean
            .parse::<f64>()
            .map(|f| Arg::Float(pos, f))
            .map_err(|_| bad());
    }
    let clean: String = lower.chars().filter(|c| *c != '_').collect();
    let (radix, digits) = if let Some(d) = clean.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = clean.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = clean.strip_prefix("0b") {
        (2, d)
    } else if clean.len() > 1 && clean.starts_with('0') {
        (8, &clean[1..])
    } else {
        (10, clean.as_str())
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let mag = u64::from_str_radix(digits, radix).map_err(|_| bad())?;
    let value = if neg {
        0i64.checked_sub_unsigned(mag)
    } else {
        i64::try_from(mag).ok()
    };
    value.map(|v| Arg::Int(pos, v)).ok_or_else(|| ParseError {
        pos,
        msg: format!("{text} overflows int"),
    })
}

/// `strconv.Unquote` for a double-quoted Go string.
pub(crate) fn unquote(raw: &str) -> Result<String, String> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| "invalid syntax".to_owned())?;
    unescape(inner, '"')
}

fn unquote_raw(raw: &str) -> String {
    raw.trim_matches('`')
        .chars()
        .filter(|c| *c != '\r')
        .collect()
}

fn unquote_char(raw: &str) -> Result<char, String> {
    let inner = raw
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .ok_or_else(|| "invalid syntax".to_owned())?;
    let s = unescape(inner, '\'')?;
    let mut it = s.chars();
    match (it.next(), it.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(format!("malformed character constant: {raw}")),
    }
}

fn unescape(s: &str, quote: char) -> Result<String, String> {
    let bad = || "invalid syntax".to_owned();
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == quote {
            return Err(bad());
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = it.next().ok_or_else(bad)?;
        match e {
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\x0b'),
            '\\' => out.push('\\'),
            '\'' | '"' if e == quote => out.push(e),
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = (0..n).filter_map(|_| it.next()).collect();
                if hex.len() != n {
                    return Err(bad());
                }
                let v = u32::from_str_radix(&hex, 16).map_err(|_| bad())?;
                if e == 'x' && v > 0x7f {
                    return Err(format!(
                        "\\x{hex}: byte escapes above \\x7f are not supported (write the character)"
                    ));
                }
                out.push(char::from_u32(v).ok_or_else(bad)?);
            }
            '0'..='7' => {
                let mut oct = String::from(e);
                for _ in 0..2 {
                    match it.next() {
                        Some(d @ '0'..='7') => oct.push(d),
                        _ => return Err(bad()),
                    }
                }
                let v = u32::from_str_radix(&oct, 8).map_err(|_| bad())?;
                if v > 0x7f {
                    return Err(format!(
                        "\\{oct}: byte escapes above \\177 are not supported (write the character)"
                    ));
                }
                out.push(char::from_u32(v).ok_or_else(bad)?);
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perr(s: &str) -> String {
        parse(s).unwrap_err().msg
    }

    #[test]
    fn numbers_follow_go() {
        assert!(matches!(number(0, "42").unwrap(), Arg::Int(_, 42)));
        assert!(matches!(number(0, "-0x1F").unwrap(), Arg::Int(_, -31)));
        assert!(matches!(number(0, "017").unwrap(), Arg::Int(_, 15)));
        assert!(matches!(number(0, "0b101").unwrap(), Arg::Int(_, 5)));
        assert!(matches!(number(0, "1_000").unwrap(), Arg::Int(_, 1000)));
        assert!(matches!(number(0, "1e3").unwrap(), Arg::Float(_, f) if f == 1000.0));
        assert!(matches!(number(0, ".5").unwrap(), Arg::Float(_, f) if f == 0.5));
        assert!(number(0, "08").is_err());
        assert!(number(0, "99999999999999999999").is_err());
    }

    #[test]
    fn strings_follow_go() {
        assert_eq!(
            unquote(r#""a\n\t\\\"\x41\u00e9\101""#).unwrap(),
            "a\n\t\\\"AéA"
        );
        assert!(unquote(r#""\q""#).is_err());
        assert!(unquote(r#""\'""#).is_err());
        assert_eq!(unquote_raw("`a\\n\r\nb`"), "a\\n\nb");
        assert_eq!(unquote_char(r"'\n'").unwrap(), '\n');
        assert_eq!(unquote_char("'é'").unwrap(), 'é');
    }

    #[test]
    fn parse_errors_like_go() {
        assert_eq!(perr("{{foo}}"), r#"function "foo" not defined"#);
        assert_eq!(perr("{{$x}}"), r#"undefined variable "$x""#);
        assert_eq!(perr("{{end}}"), "unexpected {{end}}");
        assert_eq!(perr("{{else}}"), "unexpected {{else}}");
        assert_eq!(
            perr("{{if .}}x"),
            "unexpected EOF: {{if}} has no matching {{end}}"
        );
        assert_eq!(perr("{{break}}"), "{{break}} outside {{range}}");
        assert_eq!(perr("{{$a, $b := 1}}"), "too many declarations in command");
        assert_eq!(
            perr("{{range $k, .}}{{end}}"),
            "range can only initialize variables"
        );
        assert_eq!(
            perr("{{12|false}}"),
            "non executable command in pipeline stage 2"
        );
        assert_eq!(
            perr("{{ ( ) }}"),
            "missing value for parenthesized pipeline"
        );
        assert_eq!(perr("{{true.any}}"), r#"unexpected . after term "true""#);
        assert_eq!(perr("{{if}}{{end}}"), "missing value for if");
        assert_eq!(
            perr("{{range .}}{{else}}{{else}}{{end}}"),
            "expected end; found {{else}}"
        );
        assert_eq!(
            perr(r#"{{printf "a" "b"x}}"#),
            r#"unexpected "x" in operand"#
        );
        assert_eq!(perr("{{.A-}}"), "bad character U+002D '-'");
    }

    #[test]
    fn scopes_end_at_end() {
        assert!(parse("{{if true}}{{$x := 1}}{{end}}{{$x}}").is_err());
        assert!(parse("{{with $x := 1}}{{end}}{{$x}}").is_err());
        assert!(parse("{{range $i, $e := .}}{{$i}}{{$e}}{{end}}").is_ok());
        assert!(parse("{{range $i, $e := .}}{{end}}{{$i}}").is_err());
        assert!(parse("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}").is_ok());
        // As in Go, a variable declared in the if branch is still in scope in its else branch.
        assert!(parse("{{if true}}{{$x := 1}}{{else}}{{$x}}{{end}}").is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep_ifs = "{{if 1}}".repeat(MAX_NESTING + 1) + &"{{end}}".repeat(MAX_NESTING + 1);
        assert_eq!(perr(&deep_ifs), "template nesting exceeds 100 levels");
        let ok_ifs = "{{if 1}}".repeat(MAX_NESTING) + &"{{end}}".repeat(MAX_NESTING);
        assert!(parse(&ok_ifs).is_ok());
        let deep_parens = format!("{{{{{}1{}}}}}", "(".repeat(200), ")".repeat(200));
        assert_eq!(perr(&deep_parens), "template nesting exceeds 100 levels");
    }

    #[test]
    fn definitions() {
        let p = parse(r#"{{define "a"}}A{{end}}x{{block "b" .}}B{{end}}"#).unwrap();
        assert!(p.defs.contains_key("a"));
        assert!(p.defs.contains_key("b"));
        assert!(parse(r#"{{define "a"}}A{{end}}{{define "a"}}B{{end}}"#).is_err());
        assert!(parse(r#"{{if true}}{{define "a"}}A{{end}}{{end}}"#).is_err());
    }
}
