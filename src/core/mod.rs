//! Sans-IO cores of the phone side: they take events and `now`, return outputs, touch nothing.

pub mod peer_refs;
pub mod session;
pub mod subscription;
