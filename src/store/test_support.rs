//! Helpers for the store's unit tests that reopen a database in the same process.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

/// Runs `open` until it succeeds, for up to five seconds. A sled database dropped in this
/// process keeps its directory lock until sled's background threads let go of it, a few
/// milliseconds later, so a test that reopens at once can find the lock still held.
pub fn reopening<T, E: Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let mut last = None;
    for _ in 0..250 {
        match open() {
            Ok(opened) => return opened,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the database did not reopen: {last:?}");
}

/// The sled database at `path`, waiting for a previous instance to let go of it.
pub fn sled_at(path: &Path) -> sled::Db {
    reopening(|| sled::Config::new().path(path).open())
}
