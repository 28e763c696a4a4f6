//! The transactional outbox: a module writes its events into its own `outbox` table in the
//! same transaction as the change they describe (`Database::write_with_events`), and an
//! [`OutboxRelay`] publishes committed rows, in order per key, and marks them sent.
//!
//! The relay wakes on commit (no polling latency on the hot path) and polls slowly as a
//! safety net. One relay publishes a database's outbox at a time: on PostgreSQL the one
//! whose writer's session holds the outbox's advisory lock (several instances of a module
//! on one database then never publish a row at the same time, and the lock passes to
//! another the moment its holder's session ends, however it ends); a SQLite file belongs
//! to one serving process. The rows a relay is publishing are known to it alone, in
//! memory: claiming a row writes nothing. A key is claimed only together with every
//! earlier pending row of that key, so order per key holds across batches in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use tokio::sync::Semaphore;

use super::schema::{inbox, outbox};
use super::{Envelope, EventBus};
use crate::db::{
    Database, DbConnection, DbError, DeferredRow, DeferredUpdate, DeferredWrites, TransactionMemo,
    utc_now,
};

/// What a write leaves to its batch, written before the batch commits: the events it
/// raises (pushed by module code inside `Database::write_with_events`, to the outbox) and
/// the rows it inserts at commit ([`Events::insert_at_commit`]).
#[derive(Debug, Default)]
pub struct Events {
    events: Vec<Envelope>,
    deferred: DeferredWrites,
    memo: TransactionMemo,
}

impl Events {
    /// Leaves `row` to the batch: inserted with the batch's other rows of its kind just
    /// before the batch commits (on PostgreSQL in one statement). For rows no write of the
    /// batch reads (see `chassis::db::deferred`). A key the row breaks fails the batch
    /// there; the writer then runs each of the batch's writes alone, and the key's error is
    /// the answer of the write that left the row, as if its own insert had failed.
    pub fn insert_at_commit<R: DeferredRow>(&mut self, row: R) {
        self.deferred.insert(row);
    }

    /// Leaves `update` to the batch: applied with the batch's other updates of its kind
    /// just before the batch commits, before its deferred rows go in (on PostgreSQL in one
    /// statement). For changes whose outcome no write of the batch needs to see (see
    /// `chassis::db::deferred`). An update whose row is not there or no longer matches
    /// fails the batch there; the writer then runs each of the batch's writes alone, and
    /// [`DbError::NotApplied`] is the answer of the write that left it.
    pub fn update_at_commit<U: DeferredUpdate>(&mut self, update: U) {
        self.deferred.update(update);
    }

    /// What the writes of this transaction share: a value of type `T`, made with
    /// `T::default()` by the first write that asks for it, seen by the writes after it in
    /// the same transaction, and gone when the transaction ends (its writes, run again
    /// after a rollback, start from a new one).
    ///
    /// For what a write would otherwise read or lock again and again in one transaction:
    /// a row the transaction holds locked, so that nobody else can change it before it
    /// ends (a counter), or a read whose result may be as old as the transaction's first
    /// write (every write of a batch was waiting before the batch began). A write that
    /// changes what a memo holds must reset it.
    pub fn transaction_memo<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.memo.get_or_default()
    }

    /// The transaction's memo itself (`Database::read_in_batch`).
    pub(crate) fn memo(&mut self) -> &mut TransactionMemo {
        &mut self.memo
    }

    /// An empty `Events` that shares `memo` with the writes before it in its transaction.
    pub(crate) fn sharing(memo: TransactionMemo) -> Self {
        Self {
            memo,
            ..Self::default()
        }
    }

    /// The events raised, for the outbox, the rows left to the batch, and the memo for the
    /// transaction's next write.
    pub(crate) fn into_parts(self) -> (Vec<Envelope>, DeferredWrites, TransactionMemo) {
        (self.events, self.deferred, self.memo)
    }

    pub fn push(&mut self, event: Envelope) {
        self.events.push(event);
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Records, in each event that carries no trace context yet, the context of a
    /// messaging `create <type>` span under `caller` (the span of the change that raised
    /// it): spec §5's `trace_context`, taken when the row is written, not when it is
    /// relayed, and continued by each handler's `process <type>` span.
    pub(crate) fn record_creation(&mut self, caller: &tracing::Span) {
        // Most writes raise no event: they skip the span lookup altogether.
        if self.events.is_empty() || !crate::trace::is_traced(caller) {
            return;
        }
        for event in self
            .events
            .iter_mut()
            .filter(|event| event.trace_context.is_empty())
        {
            let span = tracing::info_span!(
                parent: caller,
                "create event",
                otel.name = %format_args!("create {}", event.event_type),
                otel.kind = "producer",
                messaging.operation.type = "create",
                messaging.message.id = %event.id,
            );
            event.trace_context = crate::trace::context_of(&span);
        }
    }
}

