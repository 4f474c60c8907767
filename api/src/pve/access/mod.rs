//! `/access`: authentication, users and API tokens.

pub mod ticket;
pub mod tokens;
pub mod users;
