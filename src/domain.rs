//! Plain-Rust rules with no HTTP, SQL or TLS types in them.

pub mod scope_limits;
