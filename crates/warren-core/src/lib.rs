//! The words warren speaks, shared by every other crate: tenant ids, the signed-URL
//! scheme, typed configuration and the stable error codes clients see.
//!
//! Nothing here does I/O or reads a clock: callers pass the current time in, so every
//! rule can be tested with plain values.

pub mod auth;
pub mod config;
pub mod duration;
pub mod error;
pub mod human;
pub mod layout;
pub mod sandbox;
pub mod secret;
pub mod tenant;

pub use error::ErrorCode;
pub use secret::Secret;
pub use tenant::TenantId;
