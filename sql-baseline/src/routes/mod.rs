//! The HTTP handlers.

pub mod claims;
pub mod health;
pub mod resources;
