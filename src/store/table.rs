//! One sled tree as the daemon sees it: the journal's memtable over what sled holds.
//!
//! Writes go through the journal (`commit`); reads merge the memtable's newest changes over
//! sled, so a write is visible the moment it is committed, long before a checkpoint puts it
//! into sled. Without a memtable (offline admin, unit tests) the journal applies to sled and
//! reads go straight there.

use std::cmp::Ordering;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::journal::{Batch, Journal};
use super::memtable::{self, Lookup};
use super::StoreError;

/// Bounds of a key range.
pub type Range = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// sled's entries in one direction.
type SledEntries = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>>;

/// A named tree, read through the journal's memtable and written through the journal.
#[derive(Clone)]
pub struct Table {
    name: &'static str,
    tree: sled::Tree,
    journal: Arc<Journal>,
}

impl Table {
    /// The tree `name` of the journal's database.
    pub fn open(journal: &Arc<Journal>, name: &'static str) -> Result<Table, StoreError> {
        Ok(Table { name, tree: journal.db().open_tree(name)?, journal: journal.clone() })
    }

    /// The tree's name, as batches address it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Applies `batch` and journals it; see [`Journal::commit`].
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.journal.commit(batch)
    }

    /// Like [`Table::commit`], but never waits for room in the memtable: for the committer's
    /// own writes, which must not wait for a checkpoint only the committer can start.
    pub fn commit_unthrottled(&self, batch: Batch) -> Result<(), StoreError> {
        self.journal.commit_unthrottled(batch)
    }

    /// The newest value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if let Some(m) = self.journal.memtable() {
            match m.lookup(self.name, key) {
                Lookup::Value(v) => return Ok(Some(v)),
                Lookup::Removed => return Ok(None),
                Lookup::Unchanged => {}
            }
        }
        Ok(self.tree.get(key)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// True when `key` has a value.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    /// The entries within `range`, in key order.
    pub fn range(&self, range: Range) -> Merged {
        self.merged(range, false)
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Merged {
        self.range(prefix_range(prefix))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Merged {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }

    /// The entry with the highest key that starts with `prefix`.
    pub fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
        self.merged(prefix_range(prefix), true).next().transpose()
    }

    fn merged(&self, range: Range, reverse: bool) -> Merged {
        let mut merged = Merged {
            table: self.clone(),
            reverse,
            rest: Some(range),
            chunk: FIRST_CHUNK,
            overlay: Vec::new().into_iter().peekable(),
            base: (Box::new(std::iter::empty()) as SledEntries).peekable(),
        };
        merged.refill();
        merged
    }
}

/// The keys that start with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> Range {
    // The first key after every key with this prefix: the prefix with its last non-0xff byte
    // bumped and the rest cut off; an all-0xff prefix has no such key.
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (Bound::Included(prefix.to_vec()), Bound::Excluded(end));
        }
    }
    (Bound::Included(prefix.to_vec()), Bound::Unbounded)
}

/// Memtable changes a read copies for its first window; each later window doubles that, so a
/// short read at the start of a long backlog copies little and a long scan refills rarely.
const FIRST_CHUNK: usize = 32;
/// The most memtable changes one window copies.
const MAX_CHUNK: usize = 4096;

/// The memtable's changes merged over sled's entries, in one direction, read a window at a
/// time: up to `chunk` memtable changes, and sled's entries as far as the last of them.
pub struct Merged {
    table: Table,
    reverse: bool,
    /// What comes after the current window; `None` once the window reaches the range's end.
    rest: Option<Range>,
    chunk: usize,
    overlay: Peekable<std::vec::IntoIter<(Vec<u8>, Option<Bytes>)>>,
    base: Peekable<SledEntries>,
}

impl Merged {
    /// Moves to the next window; false when the range is done.
    fn refill(&mut self) -> bool {
        let Some(range) = self.rest.take() else { return false };
        if !memtable::is_valid(&range) {
            return false;
        }
        let overlay = match self.table.journal.memtable() {
            Some(m) => m.changes_in(self.table.name, &range, self.reverse, self.chunk),
            None => Vec::new(),
        };
        let window = match overlay.last() {
            // The memtable may hold more past the last change copied: this window ends there,
            // so that no sled entry beyond it comes out before the changes that may hide it.
            Some((last, _)) if overlay.len() == self.chunk => {
                let (start, end) = range;
                if self.reverse {
                    self.rest = Some((start, Bound::Excluded(last.clone())));
                    (Bound::Included(last.clone()), end)
                } else {
                    self.rest = Some((Bound::Excluded(last.clone()), end));
                    (start, Bound::Included(last.clone()))
                }
            }
            _ => range,
        };
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        let base = self.table.tree.range(window);
        let base: SledEntries = if self.reverse { Box::new(base.rev()) } else { Box::new(base) };
        self.base = base.peekable();
        self.overlay = overlay.into_iter().peekable();
        true
    }

    /// Just the keys.
    pub fn keys(self) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> {
        self.map(|item| item.map(|(k, _)| k))
    }

    /// Just the values.
    pub fn values(self) -> impl Iterator<Item = Result<Bytes, StoreError>> {
        self.map(|item| item.map(|(_, v)| v))
    }
}