/// An event encoded for the outbox, waiting for its batch's insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = outbox)]
pub(crate) struct OutboxRow {
    event_id: String,
    event_type: String,
    event_key: String,
    occurred_at: NaiveDateTime,
    envelope: String,
}

/// Encodes `events` for the outbox: done inside the write that raised them, so that an
/// event that cannot be encoded fails that write alone.
pub(crate) fn encode(events: Vec<Envelope>) -> Result<Vec<OutboxRow>, DbError> {
    events
        .into_iter()
        .map(|event| {
            Ok(OutboxRow {
                envelope: serde_json::to_string(&event)
                    .map_err(|error| DbError::Encoding(error.to_string()))?,
                event_id: event.id.to_string(),
                event_type: event.event_type,
                event_key: event.key,
                occurred_at: event.occurred_at.naive_utc(),
            })
        })
        .collect()
}

/// Most rows one `INSERT` carries: five bound values each, far below either backend's
/// limit on a statement's parameters.
const ROWS_PER_INSERT: usize = 1000;

/// Writes the rows the writes of one batch raised, in their order, on `conn`, inside the
/// batch's transaction: one multi-row `INSERT` for the batch, not one per write. (On
/// PostgreSQL they go with the batch's new rows instead: [`insert_statement`].)
pub(crate) fn append(conn: &mut DbConnection, rows: &[OutboxRow]) -> Result<(), DbError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values: Vec<_> = chunk
            .iter()
            .map(|row| {
                (
                    outbox::event_id.eq(&row.event_id),
                    outbox::event_type.eq(&row.event_type),
                    outbox::event_key.eq(&row.event_key),
                    outbox::occurred_at.eq(row.occurred_at),
                    outbox::envelope.eq(&row.envelope),
                )
            })
            .collect();
        crate::per_backend!(conn, |conn| diesel::insert_into(outbox::table)
            .values(&values)
            .execute(conn))?;
    }
    Ok(())
}

/// The PostgreSQL `INSERT` of the rows the writes of one batch raised, in their order (the
/// sequence follows the arrays' order): a part of the statement that inserts the batch's
/// new rows (`chassis::db::deferred`); none when they raised nothing.
pub(crate) fn insert_statement(rows: &[OutboxRow]) -> Option<Box<dyn crate::db::NewRowsPart + '_>> {
    (!rows.is_empty()).then(|| -> Box<dyn crate::db::NewRowsPart + '_> {
        Box::new(crate::insert_columns!(rows => outbox {
            event_id, event_type, event_key, occurred_at, envelope
        }))
    })
}

/// How often a relay deletes what the retention no longer keeps.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Most rows of each table one write of the purge deletes.
const PURGE_CHUNK: i64 = 1000;

/// Tuning of a relay.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Rows claimed and published at once.
    pub batch_size: u32,
    /// The safety-net poll, for commits whose wake-up was missed (another process).
    pub poll_interval: Duration,
    /// Batches being published at once.
    pub max_in_flight: usize,
    /// How long sent rows (and the inbox's handled ids) are kept before they are deleted.
    pub retention: Duration,
    /// How long the relay lets commits gather after a wake-up before it claims, so that a
    /// busy module's events go out in batches rather than one claim per commit.
    pub linger: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_secs(1),
            max_in_flight: 4,
            retention: Duration::from_secs(24 * 3600),
            linger: Duration::from_millis(5),
        }
    }
}

/// A row claimed by a relay.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub envelope: String,
}

/// The backlog of one module's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    pub oldest: Option<DateTime<Utc>>,
}

pub async fn stats(db: &Database) -> Result<OutboxStats, DbError> {
    db.read(|conn| {
        let (pending, oldest): (i64, Option<NaiveDateTime>) = outbox::table
            .filter(outbox::published_at.is_null())
            .select((
                diesel::dsl::count_star(),
                diesel::dsl::min(outbox::occurred_at),
            ))
            .get_result(conn)?;
        Ok(OutboxStats {
            pending,
            oldest: oldest.map(|at| at.and_utc()),
        })
    })
    .await
}

/// How far below the first row its last claim found a relay's next claim starts looking:
/// room for rows that commit after rows inserted later (two instances' writers at once).
const SCAN_SLACK: i64 = 1000;

