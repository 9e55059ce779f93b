//! Size probe: the `regex` crate alone (both engines need it for consul-template's
//! `regexMatch`/`regexReplaceAll`).
fn main() {
    let pattern = std::env::args().nth(1).unwrap_or_default();
    let text = std::env::args().nth(2).unwrap_or_default();
    match regex::Regex::new(&pattern) {
        Ok(re) => println!("{}", re.is_match(&text)),
        Err(e) => println!("{e}"),
    }
}
