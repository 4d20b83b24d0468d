//! Journaled changes held in memory until a checkpoint writes them to sled.
//!
//! The journal is the log of every acknowledged write, so sled need not see each write as it
//! happens: applying them one by one cost more CPU than everything else on the message path
//! (sled's page cache, its own log, its IO threads). Writes land in the *active* layer. A
//! checkpoint *freezes* it (the journal rotates at the same moment), applies the frozen layer to
//! sled, flushes sled, then drops the layer and the journal files it covered. Readers look in
//! the active layer, then the frozen one, then sled (see `table.rs`).
//!
//! A layer maps each key to its newest value, or to a removal, so that a removal hides what
//! sled still holds until the checkpoint. A key the writer *created* (an [`Op::Create`]: an
//! inbox entry's fresh sequence number) that no older layer holds either is known to be absent
//! from sled, so its removal in the same layer simply forgets it: an entry acknowledged and
//! pruned before its checkpoint costs sled nothing, not an insert and not a delete.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use super::journal::Op;

/// Keys the active layer may hold while a checkpoint is still writing the frozen one; past
/// this, writers wait for the checkpoint, so that a sustained load sled cannot absorb as fast
/// as it arrives slows down instead of growing memory without bound.
pub const MAX_ACTIVE_KEYS: usize = 512 * 1024;

/// The newest change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its newest value, or `None` for a removal.
    pub value: Option<Bytes>,
    /// Neither sled nor an older layer holds the key: removing it may forget it instead.
    created: bool,
}

/// The newest change per key of one tree.
pub type Changes = BTreeMap<Vec<u8>, Change>;

/// The newest change per key of every tree written since a point in the journal.
#[derive(Debug, Default)]
pub struct Layer {
    trees: HashMap<String, Changes>,
}

impl Layer {
    /// The changes of each tree.
    pub fn trees(&self) -> impl Iterator<Item = (&str, &Changes)> {
        self.trees.iter().map(|(name, changes)| (name.as_str(), changes))
    }

    /// Number of keys changed, over all trees.
    pub fn len(&self) -> usize {
        self.trees.values().map(BTreeMap::len).sum()
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.trees.values().all(BTreeMap::is_empty)
    }

    /// Applies `op`; `older` is the frozen layer under this one, if any.
    fn apply(&mut self, op: Op, older: Option<&Layer>) {
        let (tree, key, change) = match op {
            Op::Insert { tree, key, value } => {
                (tree, key, Change { value: Some(Bytes::from(value)), created: false })
            }
            Op::Create { tree, key, value } => {
                // The writer vouches for sled and the merged view; a removal waiting in the
                // frozen layer means sled may still hold an older value under this key.
                let created =
                    !older.is_some_and(|o| o.trees.get(&tree).is_some_and(|c| c.contains_key(&key)));
                (tree, key, Change { value: Some(Bytes::from(value)), created })
            }
            Op::Remove { tree, key } => (tree, key, Change { value: None, created: false }),
        };
        merge(self.trees.entry(tree).or_default(), key, change);
    }

    /// Puts `newer`'s changes over these.
    fn absorb(&mut self, newer: Layer) {
        for (tree, changes) in newer.trees {
            let mine = self.trees.entry(tree).or_default();
            for (key, change) in changes {
                merge(mine, key, change);
            }
        }
    }
}

/// Puts `change` over what `changes` holds for `key`. A key stays created (or not) whatever
/// is written over it; a removal of a created key forgets it, as sled never saw it.
fn merge(changes: &mut Changes, key: Vec<u8>, change: Change) {
    match changes.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(change);
        }
        Entry::Occupied(slot) if slot.get().created && change.value.is_none() => {
            slot.remove();
        }
        Entry::Occupied(mut slot) => slot.get_mut().value = change.value,
    }
}

/// What the layers say about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Its newest value.
    Value(Bytes),
    /// Removed since the last checkpoint.
    Removed,
    /// Not changed since the last checkpoint: sled has its newest value, if any.
    Unchanged,
}

#[derive(Debug, Default)]
struct Layers {
    active: Layer,
    frozen: Option<Arc<Layer>>,
}