/// Publishes one module's outbox.
pub struct OutboxRelay {
    module: String,
    db: Database,
    bus: Arc<dyn EventBus>,
    settings: RelaySettings,
    /// Where the claims after a wake-up start looking (`seq >=`): [`SCAN_SLACK`] below the
    /// first row the last claim found. Below it lie published rows and rows in flight — on
    /// PostgreSQL, until a vacuum, a trail of dead entries in the index of pending rows
    /// that a claim from the start would walk every time (BENCHMARKS.md,
    /// "Orders on PostgreSQL"). The safety-net poll claims from the start, so a row below
    /// it (one that committed late, or one another relay left unpublished when its session
    /// ended) waits at most `poll_interval`.
    floor: AtomicI64,
    /// The rows of the batches being published: pending still, never claimed again.
    in_flight: std::sync::Mutex<InFlight>,
}

/// The rows a relay is publishing, and their keys: a key with a row in flight is not
/// claimed again until that row is settled (order per key).
#[derive(Debug, Default)]
struct InFlight {
    rows: BTreeMap<i64, String>,
    keys: HashMap<String, usize>,
}

impl InFlight {
    fn add(&mut self, seq: i64, key: String) {
        *self.keys.entry(key.clone()).or_default() += 1;
        self.rows.insert(seq, key);
    }

