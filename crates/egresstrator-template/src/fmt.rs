//! Go's `fmt` for template values: `print`, `println`, `printf` and how an action prints.
//!
//! Templates print numbers into firewall rules (`--dport {{$port}}`), so a float or an int
//! must come out exactly as Go writes it. This module reproduces `fmt.Sprint`,
//! `fmt.Sprintln` and `fmt.Sprintf` (verbs `%v %s %d %q %x %X %o %b %c %U %e %f %g %t %T
//! %%`, flags `+ - # 0 space`, width, precision, `*` and `[n]` argument indexes) and
//! `strconv.Quote`, for the values of [`crate::value`].

use std::fmt::Write as _;

use crate::value::Value;

/// How a top-level action prints a value (`{{.}}`): Go's `printValue`, which shows a
/// missing value as `<no value>` and dereferences records.
pub(crate) fn action_string(v: &Value) -> String {
    match v {
        Value::Nil => "<no value>".to_owned(),
        Value::Str(s) => s.to_string(),
        _ => {
            let mut out = String::new();
            write_value(&mut out, v, 'v', &Spec::default(), Depth::Top(false));
            out
        }
    }
}

/// `fmt.Sprint`: operands printed with `%v`, a space between two operands when neither is
/// a string.
pub(crate) fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    let mut prev_string = false;
    for (i, a) in args.iter().enumerate() {
        let is_string = matches!(a, Value::Str(_));
        if i > 0 && !is_string && !prev_string {
            out.push(' ');
        }
        write_value(&mut out, a, 'v', &Spec::default(), Depth::Top(true));
        prev_string = is_string;
    }
    out
}

/// `fmt.Sprintln`: operands printed with `%v`, always separated by a space, then a newline.
pub(crate) fn sprintln(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_value(&mut out, a, 'v', &Spec::default(), Depth::Top(true));
    }
    out.push('\n');
    out
}

/// `strconv.Quote`.
pub(crate) fn quote(s: &str) -> String {
    quote_with(s, '"', false)
}

fn quote_with(s: &str, q: char, ascii_only: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        push_quoted_char(&mut out, c, q, ascii_only);
    }
    out.push(q);
    out
}

fn push_quoted_char(out: &mut String, c: char, q: char, ascii_only: bool) {
    if c == q || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if is_print(c) && (!ascii_only || c.is_ascii()) {
        out.push(c);
        return;
    }
    match c {
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c == '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// An approximation of Go's `unicode.IsPrint`: no controls, and no spaces but U+0020.
fn is_print(c: char) -> bool {
    !c.is_control() && (c == ' ' || !c.is_whitespace()) && c != '\u{feff}'
}

/// One parsed `%` directive's flags, width and precision.
#[derive(Clone, Default)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// Whether a value is printed at the top (records as `&{…}` inside print functions, `{…}`
/// by an action) or nested in a list or map.
#[derive(Clone, Copy)]
enum Depth {
    Top(bool),
    Nested,
}

/// `fmt.Sprintf`.
pub(crate) fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut argi = 0usize;
    let mut reordered = false;
    let chars: Vec<char> = format.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '%' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        let mut spec = Spec::default();
        // Flags.
        while i < chars.len() {
            match chars[i] {
                '-' => {
                    spec.minus = true;
                    spec.zero = false;
                }
                '+' => spec.plus = true,
                '#' => spec.sharp = true,
                ' ' => spec.space = true,
                '0' => spec.zero = !spec.minus,
                _ => break,
            }
            i += 1;
        }
        // Argument index, width.
        parse_arg_index(&chars, &mut i, &mut argi, &mut reordered, args.len());
        if i < chars.len() && chars[i] == '*' {
            i += 1;
            match args.get(argi) {
                // Go's `intFromArg`: a width beyond ±1e6 is BADWIDTH, not a huge padding.
                Some(Value::Int(n)) if n.unsigned_abs() <= MAX_NUM as u64 => {
                    argi += 1;
                    if *n < 0 {
                        spec.minus = true;
                        spec.zero = false;
                    }
                    spec.width = Some(n.unsigned_abs() as usize);
                }
                _ => {
                    argi += 1;
                    out.push_str("%!(BADWIDTH)");
                }
            }
        } else {
            spec.width = parse_num(&chars, &mut i);
        }
        // Precision.
        if i < chars.len() && chars[i] == '.' {
            i += 1;
            parse_arg_index(&chars, &mut i, &mut argi, &mut reordered, args.len());
            if i < chars.len() && chars[i] == '*' {
                i += 1;
                match args.get(argi) {
                    Some(Value::Int(n)) if *n >= 0 && n.unsigned_abs() <= MAX_NUM as u64 => {
                        argi += 1;
                        spec.prec = Some(*n as usize);
                    }
                    _ => {
                        argi += 1;
                        out.push_str("%!(BADPREC)");
                    }
                }
            } else {
                spec.prec = Some(parse_num(&chars, &mut i).unwrap_or(0));
            }
        }
        parse_arg_index(&chars, &mut i, &mut argi, &mut reordered, args.len());
        let Some(&verb) = chars.get(i) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(argi) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        argi += 1;
        if verb == 'T' {
            pad(&mut out, arg.type_name(), &spec);
            continue;
        }
        write_value(&mut out, arg, verb, &spec, Depth::Top(true));
    }
    if !reordered && argi < args.len() {
        out.push_str("%!(EXTRA ");
        for (n, a) in args[argi..].iter().enumerate() {
            if n > 0 {
                out.push_str(", ");
            }
            out.push_str(a.type_name());
            out.push('=');
            write_value(&mut out, a, 'v', &Spec::default(), Depth::Top(true));
        }
        out.push(')');
    }
    out
}

