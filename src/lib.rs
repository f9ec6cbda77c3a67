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

pub mod app;
pub mod audiences;
pub mod audit;
pub mod cache;
pub mod cli;
pub mod client_auth;
pub mod clients;
pub mod config;
pub mod consents;
pub mod dev;
pub mod domain;
pub mod drain;
pub mod exchange;
pub mod fallback;
pub mod grants;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod listeners;
pub mod local_postgres;
pub mod metrics;
pub mod oauth;
pub mod ops;
pub mod pki;
pub mod policy;
pub mod problem;
pub mod replay;
pub mod scopes;
pub mod seed;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod trust;
