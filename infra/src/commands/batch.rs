//! Group commit: the commands that arrive while a transaction is committing wait for it,
//! then run together in the next one, with one claim of their idempotency keys, one append
//! of all their events and one commit. A process then pays a transaction's round trips and
//! its WAL flush once per batch instead of once per command; commands on one aggregate in a
//! batch are decided one after the other on its evolving state, so a hot aggregate takes
//! many commands per commit and never conflicts with itself.
//!
//! One committer task per executor runs batches one at a time; it starts when a command
//! arrives and none is running, and ends when the queue is empty. Each batch holds the
//! in-process locks of its aggregates, like a command run alone.
//!
//! Anything a batch cannot answer with certainty is sent back to be run alone, the
//! executor's ordinary path, before anything of it is committed:
//! - a rejection, no-op or version mismatch decided on a guessed state (cached, or a new id
//!   assumed empty): decided again on a fresh load, and so are the later commands of the
//!   batch on that aggregate, so they keep their order;
//! - a conflict with another process, or a key or row lock held elsewhere for longer than
//!   [`BATCH_LOCK_TIMEOUT`]: the whole batch is rolled back and each command runs alone;
//! - an idempotency key already claimed (a replay, a reuse, or a request in flight), or used
//!   twice in one batch;
//! - any other failure before the commit (the command then reports its own error).
//!
//! A failed COMMIT is the one error returned to every command of the batch: the outcome is
//! unknown, and a retry with an idempotency key resolves it, as for a command run alone.
//!
//! A batch opens a transaction only when it claims idempotency keys (from its first
//! statement, so the claims commit with the events they answer for). Otherwise (the common
//! case, and every saga step) it reads and decides on the bare connection, and its append
//! commits on its own: one round trip instead of three (`BEGIN`, the append, `COMMIT`); a
//! snapshot due then follows the committed append (one that fails to save is logged, and
//! loads start from an earlier one). Nothing is
//! lost by it: at `READ COMMITTED` a read inside a transaction sees no more than one
//! outside, and the append's unique key catches any other writer either way. Such an append
//! that fails with an answer from PostgreSQL committed nothing; one whose answer is lost
//! (the connection dropped) may have committed, and is reported like a failed COMMIT. It
//! waits for another transaction's lock up to the session's `lock_timeout`, not
//! [`BATCH_LOCK_TIMEOUT`]; each batch appends its aggregates in the order of their ids, so
//! two batches never wait for each other in a cycle.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use sqlx::PgConnection;
use tokio::sync::oneshot;

use super::{
    Cached, CommandExecutor, CommandOptions, Committed, CommittedWithEvents, ExecuteError,
    IdempotencyKey,
};
use crate::batching::BatchQueue;
use crate::event_store::StoreError;
use crate::event_store::stream::{self, AppendError, StreamAppend};
use crate::keyed_lock::KeyGuard;

/// Commands per batch at most.
pub const MAX_BATCH: usize = 256;

/// How long a batch that claims idempotency keys (and so runs in a transaction) waits for a
/// lock another transaction holds (a key being used by a request in flight in another
/// process, an aggregate version another process is appending) before it gives up and its
/// commands run alone, where the usual `lock_timeout` applies. Short, because the whole
/// batch waits. A batch without keys appends on its own, under the session's `lock_timeout`.
pub const BATCH_LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// A command waiting for a batch.
pub(super) struct Request<A: Aggregate>
where
    A::Error: 'static,
{
    pub aggregate_id: String,
    pub command: A::Command,
    pub options: CommandOptions,
    pub reply: oneshot::Sender<Reply<A>>,
}

/// What the batch did with a command.
pub(super) enum Reply<A: Aggregate>
where
    A::Error: 'static,
{
    Done(CommittedWithEvents<A>),
    Failed(ExecuteError<A::Error>),
    /// Not decided here; run it alone, using guesses or not.
    Alone {
        guess: bool,
    },
}

/// The queue of an executor's batches.
pub(super) type Batcher<A> = BatchQueue<Request<A>>;

/// One command's part of a batch, once decided.
struct Planned<A: Aggregate> {
    request: usize,
    /// The aggregate's version before this command's events.
    base_version: u64,
    events: Vec<A::Event>,
    /// For a no-op: the position of the aggregate's latest event, when it was known before
    /// the batch; otherwise that of the latest event an earlier command of the batch appended
    /// (the index of its plan).
    no_op_position: Result<Option<i64>, usize>,
}

