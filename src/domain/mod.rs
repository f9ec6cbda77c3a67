//! The model, in plain Rust: no HTTP, SQL, TLS or JWT library types. Functions that depend on
//! time take `now`.

pub mod admin;
pub mod audiences;
pub mod clients;
pub mod consents;
pub mod grants;
pub mod ids;
pub mod jwks;
pub mod scope_limits;
pub mod scopes;
pub mod tokens;
pub mod trust;
pub mod upstream;
