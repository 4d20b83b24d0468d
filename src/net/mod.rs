//! Sockets: the listeners, one driver task per connection, and the device registry.

pub mod conn;
pub mod listener;
pub mod registry;
pub mod ws;