/// One aggregate's state through a batch.
struct Track<A> {
    aggregate: A,
    version: u64,
    position: Option<i64>,
    /// The state was a guess (cached, or assumed empty), not loaded by this batch.
    guessed: bool,
    /// A command on it was sent back to run alone: so are the later ones.
    tainted: bool,
    /// The version the aggregate had when the batch took it (for snapshots).
    start_version: u64,
    /// The plan holding its latest appended event, if any.
    last_plan: Option<usize>,
}

impl<A> CommandExecutor<A>
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone + Send + Sync,
    A::Error: Send + 'static,
{
    /// Runs batches until the queue is empty.
    pub(super) async fn commit_batches(self) {
        let batcher = self.batcher.clone();
        let _turn = batcher.turn();
        while let Some(batch) = batcher.next() {
            self.commit_batch(batch).await;
        }
    }

    async fn commit_batch(&self, batch: Vec<Request<A>>) {
        // The in-process locks of every aggregate in the batch, in order of first arrival.
        // Other holders hold one lock each, so this never deadlocks.
        let mut guards: HashMap<String, KeyGuard> = HashMap::new();
        for request in &batch {
            if !guards.contains_key(&request.aggregate_id) {
                let guard = self.locks.lock(&request.aggregate_id).await;
                guards.insert(request.aggregate_id.clone(), guard);
            }
        }
        let mut replies: Vec<Option<Reply<A>>> = batch.iter().map(|_| None).collect();
        let outcome = match self.pool.acquire().await {
            Ok(mut conn) => self.plan_and_write(&mut conn, &batch, &mut replies).await,
            Err(_) => Err(BatchFailed::Retry { conflict: false }),
        };
        match outcome {
            Ok(Some(states)) => {
                for (id, cached) in states {
                    self.cache().put(&id, cached);
                }
            }
            Ok(None) => {}
            Err(BatchFailed::Retry { conflict }) => {
                if conflict {
                    // Some guessed state was stale: another process appended.
                    let mut cache = self.cache();
                    for id in guards.keys() {
                        cache.forget(id);
                    }
                }
                for reply in &mut replies {
                    *reply = Some(Reply::Alone { guess: !conflict });
                }
            }
            Err(BatchFailed::Commit(err)) => {
                let mut cache = self.cache();
                for id in guards.keys() {
                    cache.forget(id);
                }
                // A refusal decided after another command's plan on the same aggregate rests
                // on a state that may not have committed: every answer but "run alone"
                // becomes the unknown outcome.
                for reply in replies.iter_mut() {
                    if !matches!(reply, Some(Reply::Alone { .. })) {
                        *reply = Some(Reply::Failed(ExecuteError::Store(
                            StoreError::Transaction {
                                operation: "commit",
                                source: commit_failed(&err),
                            },
                        )));
                    }
                }
            }
        }
        drop(guards);
        for (request, reply) in batch.into_iter().zip(replies) {
            let reply = reply.unwrap_or(Reply::Alone { guess: false });
            // A caller that went away (its request was cancelled) needs no answer.
            let _ = request.reply.send(reply);
        }
    }

    /// Decides every command, writes and commits. Fills `replies` for the commands it
    /// answered; returns the states to cache (`None` when nothing was written).
    async fn plan_and_write(
        &self,
        conn: &mut PgConnection,
        batch: &[Request<A>],
        replies: &mut [Option<Reply<A>>],
    ) -> Result<Option<Vec<(String, Cached<A>)>>, BatchFailed> {
        let mut session = Session::Bare(conn);
        if batch
            .iter()
            .any(|request| request.options.idempotency.is_some())
        {
            session = session
                .begin()
                .await
                .map_err(|_| BatchFailed::Retry { conflict: false })?;
        }
        let written = match self.write(&mut session, batch, replies).await {
            Ok(Some(written)) => written,
            other => {
                // End it now: the transaction may hold keys that other requests wait for.
                if let Session::Open(tx) = session {
                    let _ = tx.rollback().await;
                }
                return other.map(|_| None);
            }
        };
        if let Session::Open(tx) = session {
            tx.commit().await.map_err(BatchFailed::Commit)?;
        }
        if written.appended {
            self.notifier.committed();
        }
        for (request, done) in written.answers {
            replies[request] = Some(Reply::Done(done));
        }
        Ok(Some(written.states))
    }

    /// Everything of a batch but the commit. `None`: nothing to write.
    async fn write(
        &self,
        session: &mut Session<'_>,
        batch: &[Request<A>],
        replies: &mut [Option<Reply<A>>],
    ) -> Result<Option<Written<A>>, BatchFailed> {
        // Every read before the first write. A transaction takes its id (the log's order)
        // at its first write: one that claimed a key and then read an aggregate could append
        // after an event it read, under a smaller id, and readers of the log would see the
        // two swapped. Read first, an event this batch saw always has a smaller id than its
        // own, and one it did not see makes its append collide.
        let mut preloaded = self.preload(session.conn(), batch).await?;
        let mut tracks: HashMap<&str, Track<A>> = HashMap::new();
        for request in batch {
            let id = request.aggregate_id.as_str();
            if !tracks.contains_key(id) {
                let track = self
                    .track(session.conn(), id, &request.options, preloaded.remove(id))
                    .await?;
                tracks.insert(id, track);
            }
        }
        let claimed = self.claim_keys(session.conn(), batch, replies).await?;
        let mut plans: Vec<Planned<A>> = Vec::new();
        for (index, request) in batch.iter().enumerate() {
            if replies[index].is_some() {
                continue;
            }
            let Some(track) = tracks.get_mut(request.aggregate_id.as_str()) else {
                continue;
            };
            if let Some(reply) = self.decide(track, index, request, &mut plans).await {
                replies[index] = Some(reply);
            }
        }
        if plans.is_empty() {
            return Ok(None);
        }
        // Keys claimed for commands that got no plan (refused, or sent back to run alone)
        // must not commit without an outcome.
        let unplanned: Vec<&str> = batch
            .iter()
            .enumerate()
            .filter(|&(index, _)| claimed[index] && replies[index].is_some())
            .filter_map(|(_, request)| request.options.idempotency.as_ref())
            .map(IdempotencyKey::key)
            .collect();
        if !unplanned.is_empty() {
            // Claims were made in the transaction, which is open.
            release_keys(session.conn(), &unplanned)
                .await
                .map_err(|_| BatchFailed::Retry { conflict: false })?;
        }
        // One append of every command's events.
        let metadata: Vec<_> = plans
            .iter()
            .map(|plan| {
                let options = &batch[plan.request].options;
                let mut metadata = options.metadata.clone();
                if let Some(idempotency) = &options.idempotency {
                    metadata.idempotency_key = Some(idempotency.key.clone());
                }
                metadata
            })
            .collect();
        // In the order of the aggregates' ids (a stable sort: one aggregate's plans keep
        // theirs), so that batches of two processes never wait for each other in a cycle.
        let mut appending: Vec<usize> = (0..plans.len())
            .filter(|&index| !plans[index].events.is_empty())
            .collect();
        appending.sort_by_key(|&index| batch[plans[index].request].aggregate_id.as_str());
        let on_its_own = matches!(session, Session::Bare(_));
        let mut positions: Vec<Option<i64>> = plans.iter().map(|_| None).collect();
        // The one transaction this batch appends in.
        let mut transaction_id = None;
        if !appending.is_empty() {
            let parts: Vec<StreamAppend<'_, A::Event>> = appending
                .iter()
                .map(|&index| StreamAppend {
                    aggregate_id: &batch[plans[index].request].aggregate_id,
                    expected_version: plans[index].base_version,
                    events: &plans[index].events,
                    metadata: &metadata[index],
                })
                .collect();
            match stream::append_many::<A>(session.conn(), &parts).await {
                Ok(appended) => {
                    for (&index, appended) in appending.iter().zip(appended) {
                        positions[index] = Some(appended.last_position);
                        transaction_id = Some(appended.transaction_id);
                    }
                }
                Err(AppendError::Conflict { .. }) => {
                    return Err(BatchFailed::Retry { conflict: true });
                }
                // On its own the append is its own transaction: without PostgreSQL's answer
                // (an error it sent means nothing committed) the outcome is unknown.
                Err(AppendError::Store(StoreError::Append { source, .. }))
                    if on_its_own && !matches!(source, sqlx::Error::Database(_)) =>
                {
                    return Err(BatchFailed::Commit(source));
                }
                Err(AppendError::Store(_)) => return Err(BatchFailed::Retry { conflict: false }),
            }
        }
        let committed: Vec<Committed> = plans
            .iter()
            .enumerate()
            .map(|(index, plan)| {
                // A no-op after an earlier command of this batch points at its event, which
                // this transaction appended.
                let (position, appended_here) = if plan.events.is_empty() {
                    match plan.no_op_position {
                        Ok(position) => (position, false),
                        Err(earlier) => (positions[earlier], true),
                    }
                } else {
                    (positions[index], true)
                };
                Committed {
                    aggregate_id: batch[plan.request].aggregate_id.clone(),
                    version: plan.base_version + plan.events.len() as u64,
                    position,
                    transaction_id: transaction_id.filter(|_| appended_here && position.is_some()),
                    appended: plan.events.len(),
                    replayed: false,
                }
            })
            .collect();
        if let Some(policy) = self.policy.snapshot {
            for (id, track) in &tracks {
                if track.last_plan.is_none()
                    || !stream::snapshot_due(policy, track.start_version, track.version)
                {
                    continue;
                }
                let saved = stream::save_snapshot(
                    session.conn(),
                    id,
                    &track.aggregate,
                    track.version,
                    policy,
                )
                .await;
                match saved {
                    Ok(()) => {}
                    // The events are committed; loads start from an earlier snapshot.
                    Err(err) if on_its_own => tracing::warn!(
                        aggregate_id = %id,
                        error = %crate::telemetry::err_chain(&err),
                        "a snapshot was not saved"
                    ),
                    Err(_) => return Err(BatchFailed::Retry { conflict: false }),
                }
            }
        }
        if claimed.contains(&true) {
            let outcomes = plans
                .iter()
                .zip(&committed)
                .filter_map(|(plan, committed)| {
                    let idempotency = batch[plan.request].options.idempotency.as_ref()?;
                    Some((idempotency, committed))
                });
            record_keys(session.conn(), outcomes)
                .await
                .map_err(|_| BatchFailed::Retry { conflict: false })?;
        }
        let appended = !appending.is_empty();
        let mut cache = self.cache();
        let mut states = Vec::with_capacity(tracks.len());
        for (id, track) in tracks {
            if track.tainted {
                // Its cached state led to an answer that must be confirmed alone.
                cache.forget(id);
                continue;
            }
            let position = match track.last_plan {
                Some(plan) => positions[plan],
                None => track.position,
            };
            states.push((
                id.to_owned(),
                Cached {
                    aggregate: track.aggregate,
                    version: track.version,
                    position,
                },
            ));
        }
        drop(cache);
        let answers = plans
            .into_iter()
            .zip(committed)
            .map(|(plan, committed)| (plan.request, (committed, plan.events)))
            .collect();
        Ok(Some(Written {
            answers,
            states,
            appended,
        }))
    }

    /// Claims the batch's idempotency keys in one statement. A key that was already claimed,
    /// or that two commands of the batch carry, sends its command (the later one) to run
    /// alone. Returns, per command, whether it claimed its key here.
    async fn claim_keys(
        &self,
        conn: &mut PgConnection,
        batch: &[Request<A>],
        replies: &mut [Option<Reply<A>>],
    ) -> Result<Vec<bool>, BatchFailed> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut claiming: Vec<usize> = Vec::new();
        for (index, request) in batch.iter().enumerate() {
            if let Some(idempotency) = &request.options.idempotency {
                if seen.insert(idempotency.key()) {
                    claiming.push(index);
                } else {
                    replies[index] = Some(Reply::Alone { guess: true });
                }
            }
        }
        let mut mine = vec![false; batch.len()];
        if claiming.is_empty() {
            return Ok(mine);
        }
        let keys: Vec<&IdempotencyKey> = claiming
            .iter()
            .filter_map(|&index| batch[index].options.idempotency.as_ref())
            .collect();
        let ids: Vec<&str> = claiming
            .iter()
            .map(|&index| batch[index].aggregate_id.as_str())
            .collect();
        // On an error (a key held by a request in flight elsewhere past the lock timeout, or
        // a failure) every command runs alone.
        let claimed = claim_keys(conn, &keys, A::TYPE, &ids)
            .await
            .map_err(|_| BatchFailed::Retry { conflict: false })?;
        for index in claiming {
            let key = batch[index]
                .options
                .idempotency
                .as_ref()
                .map(IdempotencyKey::key);
            if key.is_some_and(|key| claimed.contains(key)) {
                mine[index] = true;
            } else {
                // Claimed before: a replay, a reuse, or a request in flight.
                replies[index] = Some(Reply::Alone { guess: true });
            }
        }
        Ok(mine)
    }

    /// Loads, in one statement, the aggregates of the batch that will need a load (not
    /// cached, not a new id), when they have no snapshots to start from.
    async fn preload(
        &self,
        conn: &mut PgConnection,
        batch: &[Request<A>],
    ) -> Result<HashMap<String, stream::Loaded<A>>, BatchFailed> {
        if self.policy.snapshot.is_some() {
            return Ok(HashMap::new());
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let mut ids: Vec<&str> = Vec::new();
        {
            let cache = self.cache();
            for request in batch {
                let id = request.aggregate_id.as_str();
                if !seen.insert(id) {
                    continue;
                }
                if !request.options.new_aggregate && !cache.contains(id) {
                    ids.push(id);
                }
            }
        }
        if ids.len() < 2 {
            return Ok(HashMap::new());
        }
        stream::load_many::<A>(conn, &ids, &self.upcasters)
            .await
            .map_err(|_| BatchFailed::Retry { conflict: false })
    }

    /// The state a batch starts from for one aggregate: cached, assumed empty (a new id),
    /// preloaded or loaded.
    async fn track(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        options: &CommandOptions,
        preloaded: Option<stream::Loaded<A>>,
    ) -> Result<Track<A>, BatchFailed> {
        let guess = self.cache().get(aggregate_id).or_else(|| {
            options.new_aggregate.then(|| Cached {
                aggregate: A::default(),
                version: 0,
                position: None,
            })
        });
        let (aggregate, version, position, guessed) = match (guess, preloaded) {
            (Some(cached), _) => (cached.aggregate, cached.version, cached.position, true),
            (None, Some(loaded)) => (
                loaded.aggregate,
                loaded.version,
                loaded.last_position,
                false,
            ),
            (None, None) => {
                let loaded =
                    stream::load::<A>(conn, aggregate_id, self.policy.snapshot, &self.upcasters)
                        .await
                        .map_err(|_| BatchFailed::Retry { conflict: false })?;
                (
                    loaded.aggregate,
                    loaded.version,
                    loaded.last_position,
                    false,
                )
            }
        };
        Ok(Track {
            aggregate,
            version,
            position,
            guessed,
            tainted: false,
            start_version: version,
            last_plan: None,
        })
    }

    /// Decides one command on the aggregate's state in the batch. Returns the reply when the
    /// command is answered without a plan (refused, or sent back to run alone).
    async fn decide(
        &self,
        track: &mut Track<A>,
        index: usize,
        request: &Request<A>,
        plans: &mut Vec<Planned<A>>,
    ) -> Option<Reply<A>> {
        if track.tainted {
            return Some(Reply::Alone { guess: false });
        }
        // Answers about the state decided on a guess are confirmed alone, on a fresh load.
        let unsure = |track: &mut Track<A>| {
            track.tainted = true;
            Some(Reply::Alone { guess: false })
        };
        if let Some(expected) = request.options.expected_version
            && !expected.admits(track.version)
        {
            if track.guessed {
                return unsure(track);
            }
            return Some(Reply::Failed(ExecuteError::VersionMismatch {
                expected,
                actual: track.version,
            }));
        }
        let mut next = track.aggregate.clone();
        let sink = EventSink::default();
        if let Err(rejection) = next
            .handle(request.command.clone(), &self.services, &sink)
            .await
        {
            if track.guessed {
                return unsure(track);
            }
            return Some(Reply::Failed(ExecuteError::Rejected(rejection)));
        }
        let events = sink.collect().await;
        if events.is_empty() {
            if track.guessed {
                return unsure(track);
            }
            let no_op_position = match track.last_plan {
                Some(plan) => Err(plan),
                None if track.position.is_some() || track.version == 0 => Ok(track.position),
                // The state came from a snapshot with nothing after it: the position needs
                // a query, which the command run alone makes.
                None => return unsure(track),
            };
            plans.push(Planned {
                request: index,
                base_version: track.version,
                events,
                no_op_position,
            });
            return None;
        }
        let base_version = track.version;
        track.aggregate = next;
        track.version += events.len() as u64;
        track.last_plan = Some(plans.len());
        plans.push(Planned {
            request: index,
            base_version,
            events,
            no_op_position: Ok(None),
        });
        None
    }
}

