//! Tessera: an OAuth 2.0 token-exchange authorization server for institutional finance.

pub mod app;
pub mod cli;
pub mod config;
pub mod dev;
pub mod http;
pub mod local_postgres;
pub mod ops;
pub mod pki;
pub mod problem;
pub mod storage;
pub mod telemetry;
pub mod tls;