fn parse_num(chars: &[char], i: &mut usize) -> Option<usize> {
    let start = *i;
    let mut n: usize = 0;
    while *i < chars.len() && chars[*i].is_ascii_digit() {
        n = n
            .saturating_mul(10)
            .saturating_add(chars[*i] as usize - '0' as usize);
        *i += 1;
    }
    (*i > start).then_some(n.min(MAX_NUM))
}

/// The largest width or precision (Go's `fmt` calls anything beyond ±1e6 "too large").
const MAX_NUM: usize = 1_000_000;

/// `[n]` explicit argument indexes (1-based), as Go's `argNumber`.
fn parse_arg_index(
    chars: &[char],
    i: &mut usize,
    argi: &mut usize,
    reordered: &mut bool,
    nargs: usize,
) {
    if *i >= chars.len() || chars[*i] != '[' {
        return;
    }
    let mut j = *i + 1;
    let n = parse_num(chars, &mut j);
    if j < chars.len() && chars[j] == ']' {
        if let Some(n) = n.filter(|n| *n >= 1 && *n <= nargs) {
            *argi = n - 1;
            *reordered = true;
            *i = j + 1;
            return;
        }
    }
    // A bad index: Go prints %!(BADINDEX); point past every argument so the verb reports it.
    *reordered = true;
    *argi = usize::MAX / 2;
    *i = if j < chars.len() && chars[j] == ']' {
        j + 1
    } else {
        j
    };
}

/// Pads `s` to the spec's width (rune count), left or right.
fn pad(out: &mut String, s: &str, spec: &Spec) {
    let n = s.chars().count();
    let w = spec.width.unwrap_or(0);
    if n >= w {
        out.push_str(s);
        return;
    }
    let fill = w - n;
    if spec.minus {
        out.push_str(s);
        out.extend(std::iter::repeat_n(' ', fill));
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(s);
    }
}

fn pad_float(out: &mut String, s: &str, spec: &Spec) {
    // Go pads infinities and NaN with spaces even with the 0 flag.
    if s.ends_with("Inf") || s.ends_with("NaN") {
        let mut sp = spec.clone();
        sp.zero = false;
        return pad(out, s, &sp);
    }
    let w = spec.width.unwrap_or(0);
    let n = s.chars().count();
    if spec.zero && !spec.minus && n < w {
        let (sign, digits) = match s.chars().next() {
            Some(c @ ('+' | '-' | ' ')) => (Some(c), &s[1..]),
            _ => (None, s),
        };
        if let Some(c) = sign {
            out.push(c);
        }
        out.extend(std::iter::repeat_n('0', w - n));
        out.push_str(digits);
        return;
    }
    pad(out, s, spec);
}

