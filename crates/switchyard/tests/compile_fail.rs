//! Handler mistakes must not compile, and the compiler must say what is wrong in the bus's
//! words: the .stderr files under tests/ui are the exact messages a user gets.
//!
//! After a rustc upgrade or a move of `Bus::on`/`Bus::handle`, regenerate them with
//! `TRYBUILD=overwrite cargo test -p switchyard --test compile_fail` and read the diff.

#[test]
fn handler_mistakes_are_readable_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
