//! The saga runner: takes due sagas, performs their next actions, saves their outcomes
//! (not after every happy-path step: see [`may_skip_save`]).
//!
//! Each action is one command (through the command executors, group-committed) and/or one
//! payment gateway call carrying the saga's deterministic key for the step. An action
//! repeated after a crash (performed, but its outcome not saved) has no second effect: the
//! gateway replays its key's answer, and every command a saga sends is a no-op when its
//! effect is already in the aggregate. Transient failures
//! (the database, a gateway that does not answer or whose breaker is open) are retried with
//! backoff, never past the payment deadline while charging, which is the saga's durable
//! timer: `due_at` in PostgreSQL, so it fires after a restart too.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::Aggregate;
use domain::inventory::{InventoryCommand, InventoryError, InventoryEvent, InventoryItem};
use domain::order::{Order, OrderCommand, OrderError};
use domain::payment::{Payment, PaymentCommand};
use domain::ports::{
    AuthorizationOutcome, AuthorizationRequest, Clock, GatewayError, PaymentGateway,
};
use domain::rejection::Rejection;
use domain::text::DeclineReason;
use infra::commands::{CommandExecutor, CommandOptions, ExecuteError, ExecutorPolicy};
use infra::event_store::notify::Notifier;
use infra::event_store::{EventLog, EventMetadata};
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::order_fulfillment::{Action, Fulfillment, Outcome, Stage, apply, next_action};
use super::store::{self, Claimed, Save};