fn bad_verb(out: &mut String, v: &Value, verb: char) {
    let _ = write!(out, "%!{verb}(");
    match v {
        Value::Nil => out.push_str("<nil>"),
        _ => {
            out.push_str(v.type_name());
            out.push('=');
            write_value(out, v, 'v', &Spec::default(), Depth::Top(true));
        }
    }
    out.push(')');
}

fn write_value(out: &mut String, v: &Value, verb: char, spec: &Spec, depth: Depth) {
    match v {
        Value::Nil => match verb {
            'v' => pad(out, "<nil>", spec),
            _ => bad_verb(out, v, verb),
        },
        Value::Bool(b) => match verb {
            'v' | 't' => pad(out, if *b { "true" } else { "false" }, spec),
            _ => bad_verb(out, v, verb),
        },
        Value::Int(n) => write_int(out, *n, verb, spec, v),
        Value::Float(f) => write_float(out, *f, verb, spec, v),
        Value::Str(s) => write_str(out, s, verb, spec, v),
        Value::List(items) => {
            let mut inner = String::from("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    inner.push(' ');
                }
                write_value(&mut inner, item, verb, &Spec::default(), Depth::Nested);
            }
            inner.push(']');
            pad(out, &inner, spec);
        }
        Value::Map(m) => {
            let mut inner = String::from("map[");
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    inner.push(' ');
                }
                write_str(&mut inner, k, verb, &Spec::default(), &Value::Nil);
                inner.push(':');
                write_value(&mut inner, item, verb, &Spec::default(), Depth::Nested);
            }
            inner.push(']');
            pad(out, &inner, spec);
        }
        Value::KeyPair(_) | Value::Service(_) | Value::CatalogService(_) => {
            let amp = !matches!(depth, Depth::Top(false));
            let mut inner = String::new();
            if amp {
                inner.push('&');
            }
            inner.push('{');
            let fields: &[&str] = match v {
                Value::KeyPair(_) => &[
                    "Path",
                    "Key",
                    "Value",
                    "CreateIndex",
                    "ModifyIndex",
                    "LockIndex",
                    "Flags",
                    "Session",
                ],
                Value::Service(_) => &[
                    "Node",
                    "NodeID",
                    "NodeAddress",
                    "NodeMeta",
                    "ServiceMeta",
                    "Address",
                    "ID",
                    "Name",
                    "Tags",
                    "Status",
                    "Port",
                ],
                _ => &["Name", "Tags"],
            };
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    inner.push(' ');
                }
                if let Ok(Some(fv)) = v.field(f) {
                    write_value(&mut inner, &fv, 'v', &Spec::default(), Depth::Nested);
                }
            }
            inner.push('}');
            pad(out, &inner, spec);
        }
    }
}

fn write_str(out: &mut String, s: &str, verb: char, spec: &Spec, v: &Value) {
    match verb {
        'v' if spec.sharp => pad(out, &quote(s), spec),
        'v' | 's' => {
            let s = truncate(s, spec.prec);
            pad(out, s, spec)
        }
        'q' => {
            let s = truncate(s, spec.prec);
            let q = if spec.sharp && !s.contains('`') {
                format!("`{s}`")
            } else {
                quote_with(s, '"', spec.plus)
            };
            pad(out, &q, spec)
        }
        'x' | 'X' => {
            let s = truncate(s, spec.prec);
            let mut h = String::new();
            for (i, b) in s.bytes().enumerate() {
                if spec.space && i > 0 {
                    h.push(' ');
                }
                if spec.sharp && (spec.space || i == 0) {
                    h.push_str(if verb == 'x' { "0x" } else { "0X" });
                }
                if verb == 'x' {
                    let _ = write!(h, "{b:02x}");
                } else {
                    let _ = write!(h, "{b:02X}");
                }
            }
            pad(out, &h, spec)
        }
        _ => bad_verb(out, v, verb),
    }
}

fn truncate(s: &str, prec: Option<usize>) -> &str {
    match prec {
        Some(p) => match s.char_indices().nth(p) {
            Some((i, _)) => &s[..i],
            None => s,
        },
        None => s,
    }
}

