//! Signing keys and their envelope encryption, partners' key sets, and the one path that
//! validates JWTs.

pub mod envelope;
pub mod jwks;
pub mod jwt;
pub mod keys;
