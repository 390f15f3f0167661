//! One async mutex per key, created on demand and dropped when nobody holds or awaits it.
//!
//! The command executor serialises the commands of one aggregate inside a process with it,
//! so a process never races itself into a version conflict; conflicts then come only from
//! other processes, and the retry loop handles those.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default, Clone)]
pub struct KeyedLocks {
    map: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

/// Holds the lock of one key until dropped.
#[derive(Debug)]
pub struct KeyGuard {
    map: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
    key: String,
    mutex: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for the key's lock; waiters are served in arrival order.
    pub async fn lock(&self, key: &str) -> KeyGuard {
        let mutex = {
            let mut map = self
                .map
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        let guard = mutex.clone().lock_owned().await;
        KeyGuard {
            map: self.map.clone(),
            key: key.to_owned(),
            mutex,
            guard: Some(guard),
        }
    }

    /// Keys currently held or awaited (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        // Release first, so the count below no longer includes our guard's reference.
        self.guard.take();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // References: the map's and ours. Anyone waiting cloned the Arc under the map lock,
        // which we hold now, so a count of two means nobody is waiting.
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_same_key_is_exclusive_and_entries_are_cleaned_up() {
        let locks = KeyedLocks::new();
        let first = locks.lock("a").await;
        let other_key = locks.lock("b").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("a").await;
            })
        };
        // The waiter cannot finish while `first` is held.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), async {
                while !waiter.is_finished() {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .is_err()
        );
        drop(first);
        waiter.await.unwrap();
        drop(other_key);
        assert!(locks.is_empty());
    }
}
