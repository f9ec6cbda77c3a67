//! Use cases: each authorizes, opens its transaction and audits.

pub mod admin;