/// The active layer, and the frozen one a checkpoint is writing to sled.
#[derive(Debug, Default)]
pub struct Memtable {
    layers: RwLock<Layers>,
}

impl Memtable {
    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        // Every change to the layers is a whole insert or swap, so a panic elsewhere while the
        // lock was held cannot leave them half-updated.
        self.layers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        // As in `read`.
        self.layers.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once the active layer has room: at once unless it is over [`MAX_ACTIVE_KEYS`]
    /// while a checkpoint runs.
    pub fn wait_for_room(&self) {
        let mut stalled = false;
        loop {
            {
                let layers = self.read();
                if layers.frozen.is_none() || layers.active.len() < MAX_ACTIVE_KEYS {
                    break;
                }
            }
            stalled = true;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if stalled {
            metrics::counter!("tern_store_memtable_stalls_total").increment(1);
        }
    }

    /// Applies `ops`, in order, to the active layer.
    pub fn apply(&self, ops: Vec<Op>) {
        let mut layers = self.write();
        let Layers { active, frozen } = &mut *layers;
        for op in ops {
            active.apply(op, frozen.as_deref());
        }
    }

    /// The newest change to `key` of `tree`.
    pub fn lookup(&self, tree: &str, key: &[u8]) -> Lookup {
        let layers = self.read();
        let newest = layers
            .active
            .trees
            .get(tree)
            .and_then(|c| c.get(key))
            .or_else(|| layers.frozen.as_ref()?.trees.get(tree)?.get(key));
        match newest.map(|c| &c.value) {
            Some(Some(v)) => Lookup::Value(v.clone()),
            Some(None) => Lookup::Removed,
            None => Lookup::Unchanged,
        }
    }

    /// A copy of at most `limit` changes to `tree` within `range`, newest layer winning, in key
    /// order (descending when `reverse`): the first ones from the end a read starts at.
    pub fn changes_in(
        &self,
        tree: &str,
        range: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
        reverse: bool,
        limit: usize,
    ) -> Vec<(Vec<u8>, Option<Bytes>)> {
        if !is_valid(range) {
            return Vec::new();
        }
        let layers = self.read();
        let mut newer = layer_range(layers.active.trees.get(tree), range, reverse);
        let mut older = layer_range(layers.frozen.as_ref().and_then(|f| f.trees.get(tree)), range, reverse);
        let mut out = Vec::with_capacity(limit.min(64));
        while out.len() < limit {
            let n = newer.as_mut().and_then(|i| i.peek().map(|(k, _)| *k));
            let o = older.as_mut().and_then(|i| i.peek().map(|(k, _)| *k));
            let take_newer = match (n, o) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(n), Some(o)) => {
                    let order = if reverse { o.cmp(n) } else { n.cmp(o) };
                    if order == std::cmp::Ordering::Equal {
                        // The newer layer's change to the key hides the older one's.
                        older.as_mut().and_then(Iterator::next);
                    }
                    order != std::cmp::Ordering::Greater
                }
            };
            let side = if take_newer { &mut newer } else { &mut older };
            // The side just peeked at holds an item.
            if let Some((k, c)) = side.as_mut().and_then(Iterator::next) {
                out.push((k.clone(), c.value.clone()));
            }
        }
        out
    }

    /// Moves the active layer into the frozen one, which a checkpoint then writes to sled.
    /// A frozen layer left by a failed checkpoint takes the newer changes over its own.
    pub fn freeze(&self) -> Arc<Layer> {
        let mut layers = self.write();
        let active = std::mem::take(&mut layers.active);
        let frozen = match layers.frozen.take() {
            None => active,
            Some(older) => {
                // The failed checkpoint's thread is gone, so this is the only handle left.
                let mut older =
                    Arc::try_unwrap(older).unwrap_or_else(|shared| Layer { trees: shared.trees.clone() });
                older.absorb(active);
                older
            }
        };
        let frozen = Arc::new(frozen);
        layers.frozen = Some(frozen.clone());
        metrics::gauge!("tern_store_memtable_keys").set(frozen.len() as f64);
        frozen
    }

    /// Drops the frozen layer once sled holds all of it.
    pub fn checkpointed(&self) {
        self.write().frozen = None;
        metrics::gauge!("tern_store_memtable_keys").set(0.0);
    }

    /// Keys changed in the active layer.
    pub fn active_len(&self) -> usize {
        self.read().active.len()
    }
}

