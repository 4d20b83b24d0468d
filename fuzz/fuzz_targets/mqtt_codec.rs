//! The MQTT decoder: any byte stream, fed in arbitrary pieces, must decode or fail cleanly.
#![no_main]

use bytes::BytesMut;
use tern::mqtt::Codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = (split as usize).min(rest.len());
    let mut codec = Codec::new(64 * 1024);
    let mut buf = BytesMut::new();
    for chunk in [&rest[..cut], &rest[cut..]] {
        buf.extend_from_slice(chunk);
        for _ in 0..1024 {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
});
