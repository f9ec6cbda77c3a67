#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod availability;
mod client_auth;
mod client_credentials;
mod exchange;
mod fixtures;
mod helpers;
mod introspection;
mod keys;
mod ops;
mod partner;
mod policy;
mod startup;
mod tls;