impl Iterator for Merged {
    type Item = Result<(Vec<u8>, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.overlay.peek().is_none() && self.base.peek().is_none() {
                if self.refill() {
                    continue;
                }
                return None;
            }
            let order = match (self.overlay.peek(), self.base.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                // sled's errors come out before anything else.
                (None, Some(_)) | (Some(_), Some(Err(_))) => Ordering::Greater,
                (Some((ok, _)), Some(Ok((bk, _)))) => {
                    let o = ok.as_slice().cmp(bk.as_ref());
                    if self.reverse {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            match order {
                Ordering::Greater => {
                    let item = self.base.next()?;
                    return Some(
                        item.map(|(k, v)| (k.to_vec(), Bytes::copy_from_slice(&v))).map_err(Into::into),
                    );
                }
                // The memtable's change is newer than what sled holds.
                Ordering::Equal => drop(self.base.next()),
                Ordering::Less => {}
            }
            if let (key, Some(value)) = self.overlay.next()? {
                return Some(Ok((key, value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with_memtable() -> (sled::Db, Table) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let journal = Arc::new(Journal::with_memtable(db.clone()));
        (db.clone(), Table::open(&journal, "t").unwrap())
    }

    fn put(t: &Table, pairs: &[(&str, &str)]) {
        let mut b = Batch::default();
        for (k, v) in pairs {
            b.insert(t.name(), k.as_bytes(), v.as_bytes());
        }
        t.commit(b).unwrap();
    }

    fn keys(m: Merged) -> Vec<String> {
        m.keys().map(|k| String::from_utf8(k.unwrap()).unwrap()).collect()
    }

    #[test]
    fn reads_merge_the_memtable_over_sled_in_both_directions() {
        let (db, t) = table_with_memtable();
        let sled_tree = db.open_tree("t").unwrap();
        for k in ["a1", "a3", "a5", "b1"] {
            sled_tree.insert(k, "sled").unwrap();
        }
        put(&t, &[("a2", "mem"), ("a3", "mem")]);
        let mut b = Batch::default();
        b.remove("t", "a5");
        t.commit(b).unwrap();
        assert_eq!(keys(t.scan_prefix(b"a")), ["a1", "a2", "a3"]);
        assert_eq!(t.get(b"a3").unwrap().unwrap(), "mem");
        assert_eq!(t.get(b"a1").unwrap().unwrap(), "sled");
        assert_eq!(t.get(b"a5").unwrap(), None);
        assert_eq!(t.last_with_prefix(b"a").unwrap().unwrap().0, b"a3");
        assert_eq!(keys(t.iter()), ["a1", "a2", "a3", "b1"]);
        // sled itself has not seen the writes.
        assert!(sled_tree.get("a2").unwrap().is_none());
    }

    #[test]
    fn a_removal_of_the_last_sled_key_is_skipped_going_backwards() {
        let (db, t) = table_with_memtable();
        let sled_tree = db.open_tree("t").unwrap();
        sled_tree.insert("p1", "x").unwrap();
        sled_tree.insert("p2", "x").unwrap();
        let mut b = Batch::default();
        b.remove("t", "p2");
        t.commit(b).unwrap();
        assert_eq!(t.last_with_prefix(b"p").unwrap().unwrap().0, b"p1");
        assert_eq!(t.last_with_prefix(b"q").unwrap(), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Reads that take many windows (hundreds of memtable changes over sled, in two layers)
        /// see what a plain map of the newest values holds, from either end and in any range.
        #[test]
        fn windowed_reads_match_a_model(
            in_sled in proptest::collection::vec(0u16..600, 0..300),
            older in proptest::collection::vec((0u16..600, proptest::bool::ANY), 0..300),
            newer in proptest::collection::vec((0u16..600, proptest::bool::ANY), 0..300),
            from in 0u16..700,
            len in 0u16..700,
        ) {
            let (db, t) = table_with_memtable();
            let sled_tree = db.open_tree("t").unwrap();
            let mut model = std::collections::BTreeMap::new();
            for k in in_sled {
                sled_tree.insert(k.to_be_bytes(), "sled").unwrap();
                model.insert(k.to_be_bytes().to_vec(), "sled");
            }
            for (layer, ops) in [older, newer].into_iter().enumerate() {
                let mut b = Batch::default();
                for (k, keep) in ops {
                    let key = k.to_be_bytes();
                    if keep {
                        b.insert("t", key, "mem");
                        model.insert(key.to_vec(), "mem");
                    } else {
                        b.remove("t", key);
                        model.remove(key.as_slice());
                    }
                }
                t.commit(b).unwrap();
                if layer == 0 {
                    t.journal.memtable().unwrap().freeze();
                }
            }
            let to = from.saturating_add(len);
            let range: Range = (Bound::Included(from.to_be_bytes().to_vec()), Bound::Excluded(to.to_be_bytes().to_vec()));
            let want: Vec<_> = model.range(range.clone()).map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
            let got: Vec<_> = t.range(range.clone()).map(|r| { let (k, v) = r.unwrap(); (k, v.to_vec()) }).collect();
            proptest::prop_assert_eq!(&got, &want);
            let backwards: Vec<_> = t.merged(range, true).map(|r| r.unwrap().0).collect();
            let want_back: Vec<_> = want.iter().rev().map(|(k, _)| k.clone()).collect();
            proptest::prop_assert_eq!(backwards, want_back);
            let all = t.iter().count();
            proptest::prop_assert_eq!(all, model.len());
        }
    }

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_range(b"ab"), (Bound::Included(b"ab".to_vec()), Bound::Excluded(b"ac".to_vec())));
        assert_eq!(prefix_range(&[1, 0xff]), (Bound::Included(vec![1, 0xff]), Bound::Excluded(vec![2])));
        assert_eq!(prefix_range(&[0xff]), (Bound::Included(vec![0xff]), Bound::Unbounded));
    }
}
