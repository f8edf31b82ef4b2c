//! WebSocket gateway benchmark (filled in below).
fn main() {}
