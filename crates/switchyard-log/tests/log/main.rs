//! Integration tests of the embedded log transport.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod acks_restart;
mod basic;
mod common;
mod delete_group;
mod handover;
mod limits;
mod recovery;
mod review_rev3;
mod review_rev30;
mod review_rev4;
mod review_rev9;
