//! Go template lexing: text, `{{…}}` actions, trim markers and comments.
//!
//! This follows Go's `text/template/parse/lex.go` state by state, because whitespace
//! handling is observable in the output: `{{- ` trims all spaces, tabs, CRs and newlines
//! before the action, ` -}}` all after it, and the marker counts only with its space (so
//! `{{-3}}` is the number -3). A lexing error becomes an [`Tok::Error`] token followed by
//! [`Tok::Eof`], so the parser reports errors in source order, as Go does.

/// Keywords of the template language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kw {
    Block,
    Break,
    Continue,
    Define,
    Else,
    End,
    If,
    Nil,
    Range,
    Template,
    With,
}

impl Kw {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kw::Block => "block",
            Kw::Break => "break",
            Kw::Continue => "continue",
            Kw::Define => "define",
            Kw::Else => "else",
            Kw::End => "end",
            Kw::If => "if",
            Kw::Nil => "nil",
            Kw::Range => "range",
            Kw::Template => "template",
            Kw::With => "with",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// Plain text outside actions (already trimmed by neighbouring markers).
    Text(String),
    LeftDelim,
    RightDelim,
    Space,
    /// `$` or `$name` (with the `$`).
    Variable(String),
    /// `.Name` (without the dot).
    Field(String),
    Dot,
    Ident(String),
    Keyword(Kw),
    Bool(bool),
    Number(String),
    /// A character constant, quotes included.
    CharConst(String),
    /// A quoted string, quotes included.
    Str(String),
    /// A raw string, backquotes included.
    RawStr(String),
    /// Any other printable ASCII character (`,` in `range $i, $v :=`).
    Char(char),
    Pipe,
    LParen,
    RParen,
    Assign,
    Declare,
    Error(String),
    Eof,
}

#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    /// Byte offset in the template text.
    pub(crate) pos: usize,
}

const LEFT: &str = "{{";
const RIGHT: &str = "}}";

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphabetic() || c.is_numeric()
}

fn has_left_trim(s: &str) -> bool {
    let mut it = s.chars();
    it.next() == Some('-') && it.next().is_some_and(is_space)
}

fn has_right_trim(s: &str) -> bool {
    let mut it = s.chars();
    it.next().is_some_and(is_space) && it.next() == Some('-')
}

pub(crate) fn lex(src: &str) -> Vec<Token> {
    let mut l = Lexer {
        src,
        pos: 0,
        out: Vec::new(),
        paren_depth: 0,
    };
    l.run();
    l.out
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    out: Vec<Token>,
    paren_depth: i32,
}

