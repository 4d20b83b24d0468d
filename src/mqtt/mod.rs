//! MQTT 3.1.1 and 5 at tern's edge: packet types tern reasons about, and the codec behind them.

pub mod codec;
pub mod packet;

pub use codec::{Codec, CodecError};
pub use packet::*;
