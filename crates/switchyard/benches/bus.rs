//! Benchmarks of the in-process bus (filled in below).
fn main() {}
