//! Signing keys and their envelope encryption, and the one path that validates JWTs.

pub mod envelope;
pub mod jwt;
pub mod keys;
