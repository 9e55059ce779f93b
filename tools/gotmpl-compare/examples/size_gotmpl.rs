//! Size probe: parses and renders a template from argv with gotmpl only (no functions
//! registered, so no `regex`: the consul-template functions would add it, as ours has).
fn main() {
    let text = std::env::args().nth(1).unwrap_or_default();
    match gotmpl::Template::new("t")
        .parse(&text)
        .and_then(|t| t.execute_to_string(&gotmpl::Value::Nil))
    {
        Ok(s) => println!("{s}"),
        Err(e) => println!("{e}"),
    }
}