/// How a runner works.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Sagas worked on at once.
    pub concurrency: usize,
    /// How long a claim lasts without a save; a dead runner's sagas wait this long.
    pub lease: Duration,
    /// How often to look for due sagas when nothing wakes the runner.
    pub poll_interval: Duration,
    /// How long an order may wait for a payment outcome.
    pub payment_deadline: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl RunnerConfig {
    pub fn new(payment_deadline: Duration) -> Self {
        Self {
            concurrency: infra::config::DEFAULT_SAGA_CONCURRENCY,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            payment_deadline,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Stops a runner right after an action took effect, before its outcome is saved: what a
/// crash at the worst moment looks like. For tests.
pub type CrashAfter = Arc<dyn Fn(&Action) -> bool + Send + Sync>;

enum StepError {
    /// Try again later.
    Transient(String),
    /// Something the saga cannot handle; an operator must look.
    Fatal(String),
}

fn executor_error<E: Rejection + 'static>(err: ExecuteError<E>) -> StepError {
    let text = infra::telemetry::err_chain(&err);
    match err {
        ExecuteError::Store(_)
        | ExecuteError::Conflict { .. }
        | ExecuteError::IdempotencyKeyInFlight { .. } => StepError::Transient(text),
        ExecuteError::Rejected(rejection) => {
            StepError::Fatal(format!("{}: {text}", rejection.code()))
        }
        ExecuteError::VersionMismatch { .. } | ExecuteError::IdempotencyKeyReused { .. } => {
            StepError::Fatal(text)
        }
    }
}

fn gateway_error(err: GatewayError) -> StepError {
    match err {
        GatewayError::Unavailable(_) => StepError::Transient(err.to_string()),
        GatewayError::Refused(_) => StepError::Fatal(err.to_string()),
    }
}

/// Whether a step that moved a saga from `before` to `after` (with more to do) may go
/// unsaved. On the happy path only: every step is idempotent (a repeated command is a no-op,
/// the gateway replays its key's answer), so a crash before the next save repeats these
/// steps harmlessly and decides the same. Saved regardless: entering `Charging` (the payment
/// deadline starts then, and a repeat must not move it), and every compensating step.
fn may_skip_save(before: &Stage, after: &Stage) -> bool {
    match after {
        Stage::Reserving | Stage::Recording | Stage::Confirming => true,
        Stage::Charging => *before == Stage::Charging,
        _ => false,
    }
}

/// Sagas the trigger of this process started already claimed for this process's runner,
/// handed over once the trigger's transaction committed: a new saga's first step needs no
/// claim statement and no wake-up through PostgreSQL. The trigger claims at most
/// [`room`](Handoff::room) at a time, so a backlog (a trigger catching up) does not become
/// thousands of tasks whose leases run out before they are worked on; the rest start
/// unclaimed and are claimed as usual. Sagas handed over but never worked on (the process
/// stops first) are claimed by some runner when their lease ends.
#[derive(Debug)]
pub struct Handoff {
    runner: String,
    lease: Duration,
    capacity: usize,
    inbox: std::sync::Mutex<Vec<Claimed>>,
    /// Handed over and not finished yet.
    in_flight: std::sync::atomic::AtomicUsize,
    arrived: Notify,
}

impl Handoff {
    fn new(runner: String, lease: Duration, capacity: usize) -> Self {
        Self {
            runner,
            lease,
            capacity,
            inbox: std::sync::Mutex::new(Vec::new()),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            arrived: Notify::new(),
        }
    }

    /// The runner the sagas are claimed for.
    pub fn runner(&self) -> &str {
        &self.runner
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How many more sagas the runner takes this way now.
    pub fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.in_flight.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Hands over sagas started claimed for [`runner`](Self::runner) in a committed
    /// transaction.
    pub fn give(&self, sagas: Vec<Claimed>) {
        if sagas.is_empty() {
            return;
        }
        self.in_flight
            .fetch_add(sagas.len(), std::sync::atomic::Ordering::Relaxed);
        self.inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(sagas);
        self.arrived.notify_one();
    }

    /// Sagas handed over that the runner has not taken yet.
    pub fn waiting(&self) -> usize {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self) -> Vec<Claimed> {
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn done(&self) {
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Works on fulfilment sagas.
pub struct Runner<G> {
    pool: PgPool,
    id: String,
    config: RunnerConfig,
    orders: CommandExecutor<Order>,
    items: CommandExecutor<InventoryItem>,
    payments: CommandExecutor<Payment>,
    log: EventLog,
    /// The saga's saves, group-committed.
    saves: Arc<store::SaveBatcher>,
    /// Sends the executors' notifications (and the trigger's, see [`Runner::notifier`]).
    notifier: Notifier,
    gateway: Arc<G>,
    clock: Arc<dyn Clock>,
    crash_after: Option<CrashAfter>,
    handoff: Arc<Handoff>,
}

impl<G> std::fmt::Debug for Runner<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<G: PaymentGateway + 'static> Runner<G> {
    pub fn new(
        pool: PgPool,
        gateway: Arc<G>,
        clock: Arc<dyn Clock>,
        config: RunnerConfig,
    ) -> Arc<Self> {
        let id = format!(
            "saga-pid{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let notifier = Notifier::new(pool.clone());
        Arc::new(Self {
            saves: store::SaveBatcher::new(pool.clone(), id.clone()),
            handoff: Arc::new(Handoff::new(id.clone(), config.lease, config.concurrency)),
            id,
            orders: CommandExecutor::new(pool.clone(), (), ExecutorPolicy::without_snapshots())
                .notifying_through(&notifier),
            items: CommandExecutor::new(pool.clone(), (), crate::state::inventory_policy())
                .notifying_through(&notifier),
            payments: CommandExecutor::new(pool.clone(), (), ExecutorPolicy::without_snapshots())
                .notifying_through(&notifier),
            notifier,
            log: EventLog::new(pool.clone()),
            pool,
            config,
            gateway,
            clock,
            crash_after: None,
        })
    }

    /// The notifier this runner's executors send through: the process's trigger can share
    /// it ([`infra::projection::Worker::notifying_through`]).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Where this process's trigger hands over the sagas it starts claimed for this runner
    /// ([`crate::sagas::trigger::FulfillmentTrigger::handing_to`]).
    pub fn handoff(&self) -> Arc<Handoff> {
        self.handoff.clone()
    }

    /// A runner that "crashes" after actions `crash_after` picks (see [`CrashAfter`]).
    pub fn with_crash_after(
        pool: PgPool,
        gateway: Arc<G>,
        clock: Arc<dyn Clock>,
        config: RunnerConfig,
        crash_after: CrashAfter,
    ) -> Arc<Self> {
        let runner = Self::new(pool, gateway, clock, config);
        let mut runner = Arc::into_inner(runner).expect("a new runner has one owner");
        runner.crash_after = Some(crash_after);
        Arc::new(runner)
    }

    /// Claims every due saga (up to `concurrency`), works on them concurrently, and returns
    /// how many it took.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, store::SagaStoreError> {
        let claimed = store::claim(
            &self.pool,
            &self.id,
            self.config.lease,
            self.config.concurrency as i64,
        )
        .await?;
        let n = claimed.len();
        let mut tasks = JoinSet::new();
        for saga in claimed {
            let runner = self.clone();
            tasks.spawn(async move { runner.process(saga).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    /// Runs until `shutdown` turns true, taking sagas as they fall due, woken by `wakeup`.
    pub async fn run(self: Arc<Self>, wakeup: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        // Woken by a notice (new or signalled sagas) or the poll interval, rather than by a
        // saga in hand finishing.
        let mut woken = true;
        // The last claim took all it asked for: more may be due.
        let mut backlog = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            for saga in self.handoff.take() {
                let runner = self.clone();
                tasks.spawn(async move {
                    runner.process(saga).await;
                    runner.handoff.done();
                });
            }
            let free = self.config.concurrency.saturating_sub(tasks.len());
            // A claim is a statement: one per wake-up takes whatever fell due, and while a
            // backlog lasts, slots freed by finished sagas are claimed a quarter of them (at
            // most 8) at a time, which drains it without a claim per saga.
            let chunk = (self.config.concurrency / 4).clamp(1, 8);
            if free > 0 && (woken || (backlog && free >= chunk) || tasks.is_empty()) {
                match store::claim(&self.pool, &self.id, self.config.lease, free as i64).await {
                    Ok(claimed) => {
                        backlog = claimed.len() == free;
                        for saga in claimed {
                            let runner = self.clone();
                            tasks.spawn(async move { runner.process(saga).await });
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %infra::telemetry::err_chain(&err), "failed to claim sagas")
                    }
                }
            }
            woken = false;
            tokio::select! {
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = wakeup.notified() => woken = true,
                () = self.handoff.arrived.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => woken = true,
                _ = shutdown.changed() => {}
            }
        }
        // Let the sagas in hand finish their current action and save, and give back the
        // claims on those handed over but not started.
        let unstarted: Vec<uuid::Uuid> = self
            .handoff
            .take()
            .iter()
            .map(|claimed| claimed.saga.order_id.as_uuid())
            .collect();
        if !unstarted.is_empty() {
            if let Err(err) = store::release_unstarted(&self.pool, &self.id, &unstarted).await {
                tracing::warn!(error = %infra::telemetry::err_chain(&err), "could not release unstarted sagas; they wait for their leases");
            }
            for _ in &unstarted {
                self.handoff.done();
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!(runner = %self.id, "saga runner stopped");
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let ceiling = self
            .config
            .backoff_base
            .saturating_mul(1 << attempts.clamp(0, 16))
            .min(self.config.backoff_max);
        let millis = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    #[tracing::instrument(skip_all, fields(order_id = %claimed.saga.order_id))]
    async fn process(&self, mut claimed: Claimed) {
        // When the claim was taken or last extended (by a save).
        let mut saved_at = std::time::Instant::now();
        loop {
            let now = self.clock.now();
            let Some(action) = next_action(&mut claimed.saga, claimed.signals, now) else {
                // Nothing to do until a signal (or ever): save and let the claim go.
                let save = Save {
                    next_step: None,
                    due_at: None,
                    attempts: 0,
                    last_error: None,
                    release: true,
                    lease: self.config.lease,
                };
                if let Err(err) = self.saves.save(&claimed, save).await {
                    tracing::error!(error = %infra::telemetry::err_chain(&err), "failed to save a saga");
                }
                return;
            };
            let stage_before = claimed.saga.stage.clone();
            match self.perform(&claimed.saga, &action).await {
                Ok(outcome) => {
                    if self
                        .crash_after
                        .as_ref()
                        .is_some_and(|crash| crash(&action))
                    {
                        tracing::warn!(action = %action, "crashing on purpose before saving the outcome");
                        return;
                    }
                    tracing::debug!(action = %action, ?outcome, "saga step done");
                    let deadline = now
                        + chrono::Duration::from_std(self.config.payment_deadline)
                            .unwrap_or(chrono::Duration::MAX);
                    apply(&mut claimed.saga, outcome, deadline);
                    let next = next_action(&mut claimed.saga.clone(), claimed.signals, now)
                        .map(|a| a.name());
                    if next.is_none() {
                        // Make the transitions that need no IO (to `Completed`, say) before
                        // the saga is saved and let go.
                        next_action(&mut claimed.saga, claimed.signals, now);
                    }
                    if next.is_some()
                        && may_skip_save(&stage_before, &claimed.saga.stage)
                        && saved_at.elapsed() < self.config.lease / 3
                    {
                        continue;
                    }
                    let save = Save {
                        next_step: next.as_deref(),
                        due_at: if next.is_some() { Some(now) } else { None },
                        attempts: 0,
                        last_error: None,
                        // Nothing left to do until a signal: give the claim up in the same
                        // save (a signal that came meanwhile makes the saga due at once).
                        release: next.is_none(),
                        lease: self.config.lease,
                    };
                    let released = save.release;
                    match self.saves.save(&claimed, save).await {
                        Ok(Some(_)) if released => return,
                        Ok(Some((signals, seen))) => {
                            saved_at = std::time::Instant::now();
                            claimed.signals = signals;
                            claimed.seen = seen;
                            claimed.attempts = 0;
                        }
                        Ok(None) => {
                            tracing::warn!("lost the claim on a saga; another runner has it");
                            return;
                        }
                        Err(err) => {
                            // The claim expires and the step is repeated, harmlessly.
                            tracing::error!(error = %infra::telemetry::err_chain(&err), "failed to save a saga");
                            return;
                        }
                    }
                }
                Err(StepError::Transient(error)) => {
                    let attempts = claimed.attempts.saturating_add(1);
                    let mut due = now
                        + chrono::Duration::from_std(self.backoff(attempts)).unwrap_or_default();
                    if stage_before == Stage::Charging
                        && let Some(deadline) = claimed.saga.deadline
                    {
                        // Retry until the deadline, then time out (never later).
                        due = due.min(deadline);
                    }
                    tracing::warn!(action = %action, attempts, error, "saga step failed; will retry");
                    let save = Save {
                        next_step: Some(&action.name()),
                        due_at: Some(due),
                        attempts,
                        last_error: Some(&error),
                        release: true,
                        lease: self.config.lease,
                    };
                    if let Err(err) = self.saves.save(&claimed, save).await {
                        tracing::error!(error = %infra::telemetry::err_chain(&err), "failed to save a saga");
                    }
                    return;
                }
                Err(StepError::Fatal(error)) => {
                    tracing::error!(action = %action, error, "saga failed; an operator must retry it");
                    claimed.saga.stage = Stage::Failed {
                        error: error.clone(),
                        stage: Box::new(stage_before),
                    };
                    let save = Save {
                        next_step: Some(&action.name()),
                        due_at: None,
                        attempts: claimed.attempts.saturating_add(1),
                        last_error: Some(&error),
                        release: true,
                        lease: self.config.lease,
                    };
                    if let Err(err) = self.saves.save(&claimed, save).await {
                        tracing::error!(error = %infra::telemetry::err_chain(&err), "failed to save a saga");
                    }
                    return;
                }
            }
        }
    }

    /// Command options for a step: its key as a tag, the saga's order as correlation and its
    /// starting event as cause. No claimed idempotency key: every command a saga sends is
    /// idempotent in the domain (a repeat is a no-op, decided on a fresh load), which spares
    /// two row writes per step.
    fn options(&self, saga: &Fulfillment, step: &str) -> CommandOptions {
        CommandOptions {
            expected_version: None,
            idempotency: None,
            metadata: EventMetadata {
                correlation_id: Some(saga.order_id.as_uuid()),
                causation_id: Some(saga.placed_event_id),
                idempotency_key: Some(saga.key(step)),
                extra: Default::default(),
            },
            new_aggregate: false,
        }
    }

    async fn perform(&self, saga: &Fulfillment, action: &Action) -> Result<Outcome, StepError> {
        let order_id = saga.order_id;
        let order = order_id.to_string();
        let at = self.clock.now();
        let step = action.name();
        match action {
            Action::Reserve { sku, quantity } => {
                let command = InventoryCommand::Reserve {
                    order_id,
                    quantity: *quantity,
                    at,
                };
                match self
                    .command(&self.items, sku.as_str(), command, saga, &step)
                    .await
                {
                    Ok((_, events)) => {
                        let price = events.iter().find_map(|event| match event {
                            InventoryEvent::Reserved { unit_price, .. } => Some(*unit_price),
                            _ => None,
                        });
                        let unit_price = match price {
                            Some(price) => price,
                            // A repeated step: the price is in the event it appended the first time.
                            None => self.reserved_price(sku.as_str(), order_id).await?,
                        };
                        Ok(Outcome::Reserved {
                            sku: sku.clone(),
                            unit_price,
                        })
                    }
                    Err(ExecuteError::Rejected(
                        InventoryError::InsufficientStock { .. }
                        | InventoryError::NotRegistered
                        | InventoryError::ReservationMismatch { .. },
                    )) => Ok(Outcome::OutOfStock),
                    Err(err) => Err(executor_error(err)),
                }
            }
            Action::RecordReservation { lines } => {
                let command = OrderCommand::RecordStockReserved {
                    lines: lines.clone(),
                    at,
                };
                self.order_command(&order, command, saga, &step, Outcome::Recorded)
                    .await
            }
            Action::Authorize { amount } => {
                let request = AuthorizationRequest {
                    order_id,
                    amount: *amount,
                    card_token: saga.card_token.clone(),
                    idempotency_key: saga.key("gateway-authorize"),
                };
                let answer = match self.gateway.authorize(&request).await {
                    Ok(answer) => answer,
                    // The gateway will never accept this request (an unknown card): a decline.
                    Err(GatewayError::Refused(detail)) => AuthorizationOutcome::Declined(
                        DeclineReason::parse(
                            detail
                                .chars()
                                .take(DeclineReason::MAX_LEN)
                                .collect::<String>(),
                        )
                        .map_err(|err| StepError::Fatal(err.to_string()))?,
                    ),
                    Err(err) => return Err(gateway_error(err)),
                };
                match answer {
                    AuthorizationOutcome::Approved(authorization_id) => {
                        let command = PaymentCommand::Authorize {
                            order_id,
                            amount: *amount,
                            authorization_id: authorization_id.clone(),
                            at,
                        };
                        self.payment_command(&order, command, saga, "payment-authorized")
                            .await?;
                        Ok(Outcome::Authorized(authorization_id))
                    }
                    AuthorizationOutcome::Declined(reason) => {
                        let command = PaymentCommand::Decline {
                            order_id,
                            amount: *amount,
                            reason,
                            at,
                        };
                        self.payment_command(&order, command, saga, "payment-declined")
                            .await?;
                        Ok(Outcome::Declined)
                    }
                }
            }
            Action::Capture { authorization } => {
                self.gateway
                    .capture(authorization, &saga.key("gateway-capture"))
                    .await
                    .map_err(gateway_error)?;
                self.payment_command(
                    &order,
                    PaymentCommand::Capture { at },
                    saga,
                    "payment-captured",
                )
                .await?;
                Ok(Outcome::Captured)
            }
            Action::Confirm => {
                self.order_command(
                    &order,
                    OrderCommand::Confirm { at },
                    saga,
                    &step,
                    Outcome::Confirmed,
                )
                .await
            }
            Action::LookUpAuthorization => {
                let found = self
                    .gateway
                    .find_authorization(&saga.key("gateway-authorize"))
                    .await
                    .map_err(gateway_error)?;
                Ok(Outcome::LookedUp(found))
            }
            Action::Void { authorization } => {
                self.gateway
                    .void(authorization, &saga.key("gateway-void"))
                    .await
                    .map_err(gateway_error)?;
                self.payment_command(&order, PaymentCommand::Void { at }, saga, "payment-voided")
                    .await?;
                Ok(Outcome::Voided)
            }
            Action::Refund {
                authorization,
                amount,
                refund_id,
            } => {
                self.gateway
                    .refund(authorization, *amount, &saga.key("gateway-refund"))
                    .await
                    .map_err(gateway_error)?;
                let command = PaymentCommand::Refund {
                    refund_id: *refund_id,
                    amount: *amount,
                    at,
                };
                self.payment_command(&order, command, saga, "payment-refunded")
                    .await?;
                Ok(Outcome::Refunded)
            }
            Action::Release { sku } => {
                let command = InventoryCommand::Release { order_id, at };
                self.command(&self.items, sku.as_str(), command, saga, &step)
                    .await
                    .map_err(executor_error)?;
                Ok(Outcome::Released { sku: sku.clone() })
            }
            Action::CancelOrder { reason } => {
                let command = OrderCommand::Cancel {
                    reason: *reason,
                    at,
                };
                self.order_command(&order, command, saga, &step, Outcome::OrderCancelled)
                    .await
            }
            Action::Commit { sku } => {
                let command = InventoryCommand::Commit { order_id, at };
                self.command(&self.items, sku.as_str(), command, saga, &step)
                    .await
                    .map_err(executor_error)?;
                Ok(Outcome::Committed { sku: sku.clone() })
            }
        }
    }

    /// Runs an order command; a refusal because the customer cancelled is an outcome.
    async fn order_command(
        &self,
        order: &str,
        command: OrderCommand,
        saga: &Fulfillment,
        step: &str,
        success: Outcome,
    ) -> Result<Outcome, StepError> {
        match self.command(&self.orders, order, command, saga, step).await {
            Ok(_) => Ok(success),
            Err(ExecuteError::Rejected(OrderError::Cancelled { .. })) => {
                Ok(Outcome::CancelledByCustomer)
            }
            Err(err) => Err(executor_error(err)),
        }
    }

    async fn payment_command(
        &self,
        order: &str,
        command: PaymentCommand,
        saga: &Fulfillment,
        step: &str,
    ) -> Result<(), StepError> {
        // Authorizing or declining opens the payment's stream (its id is the order's, and
        // only the saga writes it): no load, a guess the append checks. A repeated step
        // collides there and is decided again on a fresh load, as a no-op.
        let options = CommandOptions {
            new_aggregate: matches!(
                command,
                PaymentCommand::Authorize { .. } | PaymentCommand::Decline { .. }
            ),
            ..self.options(saga, step)
        };
        self.payments
            .execute_with_events(order, command, options)
            .await
            .map(|_| ())
            .map_err(executor_error)
    }

    /// The unit price this order's reservation of `sku` recorded (the step is a repeat: the
    /// reservation exists, made by an earlier run of it, most likely recently: the item's
    /// stream is read from its end, a page at a time, so a hot item's long history is not).
    async fn reserved_price(
        &self,
        sku: &str,
        order_id: domain::ids::OrderId,
    ) -> Result<domain::money::Money, StepError> {
        const PAGE: u32 = 200;
        let mut before = None;
        loop {
            let page = self
                .log
                .read_stream_backwards(InventoryItem::TYPE, sku, before, PAGE)
                .await
                .map_err(|err| StepError::Transient(infra::telemetry::err_chain(&err)))?;
            let Some(oldest) = page.last().map(|stored| stored.sequence) else {
                return Err(StepError::Fatal(format!(
                    "no reservation of {sku} for order {order_id} found"
                )));
            };
            let found = page.into_iter().find_map(|stored| {
                match serde_json::from_value::<InventoryEvent>(stored.payload) {
                    Ok(InventoryEvent::Reserved {
                        order_id: reserved_for,
                        unit_price,
                        ..
                    }) if reserved_for == order_id => Some(unit_price),
                    _ => None,
                }
            });
            if let Some(price) = found {
                return Ok(price);
            }
            before = Some(oldest);
        }
    }

    /// Runs a step's command, group-committed with whatever else the process is writing. A
    /// repeated step finds its effect in the aggregate and changes nothing.
    async fn command<A>(
        &self,
        executor: &CommandExecutor<A>,
        aggregate_id: &str,
        command: A::Command,
        saga: &Fulfillment,
        step: &str,
    ) -> Result<infra::commands::CommittedWithEvents<A>, ExecuteError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        A::Command: Clone + Send + Sync,
        A::Error: Send + 'static,
    {
        executor
            .execute_with_events(aggregate_id, command, self.options(saga, step))
            .await
    }
}