/// One layer's changes in the direction of a read.
type LayerChanges<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Change)> + 'a>;

/// One layer's changes within `range`, in the direction of a read.
fn layer_range<'a>(
    layer: Option<&'a Changes>,
    range: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
    reverse: bool,
) -> Option<std::iter::Peekable<LayerChanges<'a>>> {
    let r = layer?.range(range.clone());
    let r: LayerChanges<'a> = if reverse { Box::new(r.rev()) } else { Box::new(r) };
    Some(r.peekable())
}

/// False for bounds `BTreeMap::range` would panic on (start after end, or both excluded at
/// the same key).
pub fn is_valid(range: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> bool {
    use Bound::*;
    match range {
        (Included(s), Included(e)) => s <= e,
        (Included(s), Excluded(e)) | (Excluded(s), Included(e)) => s <= e,
        (Excluded(s), Excluded(e)) => s < e,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], value: &[u8]) -> Op {
        Op::Insert { tree: "t".into(), key: key.to_vec(), value: value.to_vec() }
    }

    fn del(key: &[u8]) -> Op {
        Op::Remove { tree: "t".into(), key: key.to_vec() }
    }

    fn all(m: &Memtable) -> Vec<(Vec<u8>, Option<Bytes>)> {
        m.changes_in("t", &(Bound::Unbounded, Bound::Unbounded), false, usize::MAX)
    }

    #[test]
    fn the_newest_change_wins_and_removals_are_remembered() {
        let m = Memtable::default();
        m.apply(vec![put(b"a", b"1"), put(b"b", b"2"), put(b"a", b"3"), del(b"b")]);
        assert_eq!(m.lookup("t", b"a"), Lookup::Value(Bytes::from_static(b"3")));
        assert_eq!(m.lookup("t", b"b"), Lookup::Removed);
        assert_eq!(m.lookup("t", b"c"), Lookup::Unchanged);
        assert_eq!(m.lookup("other", b"a"), Lookup::Unchanged);
    }

    #[test]
    fn the_active_layer_hides_the_frozen_one() {
        let m = Memtable::default();
        m.apply(vec![put(b"a", b"old"), put(b"b", b"kept"), put(b"c", b"x")]);
        let frozen = m.freeze();
        assert_eq!(frozen.len(), 3);
        assert_eq!(m.active_len(), 0);
        m.apply(vec![put(b"a", b"new"), del(b"c")]);
        assert_eq!(m.lookup("t", b"a"), Lookup::Value(Bytes::from_static(b"new")));
        assert_eq!(m.lookup("t", b"b"), Lookup::Value(Bytes::from_static(b"kept")));
        assert_eq!(
            all(&m),
            vec![
                (b"a".to_vec(), Some(Bytes::from_static(b"new"))),
                (b"b".to_vec(), Some(Bytes::from_static(b"kept"))),
                (b"c".to_vec(), None),
            ]
        );
        m.checkpointed();
        assert_eq!(m.lookup("t", b"b"), Lookup::Unchanged);
        assert_eq!(m.lookup("t", b"c"), Lookup::Removed);
    }

    #[test]
    fn a_freeze_after_a_failed_checkpoint_keeps_both_layers_newest_first() {
        let m = Memtable::default();
        m.apply(vec![put(b"a", b"1"), put(b"b", b"1")]);
        let failed = m.freeze();
        drop(failed);
        m.apply(vec![put(b"a", b"2")]);
        let frozen = m.freeze();
        let t: Vec<_> = frozen.trees().flat_map(|(_, c)| c.clone()).map(|(k, c)| (k, c.value)).collect();
        assert_eq!(
            t,
            vec![
                (b"a".to_vec(), Some(Bytes::from_static(b"2"))),
                (b"b".to_vec(), Some(Bytes::from_static(b"1")))
            ]
        );
    }

    #[test]
    fn ranges_are_bounded_and_inverted_bounds_are_empty_not_a_panic() {
        let m = Memtable::default();
        m.apply(vec![put(b"a", b"1"), put(b"b", b"2"), put(b"c", b"3")]);
        let r = (Bound::Included(b"b".to_vec()), Bound::Excluded(b"c".to_vec()));
        assert_eq!(m.changes_in("t", &r, false, 9), vec![(b"b".to_vec(), Some(Bytes::from_static(b"2")))]);
        let inverted = (Bound::Included(b"c".to_vec()), Bound::Excluded(b"a".to_vec()));
        assert!(m.changes_in("t", &inverted, false, 9).is_empty());
        let same = (Bound::Excluded(b"b".to_vec()), Bound::Excluded(b"b".to_vec()));
        assert!(m.changes_in("t", &same, false, 9).is_empty());
    }

    #[test]
    fn a_limited_read_merges_both_layers_from_either_end() {
        let m = Memtable::default();
        m.apply(vec![put(b"a", b"old"), put(b"c", b"old"), put(b"e", b"old")]);
        let _frozen = m.freeze();
        m.apply(vec![put(b"b", b"new"), put(b"c", b"new"), del(b"e")]);
        let everything = (Bound::Unbounded, Bound::Unbounded);
        let keys = |reverse, limit| -> Vec<(Vec<u8>, Option<Bytes>)> {
            m.changes_in("t", &everything, reverse, limit)
        };
        let new = Some(Bytes::from_static(b"new"));
        assert_eq!(
            keys(false, 3),
            vec![
                (b"a".to_vec(), Some(Bytes::from_static(b"old"))),
                (b"b".to_vec(), new.clone()),
                (b"c".to_vec(), new.clone())
            ]
        );
        assert_eq!(keys(true, 2), vec![(b"e".to_vec(), None), (b"c".to_vec(), new)]);
        assert_eq!(keys(false, usize::MAX).len(), 4);
        assert!(keys(true, 0).is_empty());
    }

    fn create(key: &[u8], value: &[u8]) -> Op {
        Op::Create { tree: "t".into(), key: key.to_vec(), value: value.to_vec() }
    }

    #[test]
    fn a_created_key_removed_in_its_layer_is_forgotten_not_recorded() {
        let m = Memtable::default();
        m.apply(vec![create(b"a", b"1"), put(b"b", b"2"), create(b"c", b"3")]);
        m.apply(vec![put(b"a", b"1b"), del(b"a"), del(b"b")]);
        // `a` was created and is gone without a trace; `b` may be in sled, so its removal stays.
        assert_eq!(all(&m), vec![(b"b".to_vec(), None), (b"c".to_vec(), Some(Bytes::from_static(b"3")))]);
        assert_eq!(m.lookup("t", b"a"), Lookup::Unchanged);
        let frozen = m.freeze();
        assert_eq!(frozen.len(), 2);
    }

    #[test]
    fn a_key_of_an_older_layer_is_not_created_again() {
        let m = Memtable::default();
        // A removal waiting in the frozen layer: sled may still hold the key.
        m.apply(vec![del(b"a"), create(b"b", b"1")]);
        let _frozen = m.freeze();
        m.apply(vec![create(b"a", b"2"), del(b"a"), del(b"b")]);
        assert_eq!(m.lookup("t", b"a"), Lookup::Removed);
        // `b` was created in the frozen layer, which the checkpoint puts into sled.
        assert_eq!(m.lookup("t", b"b"), Lookup::Removed);
        assert_eq!(m.active_len(), 2);
        // A removal over a removal in the same layer is still a removal.
        m.apply(vec![del(b"c"), create(b"c", b"3"), del(b"c")]);
        assert_eq!(m.lookup("t", b"c"), Lookup::Removed);
    }

    #[test]
    fn after_a_failed_checkpoint_a_created_key_removed_since_is_forgotten() {
        let m = Memtable::default();
        m.apply(vec![create(b"a", b"1"), put(b"b", b"1")]);
        drop(m.freeze());
        m.apply(vec![del(b"a"), del(b"b")]);
        let frozen = m.freeze();
        let t: Vec<_> = frozen.trees().flat_map(|(_, c)| c.clone()).map(|(k, c)| (k, c.value)).collect();
        assert_eq!(t, vec![(b"b".to_vec(), None)]);
    }
}
