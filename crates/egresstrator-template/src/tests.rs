//! Unit tests of the whole engine through its public API: every construct, built-in and
//! function, against a fake data source. Expected outputs are what Go's text/template and
//! consul-template produce for the same input.

use std::collections::BTreeMap;

use crate::*;

#[derive(Default)]
struct Fake {
    env: BTreeMap<String, String>,
    kv: BTreeMap<String, String>,
    services: BTreeMap<String, Vec<ServiceInstance>>,
    catalog: Vec<CatalogService>,
    now: i64,
    fail: bool,
}

impl DataSource for Fake {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn key(&self, key: &KvRef) -> Result<Option<String>, String> {
        if self.fail {
            return Err("connection refused".into());
        }
        Ok(self.kv.get(&key.path).cloned())
    }
    fn list(&self, prefix: &KvRef) -> Result<Vec<KvEntry>, String> {
        if self.fail {
            return Err("connection refused".into());
        }
        Ok(self
            .kv
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix.path))
            .map(|(k, v)| KvEntry {
                path: k.clone(),
                value: v.clone(),
                ..KvEntry::default()
            })
            .collect())
    }
    fn service(&self, q: &ServiceQuery) -> Result<Vec<ServiceInstance>, String> {
        Ok(self
            .services
            .get(&q.name)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| q.tag.as_ref().is_none_or(|t| s.tags.contains(t)))
            .collect())
    }
    fn services(&self, _: &CatalogQuery) -> Result<Vec<CatalogService>, String> {
        Ok(self.catalog.clone())
    }
    fn now_unix(&self) -> i64 {
        self.now
    }
}

fn inst(node: &str, id: &str, addr: &str, port: u16, status: &str) -> ServiceInstance {
    ServiceInstance {
        node: node.into(),
        node_address: format!("10.0.0.{}", node.len()),
        address: addr.into(),
        id: id.into(),
        name: "web".into(),
        tags: vec!["prod".into(), "a".into()],
        status: status.into(),
        port,
        ..ServiceInstance::default()
    }
}

fn fake() -> Fake {
    let mut f = Fake {
        now: 1_709_211_845,
        ..Fake::default()
    };
    f.env
        .insert("EGRESSTRATOR_ACL".into(), "web, db,cache".into());
    f.env
        .insert("CONSUL_PATH".into(), "egresstrator/acl".into());
    for (k, v) in [
        ("egresstrator/acl/", ""),
        ("egresstrator/acl/web", "10.1.0.0/16:tcp/443"),
        ("egresstrator/acl/db", "postgres"),
        ("egresstrator/acl/sub/", ""),
        ("egresstrator/acl/sub/deep", "x"),
        ("config/name", "egress"),
        ("config/empty", ""),
    ] {
        f.kv.insert(k.into(), v.into());
    }
    f.services.insert(
        "web".into(),
        vec![
            inst("n2", "web-2", "10.2.0.2", 8080, "passing"),
            inst("n1", "web-1", "", 80, "passing"),
            inst("n3", "web-3", "10.2.0.3", 81, "critical"),
        ],
    );
    f.catalog = vec![
        CatalogService {
            name: "web".into(),
            tags: vec!["z".into(), "a".into()],
        },
        CatalogService {
            name: "consul".into(),
            tags: vec![],
        },
    ];
    f
}

fn render_dot(text: &str, dot: &Value) -> Result<Rendered, TemplateError> {
    parse("t.tmpl", text)?.render_with_dot(&fake(), dot)
}

fn r(text: &str) -> String {
    match render_dot(text, &Value::Nil) {
        Ok(out) => out.output,
        Err(e) => panic!("{text:?} failed: {e}"),
    }
}

fn rd(text: &str, dot: Value) -> String {
    match render_dot(text, &dot) {
        Ok(out) => out.output,
        Err(e) => panic!("{text:?} failed: {e}"),
    }
}

fn e(text: &str) -> String {
    match render_dot(text, &Value::Nil) {
        Ok(out) => panic!("{text:?} rendered {:?}, expected an error", out.output),
        Err(e) => e.to_string(),
    }
}

fn dot() -> Value {
    let inner: BTreeMap<String, Value> = [("B".to_owned(), Value::str("deep"))].into();
    Value::map(
        [
            ("A".to_owned(), Value::map(inner)),
            ("name".to_owned(), Value::str("web")),
            ("n".to_owned(), Value::Int(3)),
            (
                "list".to_owned(),
                Value::list(vec!["x".into(), "y".into(), "z".into()]),
            ),
            ("empty".to_owned(), Value::list(vec![])),
            (
                "m".to_owned(),
                Value::map(
                    [
                        ("zeta".to_owned(), Value::Int(26)),
                        ("alpha".to_owned(), Value::Int(1)),
                        ("mid".to_owned(), Value::Int(13)),
                    ]
                    .into(),
                ),
            ),
        ]
        .into(),
    )
}

// ---- text, actions, comments, trim markers ----

#[test]
fn plain_text_passes_through() {
    assert_eq!(r("a\n  b\t\n"), "a\n  b\t\n");
    assert_eq!(r(""), "");
}

#[test]
fn comments_print_nothing() {
    assert_eq!(r("a{{/* c */}}b"), "ab");
    assert_eq!(r("a{{/* multi\nline */}}b"), "ab");
    assert_eq!(r("a \n {{- /* c */ -}} \n b"), "ab");
    assert_eq!(r("a {{- /* c */}} b"), "a b");
}