impl Lexer<'_> {
    fn emit(&mut self, tok: Tok, pos: usize) {
        self.out.push(Token { tok, pos });
    }

    fn fail(&mut self, msg: String, pos: usize) {
        self.emit(Tok::Error(msg), pos);
        self.emit(Tok::Eof, self.src.len());
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn run(&mut self) {
        loop {
            let Some(x) = self.rest().find(LEFT) else {
                if self.pos < self.src.len() {
                    self.emit(Tok::Text(self.rest().to_owned()), self.pos);
                }
                self.emit(Tok::Eof, self.src.len());
                return;
            };
            let delim = self.pos + x;
            let mut text_end = delim;
            if has_left_trim(&self.src[delim + LEFT.len()..]) {
                text_end = self.pos + self.src[self.pos..delim].trim_end_matches(is_space).len();
            }
            if text_end > self.pos {
                self.emit(Tok::Text(self.src[self.pos..text_end].to_owned()), self.pos);
            }
            self.pos = delim;
            if !self.left_delim() {
                return;
            }
        }
    }

    /// After `{{`: a comment, or an action up to `}}`. False when lexing stopped on an error.
    fn left_delim(&mut self) -> bool {
        let open = self.pos;
        self.pos += LEFT.len();
        let after = if has_left_trim(self.rest()) { 2 } else { 0 };
        if self.src[self.pos + after..].starts_with("/*") {
            self.pos += after;
            return self.comment(open);
        }
        self.emit(Tok::LeftDelim, open);
        self.pos += after;
        self.paren_depth = 0;
        self.inside_action(open)
    }

    fn comment(&mut self, open: usize) -> bool {
        self.pos += 2;
        let Some(x) = self.rest().find("*/") else {
            self.fail("unclosed comment".to_owned(), open);
            return false;
        };
        self.pos += x + 2;
        let (delim, trim) = self.at_right_delim();
        if !delim {
            self.fail("comment ends before closing delimiter".to_owned(), open);
            return false;
        }
        if trim {
            self.pos += 2;
        }
        self.pos += RIGHT.len();
        if trim {
            self.skip_spaces();
        }
        true
    }

    fn at_right_delim(&self) -> (bool, bool) {
        let r = self.rest();
        if has_right_trim(r) && r[2..].starts_with(RIGHT) {
            return (true, true);
        }
        (r.starts_with(RIGHT), false)
    }

    fn at_terminator(&self) -> bool {
        match self.peek() {
            None => true,
            Some(c) if is_space(c) => true,
            Some('.' | ',' | '|' | ':' | ')' | '(') => true,
            _ => self.rest().starts_with(RIGHT),
        }
    }

    fn inside_action(&mut self, open: usize) -> bool {
        loop {
            let (delim, trim) = self.at_right_delim();
            if delim {
                if self.paren_depth != 0 {
                    self.fail("unclosed left paren".to_owned(), self.pos);
                    return false;
                }
                if trim {
                    self.pos += 2;
                }
                self.emit(Tok::RightDelim, self.pos);
                self.pos += RIGHT.len();
                if trim {
                    self.skip_spaces();
                }
                return true;
            }
            let start = self.pos;
            let Some(c) = self.bump() else {
                self.fail("unclosed action".to_owned(), open);
                return false;
            };
            match c {
                c if is_space(c) => {
                    let mut n = 1;
                    while self.peek().is_some_and(is_space) {
                        self.pos += 1;
                        n += 1;
                    }
                    // A trim-marked right delimiter starts with a space: leave it to the
                    // delimiter check.
                    if self.rest().starts_with("-}}") {
                        self.pos -= 1;
                        if n == 1 {
                            continue;
                        }
                    }
                    self.emit(Tok::Space, start);
                }
                '=' => self.emit(Tok::Assign, start),
                ':' => {
                    if self.bump() != Some('=') {
                        self.fail("expected :=".to_owned(), start);
                        return false;
                    }
                    self.emit(Tok::Declare, start);
                }
                '|' => self.emit(Tok::Pipe, start),
                '"' => {
                    if !self.quoted(start, '"', "unterminated quoted string") {
                        return false;
                    }
                }
                '\'' => {
                    if !self.quoted(start, '\'', "unterminated character constant") {
                        return false;
                    }
                }
                '`' => match self.rest().find('`') {
                    Some(x) => {
                        self.pos += x + 1;
                        self.emit(Tok::RawStr(self.src[start..self.pos].to_owned()), start);
                    }
                    None => {
                        self.fail("unterminated raw quoted string".to_owned(), start);
                        return false;
                    }
                },
                '$' => {
                    if !self.field_or_variable(start, true) {
                        return false;
                    }
                }
                '.' => {
                    if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.pos = start;
                        if !self.number(start) {
                            return false;
                        }
                    } else if !self.field_or_variable(start, false) {
                        return false;
                    }
                }
                '+' | '-' | '0'..='9' => {
                    self.pos = start;
                    if !self.number(start) {
                        return false;
                    }
                }
                c if is_alnum(c) => {
                    while self.peek().is_some_and(is_alnum) {
                        self.bump();
                    }
                    if !self.at_terminator() {
                        let bad = self.peek().unwrap_or(' ');
                        self.fail(format!("bad character {}", unicode_name(bad)), self.pos);
                        return false;
                    }
                    let word = &self.src[start..self.pos];
                    let tok = match word {
                        "block" => Tok::Keyword(Kw::Block),
                        "break" => Tok::Keyword(Kw::Break),
                        "continue" => Tok::Keyword(Kw::Continue),
                        "define" => Tok::Keyword(Kw::Define),
                        "else" => Tok::Keyword(Kw::Else),
                        "end" => Tok::Keyword(Kw::End),
                        "if" => Tok::Keyword(Kw::If),
                        "nil" => Tok::Keyword(Kw::Nil),
                        "range" => Tok::Keyword(Kw::Range),
                        "template" => Tok::Keyword(Kw::Template),
                        "with" => Tok::Keyword(Kw::With),
                        "true" => Tok::Bool(true),
                        "false" => Tok::Bool(false),
                        _ => Tok::Ident(word.to_owned()),
                    };
                    self.emit(tok, start);
                }
                '(' => {
                    self.emit(Tok::LParen, start);
                    self.paren_depth += 1;
                }
                ')' => {
                    self.emit(Tok::RParen, start);
                    self.paren_depth -= 1;
                    if self.paren_depth < 0 {
                        self.fail("unexpected right paren".to_owned(), start);
                        return false;
                    }
                }
                c if c.is_ascii() && !c.is_ascii_control() => self.emit(Tok::Char(c), start),
                c => {
                    self.fail(
                        format!("unrecognized character in action: {}", unicode_name(c)),
                        start,
                    );
                    return false;
                }
            }
        }
    }

    fn quoted(&mut self, start: usize, q: char, unterminated: &str) -> bool {
        loop {
            match self.bump() {
                Some('\\') => match self.bump() {
                    Some(c) if c != '\n' => {}
                    _ => {
                        self.fail(unterminated.to_owned(), start);
                        return false;
                    }
                },
                None | Some('\n') => {
                    self.fail(unterminated.to_owned(), start);
                    return false;
                }
                Some(c) if c == q => break,
                Some(_) => {}
            }
        }
        let text = self.src[start..self.pos].to_owned();
        let tok = if q == '"' {
            Tok::Str(text)
        } else {
            Tok::CharConst(text)
        };
        self.emit(tok, start);
        true
    }

    /// `$name` / `.Name` (the sigil already consumed).
    fn field_or_variable(&mut self, start: usize, var: bool) -> bool {
        if self.at_terminator() {
            let tok = if var {
                Tok::Variable("$".to_owned())
            } else {
                Tok::Dot
            };
            self.emit(tok, start);
            return true;
        }
        while self.peek().is_some_and(is_alnum) {
            self.bump();
        }
        if !self.at_terminator() {
            let bad = self.peek().unwrap_or(' ');
            self.fail(format!("bad character {}", unicode_name(bad)), self.pos);
            return false;
        }
        let word = &self.src[start..self.pos];
        let tok = if var {
            Tok::Variable(word.to_owned())
        } else {
            Tok::Field(word[1..].to_owned())
        };
        self.emit(tok, start);
        true
    }

    /// Go's `scanNumber`: the literal's text is validated later by the parser.
    fn number(&mut self, start: usize) -> bool {
        let accept = |l: &mut Self, set: &str| -> bool {
            match l.peek() {
                Some(c) if set.contains(c) => {
                    l.bump();
                    true
                }
                _ => false,
            }
        };
        let accept_run = |l: &mut Self, set: &str| {
            while l.peek().is_some_and(|c| set.contains(c)) {
                l.bump();
            }
        };
        accept(self, "+-");
        let mut digits = "0123456789_";
        if accept(self, "0") {
            if accept(self, "xX") {
                digits = "0123456789abcdefABCDEF_";
            } else if accept(self, "oO") {
                digits = "01234567_";
            } else if accept(self, "bB") {
                digits = "01_";
            }
        }
        accept_run(self, digits);
        if accept(self, ".") {
            accept_run(self, digits);
        }
        if digits.len() == 11 && accept(self, "eE") {
            accept(self, "+-");
            accept_run(self, "0123456789_");
        }
        if digits.len() == 23 && accept(self, "pP") {
            accept(self, "+-");
            accept_run(self, "0123456789_");
        }
        accept(self, "i");
        if self.peek().is_some_and(is_alnum) {
            self.bump();
            let text = &self.src[start..self.pos];
            self.fail(
                format!("bad number syntax: {}", crate::fmt::quote(text)),
                start,
            );
            return false;
        }
        let text = &self.src[start..self.pos];
        // A lone sign is not a number.
        if text == "+" || text == "-" {
            self.fail(
                format!("bad number syntax: {}", crate::fmt::quote(text)),
                start,
            );
            return false;
        }
        self.emit(Tok::Number(text.to_owned()), start);
        true
    }
}

