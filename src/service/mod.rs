//! One use case per file: authenticate, decide (policy included), store and audit.

pub mod authenticate;
pub mod exchange;
pub mod partner_jwt;
