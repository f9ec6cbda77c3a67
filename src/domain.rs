//! Plain Rust: the words of the domain, free of HTTP, SQL and TLS types.

pub mod admin;
