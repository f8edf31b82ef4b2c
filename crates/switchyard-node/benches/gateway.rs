//! Gateway benchmark (filled in later).
fn main() {}
