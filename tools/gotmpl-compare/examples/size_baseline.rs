//! Size baseline: reads a template and prints it (see README, "Binary size").
fn main() {
    let text = std::env::args().nth(1).unwrap_or_default();
    println!("{text}");
}
