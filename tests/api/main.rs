#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod admin;
mod audit;
mod availability;
mod boundaries;
mod chains;
mod client_auth;
mod client_credentials;
mod cluster;
mod descriptions;
mod exchange;
mod fixtures;
mod helpers;
mod insider;
mod introspection;
mod keys;
mod logs;
mod operator;
mod ops;
mod partner;
mod policy;
mod startup;
mod tls;
mod upstream;
mod walkthrough;
