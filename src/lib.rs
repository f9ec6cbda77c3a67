//! Tessera: an OAuth 2.0 token-exchange authorization server for institutional finance.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod audit;
pub mod cache;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod domain;
pub mod http;
pub mod policy;
pub mod service;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod upstream;