/// The connection a batch runs on: bare, or in a transaction when the batch claims keys.
enum Session<'c> {
    Bare(&'c mut PgConnection),
    Open(sqlx::Transaction<'c, sqlx::Postgres>),
}

impl<'c> Session<'c> {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            Session::Bare(conn) => conn,
            Session::Open(tx) => tx,
        }
    }

    /// The same connection in a transaction (kept if one is open).
    async fn begin(self) -> Result<Self, sqlx::Error> {
        use sqlx::Connection;
        match self {
            Session::Bare(conn) => Ok(Session::Open(
                conn.begin_with(format!(
                    "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                    BATCH_LOCK_TIMEOUT.as_millis()
                ))
                .await?,
            )),
            open => Ok(open),
        }
    }
}

/// What a batch wrote, to answer once it commits.
struct Written<A: Aggregate> {
    answers: Vec<(usize, CommittedWithEvents<A>)>,
    states: Vec<(String, Cached<A>)>,
    appended: bool,
}

/// Why a batch wrote nothing (or may have).
enum BatchFailed {
    /// Nothing was committed: run every unanswered command alone. `conflict`: another
    /// process appended to one of the aggregates, so guessed states are suspect.
    Retry { conflict: bool },
    /// The COMMIT failed: the outcome is unknown.
    Commit(sqlx::Error),
}