#[test]
fn trim_markers_follow_go() {
    assert_eq!(r("a  \t\r\n {{- 1}}"), "a1");
    assert_eq!(r("{{1 -}} \n\t\r b"), "1b");
    assert_eq!(r("x {{- 1 -}} y {{- 2 -}} z"), "x1y2z");
    // No space after the dash: a negative number, not a trim marker.
    assert_eq!(r("a {{-3}} b"), "a -3 b");
    assert_eq!(r("a {{3 }} b"), "a 3 b");
    // Trimming removes every kind of whitespace up to the next non-space.
    assert_eq!(r("line\n\n\n{{- \"x\" }}\n"), "linex\n");
    assert_eq!(r("{{ \"x\" -}}\n\n  \n"), "x");
    // Only the action's own side is trimmed.
    assert_eq!(r(" {{- \"x\" }} "), "x ");
}

#[test]
fn newlines_inside_actions_are_allowed() {
    assert_eq!(r("{{ printf\n  \"%s\"\n  \"x\" }}"), "x");
}

// ---- literals ----

#[test]
fn literals() {
    assert_eq!(r(r#"{{"a\tb\\c\"d\n"}}"#), "a\tb\\c\"d\n");
    assert_eq!(r("{{`raw\\n`}}"), "raw\\n");
    assert_eq!(
        r("{{42}} {{-7}} {{0x1f}} {{0o17}} {{017}} {{1_000}}"),
        "42 -7 31 15 15 1000"
    );
    assert_eq!(
        r("{{1.5}} {{1.0}} {{1e3}} {{2.5e-7}}"),
        "1.5 1 1000 2.5e-07"
    );
    assert_eq!(r("{{'a'}} {{'\\n'}}"), "97 10");
    assert_eq!(r("{{true}} {{false}}"), "true false");
    assert_eq!(r("{{print nil}}"), "<nil>");
    assert_eq!(r("{{.}}"), "<no value>");
}

// ---- pipelines ----

#[test]
fn pipeline_passes_value_as_last_argument() {
    assert_eq!(r(r#"{{"a,b" | split ","}}"#), "[a b]");
    assert_eq!(r(r#"{{"x" | printf "%s-%s" "y"}}"#), "y-x");
    assert_eq!(r(r#"{{"A,B" | toLower | split "," | join "+"}}"#), "a+b");
    assert_eq!(r(r#"{{"hello" | replaceAll "l" "L"}}"#), "heLLo");
    assert_eq!(r(r#"{{" x " | trimSpace | printf "[%s]"}}"#), "[x]");
}

#[test]
fn parenthesized_pipelines() {
    assert_eq!(r(r#"{{len (split "," "a,b,c")}}"#), "3");
    assert_eq!(r(r#"{{index ("a:b" | split ":") 1}}"#), "b");
    assert_eq!(r(r#"{{(split ":" "a:b" | len) | printf "%d"}}"#), "2");
    assert_eq!(r(r#"{{(index (tree "egresstrator/acl") 0).Key}}"#), "db");
}

// ---- variables ----

#[test]
fn variables_declare_assign_and_root() {
    assert_eq!(r("{{$x := 1}}{{$x}}"), "1");
    assert_eq!(r("{{$x := 1}}{{$x = 2}}{{$x}}"), "2");
    assert_eq!(
        rd("{{$.name}}{{with .A}}{{$.name}}{{.B}}{{end}}", dot()),
        "webwebdeep"
    );
    assert_eq!(rd("{{range .list}}{{$.n}}{{end}}", dot()), "333");
}

#[test]
fn variable_scoping_matches_go() {
    // A declaration in a body is scoped to it; an assignment changes the outer variable.
    assert_eq!(
        r("{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}"),
        "21"
    );
    assert_eq!(r("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}"), "2");
    assert_eq!(r("{{$x := 1}}{{with 5}}{{$x := .}}{{end}}{{$x}}"), "1");
    assert_eq!(
        r(r#"{{$s := ""}}{{range split "," "a,b,c"}}{{$s = print $s .}}{{end}}{{$s}}"#),
        "abc"
    );
    // Each iteration starts with a fresh body scope.
    assert_eq!(
        r(r#"{{range split "," "a,b"}}{{$v := .}}{{$v}}{{end}}"#),
        "ab"
    );
    // A variable declared in an if pipeline lives through the else branch.
    assert_eq!(r("{{if $x := 0}}yes{{else}}no{{$x}}{{end}}"), "no0");
    assert!(parse("t", "{{if true}}{{$x := 1}}{{end}}{{$x}}").is_err());
    assert!(parse("t", "{{range $i, $v := .}}{{end}}{{$v}}").is_err());
    assert!(parse("t", "{{define \"d\"}}{{$x}}{{end}}{{$x := 1}}").is_err());
}

#[test]
fn range_can_assign_existing_variables() {
    assert_eq!(
        r(r#"{{$i := 9}}{{$v := "z"}}{{range $i, $v = split "," "a,b"}}{{end}}{{$i}}{{$v}}"#),
        "1b"
    );
}

#[test]
fn assignment_to_undeclared_variable_fails_at_render_like_go() {
    // Go's parser accepts `$x = …` without a declaration; execution fails.
    assert_eq!(e("{{$x = 1}}"), "t.tmpl:1:3: undefined variable: $x");
}

// ---- fields ----

#[test]
fn field_access() {
    let d = dot();
    assert_eq!(rd("{{.name}}", d.clone()), "web");
    assert_eq!(rd("{{.A.B}}", d.clone()), "deep");
    assert_eq!(rd("{{$a := .A}}{{$a.B}}", d.clone()), "deep");
    assert_eq!(rd("{{.missing}}", d.clone()), "<no value>");
    assert_eq!(rd("{{.missing.deeper}}", d.clone()), "<no value>");
    assert_eq!(r("{{.Anything}}"), "<no value>");
    assert_eq!(
        r(r#"{{range tree "egresstrator/acl"}}{{.Key}}={{.Value}};{{end}}"#),
        "db=postgres;sub/deep=x;web=10.1.0.0/16:tcp/443;"
    );
    assert_eq!(
        r(r#"{{range tree "egresstrator/acl"}}{{.Path}} {{end}}"#),
        "egresstrator/acl/db egresstrator/acl/sub/deep egresstrator/acl/web "
    );
}

#[test]
fn field_errors() {
    assert_eq!(
        rd_err("{{.name.Foo}}"),
        "t.tmpl:1:3: can't evaluate field Foo in type string"
    );
    assert_eq!(
        e(r#"{{range tree "egresstrator/acl"}}{{.Nope}}{{end}}"#),
        "t.tmpl:1:36: can't evaluate field Nope in type *dep.KeyPair"
    );
    assert_eq!(
        rd_err("{{.name 1}}"),
        "t.tmpl:1:3: name is not a method but has arguments"
    );
    assert_eq!(
        rd_err("{{$x := 1}}{{$x 2}}"),
        "t.tmpl:1:14: can't give argument to non-function $x"
    );
    assert_eq!(e("{{nil}}"), "t.tmpl:1:3: nil is not a command");
}

fn rd_err(text: &str) -> String {
    match render_dot(text, &dot()) {
        Ok(out) => panic!("{text:?} rendered {:?}", out.output),
        Err(e) => e.to_string(),
    }
}

// ---- range ----

#[test]
fn range_over_lists_maps_and_ints() {
    let d = dot();
    assert_eq!(rd("{{range .list}}{{.}}{{end}}", d.clone()), "xyz");
    assert_eq!(
        rd("{{range $i, $v := .list}}{{$i}}={{$v}} {{end}}", d.clone()),
        "0=x 1=y 2=z "
    );
    assert_eq!(rd("{{range $v := .list}}{{$v}}{{end}}", d.clone()), "xyz");
    assert_eq!(r("{{range 3}}{{.}}{{end}}"), "012");
    assert_eq!(r("{{range $i := 2}}{{$i}}{{end}}"), "01");
}

#[test]
fn range_over_maps_is_sorted() {
    let d = dot();
    assert_eq!(
        rd("{{range $k, $v := .m}}{{$k}}={{$v}} {{end}}", d.clone()),
        "alpha=1 mid=13 zeta=26 "
    );
    assert_eq!(rd("{{range .m}}{{.}} {{end}}", d.clone()), "1 13 26 ");
    for _ in 0..20 {
        assert_eq!(
            rd("{{range $k, $_ := .m}}{{$k}}{{end}}", dot()),
            "alphamidzeta"
        );
    }
}

#[test]
fn range_else_runs_only_when_empty() {
    let d = dot();
    assert_eq!(
        rd("{{range .empty}}x{{else}}none{{end}}", d.clone()),
        "none"
    );
    assert_eq!(
        rd("{{range .missing}}x{{else}}none{{end}}", d.clone()),
        "none"
    );
    assert_eq!(
        rd("{{range .list}}{{.}}{{else}}none{{end}}", d.clone()),
        "xyz"
    );
    assert_eq!(r(r#"{{range split "," ""}}x{{else}}empty{{end}}"#), "empty");
    assert_eq!(r("{{range 0}}x{{else}}zero{{end}}"), "zero");
    assert_eq!(
        r(r#"{{range ls "nothing/here"}}x{{else}}no keys{{end}}"#),
        "no keys"
    );
}

#[test]
fn range_break_and_continue() {
    assert_eq!(
        r("{{range $i := 10}}{{if eq $i 2}}{{continue}}{{end}}{{if eq $i 5}}{{break}}{{end}}{{$i}}{{end}}"),
        "0134"
    );
    assert_eq!(
        r("{{range $i := 3}}{{range $j := 3}}{{if eq $j 1}}{{break}}{{end}}{{$i}}{{$j}} {{end}}{{end}}"),
        "00 10 20 "
    );
}

#[test]
fn range_errors() {
    assert_eq!(
        e("{{range true}}{{end}}"),
        "t.tmpl:1:9: range can't iterate over true"
    );
    assert_eq!(
        e("{{range $i, $v := 3}}{{end}}"),
        "t.tmpl:1:9: can't use 3 to iterate over more than one variable"
    );
}

// ---- if / with ----

#[test]
fn if_else_if_else() {
    let t = r#"{{range $n := 4}}{{if eq $n 0}}zero{{else if eq $n 1}}one{{else if eq $n 2}}two{{else}}many{{end}} {{end}}"#;
    assert_eq!(r(t), "zero one two many ");
}

#[test]
fn truthiness_in_if() {
    for (v, want) in [
        ("0", "F"),
        ("1", "T"),
        ("0.0", "F"),
        ("0.5", "T"),
        (r#""""#, "F"),
        (r#""0""#, "T"),
        ("false", "F"),
        ("true", "T"),
        (r#"(split "," "")"#, "F"),
        (r#"(split "," "a")"#, "T"),
        (".", "F"),
    ] {
        assert_eq!(
            r(&format!("{{{{if {v}}}}}T{{{{else}}}}F{{{{end}}}}")),
            want,
            "{v}"
        );
    }
    assert_eq!(rd("{{if .m}}T{{end}}{{if .empty}}X{{end}}", dot()), "T");
    // As in Go, a bare nil is not a value a pipeline can produce.
    assert_eq!(e("{{if nil}}{{end}}"), "t.tmpl:1:6: nil is not a command");
}

#[test]
fn with_sets_dot_and_else() {
    let d = dot();
    assert_eq!(rd("{{with .A}}{{.B}}{{end}}", d.clone()), "deep");
    assert_eq!(
        rd("{{with .missing}}x{{else}}none{{end}}", d.clone()),
        "none"
    );
    assert_eq!(
        rd("{{with $x := .name}}{{$x}}{{.}}{{end}}", d.clone()),
        "webweb"
    );
    assert_eq!(
        rd(
            "{{with .missing}}a{{else with .name}}{{.}}{{else}}c{{end}}",
            d.clone()
        ),
        "web"
    );
}

// ---- define / template / block ----

#[test]
fn define_template_block() {
    assert_eq!(
        r(r#"{{define "rule"}}-A {{.}}{{end}}{{template "rule" "x"}};{{template "rule"}}"#),
        "-A x;-A <no value>"
    );
    assert_eq!(r(r#"a{{block "b" 2}}[{{.}}]{{end}}c"#), "a[2]c");
    // $ inside a template is the template's dot.
    assert_eq!(
        r(r#"{{define "d"}}{{$}}{{end}}{{$x := 1}}{{template "d" 7}}"#),
        "7"
    );
    assert_eq!(
        e(r#"{{template "nope"}}"#),
        r#"t.tmpl:1:12: no such template "nope""#
    );
    assert!(
        e(r#"{{define "r"}}{{template "r"}}{{end}}{{template "r"}}"#)
            .contains("exceeded maximum template depth")
    );
    let t = parse("t", r#"{{define "a"}}{{end}}{{define "b"}}{{end}}"#).unwrap();
    assert_eq!(t.defined_templates().collect::<Vec<_>>(), ["a", "b"]);
}

// ---- Go built-ins ----

#[test]
fn and_or_return_the_deciding_value() {
    assert_eq!(r(r#"{{or 0 "" "x" "y"}}"#), "x");
    assert_eq!(r(r#"{{or 0 ""}}"#), "");
    assert_eq!(r("{{and 1 0 2}}"), "0");
    assert_eq!(r("{{and 1 2 3}}"), "3");
    assert_eq!(r(r#"{{0 | or ""}}"#), "0");
    assert_eq!(r(r#"{{"p" | and 1}}"#), "p");
}

#[test]
fn and_or_short_circuit() {
    // The second argument would fail if evaluated.
    assert_eq!(r(r#"{{or 1 (index (split "," "a") 5)}}"#), "1");
    assert_eq!(r(r#"{{and 0 (index (split "," "a") 5)}}"#), "0");
    assert!(e(r#"{{or 0 (index (split "," "a") 5)}}"#).contains("index out of range: 5"));
}

#[test]
fn not_len_index_slice() {
    assert_eq!(r(r#"{{not 0}} {{not "x"}}"#), "true false");
    assert_eq!(r(r#"{{len "héllo"}} {{len (split "," "a,b")}}"#), "6 2");
    assert_eq!(rd("{{len .m}}", dot()), "3");
    assert_eq!(
        rd(
            r#"{{index .list 1}} {{index .m "mid"}} {{index .m "nope"}}"#,
            dot()
        ),
        "y 13 <no value>"
    );
    assert_eq!(rd(r#"{{index . "A" "B"}}"#, dot()), "deep");
    assert_eq!(r(r#"{{index "abc" 1}}"#), "98");
    assert_eq!(rd("{{index .list}}", dot()), "[x y z]");
    assert_eq!(
        rd(
            "{{slice .list 1}} {{slice .list 1 2}} {{slice .list}}",
            dot()
        ),
        "[y z] [y] [x y z]"
    );
    assert_eq!(r(r#"{{slice "hello" 1 3}}"#), "el");
    assert_eq!(
        rd_err("{{index .list 3}}"),
        "t.tmpl:1:3: error calling index: index out of range: 3"
    );
    assert!(rd_err("{{len .n}}").contains("error calling len: len of type int"));
    assert!(rd_err("{{slice .list 2 1}}").contains("invalid slice index: 2 > 1"));
    assert!(e("{{index .missing 1}}").contains("index of untyped nil"));
    assert!(e("{{index nil 1}}").contains("cannot pass nil to index"));
}

#[test]
fn print_printf_println() {
    assert_eq!(r(r#"{{print "a" 1 2 "b"}}"#), "a1 2b");
    assert_eq!(r(r#"{{println "a" 1}}"#), "a 1\n");
    assert_eq!(
        r(r#"{{printf "%s:%d %v %q %x %%" "a" 5 true "q" 255}}"#),
        "a:5 true \"q\" ff %"
    );
    assert_eq!(
        r(r#"{{printf "%5s|%-5s|%05d|%.2f" "ab" "cd" 42 3.14159}}"#),
        "   ab|cd   |00042|3.14"
    );
    assert_eq!(r(r#"{{printf "%d"}}"#), "%!d(MISSING)");
    assert_eq!(r(r#"{{printf "%d" "x"}}"#), "%!d(string=x)");
    assert_eq!(r(r#"{{printf "%v" (split "," "a,b")}}"#), "[a b]");
}

#[test]
fn comparisons() {
    assert_eq!(r("{{eq 1 1}} {{eq 1 2}} {{eq 1 2 3 1}}"), "true false true");
    assert_eq!(r(r#"{{eq "a" "a"}} {{ne "a" "b"}}"#), "true true");
    assert_eq!(
        r("{{lt 1 2}} {{le 2 2}} {{gt 3 2}} {{ge 1 2}}"),
        "true true true false"
    );
    assert_eq!(r(r#"{{lt "a" "b"}} {{lt 1.5 2.5}}"#), "true true");
    // A missing value equals nothing (no error); a literal nil cannot be passed, as in Go.
    assert_eq!(r(r#"{{eq .x "x"}}"#), "false");
    assert_eq!(e("{{eq .x nil}}"), "t.tmpl:1:9: cannot pass nil to eq");
    assert_eq!(r("{{print nil 1}}"), "<nil> 1");
    assert_eq!(
        e(r#"{{eq 1 "1"}}"#),
        "t.tmpl:1:3: error calling eq: incompatible types for comparison"
    );
    assert_eq!(
        e("{{lt true false}}"),
        "t.tmpl:1:3: error calling lt: invalid type for comparison"
    );
    assert!(e("{{lt 1 2.0}}").contains("incompatible types for comparison"));
    assert!(e("{{eq 1}}").contains("missing argument for comparison"));
}

#[test]
fn html_js_urlquery() {
    assert_eq!(
        r(r#"{{html "<a href='x'>&</a>"}}"#),
        "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
    );
    assert_eq!(r(r#"{{js "a'b\"<"}}"#), r#"a\'b\"\u003C"#);
    assert_eq!(r(r#"{{urlquery "a b&c/d"}}"#), "a+b%26c%2Fd");
}

// ---- consul-template functions ----

#[test]
fn split_and_join() {
    assert_eq!(r(r#"{{split "," "a,b,,c"}}"#), "[a b  c]");
    // consul-template trims the whole string first; an empty string gives no elements.
    assert_eq!(r(r#"{{len (split "," "  ")}}"#), "0");
    assert_eq!(r(r#"{{split "," " a, b \n"}}"#), "[a  b]");
    assert_eq!(
        r(r#"{{env "EGRESSTRATOR_ACL" | split ","}}"#),
        "[web  db cache]"
    );
    assert_eq!(r(r#"{{split "" "abc"}}"#), "[a b c]");
    assert_eq!(r(r#"{{split "," "a,b" | join "-"}}"#), "a-b");
    assert!(e(r#"{{join "," "ab"}}"#).contains("expected []string; got string"));
}

#[test]
fn in_and_contains_argument_order() {
    // in LIST VALUE; contains VALUE LIST (so `LIST | contains VALUE` reads naturally).
    assert_eq!(
        r(r#"{{in (split "," "a,b") "b"}} {{in (split "," "a,b") "c"}}"#),
        "true false"
    );
    assert_eq!(
        r(r#"{{split "," "a,b" | contains "a"}} {{contains "z" (split "," "a")}}"#),
        "true false"
    );
    // With a string haystack both search substrings.
    assert_eq!(
        r(r#"{{in "foobar" "oba"}} {{"foobar" | contains "bar"}}"#),
        "true true"
    );
    // Types must match: an int is never in a list of strings.
    assert_eq!(r(r#"{{in (split "," "1,2") 1}}"#), "false");
    assert_eq!(r(r#"{{in (loop 3) 2}}"#), "true");
}

#[test]
fn contains_all_any_none_notall() {
    let l = r#"(split "," "a,b,c")"#;
    let t = |f: &str, needles: &str| r(&format!(r#"{{{{{f} (split "," "{needles}") {l}}}}}"#));
    assert_eq!(t("containsAll", "a,b"), "true");
    assert_eq!(t("containsAll", "a,x"), "false");
    assert_eq!(t("containsAny", "x,b"), "true");
    assert_eq!(t("containsAny", "x,y"), "false");
    assert_eq!(t("containsNone", "x,y"), "true");
    assert_eq!(t("containsNone", "x,a"), "false");
    assert_eq!(t("containsNotAll", "a,x"), "true");
    assert_eq!(t("containsNotAll", "a,b"), "false");
}

#[test]
fn regex_functions() {
    assert_eq!(
        r(
            r#"{{"10.0.0.0/8:tcp/53" | regexMatch "^([0-9]{1,3}\\.){3}[0-9]{1,3}/[0-9]{1,2}:(tcp|udp)/[0-9]{1,5}$"}}"#
        ),
        "true"
    );
    assert_eq!(r(r#"{{regexMatch "^[a-z]+" "9web"}}"#), "false");
    assert_eq!(
        r(r#"{{regexReplaceAll "(\\w+)@(\\w+)" "$2.$1" "web@dc1"}}"#),
        "dc1.web"
    );
    assert_eq!(r(r#"{{"a.b.c" | regexReplaceAll "\\." "-"}}"#), "a-b-c");
    assert!(e(r#"{{regexMatch "(" "x"}}"#)
        .starts_with("t.tmpl:1:3: error calling regexMatch: error parsing regexp"));
}

#[test]
fn string_functions() {
    assert_eq!(r(r#"{{replaceAll "." "_" "a.b.c"}}"#), "a_b_c");
    assert_eq!(r(r#"{{"  x \n" | trimSpace}}|"#), "x|");
    assert_eq!(
        r(r#"{{toLower "AbC"}} {{toUpper "AbC"}} {{toTitle "hello wide world"}}"#),
        "abc ABC Hello Wide World"
    );
    assert_eq!(
        r(r#"{{trim "-" "--x--"}} {{trimPrefix "web-" "web-1"}} {{trimSuffix ".com" "a.com"}}"#),
        "x 1 a"
    );
    assert_eq!(r(r#"{{"a\nb" | indent 2}}"#), "  a\n  b");
}

#[test]
fn parse_functions() {
    assert_eq!(
        r(r#"{{parseInt "42"}} {{parseInt ""}} {{parseInt "-7" | add 1}}"#),
        "42 0 -6"
    );
    assert_eq!(
        e(r#"{{parseInt "4x"}}"#),
        r#"t.tmpl:1:3: error calling parseInt: parseInt: strconv.ParseInt: parsing "4x": invalid syntax"#
    );
    assert_eq!(
        r(r#"{{parseBool "true"}} {{parseBool ""}} {{parseFloat "1.5"}} {{parseUint "9"}}"#),
        "true false 1.5 9"
    );
    assert!(e(r#"{{parseBool "yes"}}"#).contains("invalid syntax"));
}

#[test]
fn math_functions_take_b_then_a() {
    assert_eq!(
        r("{{add 1 2}} {{2 | subtract 5}} {{3 | multiply 4}} {{10 | divide 3}} {{10 | modulo 3}}"),
        "3 -3 12 3 1"
    );
    assert_eq!(
        r("{{add 0.5 1}} {{minimum 3 5}} {{maximum 3 5}}"),
        "1.5 3 5"
    );
    assert!(e("{{divide 0 1}}").contains("integer divide by zero"));
    assert!(e(r#"{{add "x" 1}}"#).contains("add: unknown type"));
}

#[test]
fn loop_function() {
    assert_eq!(
        r("{{range loop 3}}{{.}}{{end}} {{range loop 5 8}}{{.}}{{end}}"),
        "012 567"
    );
    assert!(e("{{loop 10000000}}").contains("loop: more than"));
}

#[test]
fn timestamp_uses_the_sources_clock() {
    assert_eq!(r("{{timestamp}}"), "2024-02-29T13:04:05Z");
    assert_eq!(r(r#"{{timestamp "unix"}}"#), "1709211845");
    assert_eq!(r(r#"{{timestamp "2006-01-02"}}"#), "2024-02-29");
}

#[test]
fn env_functions() {
    assert_eq!(
        r(r#"{{env "CONSUL_PATH"}}|{{env "UNSET"}}|"#),
        "egresstrator/acl||"
    );
    assert_eq!(
        r(r#"{{envOrDefault "UNSET" "d"}} {{envOrDefault "CONSUL_PATH" "d"}}"#),
        "d egresstrator/acl"
    );
    let out = parse("t", r#"{{env "CONSUL_PATH"}}"#)
        .unwrap()
        .render(&fake())
        .unwrap();
    assert!(out.deps.env.contains("CONSUL_PATH"));
}

#[test]
fn key_functions() {
    let t = parse(
        "t",
        r#"{{key "config/name"}}|{{keyOrDefault "config/empty" "d"}}|{{keyOrDefault "nope" "d"}}|{{keyExists "config/empty"}}|{{keyExists "nope"}}|{{key_or_default "nope" "old"}}"#,
    )
    .unwrap();
    let out = t.render(&fake()).unwrap();
    assert_eq!(out.output, "egress|d|d|true|false|old");
    assert!(out.is_complete());
    assert_eq!(out.deps.keys.len(), 3);
    assert!(out.deps.keys.iter().any(|k| k.path == "config/empty"));
}

#[test]
fn key_of_absent_key_marks_render_incomplete() {
    let out = parse("t", r#"[{{key "nope"}}]{{key "/config/name@dc2"}}"#)
        .unwrap()
        .render(&fake())
        .unwrap();
    assert_eq!(out.output, "[]egress");
    assert!(!out.is_complete());
    let missing: Vec<String> = out.deps.missing.iter().map(ToString::to_string).collect();
    assert_eq!(missing, ["nope"]);
    assert!(out
        .deps
        .keys
        .iter()
        .any(|k| k.to_string() == "config/name@dc2"));
}

#[test]
fn ls_is_top_level_tree_is_recursive() {
    assert_eq!(
        r(r#"{{range ls "egresstrator/acl"}}{{.Key}} {{end}}"#),
        "db web "
    );
    assert_eq!(
        r(r#"{{range tree "egresstrator/acl/"}}{{.Key}} {{end}}"#),
        "db sub/deep web "
    );
    let out = parse("t", r#"{{safeLs "empty/prefix"}}"#)
        .unwrap()
        .render(&fake())
        .unwrap();
    assert!(!out.is_complete());
    let out = parse("t", r#"{{safeTree "empty/prefix"}}"#)
        .unwrap()
        .render(&fake())
        .unwrap();
    assert_eq!(out.deps.missing.len(), 1);
    let out = parse("t", r#"{{range safeTree "config"}}{{.Key}}{{end}}"#)
        .unwrap()
        .render(&fake())
        .unwrap();
    assert_eq!(out.output, "emptyname");
    assert!(out.is_complete());
    let out = parse("t", r#"{{ls "empty/prefix"}}"#)
        .unwrap()
        .render(&fake())
        .unwrap();
    assert!(out.is_complete());
    assert_eq!(
        out.deps.prefixes.iter().next().unwrap().path,
        "empty/prefix"
    );
}

#[test]
fn by_key_groups_tree() {
    assert_eq!(
        r(
            r#"{{range $top, $pairs := tree "egresstrator" | byKey}}{{$top}}:{{range $pairs}}{{.Key}},{{end}};{{end}}"#
        ),
        "acl:db,sub/deep,web,;"
    );
}

#[test]
fn service_filters_sorts_and_records() {
    let t = parse(
        "t",
        r#"{{range service "web"}}{{.Node}} {{.ID}} {{.Address}}:{{.Port}} {{.Tags}} {{.Status}}
{{end}}{{range service "web" "any"}}{{.ID}} {{end}}"#,
    )
    .unwrap();
    let out = t.render(&fake()).unwrap();
    assert_eq!(
        out.output,
        "n1 web-1 10.0.0.2:80 [a prod] passing\nn2 web-2 10.2.0.2:8080 [a prod] passing\nweb-1 web-2 web-3 "
    );
    let specs: Vec<String> = out.deps.services.iter().map(ToString::to_string).collect();
    assert_eq!(specs, ["web|any", "web|passing"]);
}

#[test]
fn service_query_syntax_errors() {
    assert_eq!(
        e(r#"{{service "web server"}}"#),
        r#"t.tmpl:1:3: error calling service: health.service: invalid format: "web server""#
    );
    assert_eq!(r(r#"{{len (service "")}}"#), "0");
    assert_eq!(
        r(r#"{{range service "prod.web"}}{{.ID}} {{end}}"#),
        "web-1 web-2 "
    );
}

#[test]
fn services_and_by_tag() {
    assert_eq!(
        r(r#"{{range services}}{{.Name}}{{.Tags}} {{end}}"#),
        "consul[] web[a z] "
    );
    assert_eq!(
        r(r#"{{range $tag, $s := service "web" | byTag}}{{$tag}}={{len $s}} {{end}}"#),
        "a=2 prod=2 "
    );
}

#[test]
fn data_source_errors_are_reported_with_position_and_kind() {
    let f = Fake {
        fail: true,
        ..fake()
    };
    let t = parse("web.tmpl", "a\n  {{ tree \"x\" }}").unwrap();
    let err = t.render(&f).unwrap_err();
    assert_eq!(
        err.to_string(),
        "web.tmpl:2:6: error calling tree: connection refused"
    );
    assert_eq!(err.kind, ErrorKind::Data);
    assert_eq!(err.dependencies().prefixes.len(), 1);
}

// ---- errors with positions ----

#[test]
fn parse_errors_name_file_line_and_column() {
    let p = |text: &str| parse("web.tmpl", text).unwrap_err();
    let err = p("line1\nline2\n  {{ foo \"x\" }}");
    assert_eq!(
        err.to_string(),
        r#"web.tmpl:3:6: function "foo" not defined"#
    );
    assert_eq!((err.line, err.column, err.kind), (3, 6, ErrorKind::Parse));
    assert_eq!(
        p("ab\ncd {{ .X ").to_string(),
        "web.tmpl:2:4: unclosed action"
    );
    // Go's parser accepts a trailing pipe (the stage is simply absent).
    assert!(parse("t", "{{ .X | }}").is_ok());
    assert_eq!(
        p("{{ | .X }}").to_string(),
        r#"web.tmpl:1:4: unexpected "|" in command"#
    );
    assert_eq!(
        p("{{ if }}").to_string(),
        "web.tmpl:1:7: missing value for if"
    );
    assert_eq!(
        p("x\n{{range .}}").to_string(),
        "web.tmpl:2:3: unexpected EOF: {{range}} has no matching {{end}}"
    );
    assert_eq!(
        p("{{ 3 4 | 5 }}").to_string(),
        "web.tmpl:1:10: non executable command in pipeline stage 2"
    );
    assert_eq!(
        p("{{ \"unterminated }}").to_string(),
        "web.tmpl:1:4: unterminated quoted string"
    );
    assert_eq!(
        p("é{{ $nope }}").to_string(),
        r#"web.tmpl:1:5: undefined variable "$nope""#
    );
    assert_eq!(
        p("{{ .X := 1 }}").to_string(),
        r#"web.tmpl:1:7: unexpected ":=" in operand"#
    );
}

#[test]
fn arity_and_type_errors_name_file_line_and_column() {
    assert_eq!(
        e("\n\n{{ split \",\" }}"),
        "t.tmpl:3:4: wrong number of args for split: want 2 got 1"
    );
    assert_eq!(
        e(r#"{{ "a" | split "," "b" }}"#),
        "t.tmpl:1:10: wrong number of args for split: want 2 got 3"
    );
    assert_eq!(
        e("{{ not }}"),
        "t.tmpl:1:4: wrong number of args for not: want 1 got 0"
    );
    assert_eq!(
        e("{{ timestamp 1 2 }}"),
        "t.tmpl:1:4: wrong number of args for timestamp: want 0 or 1 got 2"
    );
    assert_eq!(
        e("{{ and }}"),
        "t.tmpl:1:4: wrong number of args for and: want at least 1 got 0"
    );
    assert_eq!(
        e(r#"{{ split "," 5 }}"#),
        "t.tmpl:1:4: split: wrong type for value; expected string; got int"
    );
    assert_eq!(
        e(r#"{{ toUpper .Missing }}"#),
        "t.tmpl:1:4: toUpper: invalid value; expected string"
    );
}

#[test]
fn templates_are_send_sync_and_reusable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Template>();
    assert_send_sync::<TemplateError>();
    let t = parse("t", "{{timestamp \"unix\"}}").unwrap();
    let a = t.render(&fake()).unwrap();
    let b = t.clone().render(&fake()).unwrap();
    assert_eq!(a, b);
    assert_eq!(t.name(), "t");
}

/// Inputs the fuzz target `template` crashed on (fuzz/, FUZZING.md), as the fuzzer left
/// them after minimizing; each was fixed where the comment says.
#[test]
fn fuzz_regressions() {
    // fmt.rs `format_f`: a float precision above 65535 reached Rust's `format!`, which
    // panics ("Formatting argument out of range"). Go prints every digit of the exact
    // value (0.6999999999999999555910790149937383830547332763671875), then zeros.
    let out = r(r#"{{printf "%.222222f" .7}}"#);
    assert_eq!(out.len(), 2 + 222_222);
    assert!(out.starts_with("0.6999999999999999555910790149937383830547332763671875000"));
    assert!(out[2 + 52..].bytes().all(|b| b == b'0'));
    // fmt.rs `sprintf`: a width taken from an argument was unbounded: a 100 GB allocation,
    // which aborts the process. Go's fmt says BADWIDTH beyond 1e6.
    assert_eq!(r(r#"{{printf "%*d" 99999999999 1}}"#), "%!(BADWIDTH)1");
}

/// Hangs and memory blow-ups the fuzz target `template` ran into (fuzz/, FUZZING.md): each
/// now fails with an error instead. exec.rs bounds range iterations and template calls
/// together (`MAX_STEPS`) and the strings functions return; funcs.rs checks `split`,
/// `indent`, `replaceAll` and `regexReplaceAll` before building their result.
#[test]
fn runaway_templates_fail_instead_of_hanging() {
    // Nested ranges: 10^12 iterations.
    let nested = "{{range 999999}}{{range 999999}}{{end}}{{end}}";
    assert!(e(nested).contains("exceeded 1000000 range iterations and template calls"));
    assert!(e("{{range 1000001}}{{end}}").contains("range over 1000001 is too large"));
    assert_eq!(r("{{range 1000000}}{{end}}"), "");
    // A template calling itself twice: 2^40 calls, within the depth bound.
    let twice = r#"{{define "a"}}{{if lt . 40}}{{template "a" (add . 1)}}{{template "a" (add . 1)}}{{end}}{{end}}{{template "a" 0}}"#;
    assert!(e(twice).contains("exceeded 1000000 range iterations"));
    // A string doubled in a loop (8 × 2^40 bytes).
    let doubled = r#"{{$x := "aaaaaaaa"}}{{range 40}}{{$x = printf "%s%s" $x $x}}{{end}}"#;
    assert!(e(doubled).contains("error calling printf: result longer than 64 MiB"));
    // Functions whose result is many times their arguments.
    assert!(e(r#"{{indent 99999999999 "a\nb"}}"#).contains("indent: result longer than 64 MiB"));
    let big = r#"{{$x := printf "%1000000d" 1}}"#;
    assert!(
        e(&format!(r#"{big}{{{{replaceAll "" $x $x}}}}"#)).contains("replaceAll: result longer")
    );
    assert!(e(&format!(r#"{big}{{{{regexReplaceAll "" $x $x}}}}"#))
        .contains("regexReplaceAll: result longer"));
    assert!(e(&format!(
        r#"{big}{{{{split "" $x | len}}}}{{{{split "" (printf "%s%s" $x $x)}}}}"#
    ))
    .contains("split: more than 1000000 parts"));
    // What stays inside the bounds still renders, as before.
    assert_eq!(r("{{range 3}}{{range 3}}.{{end}}{{end}}"), ".........");
    assert_eq!(
        r(r#"{{regexReplaceAll "(a)(b)" "$2$1" "xabyab"}}"#),
        "xbayba"
    );
    assert_eq!(r(r#"{{regexReplaceAll "" "-" "ab"}}"#), "-a-b-");
    assert_eq!(r(r#"{{replaceAll "" "-" "ab"}}"#), "-a-b-");
    assert_eq!(r(r#"{{indent 2 "a\nb"}}"#), "  a\n  b");
}
