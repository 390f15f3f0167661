//! The queue behind group commits: callers push work and wait for an answer; one committer
//! task at a time takes everything queued (up to a maximum) and handles it as one batch.
//! The committer starts when work arrives and none runs, and ends when the queue is empty,
//! so nothing lingers between bursts.
//!
//! Used by the command executor (`commands::batch`) and the saga runner's saves.

use std::sync::Mutex;

/// Work waiting for a batch.
#[derive(Debug)]
pub struct BatchQueue<T> {
    max: usize,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    items: Vec<T>,
    committing: bool,
}

impl<T> BatchQueue<T> {
    /// Batches of at most `max` items (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            state: Mutex::new(State {
                items: Vec::new(),
                committing: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item`; true when no committer runs and the caller must start one (which then
    /// calls [`next`](Self::next) until it returns `None`).
    #[must_use = "start a committer when this is true"]
    pub fn push(&self, item: T) -> bool {
        let mut state = self.state();
        state.items.push(item);
        !std::mem::replace(&mut state.committing, true)
    }

    /// The next batch, oldest first; `None` when nothing waits, and the committer's turn
    /// ends (the next push starts a new one).
    pub fn next(&self) -> Option<Vec<T>> {
        let mut state = self.state();
        if state.items.is_empty() {
            state.committing = false;
            return None;
        }
        let take = state.items.len().min(self.max);
        Some(state.items.drain(..take).collect())
    }

    /// Held by the committer while it runs: if it panics, the waiting items are dropped
    /// (their callers see their reply channels closed) and the next push starts a new one.
    pub fn turn(&self) -> Turn<'_, T> {
        Turn(self)
    }
}

/// See [`BatchQueue::turn`].
#[derive(Debug)]
pub struct Turn<'q, T>(&'q BatchQueue<T>);

impl<T> Drop for Turn<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.state();
            state.items.clear();
            state.committing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_committer_at_a_time_takes_batches_of_at_most_max() {
        let queue = BatchQueue::new(2);
        assert!(queue.push(1), "the first push starts a committer");
        assert!(!queue.push(2), "one runs already");
        assert!(!queue.push(3));
        assert_eq!(queue.next(), Some(vec![1, 2]));
        assert_eq!(queue.next(), Some(vec![3]));
        assert_eq!(queue.next(), None);
        assert!(
            queue.push(4),
            "the turn ended: the next push starts a new one"
        );
    }

    #[test]
    fn a_committer_that_panics_drops_the_waiting_items_and_ends_its_turn() {
        let queue = BatchQueue::new(8);
        assert!(queue.push(1));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _turn = queue.turn();
            let _ = queue.next();
            assert!(!queue.push(2));
            panic!("a bug in the committer");
        }));
        assert!(result.is_err());
        assert!(queue.push(3), "a new committer starts");
        assert_eq!(queue.next(), Some(vec![3]));
    }
}
