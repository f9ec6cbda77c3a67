#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;
mod ops;
mod startup;
mod tls;
