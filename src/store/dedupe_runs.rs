//! Dedupe of numeric message ids (docs/PROTOCOL.md "Numeric ids") as runs of consecutive
//! numbers, one record per sending device instead of one per message.
//!
//! A phone counting its messages sends 1, 2, 3 …, so the ids it has sent within the dedupe
//! window are a handful of runs. Kept as one small value under `d sender \0 device`, the
//! memtable overwrites that one key per message, and a checkpoint hands sled one key per
//! device rather than one per message (sled's per-key insert was a fifth of the broker's CPU
//! under sustained load). Ids that do not fit (too many runs: a device sending out of order)
//! fall back to the one-record-per-id form, and the runs then say so (`singles`): while they
//! do not, a new numeric id needs no lookup of a per-id record, which a sled miss made a
//! twentieth of the broker's CPU.

/// At most this many runs per device; an id that would need another is kept per id instead.
pub const MAX_RUNS: usize = 16;

/// A run stops growing once its first id is this old, so that retention, which drops a run
/// when its newest id leaves the window, never keeps an id more than this past the window.
pub const RUN_SPAN_MS: u64 = 24 * 3600 * 1000;

const RUN_BYTES: usize = 32;

/// The flag byte after the runs: set when ids of the device may have per-id records.
const SINGLES: u8 = 1;

/// One run: every id in `first..=last` was seen; the oldest at `since_ms`, the newest at
/// `newest_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The lowest id of the run.
    pub first: u64,
    /// The highest id of the run.
    pub last: u64,
    /// When the run was started, ms.
    pub since_ms: u64,
    /// When its newest id was seen, ms.
    pub newest_ms: u64,
}

/// What [`Runs::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The id was in a run already: a resend.
    Duplicate,
    /// The id is in a run now; write the runs back.
    Added,
    /// No room for another run; keep the id in its own record.
    Full,
}

/// The runs of one sending device, sorted by `first`, never overlapping, and whether some of
/// its ids may be kept in per-id records instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runs {
    runs: Vec<Run>,
    singles: bool,
}

impl Runs {
    /// No runs yet; `singles` if the device already has per-id records.
    pub fn new(singles: bool) -> Runs {
        Runs { runs: Vec::new(), singles }
    }

    /// Decodes a stored value; `None` if it is not a whole number of well-formed runs and an
    /// optional flag byte. A value without the byte was written before the flag existed, when
    /// any id might have had its own record, so it reads as `singles`.
    pub fn decode(bytes: &[u8]) -> Option<Runs> {
        let (bytes, singles) = match bytes.len() % RUN_BYTES {
            0 => (bytes, true),
            1 => match bytes.split_last() {
                Some((&0, rest)) => (rest, false),
                Some((&SINGLES, rest)) => (rest, true),
                _ => return None,
            },
            _ => return None,
        };
        if bytes.len() / RUN_BYTES > MAX_RUNS {
            return None;
        }
        let word = |c: &[u8], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&c[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        };
        let runs: Vec<Run> = bytes
            .chunks_exact(RUN_BYTES)
            .map(|c| Run { first: word(c, 0), last: word(c, 1), since_ms: word(c, 2), newest_ms: word(c, 3) })
            .collect();
        let ordered =
            runs.iter().all(|r| r.first <= r.last) && runs.windows(2).all(|w| w[0].last < w[1].first);
        ordered.then_some(Runs { runs, singles })
    }

    /// The stored form: each run as four big-endian u64s, then the flag byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.runs.len() * RUN_BYTES + 1);
        for r in &self.runs {
            for w in [r.first, r.last, r.since_ms, r.newest_ms] {
                out.extend_from_slice(&w.to_be_bytes());
            }
        }
        out.push(if self.singles { SINGLES } else { 0 });
        out
    }

    /// The runs, lowest first.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// True when no run is left.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// True when some ids of the device may be in per-id records rather than in the runs.
    pub fn singles(&self) -> bool {
        self.singles
    }

    /// Notes that an id of the device went into a per-id record.
    pub fn mark_singles(&mut self) {
        self.singles = true;
    }

    /// Notes that no id of the device has a per-id record any more.
    pub fn clear_singles(&mut self) {
        self.singles = false;
    }

    /// True if `id` is in a run.
    pub fn contains(&self, id: u64) -> bool {
        self.runs.binary_search_by(|r| order(r, id)).is_ok()
    }

    /// Records `id`, seen at `now_ms`.
    pub fn insert(&mut self, id: u64, now_ms: u64) -> Inserted {
        let at = match self.runs.binary_search_by(|r| order(r, id)) {
            Ok(_) => return Inserted::Duplicate,
            Err(at) => at,
        };
        let young = |r: &Run| now_ms.saturating_sub(r.since_ms) < RUN_SPAN_MS;
        // `at` is where a new run would go: the run before it ends below `id`, the one at it
        // starts above.
        let below = at
            .checked_sub(1)
            .filter(|&b| self.runs[b].last.checked_add(1) == Some(id) && young(&self.runs[b]));
        let above = Some(at).filter(|&a| {
            a < self.runs.len() && id.checked_add(1) == Some(self.runs[a].first) && young(&self.runs[a])
        });
        match (below, above) {
            (Some(b), Some(a)) => {
                let upper = self.runs.remove(a);
                let run = &mut self.runs[b];
                run.last = upper.last;
                run.since_ms = run.since_ms.min(upper.since_ms);
                run.newest_ms = now_ms;
            }
            (Some(b), None) => {
                self.runs[b].last = id;
                self.runs[b].newest_ms = now_ms;
            }
            (None, Some(a)) => {
                self.runs[a].first = id;
                self.runs[a].newest_ms = now_ms;
            }
            (None, None) if self.runs.len() >= MAX_RUNS => return Inserted::Full,
            (None, None) => {
                self.runs.insert(at, Run { first: id, last: id, since_ms: now_ms, newest_ms: now_ms });
            }
        }
        Inserted::Added
    }

    /// Drops the runs whose newest id was seen before `cutoff_ms`; returns how many went.
    pub fn prune(&mut self, cutoff_ms: u64) -> usize {
        let before = self.runs.len();
        self.runs.retain(|r| r.newest_ms >= cutoff_ms);
        before - self.runs.len()
    }
}

