//! Executing a command against an aggregate: load, decide, append, commit, with
//! - optimistic concurrency: the events table's primary key refuses a second writer of the
//!   same version; the loser reloads and decides again, a bounded number of times;
//! - one writer per aggregate inside a process (a keyed async lock), so a process never
//!   conflicts with itself: conflicts come only from other processes;
//! - expected versions (`If-Match`);
//! - idempotency keys, recorded in the same transaction as the events, so a retried
//!   request replays the first outcome and appends nothing;
//! - a cache of the states this executor committed, so a command on an aggregate the process
//!   just wrote skips the load. The cache is only ever a guess: a stale state (another
//!   process appended since) loses at the events table's primary key like any racing writer
//!   and is reloaded, and a rejection, a no-op or a version mismatch decided on a cached
//!   state is decided again on a fresh load before it is reported.
//!
//! Not here: what the HTTP status of each outcome is (`write-side`), and the rules
//! (`domain`). The executor knows aggregates only through the cqrs-es `Aggregate` trait.

mod batch;

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventUpcaster;
use rand::Rng;
use sqlx::{PgConnection, PgPool, Row};

use crate::event_store::notify::AppendNotifier;
use crate::event_store::stream::{self, AppendError, SnapshotPolicy};
use crate::event_store::{ConsistencyToken, EventMetadata, StoreError, StreamId, is_lock_timeout};
use crate::keyed_lock::KeyedLocks;

/// The version a caller expects the aggregate to be at (from `If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Exactly this version.
    Exactly(u64),
    /// Any version, as long as the aggregate exists (`If-Match: *`).
    Exists,
}

impl ExpectedVersion {
    fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Exactly(expected) => expected == actual,
            ExpectedVersion::Exists => actual > 0,
        }
    }
}

/// A client's idempotency key with a digest of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    request_hash: [u8; 32],
}

/// Why a string is not a usable idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an idempotency key must be 1 to {max} visible ASCII characters (a UUID is a good choice)",
    max = IdempotencyKey::MAX_LEN
)]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    /// `request_hash` identifies the request (method, route, parameters, body), so that the
    /// same key sent with another request is recognised and refused.
    pub fn new(key: &str, request_hash: [u8; 32]) -> Result<Self, InvalidIdempotencyKey> {
        let valid = !key.is_empty()
            && key.len() <= Self::MAX_LEN
            && key.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(InvalidIdempotencyKey);
        }
        Ok(Self {
            key: key.to_owned(),
            request_hash,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// How one command is to be executed, beyond the command itself.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    pub expected_version: Option<ExpectedVersion>,
    pub idempotency: Option<IdempotencyKey>,
    pub metadata: EventMetadata,
    /// The caller just minted the aggregate's id (a random UUID), so the aggregate has no
    /// events and the load is skipped. Like a cached state this is a guess the database
    /// checks: if events exist after all, the append collides and the command is decided
    /// again on a fresh load (as are rejections and no-ops).
    pub new_aggregate: bool,
}

/// A command that took effect (or had already taken effect, when `replayed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The aggregate the command ran against. For a replay, the one the first request used,
    /// which matters when the caller mints ids (placing an order).
    pub aggregate_id: String,
    /// The aggregate's version after the command.
    pub version: u64,
    /// Global position of the aggregate's latest event: the consistency token a reader can
    /// wait for. `None` only for an aggregate that still has no events.
    pub position: Option<i64>,
    /// The transaction that appended the event at `position`, when this execution did (not
    /// for a no-op or a replay): with it, `token()` tells a reader where the event is in the
    /// log without a lookup.
    pub transaction_id: Option<u64>,
    /// Events this execution appended; 0 for a no-op and for a replay.
    pub appended: usize,
    /// True when an earlier request with the same idempotency key did the work.
    pub replayed: bool,
}