fn write_int(out: &mut String, n: i64, verb: char, spec: &Spec, v: &Value) {
    let neg = n < 0;
    let mag = n.unsigned_abs();
    let (digits, prefix) = match verb {
        'v' | 'd' => (mag.to_string(), ""),
        'b' => (format!("{mag:b}"), if spec.sharp { "0b" } else { "" }),
        'o' => (format!("{mag:o}"), if spec.sharp { "0" } else { "" }),
        'O' => (format!("{mag:o}"), "0o"),
        'x' => (format!("{mag:x}"), if spec.sharp { "0x" } else { "" }),
        'X' => (format!("{mag:X}"), if spec.sharp { "0X" } else { "" }),
        'c' => {
            let c = u32::try_from(n)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{fffd}');
            return pad(out, &c.to_string(), spec);
        }
        'q' => {
            let c = u32::try_from(n)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{fffd}');
            let mut q = String::from("'");
            push_quoted_char(&mut q, c, '\'', spec.plus);
            q.push('\'');
            return pad(out, &q, spec);
        }
        'U' => {
            let mut s = format!("U+{mag:04X}");
            if spec.sharp {
                if let Some(c) = u32::try_from(n).ok().and_then(char::from_u32) {
                    if is_print(c) {
                        let _ = write!(s, " '{c}'");
                    }
                }
            }
            return pad(out, &s, spec);
        }
        'e' | 'E' | 'f' | 'F' | 'g' | 'G' => return bad_verb(out, v, verb),
        _ => return bad_verb(out, v, verb),
    };
    // Precision is a minimum number of digits; precision 0 prints nothing for 0.
    let digits = match spec.prec {
        Some(0) if mag == 0 => String::new(),
        Some(p) if digits.len() < p => format!("{}{}", "0".repeat(p - digits.len()), digits),
        _ => digits,
    };
    let sign = if neg {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    let s = format!("{sign}{prefix}{digits}");
    if spec.zero && !spec.minus && spec.prec.is_none() {
        let w = spec.width.unwrap_or(0);
        let n = s.chars().count();
        if n < w {
            out.push_str(sign);
            out.push_str(prefix);
            out.extend(std::iter::repeat_n('0', w - n));
            out.push_str(&digits);
            return;
        }
    }
    pad(out, &s, spec);
}

fn write_float(out: &mut String, f: f64, verb: char, spec: &Spec, v: &Value) {
    let body = match verb {
        'v' | 'g' | 'G' => format_g(f, spec.prec, spec.sharp),
        'e' | 'E' => format_e(f, spec.prec.unwrap_or(6)),
        'f' | 'F' => format_f(f, spec.prec.unwrap_or(6)),
        _ => return bad_verb(out, v, verb),
    };
    let mut body = if matches!(verb, 'E' | 'G') {
        body.to_uppercase()
    } else {
        body
    };
    if !body.starts_with('-') && !body.starts_with('+') {
        if spec.plus {
            body.insert(0, '+');
        } else if spec.space {
            body.insert(0, ' ');
        }
    }
    pad_float(out, &body, spec);
}

/// Decimal digits of a float: `0.d1d2d3… × 10^dp`, without trailing zeros.
struct Digits {
    neg: bool,
    d: Vec<u8>,
    dp: i32,
}

/// Parses Rust's `{:e}` output (`-1.2345e-7`) into digits.
fn digits_from_exp(s: &str) -> Digits {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut d: Vec<u8> = mant
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    while d.last() == Some(&0) {
        d.pop();
    }
    let lead_zeros = d.iter().take_while(|x| **x == 0).count();
    d.drain(..lead_zeros);
    let dp = if d.is_empty() { 0 } else { exp + 1 };
    Digits { neg, d, dp }
}

fn special(f: f64) -> Option<String> {
    if f.is_nan() {
        Some("NaN".to_owned())
    } else if f.is_infinite() {
        Some(if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned())
    } else {
        None
    }
}

/// `strconv.FormatFloat(f, 'g', prec, 64)`; `None` is the shortest representation.
fn format_g(f: f64, prec: Option<usize>, sharp: bool) -> String {
    if let Some(s) = special(f) {
        return s;
    }
    let (digs, shortest, mut prec) = match prec {
        None => {
            let d = digits_from_exp(&format!("{f:e}"));
            let n = d.d.len();
            (d, true, n)
        }
        Some(p) => {
            let p = p.max(1);
            // Digits past EXACT_DIGITS are zeros, which `fmt_e` and `fmt_f` add back.
            let d = digits_from_exp(&format!("{:.*e}", (p - 1).min(EXACT_DIGITS), f));
            (d, false, p)
        }
    };
    let nd = digs.d.len() as i32;
    let mut eprec = prec as i32;
    if eprec > nd && nd >= digs.dp {
        eprec = nd;
    }
    if shortest {
        eprec = 6;
    }
    let exp = digs.dp - 1;
    if sharp {
        // %#g keeps trailing zeros; rare in templates: fall back to Rust's formatting.
        return exp_string(f, prec.saturating_sub(1));
    }
    if exp < -4 || exp >= eprec {
        if prec as i32 > nd {
            prec = nd.max(0) as usize;
        }
        return fmt_e(&digs, prec.saturating_sub(1));
    }
    if prec as i32 > digs.dp {
        prec = nd.max(0) as usize;
    }
    fmt_f(&digs, (prec as i32 - digs.dp).max(0) as usize)
}

fn format_e(f: f64, prec: usize) -> String {
    if let Some(s) = special(f) {
        return s;
    }
    let digs = digits_from_exp(&format!("{:.*e}", prec.min(EXACT_DIGITS), f));
    fmt_e(&digs, prec)
}

fn format_f(f: f64, prec: usize) -> String {
    if let Some(s) = special(f) {
        return s;
    }
    let mut s = format!("{:.*}", prec.min(EXACT_DECIMALS), f);
    s.extend(std::iter::repeat_n(
        '0',
        prec.saturating_sub(EXACT_DECIMALS),
    ));
    s
}

// Rust's formatting panics on a precision above `u16::MAX`, and Go's allows up to 1e6
// (`MAX_NUM`). An f64 is a binary fraction, so its exact decimal value ends: at most 767
// significant digits, and at most 1074 digits after the point (the smallest subnormal,
// 2^-1074). Formatting with these many is exact; every further digit is a zero.

/// Significant digits after the first that make any finite f64 exact in `{:e}` form.
const EXACT_DIGITS: usize = 800;
/// Digits after the point that make any finite f64 exact in `{:.N}` form.
const EXACT_DECIMALS: usize = 1100;

/// `format!("{:.*e}", prec, f)` for any precision of a finite `f`.
fn exp_string(f: f64, prec: usize) -> String {
    let mut s = format!("{:.*e}", prec.min(EXACT_DIGITS), f);
    if prec > EXACT_DIGITS {
        if let Some(e) = s.find('e') {
            s.insert_str(e, &"0".repeat(prec - EXACT_DIGITS));
        }
    }
    s
}

fn fmt_e(d: &Digits, prec: usize) -> String {
    let mut s = String::new();
    if d.neg {
        s.push('-');
    }
    let digit = |i: usize| d.d.get(i).map(|x| (b'0' + x) as char).unwrap_or('0');
    s.push(digit(0));
    if prec > 0 {
        s.push('.');
        for i in 1..=prec {
            s.push(digit(i));
        }
    }
    let exp = if d.d.is_empty() { 0 } else { d.dp - 1 };
    let _ = write!(
        s,
        "e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.unsigned_abs()
    );
    s
}

fn fmt_f(d: &Digits, prec: usize) -> String {
    let mut s = String::new();
    if d.neg {
        s.push('-');
    }
    let digit = |i: i32| {
        if i < 0 {
            '0'
        } else {
            d.d.get(i as usize)
                .map(|x| (b'0' + x) as char)
                .unwrap_or('0')
        }
    };
    if d.dp > 0 {
        for i in 0..d.dp {
            s.push(digit(i));
        }
    } else {
        s.push('0');
    }
    if prec > 0 {
        s.push('.');
        for i in 0..prec as i32 {
            s.push(digit(d.dp + i));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(format: &str, args: Vec<Value>) -> String {
        sprintf(format, &args)
    }

    #[test]
    fn floats_print_like_go() {
        let p = |x: f64| action_string(&Value::Float(x));
        assert_eq!(p(1.0), "1");
        assert_eq!(p(1.5), "1.5");
        assert_eq!(p(0.1), "0.1");
        assert_eq!(p(100000.0), "100000");
        assert_eq!(p(1000000.0), "1e+06");
        assert_eq!(p(1234567.0), "1.234567e+06");
        assert_eq!(p(0.0001), "0.0001");
        assert_eq!(p(0.00001), "1e-05");
        assert_eq!(p(-2.5), "-2.5");
        assert_eq!(p(0.0), "0");
        assert_eq!(p(f64::INFINITY), "+Inf");
        assert_eq!(p(f64::NAN), "NaN");
    }

    #[test]
    fn printf_verbs() {
        assert_eq!(f("%s-%d", vec!["a".into(), 3.into()]), "a-3");
        assert_eq!(f("%v %v", vec![true.into(), Value::Nil]), "true <nil>");
        assert_eq!(f("%q", vec!["a\"b\n".into()]), r#""a\"b\n""#);
        assert_eq!(f("%x %X", vec![255.into(), "hi".into()]), "ff 6869");
        assert_eq!(f("%#x", vec![255.into()]), "0xff");
        assert_eq!(f("%o %b", vec![8.into(), 5.into()]), "10 101");
        assert_eq!(f("%c%c", vec![104.into(), 105.into()]), "hi");
        assert_eq!(f("%q", vec![97.into()]), "'a'");
        assert_eq!(f("%U", vec![0x41.into()]), "U+0041");
        assert_eq!(f("%t", vec![false.into()]), "false");
        assert_eq!(f("100%%", vec![]), "100%");
        assert_eq!(f("%T %T", vec![1.into(), "s".into()]), "int string");
    }

    #[test]
    fn printf_width_precision_flags() {
        assert_eq!(f("[%5d]", vec![42.into()]), "[   42]");
        assert_eq!(f("[%-5d]", vec![42.into()]), "[42   ]");
        assert_eq!(f("[%05d]", vec![(-42).into()]), "[-0042]");
        assert_eq!(f("[%+d]", vec![42.into()]), "[+42]");
        assert_eq!(f("[%6s]", vec!["ab".into()]), "[    ab]");
        assert_eq!(f("[%-6s]", vec!["ab".into()]), "[ab    ]");
        assert_eq!(f("[%.2s]", vec!["abcdef".into()]), "[ab]");
        assert_eq!(f("[%.2f]", vec![1.23456.into()]), "[1.23]");
        assert_eq!(f("[%8.3f]", vec![1.23456.into()]), "[   1.235]");
        assert_eq!(f("[%08.3f]", vec![(-1.23456).into()]), "[-001.235]");
        assert_eq!(f("[%e]", vec![1234.5678.into()]), "[1.234568e+03]");
        assert_eq!(f("[%g]", vec![1234.5678.into()]), "[1234.5678]");
        assert_eq!(f("[%.3g]", vec![1234.5678.into()]), "[1.23e+03]");
        assert_eq!(f("[%*d]", vec![4.into(), 7.into()]), "[   7]");
        assert_eq!(f("[%.3d]", vec![7.into()]), "[007]");
        assert_eq!(f("%[2]s %[1]s", vec!["a".into(), "b".into()]), "b a");
    }

    #[test]
    fn printf_errors_like_go() {
        assert_eq!(f("%d", vec![]), "%!d(MISSING)");
        assert_eq!(f("%d", vec!["x".into()]), "%!d(string=x)");
        assert_eq!(f("%s", vec![5.into()]), "%!s(int=5)");
        assert_eq!(f("a", vec![1.into()]), "a%!(EXTRA int=1)");
        assert_eq!(f("%", vec![]), "%!(NOVERB)");
        assert_eq!(f("%d", vec![Value::Nil]), "%!d(<nil>)");
    }

    /// Regression (fuzz target `template`): a precision above 65535 reached Rust's
    /// `format!`, which panics on it ("Formatting argument out of range"), so
    /// `{{printf "%.70000f" 1.5}}` took the agent's render down. Go prints every digit.
    #[test]
    fn float_precision_above_u16_prints_like_go() {
        // Each of these panicked.
        for format in [
            "%.70000f",
            "%.70000e",
            "%.70000E",
            "%.70000g",
            "%#.70000g",
            "%.70000v",
        ] {
            f(format, vec![1.5.into()]);
        }
        assert_eq!(
            f("%.70000f", vec![1.5.into()]),
            format!("1.5{}", "0".repeat(69_999))
        );
        assert_eq!(
            f("%.70000e", vec![(-1.5).into()]),
            format!("-1.5{}e+00", "0".repeat(69_999))
        );
        assert_eq!(f("%.70000g", vec![1.5.into()]), "1.5");
        assert_eq!(
            f("%.*f", vec![70_000.into(), 2.0.into()]),
            format!("2.{}", "0".repeat(70_000))
        );
        // Still exact where the digits end: the smallest subnormal, 2^-1074, has 1074 digits
        // after the point (the last a 5) and 751 significant ones.
        let tiny = Value::from(f64::from_bits(1));
        let fixed = f("%.1100f", vec![tiny.clone()]);
        assert_eq!(fixed.len(), 2 + 1100);
        assert!(fixed.starts_with("0.000") && fixed[2..].starts_with(&"0".repeat(323)));
        assert_eq!(&fixed[2 + 1073..2 + 1074], "5");
        assert!(fixed[2 + 1074..].bytes().all(|b| b == b'0'));
        let exp = f("%.2000e", vec![tiny]);
        assert!(exp.starts_with("4.94065645841246544176568792868") && exp.ends_with("e-324"));
        assert_eq!(exp.len(), 2 + 2000 + 5);
        assert!(exp[2 + 751..2 + 2000].bytes().all(|b| b == b'0'));
    }

    /// Regression (fuzz target `template`): a width or precision taken from an argument
    /// (`%*d`, `%.*f`) was not bounded, so `{{printf "%*d" 99999999999 1}}` asked for a
    /// 100 GB string and aborted the process. Go's `fmt` refuses beyond ±1e6.
    #[test]
    fn star_width_and_precision_are_bounded_like_go() {
        assert_eq!(
            f("[%*d]", vec![99_999_999_999i64.into(), 1.into()]),
            "[%!(BADWIDTH)1]"
        );
        assert_eq!(
            f("[%*d]", vec![(-2_000_000).into(), 1.into()]),
            "[%!(BADWIDTH)1]"
        );
        assert_eq!(
            f("[%.*f]", vec![99_999_999_999i64.into(), 1.5.into()]),
            "[%!(BADPREC)1.500000]"
        );
        assert_eq!(f("[%*d]", vec![(-3).into(), 1.into()]), "[1  ]");
        assert_eq!(f("%*d", vec![1_000_000.into(), 1.into()]).len(), 1_000_000);
        // A literal beyond the bound is cut to it, as before.
        assert_eq!(f("%99999999999d", vec![1.into()]).len(), 1_000_000);
    }

    #[test]
    fn composite_values() {
        let l = Value::list(vec!["a".into(), "b".into()]);
        assert_eq!(action_string(&l), "[a b]");
        assert_eq!(f("%q", vec![l]), r#"["a" "b"]"#);
        let m = Value::map(
            [
                ("b".to_owned(), Value::Int(2)),
                ("a".to_owned(), Value::Int(1)),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(action_string(&m), "map[a:1 b:2]");
        assert_eq!(action_string(&Value::Nil), "<no value>");
    }

    #[test]
    fn sprint_spacing() {
        assert_eq!(sprint(&["a".into(), "b".into()]), "ab");
        assert_eq!(sprint(&[1.into(), 2.into()]), "1 2");
        assert_eq!(
            sprint(&["a".into(), 1.into(), 2.into(), "b".into()]),
            "a1 2b"
        );
        assert_eq!(sprintln(&["a".into(), "b".into()]), "a b\n");
    }

    #[test]
    fn quote_like_strconv() {
        assert_eq!(quote("a\tb\\c\u{7}"), r#""a\tb\\c\a""#);
        assert_eq!(quote("é"), "\"é\"");
        assert_eq!(quote("\u{1}"), r#""\x01""#);
    }
}
