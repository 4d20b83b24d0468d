//! Upward envelopes: any bytes on topic `u` must decode or fail cleanly, with or without peer refs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = tern::envelope::Limits::default();
    let _ = tern::envelope::decode_up(data, &limits, None);
    let refs = tern::core::peer_refs::PeerRefs::new([("bob@x.test".to_owned(), 1, true)]);
    let _ = tern::envelope::decode_up(data, &limits, Some(&refs));
});
