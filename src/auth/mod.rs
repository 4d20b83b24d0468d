//! Credentials: slow salted password hashes and cheap session tokens.

pub mod password;
pub mod token;
