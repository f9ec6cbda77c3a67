//! The one cache type of the server: bounded, each entry expiring after a time to live, and a
//! full cache evicting its oldest entry rather than forgetting everything at once (which would
//! let one burst of distinct keys push every hot entry out together).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub struct Cache<K, V> {
    /// `None`: entries live until evicted or cleared.
    ttl: Option<Duration>,
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Insertion order: sequence number → key, oldest first.
    order: BTreeMap<u64, K>,
    next: u64,
}

struct Entry<V> {
    value: V,
    stored: Instant,
    sequence: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    pub fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                next: 0,
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value stored for `key`, unless it has expired (an expired entry is dropped).
    pub fn get(&self, key: &K) -> Option<V> {
        let mut inner = self.inner();
        let entry = inner.entries.get(key)?;
        if self.ttl.is_some_and(|ttl| entry.stored.elapsed() >= ttl) {
            let sequence = entry.sequence;
            inner.entries.remove(key);
            inner.order.remove(&sequence);
            return None;
        }
        Some(entry.value.clone())
    }

    /// The live value for `key`, or the one `make` builds, stored atomically: concurrent
    /// callers for one key all get the same value.
    pub fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> V {
        let mut inner = self.inner();
        let live = inner
            .entries
            .get(key)
            .filter(|entry| self.ttl.is_none_or(|ttl| entry.stored.elapsed() < ttl))
            .map(|entry| entry.value.clone());
        if let Some(value) = live {
            return value;
        }
        let value = make();
        self.store(&mut inner, key.clone(), value.clone());
        value
    }

    pub fn insert(&self, key: K, value: V) {
        let mut inner = self.inner();
        self.store(&mut inner, key, value);
    }

    fn store(&self, inner: &mut Inner<K, V>, key: K, value: V) {
        let sequence = inner.next;
        inner.next = inner.next.wrapping_add(1);
        let replaced = inner.entries.insert(
            key.clone(),
            Entry {
                value,
                stored: Instant::now(),
                sequence,
            },
        );
        if let Some(replaced) = replaced {
            inner.order.remove(&replaced.sequence);
        }
        inner.order.insert(sequence, key);
        while inner.entries.len() > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
    }

    pub fn clear(&self) {
        let mut inner = self.inner();
        inner.entries.clear();
        inner.order.clear();
    }

    pub fn len(&self) -> usize {
        self.inner().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_evicts_its_oldest_entry_only() {
        let cache = Cache::new(3, None);
        for key in 0..3 {
            cache.insert(key, key * 10);
        }
        cache.insert(0, 1);
        cache.insert(3, 30);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&1), None, "the oldest entry went");
        assert_eq!(cache.get(&0), Some(1), "a replaced entry counts as new");
        assert_eq!(cache.get(&2), Some(20));
        assert_eq!(cache.get(&3), Some(30));
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let cache = Cache::new(8, Some(Duration::from_millis(20)));
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get(&"a"), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn get_or_insert_with_builds_once_per_key() {
        let cache: Cache<&str, u32> = Cache::new(2, None);
        assert_eq!(cache.get_or_insert_with(&"a", || 1), 1);
        assert_eq!(cache.get_or_insert_with(&"a", || 2), 1);
        cache.get_or_insert_with(&"b", || 3);
        cache.get_or_insert_with(&"c", || 4);
        assert_eq!(cache.get(&"a"), None, "the oldest entry makes room");
    }
}
