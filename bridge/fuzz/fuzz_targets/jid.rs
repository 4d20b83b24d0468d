//! Fuzzes `Jid::parse`: it must never panic, and whatever it accepts must
//! survive a Display/parse round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_bridge::Jid;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(jid) = Jid::parse(&s) {
        let shown = jid.to_string();
        assert_eq!(Jid::parse(&shown).as_ref(), Ok(&jid), "{shown:?}");
    }
});