/// `sqlx::Error` is not `Clone`: each command of a failed commit gets its own copy of the
/// message.
fn commit_failed(err: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(format!("the group commit failed: {err}"))
}

/// Starts the executor's committer; it ends when the queue is empty.
pub(super) fn spawn_committer<A>(executor: CommandExecutor<A>)
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone + Send + Sync,
    A::Error: Send + 'static,
{
    tokio::spawn(executor.commit_batches());
}

/// Claims keys in one statement; returns the ones this transaction claimed. A key another
/// transaction holds uncommitted makes the statement wait (up to the batch's lock timeout).
async fn claim_keys(
    conn: &mut PgConnection,
    keys: &[&IdempotencyKey],
    aggregate_type: &str,
    aggregate_ids: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    let names: Vec<&str> = keys.iter().map(|key| key.key()).collect();
    let hashes: Vec<&[u8]> = keys.iter().map(|key| &key.request_hash[..]).collect();
    let claimed: Vec<String> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (idempotency_key, request_hash, aggregate_type, aggregate_id)
         SELECT k.key, k.hash, $3, k.aggregate_id
           FROM UNNEST($1::text[], $2::bytea[], $4::text[]) AS k(key, hash, aggregate_id)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING idempotency_key",
    )
    .bind(&names)
    .bind(&hashes)
    .bind(aggregate_type)
    .bind(aggregate_ids)
    .fetch_all(conn)
    .await?;
    Ok(claimed.into_iter().collect())
}

/// Gives claimed keys up again, inside the batch's transaction.
async fn release_keys(conn: &mut PgConnection, keys: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE idempotency_key = ANY($1)")
        .bind(keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the outcomes under their claimed keys, in one statement.
async fn record_keys<'k>(
    conn: &mut PgConnection,
    outcomes: impl Iterator<Item = (&'k IdempotencyKey, &'k Committed)>,
) -> Result<(), sqlx::Error> {
    let mut keys = Vec::new();
    let mut versions = Vec::new();
    let mut positions = Vec::new();
    let mut transactions = Vec::new();
    for (key, committed) in outcomes {
        keys.push(key.key());
        versions.push(i64::try_from(committed.version).unwrap_or(i64::MAX));
        positions.push(committed.position);
        transactions.push(committed.transaction_id.map(|id| id.to_string()));
    }
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE idempotency_keys k
            SET version = o.version, position = o.position, transaction_id = o.transaction_id::xid8
           FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[])
                AS o(key, version, position, transaction_id)
          WHERE k.idempotency_key = o.key",
    )
    .bind(&keys)
    .bind(&versions)
    .bind(&positions)
    .bind(&transactions)
    .execute(conn)
    .await?;
    Ok(())
}
