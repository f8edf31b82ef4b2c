//! Pipeline throughput benchmark (filled in by a later commit).

fn main() {}
