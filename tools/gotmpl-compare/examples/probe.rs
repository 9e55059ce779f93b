fn main() {
    for src in std::env::args().skip(1) {
        let t = gotmpl::Template::new("t").parse(&src);
        let r = match &t {
            Ok(t) => format!(
                "parsed; render = {:?}",
                t.execute_to_string(&gotmpl::Value::Nil)
                    .map_err(|e| e.to_string())
            ),
            Err(e) => format!("parse error: {e}"),
        };
        println!("{src:?} -> {r}");
    }
}
