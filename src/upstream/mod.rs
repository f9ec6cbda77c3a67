//! Tessera as a client of banks: the token client (the `oauth2` crate over the project's one
//! reqwest and rustls, presenting Tessera's own certificate per connection).

pub mod client;