impl Committed {
    /// The consistency token a reader sends to read this write, if the aggregate has events.
    pub fn token(&self) -> Option<ConsistencyToken> {
        self.position.map(|position| ConsistencyToken {
            position,
            transaction_id: self.transaction_id,
        })
    }
}

/// A command's outcome with the events its execution appended.
pub type CommittedWithEvents<A> = (Committed, Vec<<A as Aggregate>::Event>);

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E: std::error::Error + 'static> {
    /// The aggregate refused the command; nothing was stored.
    #[error(transparent)]
    Rejected(E),
    #[error("expected version {expected:?}, but the aggregate is at version {actual}")]
    VersionMismatch {
        expected: ExpectedVersion,
        actual: u64,
    },
    /// Other writers kept winning the race for the next version.
    #[error("gave up after {attempts} attempts lost to concurrent writers")]
    Conflict { attempts: u32 },
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused { key: String },
    #[error("a request with idempotency key {key:?} is still being processed")]
    IdempotencyKeyInFlight { key: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Tuning of an executor.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorPolicy {
    /// Attempts per command when other processes win the race for a version.
    pub max_attempts: u32,
    pub snapshot: Option<SnapshotPolicy>,
    /// Committed states kept in memory (0: none); see the module's documentation.
    pub cached_states: usize,
    /// Commands that arrive while a transaction commits share the next one (see
    /// [`batch`](self::batch)); off, each command has a transaction of its own.
    pub group_commit: bool,
}

impl ExecutorPolicy {
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
    pub const DEFAULT_CACHED_STATES: usize = 4096;

    pub fn without_snapshots() -> Self {
        Self {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            snapshot: None,
            cached_states: Self::DEFAULT_CACHED_STATES,
            group_commit: true,
        }
    }

    pub fn with_snapshots(every: u64, state_version: i32) -> Self {
        Self {
            snapshot: Some(SnapshotPolicy {
                every,
                state_version,
            }),
            ..Self::without_snapshots()
        }
    }

    /// The same policy without the state cache: every command loads its aggregate.
    pub fn uncached(self) -> Self {
        Self {
            cached_states: 0,
            ..self
        }
    }

    /// The same policy without group commit: each command has a transaction of its own.
    pub fn without_group_commit(self) -> Self {
        Self {
            group_commit: false,
            ..self
        }
    }
}

/// A state this executor committed.
#[derive(Clone)]
struct Cached<A> {
    aggregate: A,
    version: u64,
    position: Option<i64>,
}

/// Committed states by aggregate id, at most `capacity`, the oldest entry evicted first.
struct StateCache<A> {
    capacity: usize,
    map: HashMap<String, Cached<A>>,
    order: VecDeque<String>,
}

impl<A: Clone> StateCache<A> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: &str) -> Option<Cached<A>> {
        self.map.get(id).cloned()
    }

    fn contains(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    fn put(&mut self, id: &str, cached: Cached<A>) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(id.to_owned(), cached).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
        // Ids removed by `forget` leave stale entries in `order`; drop them now and then.
        if self.order.len() > 2 * self.capacity.max(self.map.len()) {
            let map = &self.map;
            self.order.retain(|id| map.contains_key(id));
        }
    }

    fn forget(&mut self, id: &str) {
        self.map.remove(id);
    }
}

