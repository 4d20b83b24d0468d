//! Upward envelopes: any bytes on topic `u` must decode or fail cleanly.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tern::envelope::decode_up(data, &tern::envelope::Limits::default());
});
