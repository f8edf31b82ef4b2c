//! Pipelines whose stage types do not line up must not compile; the .stderr files show the
//! exact error a user gets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[test]
fn stage_type_mismatch_is_a_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