/// Executes commands against aggregates of type `A`. Cheap to clone; clones share the
/// per-aggregate locks, so every handler of one process must use clones of one executor.
pub struct CommandExecutor<A: Aggregate>
where
    A::Error: 'static,
{
    pool: PgPool,
    services: Arc<A::Services>,
    policy: ExecutorPolicy,
    locks: KeyedLocks,
    notifier: AppendNotifier,
    upcasters: Arc<Vec<Box<dyn EventUpcaster>>>,
    cache: Arc<Mutex<StateCache<A>>>,
    batcher: Arc<batch::Batcher<A>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for CommandExecutor<A>
where
    A::Error: 'static,
{
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            services: self.services.clone(),
            policy: self.policy,
            locks: self.locks.clone(),
            notifier: self.notifier.clone(),
            upcasters: self.upcasters.clone(),
            cache: self.cache.clone(),
            batcher: self.batcher.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for CommandExecutor<A>
where
    A::Error: 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("aggregate", &A::TYPE)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

enum Attempt<A: Aggregate>
where
    A::Error: 'static,
{
    /// With the state to cache once the transaction commits (none for a replay).
    Done(Committed, Vec<A::Event>, Option<Cached<A>>),
    Conflict,
    Failed(ExecuteError<A::Error>),
}

impl<A> CommandExecutor<A>
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone + Send + Sync,
    A::Error: Send + 'static,
{
    /// Sends this executor's after-commit notifications through `notifier`'s task, with
    /// whatever else the process notifies (the executors of one process then share one
    /// notification per round).
    pub fn notifying_through(mut self, notifier: &crate::event_store::notify::Notifier) -> Self {
        self.notifier = notifier.sharing(crate::channels::EVENTS, String::new());
        self
    }

    pub fn new(pool: PgPool, services: A::Services, policy: ExecutorPolicy) -> Self {
        Self {
            notifier: AppendNotifier::new(pool.clone()),
            pool,
            services: Arc::new(services),
            policy,
            locks: KeyedLocks::new(),
            upcasters: Arc::new(Vec::new()),
            cache: Arc::new(Mutex::new(StateCache::new(policy.cached_states))),
            batcher: Arc::new(batch::Batcher::new(batch::MAX_BATCH)),
            _aggregate: PhantomData,
        }
    }

    /// Upcasters applied to stored events before they are deserialised.
    pub fn with_upcasters(mut self, upcasters: Vec<Box<dyn EventUpcaster>>) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, StateCache<A>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `command` against aggregate `aggregate_id`.
    ///
    /// On success the events (if any) and the idempotency key (if any) are committed
    /// together. Errors: `Rejected` (the domain said no), `VersionMismatch` (the
    /// `expected_version` was stale), `Conflict` (other processes kept winning),
    /// `IdempotencyKeyReused` / `IdempotencyKeyInFlight`, `Store` (the database failed; when
    /// it failed at commit the outcome is unknown, and a retry with the same idempotency key
    /// resolves it).
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        options: CommandOptions,
    ) -> Result<Committed, ExecuteError<A::Error>> {
        self.execute_with_events(aggregate_id, command, options)
            .await
            .map(|(committed, _)| committed)
    }

    /// Like `execute`, and also returns the events this execution appended (none for a
    /// no-op or a replay).
    #[tracing::instrument(skip_all, fields(aggregate = A::TYPE, aggregate_id))]
    pub async fn execute_with_events(
        &self,
        aggregate_id: &str,
        command: A::Command,
        options: CommandOptions,
    ) -> Result<CommittedWithEvents<A>, ExecuteError<A::Error>> {
        tracing::Span::current().record("aggregate_id", aggregate_id);
        let mut guess = true;
        if self.policy.group_commit {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = batch::Request {
                aggregate_id: aggregate_id.to_owned(),
                command: command.clone(),
                options: options.clone(),
                reply,
            };
            if self.batcher.push(request) {
                batch::spawn_committer(self.clone());
            }
            match answer.await {
                Ok(batch::Reply::Done(done)) => return Ok(done),
                Ok(batch::Reply::Failed(err)) => return Err(err),
                Ok(batch::Reply::Alone { guess: with_guess }) => guess = with_guess,
                // The committer stopped (panicked) before answering: its append may have
                // committed (a batch without keys commits it on its own), so the command is
                // not run again.
                Err(_) => {
                    return Err(ExecuteError::Store(StoreError::Transaction {
                        operation: "commit",
                        source: sqlx::Error::Protocol(
                            "the group commit stopped before answering; the outcome is unknown"
                                .to_owned(),
                        ),
                    }));
                }
            }
        }
        self.execute_alone(aggregate_id, command, options, guess)
            .await
    }

    /// The command in a transaction of its own, retried when another process wins the race
    /// for the next version. `guess`: the first attempt may start from a guessed state.
    async fn execute_alone(
        &self,
        aggregate_id: &str,
        command: A::Command,
        options: CommandOptions,
        guess: bool,
    ) -> Result<CommittedWithEvents<A>, ExecuteError<A::Error>> {
        let _guard = self.locks.lock(aggregate_id).await;
        let mut attempt = 1;
        loop {
            // Guesses (a cached state, a new aggregate) only on the first attempt: a conflict
            // may mean the guess was wrong.
            let guess = guess && attempt == 1;
            match self
                .attempt(aggregate_id, command.clone(), &options, guess)
                .await
            {
                Attempt::Done(committed, events, _) => return Ok((committed, events)),
                Attempt::Failed(err) => return Err(err),
                Attempt::Conflict if attempt >= self.policy.max_attempts => {
                    return Err(ExecuteError::Conflict { attempts: attempt });
                }
                Attempt::Conflict => {
                    tracing::debug!(attempt, "lost a race for the next version; retrying");
                    backoff(attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(
        &self,
        aggregate_id: &str,
        command: A::Command,
        options: &CommandOptions,
        guess: bool,
    ) -> Attempt<A> {
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(source) => {
                return Attempt::Failed(
                    StoreError::Transaction {
                        operation: "begin",
                        source,
                    }
                    .into(),
                );
            }
        };
        match self
            .run(&mut tx, aggregate_id, command, options, guess)
            .await
        {
            Attempt::Done(committed, events, cached) => {
                if committed.replayed {
                    // Nothing was written.
                    if let Err(source) = tx.rollback().await {
                        return Attempt::Failed(
                            StoreError::Transaction {
                                operation: "roll back",
                                source,
                            }
                            .into(),
                        );
                    }
                    return Attempt::Done(committed, events, None);
                }
                match tx.commit().await {
                    Ok(()) => {
                        if committed.appended > 0 {
                            self.notifier.committed();
                        }
                        if let Some(cached) = cached {
                            self.cache().put(aggregate_id, cached);
                        }
                        Attempt::Done(committed, events, None)
                    }
                    Err(source) => Attempt::Failed(
                        StoreError::Transaction {
                            operation: "commit",
                            source,
                        }
                        .into(),
                    ),
                }
            }
            other => {
                if matches!(other, Attempt::Conflict) {
                    // Maybe the cached state was stale: another process appended.
                    self.cache().forget(aggregate_id);
                }
                // Roll back now rather than on the connection's next use: the transaction may
                // hold an idempotency key that concurrent retries are waiting for.
                let _ = tx.rollback().await;
                other
            }
        }
    }

    async fn run(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        command: A::Command,
        options: &CommandOptions,
        guess: bool,
    ) -> Attempt<A> {
        let mut cached = if guess {
            self.cache().get(aggregate_id).or_else(|| {
                options.new_aggregate.then(|| Cached {
                    aggregate: A::default(),
                    version: 0,
                    position: None,
                })
            })
        } else {
            None
        };
        // Decided before the key is claimed: the claim is the transaction's first write,
        // which gives it its id, the log's order (see `batch::write`).
        let decided = loop {
            let from_cache = cached.is_some();
            let loaded = match cached.take() {
                Some(cached) => stream::Loaded {
                    aggregate: cached.aggregate,
                    version: cached.version,
                    last_position: cached.position,
                },
                None => match stream::load::<A>(
                    conn,
                    aggregate_id,
                    self.policy.snapshot,
                    &self.upcasters,
                )
                .await
                {
                    Ok(loaded) => loaded,
                    // A replay is still answered, from the key, below.
                    Err(err) => break Err(err.into()),
                },
            };
            if let Some(expected) = options.expected_version
                && !expected.admits(loaded.version)
            {
                if from_cache {
                    continue;
                }
                break Err(ExecuteError::VersionMismatch {
                    expected,
                    actual: loaded.version,
                });
            }
            let mut aggregate = loaded.aggregate;
            let sink = EventSink::default();
            if let Err(rejection) = aggregate
                .handle(command.clone(), &self.services, &sink)
                .await
            {
                if from_cache {
                    continue;
                }
                break Err(ExecuteError::Rejected(rejection));
            }
            let events = sink.collect().await;
            if events.is_empty() && from_cache {
                // A no-op is an answer about the current state: confirm it on a fresh load.
                continue;
            }
            break Ok(((loaded.version, loaded.last_position), aggregate, events));
        };
        // A replay's answer is the first request's, whatever this one decided.
        if let Some(idempotency) = &options.idempotency {
            match claim_key(conn, idempotency, A::TYPE, aggregate_id).await {
                Ok(Claim::Claimed) => {}
                Ok(Claim::Replay(committed)) => {
                    return Attempt::Done(committed, Vec::new(), None);
                }
                Err(err) => return Attempt::Failed(err.into_execute_error()),
            }
        }
        let ((loaded_version, loaded_position), aggregate, events) = match decided {
            Ok(decided) => decided,
            Err(err) => return Attempt::Failed(err),
        };
        let (version, position, transaction_id) = if events.is_empty() {
            let position = match loaded_position {
                Some(position) => Some(position),
                None if loaded_version == 0 => None,
                None => {
                    let stream = StreamId::new(A::TYPE, aggregate_id);
                    match stream::position_of(conn, &stream, loaded_version).await {
                        Ok(position) => position,
                        Err(err) => return Attempt::Failed(err.into()),
                    }
                }
            };
            (loaded_version, position, None)
        } else {
            let mut metadata = options.metadata.clone();
            if let Some(idempotency) = &options.idempotency {
                metadata.idempotency_key = Some(idempotency.key.clone());
            }
            match stream::append::<A>(conn, aggregate_id, loaded_version, &events, &metadata).await
            {
                Ok(appended) => (
                    appended.version,
                    Some(appended.last_position),
                    Some(appended.transaction_id),
                ),
                Err(AppendError::Conflict { .. }) => return Attempt::Conflict,
                Err(AppendError::Store(err)) => return Attempt::Failed(err.into()),
            }
        };
        if let Some(policy) = self.policy.snapshot
            && stream::snapshot_due(policy, loaded_version, version)
            && let Err(err) =
                stream::save_snapshot(conn, aggregate_id, &aggregate, version, policy).await
        {
            return Attempt::Failed(err.into());
        }
        let committed = Committed {
            aggregate_id: aggregate_id.to_owned(),
            version,
            position,
            transaction_id,
            appended: events.len(),
            replayed: false,
        };
        if let Some(idempotency) = &options.idempotency
            && let Err(err) = record_key(conn, idempotency, &committed).await
        {
            return Attempt::Failed(err.into());
        }
        let cached = Cached {
            aggregate,
            version,
            position,
        };
        Attempt::Done(committed, events, Some(cached))
    }
}

/// Sleeps 1-4 ms, then 2-8 ms, ... (doubling with full jitter), so racing writers spread out.
async fn backoff(attempt: u32) {
    let base = 1u64 << attempt.min(6);
    let millis = rand::rng().random_range(base..=base * 4);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

enum Claim {
    Claimed,
    Replay(Committed),
}

enum ClaimError {
    Reused { key: String },
    InFlight { key: String },
    Store(StoreError),
}

impl ClaimError {
    fn into_execute_error<E: std::error::Error + 'static>(self) -> ExecuteError<E> {
        match self {
            ClaimError::Reused { key } => ExecuteError::IdempotencyKeyReused { key },
            ClaimError::InFlight { key } => ExecuteError::IdempotencyKeyInFlight { key },
            ClaimError::Store(err) => ExecuteError::Store(err),
        }
    }
}

/// Claims the key for this transaction, or finds the outcome of the request that used it.
///
/// If another transaction holds the key uncommitted, the INSERT waits for it (the primary
/// key's uniqueness check), up to `lock_timeout`: when that transaction commits we replay
/// its outcome; when it rolls back (the command was rejected) we run.
async fn claim_key(
    conn: &mut PgConnection,
    idempotency: &IdempotencyKey,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Claim, ClaimError> {
    let store_error = |source| {
        ClaimError::Store(StoreError::Idempotency {
            key: idempotency.key.clone(),
            source,
        })
    };
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, request_hash, aggregate_type, aggregate_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&idempotency.key)
    .bind(&idempotency.request_hash[..])
    .bind(aggregate_type)
    .bind(aggregate_id)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(result) if result.rows_affected() == 1 => return Ok(Claim::Claimed),
        Ok(_) => {}
        Err(err) if is_lock_timeout(&err) => {
            return Err(ClaimError::InFlight {
                key: idempotency.key.clone(),
            });
        }
        Err(err) => return Err(store_error(err)),
    }
    let row = sqlx::query(
        "SELECT request_hash, aggregate_id, version, position,
                transaction_id::text AS transaction_id
           FROM idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(&idempotency.key)
    .fetch_one(&mut *conn)
    .await
    .map_err(store_error)?;
    let request_hash: Vec<u8> = row.try_get("request_hash").map_err(store_error)?;
    if request_hash != idempotency.request_hash {
        return Err(ClaimError::Reused {
            key: idempotency.key.clone(),
        });
    }
    let version: Option<i64> = row.try_get("version").map_err(store_error)?;
    let Some(version) = version else {
        // Only the claiming transaction can see a row without an outcome.
        return Err(ClaimError::InFlight {
            key: idempotency.key.clone(),
        });
    };
    Ok(Claim::Replay(Committed {
        aggregate_id: row.try_get("aggregate_id").map_err(store_error)?,
        version: u64::try_from(version).unwrap_or(0),
        position: row.try_get("position").map_err(store_error)?,
        transaction_id: row
            .try_get::<Option<String>, _>("transaction_id")
            .map_err(store_error)?
            .and_then(|id| id.parse().ok()),
        appended: 0,
        replayed: true,
    }))
}

/// Stores the outcome under the claimed key, in the command's transaction.
async fn record_key(
    conn: &mut PgConnection,
    idempotency: &IdempotencyKey,
    committed: &Committed,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idempotency_keys SET version = $2, position = $3, transaction_id = $4::text::xid8
          WHERE idempotency_key = $1",
    )
    .bind(&idempotency.key)
    .bind(i64::try_from(committed.version).unwrap_or(i64::MAX))
    .bind(committed.position)
    .bind(committed.transaction_id.map(|id| id.to_string()))
    .execute(conn)
    .await
    .map_err(|source| StoreError::Idempotency {
        key: idempotency.key.clone(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_255_bytes() {
        assert!(IdempotencyKey::new("3f1c-retry-1", [0; 32]).is_ok());
        assert_eq!(IdempotencyKey::new("", [0; 32]), Err(InvalidIdempotencyKey));
        assert_eq!(
            IdempotencyKey::new("a b", [0; 32]),
            Err(InvalidIdempotencyKey)
        );
        assert_eq!(
            IdempotencyKey::new("é", [0; 32]),
            Err(InvalidIdempotencyKey)
        );
        assert!(IdempotencyKey::new(&"k".repeat(255), [0; 32]).is_ok());
        assert!(IdempotencyKey::new(&"k".repeat(256), [0; 32]).is_err());
    }

    #[test]
    fn expected_versions() {
        assert!(ExpectedVersion::Exactly(3).admits(3));
        assert!(!ExpectedVersion::Exactly(3).admits(4));
        assert!(ExpectedVersion::Exists.admits(1));
        assert!(!ExpectedVersion::Exists.admits(0));
    }
}