fn order(r: &Run, id: u64) -> std::cmp::Ordering {
    if r.last < id {
        std::cmp::Ordering::Less
    } else if r.first > id {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(runs: &mut Runs, ids: impl IntoIterator<Item = u64>, now_ms: u64) {
        for id in ids {
            assert_eq!(runs.insert(id, now_ms), Inserted::Added, "id {id}");
        }
    }

    #[test]
    fn consecutive_ids_make_one_run_and_a_resend_is_a_duplicate() {
        let mut runs = Runs::new(false);
        added(&mut runs, 1..=1000, 5);
        assert_eq!(runs.runs(), &[Run { first: 1, last: 1000, since_ms: 5, newest_ms: 5 }]);
        assert_eq!(runs.insert(500, 6), Inserted::Duplicate);
        assert!(runs.contains(1) && runs.contains(1000) && !runs.contains(1001) && !runs.contains(0));
    }

    #[test]
    fn filling_a_gap_joins_the_runs_either_side() {
        let mut runs = Runs::new(false);
        added(&mut runs, [1, 2, 4, 5, 3], 7);
        assert_eq!(runs.runs(), &[Run { first: 1, last: 5, since_ms: 7, newest_ms: 7 }]);
        added(&mut runs, [9, 8], 8);
        assert_eq!(runs.runs()[1], Run { first: 8, last: 9, since_ms: 8, newest_ms: 8 });
    }

    #[test]
    fn out_of_order_ids_past_the_cap_are_refused_not_forgotten() {
        let mut runs = Runs::new(false);
        added(&mut runs, (0..MAX_RUNS as u64).map(|i| i * 10), 1);
        assert_eq!(runs.insert(1000, 1), Inserted::Full);
        assert!(!runs.contains(1000));
        // Still room to grow an existing run.
        assert_eq!(runs.insert(11, 1), Inserted::Added);
    }

    #[test]
    fn an_old_run_stops_growing_and_retention_drops_it_whole() {
        let mut runs = Runs::new(false);
        added(&mut runs, 1..=3, 0);
        added(&mut runs, [4, 5], RUN_SPAN_MS);
        assert_eq!(runs.runs().len(), 2);
        assert_eq!(runs.prune(1), 1);
        assert_eq!(runs.runs(), &[Run { first: 4, last: 5, since_ms: RUN_SPAN_MS, newest_ms: RUN_SPAN_MS }]);
        assert!(!runs.contains(2));
    }

    #[test]
    fn encoding_round_trips_and_damaged_values_are_refused() {
        let mut runs = Runs::new(false);
        added(&mut runs, [1, 2, 7, 40, 41, u64::MAX], 3);
        let bytes = runs.encode();
        assert_eq!(Runs::decode(&bytes), Some(runs));
        assert_eq!(Runs::decode(&bytes[..bytes.len() - 2]), None, "a torn run");
        let mut swapped = bytes[RUN_BYTES..2 * RUN_BYTES].to_vec();
        swapped.extend_from_slice(&bytes[..RUN_BYTES]);
        assert_eq!(Runs::decode(&swapped), None, "runs out of order");
        assert_eq!(Runs::decode(&[0]), Some(Runs::new(false)));
        assert_eq!(Runs::decode(&[2]), None, "an unknown flag");
    }

    #[test]
    fn the_singles_flag_round_trips_and_values_from_before_it_read_as_set() {
        let mut runs = Runs::new(false);
        added(&mut runs, [3, 4], 1);
        let plain = runs.encode();
        assert!(!Runs::decode(&plain).unwrap().singles());
        runs.mark_singles();
        assert_eq!(Runs::decode(&runs.encode()), Some(runs.clone()));
        // The format before the flag: the runs alone.
        let old = Runs::decode(&plain[..plain.len() - 1]).unwrap();
        assert!(old.singles());
        assert_eq!(old.runs(), runs.runs());
        assert!(Runs::decode(&[]).unwrap().singles());
    }

    proptest::proptest! {
        #[test]
        fn runs_hold_exactly_the_ids_added(ids in proptest::collection::vec(1u64..200, 0..300)) {
            let mut runs = Runs::new(false);
            let mut kept = std::collections::BTreeSet::new();
            for id in ids {
                match runs.insert(id, 1) {
                    Inserted::Duplicate => proptest::prop_assert!(kept.contains(&id)),
                    Inserted::Added => proptest::prop_assert!(kept.insert(id)),
                    Inserted::Full => proptest::prop_assert!(!kept.contains(&id)),
                }
            }
            for id in 0..201 {
                proptest::prop_assert_eq!(runs.contains(id), kept.contains(&id));
            }
            proptest::prop_assert_eq!(Runs::decode(&runs.encode()), Some(runs));
        }
    }
}