    fn remove(&mut self, seq: i64) {
        let Some(key) = self.rows.remove(&seq) else {
            return;
        };
        if let Some(count) = self.keys.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.keys.remove(&key);
            }
        }
    }

    /// The rows in flight as runs of consecutive `seq`s, first and last (a claim takes
    /// the rows it finds in order, so a batch is mostly one run).
    fn runs(&self) -> Vec<(i64, i64)> {
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for &seq in self.rows.keys() {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == seq => *last = seq,
                _ => runs.push((seq, seq)),
            }
        }
        runs
    }
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    pub fn new(
        module: &str,
        db: Database,
        bus: Arc<dyn EventBus>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            module: module.to_owned(),
            db,
            bus,
            settings,
            floor: AtomicI64::new(0),
            in_flight: std::sync::Mutex::new(InFlight::default()),
        }
    }

    /// Runs the relay until the runtime stops.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(Arc::new(self).run())
    }

    async fn run(self: Arc<Self>) {
        let signal = self.db.outbox_signal();
        let permits = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        let mut reported = Instant::now();
        let mut purged = Instant::now();
        let mut scanned_all = Instant::now();
        self.report_backlog().await;
        self.purge().await;
        loop {
            if reported.elapsed() >= self.settings.poll_interval {
                reported = Instant::now();
                self.report_backlog().await;
            }
            // Retention is counted in hours: a write a minute is plenty to keep it.
            if purged.elapsed() >= PURGE_EVERY {
                purged = Instant::now();
                self.purge().await;
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            // From the start once per `poll_interval`, from the floor otherwise.
            let from = if scanned_all.elapsed() >= self.settings.poll_interval {
                scanned_all = Instant::now();
                0
            } else {
                self.floor.load(AtomicOrdering::Relaxed)
            };
            match self.claim_from(from).await {
                Ok(batch) if !batch.is_empty() => {
                    let full = batch.len() >= self.settings.batch_size as usize;
                    let relay = Arc::clone(&self);
                    tokio::spawn(async move {
                        relay.publish(batch).await;
                        drop(permit);
                    });
                    if full {
                        continue;
                    }
                }
                Ok(_) => drop(permit),
                Err(error) => {
                    drop(permit);
                    tracing::warn!(module = %self.module, %error, "cannot claim outbox rows");
                }
            }
            tokio::select! {
                () = signal.notified() => tokio::time::sleep(self.settings.linger).await,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// Claims up to a batch of pending rows for this relay, in order, looking from the
    /// first row of the outbox; none unless this relay publishes the outbox (module docs).
    /// The rows are this relay's until [`OutboxRelay::publish`] is done with them.
    pub async fn claim(&self) -> Result<Vec<Claimed>, DbError> {
        self.claim_from(0).await
    }

    /// Claims up to a batch of pending rows from `seq` `from` on, and moves the floor to
    /// [`SCAN_SLACK`] below the first claimable row found.
    async fn claim_from(&self, from: i64) -> Result<Vec<Claimed>, DbError> {
        let batch = i64::from(self.settings.batch_size);
        let (runs, keys_in_flight) = {
            let in_flight = self.in_flight();
            let keys: HashSet<String> = in_flight.keys.keys().cloned().collect();
            (in_flight.runs(), keys)
        };
        let (claimed, first) = self
            .db
            .write(move |conn| claim(conn, batch, from, &runs, &keys_in_flight))
            .await?;
        let mut in_flight = self.in_flight();
        let claimed = claimed
            .into_iter()
            .map(|(row, key)| {
                in_flight.add(row.seq, key);
                row
            })
            .collect();
        drop(in_flight);
        if let Some(first) = first {
            self.floor.store(
                first.saturating_sub(SCAN_SLACK).max(0),
                AtomicOrdering::Relaxed,
            );
        }
        Ok(claimed)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // The set is consistent after any panic: each change is one call on it.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the rows of a batch, marked sent or given back to be claimed again.
    fn settled(&self, seqs: &[i64]) {
        let mut in_flight = self.in_flight();
        for &seq in seqs {
            in_flight.remove(seq);
        }
    }

    /// Publishes claimed rows and marks them sent; on a bus error, gives the rows back.
    pub async fn publish(&self, batch: Vec<Claimed>) {
        let seqs: Vec<i64> = batch.iter().map(|row| row.seq).collect();
        let mut events = Vec::with_capacity(batch.len());
        for row in batch {
            match serde_json::from_str::<Envelope>(&row.envelope) {
                Ok(event) => events.push(event),
                // Only the chassis writes these rows; an unreadable one is skipped, loudly,
                // rather than blocking its key forever.
                Err(error) => {
                    tracing::error!(module = %self.module, seq = row.seq, %error, "unreadable outbox row skipped")
                }
            }
        }
        let count = events.len();
        if let Err(error) = self.bus.publish(events).await {
            tracing::warn!(module = %self.module, %error, "cannot publish; the rows stay in the outbox");
            let lowest = seqs.iter().copied().min().unwrap_or(0);
            // The next claim looks at them again, however far the floor moved meanwhile.
            self.floor.fetch_min(lowest, AtomicOrdering::Relaxed);
            self.settled(&seqs);
            tokio::time::sleep(self.settings.poll_interval).await;
            return;
        }
        let mut delay = Duration::from_millis(50);
        loop {
            let marked = seqs.clone();
            match self
                .db
                .write(move |conn| mark_published(conn, &marked))
                .await
            {
                Ok(()) => {
                    self.settled(&seqs);
                    break;
                }
                Err(error) => {
                    tracing::warn!(module = %self.module, %error, "cannot mark outbox rows sent; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.settings.poll_interval * 5);
                }
            }
        }
        metrics::counter!("bazaar_outbox_published_total", "module" => self.module.clone())
            .increment(count as u64);
        // Rows of the same keys may have waited behind this batch: left out by a claim
        // made while it was in flight (this process's or another's), which cannot know
        // when it ends. So look again, even if that finds nothing.
        self.db.outbox_signal().notify_one();
    }

    async fn report_backlog(&self) {
        match stats(&self.db).await {
            Ok(stats) => {
                let age = stats
                    .oldest
                    .map(|oldest| (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!("bazaar_outbox_pending", "module" => self.module.clone())
                    .set(stats.pending as f64);
                metrics::gauge!("bazaar_outbox_oldest_age_seconds", "module" => self.module.clone()).set(age);
            }
            Err(error) => {
                tracing::warn!(module = %self.module, %error, "cannot read the outbox backlog")
            }
        }
    }

    /// Deletes sent rows, and the inbox's handled ids, older than the retention: at most
    /// [`PURGE_CHUNK`] rows a write, so that the database's other writes, which wait for
    /// the same writer, go in between — a day's backlog is never one long write.
    async fn purge(&self) {
        let cutoff = utc_now()
            - chrono::Duration::from_std(self.settings.retention)
                .unwrap_or(chrono::Duration::days(1));
        loop {
            let purged = self
                .db
                .write(move |conn| {
                    // Deletes the rows of `$table` whose `$age` is before the cutoff, up to
                    // the age of its `PURGE_CHUNK`-th oldest such row (all of them, when
                    // fewer), found through the column's index. `$selected` is `$age` read
                    // as not null: the filter leaves no null.
                    macro_rules! purge_chunk {
                        ($table:ident, $age:expr, $selected:expr) => {{
                            let until = crate::per_backend!(conn, |conn| $table::table
                                .select($selected)
                                .filter($age.lt(cutoff))
                                .order($age.asc())
                                .offset(PURGE_CHUNK - 1)
                                .limit(1)
                                .get_result::<NaiveDateTime>(conn)
                                .optional())?
                            .unwrap_or(cutoff);
                            crate::per_backend!(conn, |conn| diesel::delete(
                                $table::table.filter($age.lt(cutoff)).filter($age.le(until))
                            )
                            .execute(conn))?
                        }};
                    }
                    let sent = purge_chunk!(
                        outbox,
                        outbox::published_at,
                        outbox::published_at.assume_not_null()
                    );
                    // Redeliveries come within minutes; a day-old handled id is not
                    // needed to recognise one.
                    let handled = purge_chunk!(inbox, inbox::handled_at, inbox::handled_at);
                    Ok::<_, DbError>(sent.max(handled))
                })
                .await;
            match purged {
                Ok(most) if most < usize::try_from(PURGE_CHUNK).unwrap_or(usize::MAX) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(module = %self.module, %error, "cannot purge sent outbox rows");
                    return;
                }
            }
        }
    }
}

/// A row claimed, and its key.
type KeyedClaim = (Claimed, String);

/// Claims up to `batch` pending rows from `seq` `from` on, leaving out the `runs` of rows
/// in flight; answers them with their keys, and the first claimable row found (claimed
/// or not: its key may be held). A key is claimed only together with every earlier
/// pending row of it, so not while one of its rows is in flight (`keys_in_flight`), nor
/// while one lies below `from`. Nothing, unless this relay's session publishes the
/// outbox ([`lead_condition`]).
fn claim(
    conn: &mut DbConnection,
    batch: i64,
    from: i64,
    runs: &[(i64, i64)],
    keys_in_flight: &HashSet<String>,
) -> Result<(Vec<KeyedClaim>, Option<i64>), DbError> {
    // Whether this session publishes the outbox is asked in the same statement (a
    // condition on no row, evaluated once before the scan): no round trip of its own.
    let lead = lead_condition(conn);
    let candidates: Vec<(i64, String, String)> = crate::per_backend!(conn, |conn| {
        let mut candidates = outbox::table
            .filter(outbox::published_at.is_null())
            .filter(outbox::seq.ge(from))
            .into_boxed();
        if let Some(lead) = lead {
            candidates = candidates.filter(diesel::dsl::sql::<diesel::sql_types::Bool>(lead));
        }
        for &(first, last) in runs {
            candidates = candidates.filter(diesel::dsl::not(outbox::seq.between(first, last)));
        }
        candidates
            .order(outbox::seq.asc())
            .limit(batch)
            .select((outbox::seq, outbox::event_key, outbox::envelope))
            .load(conn)
    })?;
    let first = candidates.first().map(|(seq, _, _)| *seq);
    // Every pending row of `from` and above up to the last candidate is a candidate or in
    // flight; below `from` (a claim from the floor), a key's earlier rows are looked up.
    let mut held: HashSet<String> = keys_in_flight.clone();
    let keys: Vec<&str> = candidates
        .iter()
        .map(|(_, key, _)| key.as_str())
        .filter(|key| !held.contains(*key))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if from > 0 && !keys.is_empty() {
        let below: Vec<String> = outbox::table
            .filter(outbox::published_at.is_null())
            .filter(outbox::event_key.eq_any(&keys))
            .filter(outbox::seq.lt(from))
            .select(outbox::event_key)
            .distinct()
            .load(conn)?;
        held.extend(below);
    }
    let claimed = candidates
        .into_iter()
        .filter(|(_, key, _)| !held.contains(key))
        .map(|(seq, key, envelope)| (Claimed { seq, envelope }, key))
        .collect();
    Ok((claimed, first))
}

/// The condition that this session publishes the outbox, for the claim's statement; none
/// where it always does. On PostgreSQL, whether it holds the outbox's advisory lock — a
/// session-level lock keyed by the `outbox` table's oid, so one per module's database or
/// schema — taken if nobody holds it: it is held until the session ends, and passes to
/// another instance's relay at its next claim. Taking it again while held only counts it
/// once more. As an uncorrelated subquery it is evaluated once, before any row is read,
/// and a session that does not hold the lock claims nothing. A SQLite file has one
/// serving process (`Database::serve_exclusively`): it always does.
fn lead_condition(conn: &DbConnection) -> Option<&'static str> {
    match conn {
        DbConnection::Postgres(_) => {
            Some("(SELECT pg_try_advisory_lock('outbox'::regclass::oid::bigint))")
        }
        DbConnection::Sqlite(_) => None,
    }
}

fn mark_published(conn: &mut DbConnection, seqs: &[i64]) -> Result<(), DbError> {
    crate::per_backend!(conn, |conn| diesel::update(
        outbox::table.filter(outbox::seq.eq_any(seqs))
    )
    .set(outbox::published_at.eq(utc_now()))
    .execute(conn))?;
    Ok(())
}