/// Go's `%#U`: `U+0007` (with the character when printable).
fn unicode_name(c: char) -> String {
    if c.is_control() {
        format!("U+{:04X}", c as u32)
    } else {
        format!("U+{:04X} '{c}'", c as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn text_and_action() {
        assert_eq!(
            toks("a{{.B}}c"),
            vec![
                Tok::Text("a".into()),
                Tok::LeftDelim,
                Tok::Field("B".into()),
                Tok::RightDelim,
                Tok::Text("c".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn trim_markers_need_their_space() {
        assert_eq!(
            toks("a \n{{- 3 -}}\n b"),
            vec![
                Tok::Text("a".into()),
                Tok::LeftDelim,
                Tok::Number("3".into()),
                Tok::RightDelim,
                Tok::Text("b".into()),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("a {{-3}} b"),
            vec![
                Tok::Text("a ".into()),
                Tok::LeftDelim,
                Tok::Number("-3".into()),
                Tok::RightDelim,
                Tok::Text(" b".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn comments_vanish_and_trim() {
        assert_eq!(
            toks("a  {{- /* x\ny */ -}}  b"),
            vec![Tok::Text("a".into()), Tok::Text("b".into()), Tok::Eof]
        );
        assert!(matches!(toks("{{/* x */ }}")[0], Tok::Error(_)));
        assert!(matches!(toks("{{/* x")[0], Tok::Error(_)));
    }

    #[test]
    fn literals_and_operators() {
        assert_eq!(
            toks(r#"{{$x := "a\"b" | f `r` 'c' 0x1F 1.5e3 true nil}}"#),
            vec![
                Tok::LeftDelim,
                Tok::Variable("$x".into()),
                Tok::Space,
                Tok::Declare,
                Tok::Space,
                Tok::Str(r#""a\"b""#.into()),
                Tok::Space,
                Tok::Pipe,
                Tok::Space,
                Tok::Ident("f".into()),
                Tok::Space,
                Tok::RawStr("`r`".into()),
                Tok::Space,
                Tok::CharConst("'c'".into()),
                Tok::Space,
                Tok::Number("0x1F".into()),
                Tok::Space,
                Tok::Number("1.5e3".into()),
                Tok::Space,
                Tok::Bool(true),
                Tok::Space,
                Tok::Keyword(Kw::Nil),
                Tok::RightDelim,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn errors() {
        let err = |s: &str| {
            lex(s)
                .into_iter()
                .find_map(|t| match t.tok {
                    Tok::Error(m) => Some((m, t.pos)),
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(err("ab{{ .X "), ("unclosed action".into(), 2));
        assert_eq!(err("{{ \"abc }}").0, "unterminated quoted string");
        assert_eq!(err("{{ ) }}").0, "unexpected right paren");
        assert_eq!(err("{{ (a }}").0, "unclosed left paren");
        assert_eq!(err("{{ 3x }}").0, r#"bad number syntax: "3x""#);
        assert_eq!(err("{{ a: }}").0, "expected :=");
    }
}
