use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use billing_contract::PaymentRefunded;
use catalog_contract::StockLow;
use chassis::db::{Database, DbConnection, DbError, is_unique_violation};
use chassis::events::{Applied, Envelope, Events, Inbox};
use chassis::page::{Page, PageRequest};
use chrono::TimeDelta;
use notifications_contract::{
    Channel, CreateWebhook, Delivery, DeliveryStatus, Notifications, NotificationsError,
    NotificationsSettings, Webhook,
};
use orders_contract::{OrderCancelled, OrderConfirmed, OrderRejected};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::channels::{self, Failure, Mail, Mailer, WebhookSender};
use crate::error::Error;
use crate::render::{self, Rendered, template};
use crate::repository::{self as repo, DeliveryRow, Kind, NewDelivery, WebhookRow};
use crate::retry::{AfterFailure, Backoff};
use crate::target::TargetPolicy;

/// The event types this module consumes: those it e-mails about, and every other one a
/// webhook may subscribe to.
pub const EVENT_TYPES: [&str; 9] = [
    orders_contract::event_types::ORDER_CONFIRMED,
    orders_contract::event_types::ORDER_REJECTED,
    orders_contract::event_types::ORDER_CANCELLED,
    billing_contract::event_types::PAYMENT_CAPTURED,
    billing_contract::event_types::PAYMENT_DECLINED,
    billing_contract::event_types::PAYMENT_REFUNDED,
    catalog_contract::event_types::PRODUCT_CREATED,
    catalog_contract::event_types::PRICE_CHANGED,
    catalog_contract::event_types::STOCK_LOW,
];

/// The consumer name of the module's subscription and inbox.
pub(crate) const CONSUMER: &str = notifications_contract::MODULE;

const MAX_URL_LEN: usize = 2048;
const MAX_SECRET_LEN: usize = 1024;
/// Most deliveries the port answers for one order.
const MAX_DELIVERIES_PER_ORDER: i64 = 1000;

/// Notifications' behaviour: the event handler that records deliveries, the delivery
/// worker that performs them, the webhook admin operations and the delivery log.
///
/// The handler sends nothing before its record is committed: in the transaction of its
/// inbox record it records one delivery per e-mail and per matching webhook, each under a
/// unique `dedup_key` (an e-mail's: template, order and recipient), so that a redelivered
/// event — or a second event about the same outcome — records nothing new. Every attempt
/// holds a lease on its delivery (`claimed_until`) until its outcome is recorded, and a
/// slot while it sends — one of `notifications.concurrency` for an e-mail, one of
/// `notifications.webhook_concurrency` for a webhook call — and runs in a task of its own,
/// so a slow or dead endpoint holds one slot and delays nothing else; and webhooks that
/// never answer, however many, take no slot an e-mail needs. The handler records the e-mails it has free slots for already leased, and
/// attempts them once committed; the workers ([`NotificationsService::spawn_workers`], one
/// per kind of delivery) claim everything else that is due — webhooks, e-mails beyond the
/// free slots, retries, leases that lapsed with a stopped process. A
/// failed attempt is retried with exponential backoff and jitter (`retrying`) until
/// `notifications.max_attempts`, then the delivery is `failed` with its last error.
#[derive(Debug, Clone)]
pub struct NotificationsService {
    db: Database,
    inbox: Inbox,
    settings: Arc<NotificationsSettings>,
    mailer: Arc<Mailer>,
    webhooks: WebhookSender,
    backoff: Backoff,
    /// E-mails: the worker's attempts and those the handler starts itself.
    mail_lane: Lane,
    /// Webhook calls, which only the worker makes.
    webhook_lane: Lane,
}

/// The slots of one kind of delivery, and the bell of the worker that claims it.
#[derive(Debug, Clone)]
struct Lane {
    slots: Arc<Semaphore>,
    /// How many slots there are: the most deliveries one claim takes.
    size: usize,
    wake: Arc<Notify>,
    /// Whether deliveries of this kind may be due that nobody holds a slot for: recorded
    /// for the worker by the handler, or left over by a claim that filled every free slot.
    /// A slot that frees up wakes the worker only then — otherwise every e-mail sent would
    /// cost a look for due deliveries (a round trip on PostgreSQL) that finds none.
    /// Retries fall due later, and the worker's poll finds them.
    backlog: Arc<AtomicBool>,
}

impl Lane {
    fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            wake: Arc::new(Notify::new()),
            backlog: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Deliveries were left for the worker: it claims them now, or when a slot frees up.
    fn left_for_worker(&self) {
        self.backlog.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// A slot was given back: the worker claims with it if anything is waiting.
    fn slot_freed(&self) {
        if self.backlog.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

/// One attempt at a delivery, made, to be recorded.
struct Attempted {
    row: DeliveryRow,
    outcome: repo::AttemptOutcome,
}

#[derive(Debug, Clone)]
struct PlannedMail {
    template: &'static str,
    /// The recipient, as the event names them: no e-mail depends on an earlier event.
    to: String,
    /// What makes the e-mail unique besides template and recipient: the order, or the
    /// event for messages not about an order.
    scope: String,
    rendered: Rendered,
}

/// What an event asks of this module.
#[derive(Debug, Clone, Default)]
struct Plan {
    mails: Vec<PlannedMail>,
}

fn payload<T: serde::de::DeserializeOwned>(event: &Envelope) -> Result<T, Error> {
    event.payload_as().map_err(|error| {
        Error::Event(format!(
            "{} {}: payload does not parse: {error}",
            event.event_type, event.id
        ))
    })
}

fn plan(event: &Envelope, operator_email: &str) -> Result<Plan, Error> {
    use billing_contract::event_types as billing;
    use catalog_contract::event_types as catalog;
    use orders_contract::event_types as orders;
    let order_mail = |template, order: &orders_contract::Order, rendered| Plan {
        mails: vec![PlannedMail {
            template,
            to: order.customer_email.clone(),
            scope: order.id.to_string(),
            rendered,
        }],
    };
    Ok(match event.event_type.as_str() {
        orders::ORDER_CONFIRMED => {
            let OrderConfirmed { order } = payload(event)?;
            order_mail(
                template::ORDER_CONFIRMED,
                &order,
                render::order_confirmed(&order),
            )
        }
        orders::ORDER_REJECTED => {
            let OrderRejected { order } = payload(event)?;
            order_mail(
                template::ORDER_REJECTED,
                &order,
                render::order_rejected(&order),
            )
        }
        orders::ORDER_CANCELLED => {
            let OrderCancelled { order } = payload(event)?;
            order_mail(
                template::ORDER_CANCELLED,
                &order,
                render::order_cancelled(&order),
            )
        }
        billing::PAYMENT_REFUNDED => {
            let refund: PaymentRefunded = payload(event)?;
            Plan {
                mails: vec![PlannedMail {
                    template: template::PAYMENT_REFUNDED,
                    to: refund.customer_email,
                    scope: refund.order_id.to_string(),
                    rendered: render::payment_refunded(refund.order_id, &refund.amount),
                }],
            }
        }
        catalog::STOCK_LOW => {
            let stock: StockLow = payload(event)?;
            Plan {
                mails: vec![PlannedMail {
                    template: template::STOCK_LOW,
                    to: operator_email.to_owned(),
                    scope: event.id.to_string(),
                    rendered: render::stock_low(&stock),
                }],
            }
        }
        _ => Plan::default(),
    })
}

/// The order an event is about: orders' and billing's events are keyed on the order id.
fn order_of(event: &Envelope) -> Option<Uuid> {
    matches!(event.source_module.as_str(), "orders" | "billing")
        .then(|| Uuid::parse_str(&event.key).ok())
        .flatten()
}

/// The e-mails the recording handler sends itself, right after commit, with the e-mail
/// slots it holds for them: they are recorded already claimed for `lease`, which spares the
/// worker a claim (a write) per e-mail, and the worker takes them over only if that claim
/// lapses (the process stopped before sending).
#[derive(Debug, Clone, Copy)]
struct SendNow {
    count: usize,
    lease: TimeDelta,
}

/// What [`record`] recorded.
#[derive(Default)]
struct Recorded {
    /// Recorded leased, for the caller to attempt.
    claimed: Vec<DeliveryRow>,
    /// Whether e-mails were recorded for the worker.
    mails_for_worker: bool,
    /// Whether webhook calls were recorded (always for the worker).
    webhooks_for_worker: bool,
}

/// How [`record`] inserts a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    /// Left to the batch (`Events::insert_at_commit`): the deliveries of the events handled
    /// together go in as one statement on PostgreSQL. One whose `dedup_key` is taken (the
    /// same e-mail recorded for another event) fails the write with the key's violation,
    /// and the event is recorded again, [`Insert::Now`].
    AtCommit,
    /// At once, doing nothing for a `dedup_key` that is taken.
    Now,
}

/// Records the deliveries of `plan` (in the inbox's transaction).
fn record(
    conn: &mut DbConnection,
    at_commit: &mut Events,
    event: &Envelope,
    plan: Plan,
    mail_channel: Channel,
    send_now: &SendNow,
    insert: Insert,
) -> Result<Recorded, Error> {
    let insert_delivery =
        |conn: &mut DbConnection, at_commit: &mut Events, delivery: &NewDelivery| match insert {
            Insert::AtCommit => {
                at_commit.insert_at_commit(delivery.clone());
                Ok::<_, Error>(true)
            }
            Insert::Now => Ok(repo::insert_delivery(conn, delivery)?),
        };
    let at = repo::now();
    let claimed_until = at.checked_add_signed(send_now.lease).unwrap_or(at);
    let mut recorded = Recorded::default();
    let order_id = order_of(event).map(|id| id.to_string());
    let new =
        |dedup_key: String, channel: Channel, recipient: String, template: &str| NewDelivery {
            id: Uuid::now_v7().to_string(),
            dedup_key,
            event_id: event.id.to_string(),
            event_type: event.event_type.clone(),
            order_id: order_id.clone(),
            channel: channel.as_str().to_owned(),
            recipient,
            template: template.to_owned(),
            webhook_id: None,
            subject: None,
            text_body: None,
            html_body: None,
            payload: None,
            status: DeliveryStatus::Retrying.as_str().to_owned(),
            attempts: 0,
            next_attempt_at: at,
            claimed_until: None,
            created_at: at,
            updated_at: at,
        };
    for mail in plan.mails {
        let recipient = mail.to;
        let dedup_key = format!(
            "email:{}:{}:{}",
            mail.template,
            mail.scope,
            recipient.to_lowercase()
        );
        let mut delivery = new(dedup_key, mail_channel, recipient, mail.template);
        delivery.subject = Some(mail.rendered.subject);
        delivery.text_body = Some(mail.rendered.text);
        delivery.html_body = Some(mail.rendered.html);
        let send = recorded.claimed.len() < send_now.count;
        if send {
            delivery.claimed_until = Some(claimed_until);
        }
        if insert_delivery(conn, at_commit, &delivery)? {
            if send {
                recorded.claimed.push(delivery.into_row());
            } else {
                recorded.mails_for_worker = true;
            }
        }
    }
    let hooks: Vec<WebhookRow> = at_commit
        .transaction_memo::<repo::WebhooksRead>()
        .all(conn)?
        .iter()
        .filter(|hook| hook.event_types().contains(&event.event_type))
        .cloned()
        .collect();
    if !hooks.is_empty() {
        let body = serde_json::to_string(event)
            .map_err(|error| Error::Database(DbError::Encoding(error.to_string())))?;
        for hook in hooks {
            let dedup_key = format!("webhook:{}:{}", event.id, hook.id);
            let mut delivery = new(dedup_key, Channel::Webhook, hook.url, &event.event_type);
            delivery.webhook_id = Some(hook.id);
            delivery.payload = Some(body.clone());
            recorded.webhooks_for_worker |= insert_delivery(conn, at_commit, &delivery)?;
        }
    }
    Ok(recorded)
}

/// Checks a webhook subscription; the message names the field.
pub(crate) fn validate_webhook(input: &CreateWebhook) -> Result<(), Error> {
    let url = input.url.trim();
    if url.chars().count() > MAX_URL_LEN {
        return Err(Error::Validation(format!(
            "url: longer than {MAX_URL_LEN} characters"
        )));
    }
    // The URL parser would also take `http:host` and `http:\\host`; the documented form
    // is `http://host…`, and nothing else is.
    let scheme_end = url.chars().take(8).collect::<String>().to_ascii_lowercase();
    if !(scheme_end.starts_with("http://") || scheme_end.starts_with("https://")) {
        return Err(Error::Validation(
            "url: must start with http:// or https://".into(),
        ));
    }
    // The URL is not repeated in the message: it may carry credentials.
    let parsed = url::Url::parse(url)
        .map_err(|error| Error::Validation(format!("url: not a URL ({error})")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Credentials in the URL would be shown in every list of webhooks and deliveries,
        // and logged; the receiver authenticates Bazaar by the signature instead.
        return Err(Error::Validation(
            "url: must not carry credentials (user:password@); the receiver checks \
             X-Bazaar-Signature, made with the webhook's secret"
                .into(),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::Validation("url: names no host".into()));
    }
    if input.events.is_empty() {
        return Err(Error::Validation(
            "events: must name at least one event type".into(),
        ));
    }
    if let Some(unknown) = input
        .events
        .iter()
        .find(|event| !EVENT_TYPES.contains(&event.as_str()))
    {
        return Err(Error::Validation(format!(
            "events: {unknown:?} is not an event type (known: {})",
            EVENT_TYPES.join(", ")
        )));
    }
    if input.secret.trim().is_empty() {
        return Err(Error::Validation("secret: must not be empty".into()));
    }
    if input.secret.chars().count() > MAX_SECRET_LEN {
        return Err(Error::Validation(format!(
            "secret: longer than {MAX_SECRET_LEN} characters"
        )));
    }
    Ok(())
}

fn target_policy(settings: &NotificationsSettings) -> TargetPolicy {
    TargetPolicy {
        allow_private: settings.allow_private_webhooks,
    }
}

fn rows_to_deliveries(rows: Vec<DeliveryRow>) -> Result<Vec<Delivery>, Error> {
    rows.into_iter()
        .map(|row| row.into_delivery().map_err(Error::from))
        .collect()
}

impl NotificationsService {
    /// `data_dir` holds `outbox-mail/` when no SMTP server is configured; `settings` is the
    /// validated `[notifications]` section.
    pub fn new(db: Database, data_dir: &Path, settings: &NotificationsSettings) -> Self {
        Self {
            inbox: Inbox::new(db.clone(), CONSUMER),
            mailer: Arc::new(Mailer::new(
                settings
                    .smtp_url
                    .as_ref()
                    .map(chassis::secret::SecretUrl::expose),
                data_dir,
                settings.smtp_timeout,
            )),
            webhooks: WebhookSender::new(settings.webhook_timeout, target_policy(settings)),
            backoff: Backoff::from_settings(settings),
            settings: Arc::new(settings.clone()),
            mail_lane: Lane::new(settings.concurrency),
            webhook_lane: Lane::new(settings.webhook_concurrency),
            db,
        }
    }

    /// The channel e-mails take: `email` with an SMTP server, else `file`.
    pub fn mail_channel(&self) -> Channel {
        match *self.mailer {
            Mailer::Smtp(..) => Channel::Email,
            Mailer::File(_) => Channel::File,
        }
    }

    /// Applies one event once: records its deliveries together with the inbox record,
    /// starts the e-mails it holds slots for, and wakes the workers for the rest. A
    /// redelivered event answers [`Applied::Duplicate`] and records nothing; an event that
    /// asks for no e-mail and that no webhook wants is answered [`Applied::Handled`]
    /// without writing anything.
    pub async fn handle(&self, event: &Envelope) -> Result<Applied, Error> {
        let plan = plan(event, &self.settings.operator_email)?;
        if plan.mails.is_empty() {
            // Most events (every payment captured, say) ask for nothing unless a webhook
            // wants them: such an event is settled by a read, not a write — a redelivery
            // finds nothing to do either, so there is nothing for the inbox to guard. On
            // PostgreSQL the read goes with the writer's batch, whose recorded events read
            // the subscriptions once for all (`repo::WebhooksRead`).
            let event_type = event.event_type.clone();
            let wanted = self
                .db
                .read_in_batch(move |conn, memo| {
                    Ok::<_, Error>(
                        memo.get_or_default::<repo::WebhooksRead>()
                            .all(conn)?
                            .iter()
                            .any(|hook| hook.event_types().contains(&event_type)),
                    )
                })
                .await?;
            if !wanted {
                return Ok(Applied::Handled);
            }
        }
        let channel = self.mail_channel();
        let owned = event.clone();
        // An e-mail slot free now is taken for an e-mail of this event, sent as soon as it
        // is recorded; e-mails beyond the free slots, and webhooks, are left to the workers.
        let slots: Vec<OwnedSemaphorePermit> = plan
            .mails
            .iter()
            .map_while(|_| Arc::clone(&self.mail_lane.slots).try_acquire_owned().ok())
            .collect();
        let send_now = SendNow {
            count: slots.len(),
            lease: self.lease(),
        };
        let record_with = |insert: Insert| {
            let (event, plan) = (owned.clone(), plan.clone());
            move |conn: &mut DbConnection, at_commit: &mut Events| {
                record(
                    conn,
                    at_commit,
                    &event,
                    plan.clone(),
                    channel,
                    &send_now,
                    insert,
                )
            }
        };
        let recorded = match self
            .inbox
            .apply_returning(event, record_with(Insert::AtCommit))
            .await
        {
            // A delivery's `dedup_key` was taken: recorded at once, that one is skipped.
            Err(Error::Database(DbError::Query(error))) if is_unique_violation(&error) => {
                self.inbox
                    .apply_returning(event, record_with(Insert::Now))
                    .await?
            }
            recorded => recorded?,
        };
        let Some(recorded) = recorded else {
            return Ok(Applied::Duplicate);
        };
        for (row, slot) in recorded.claimed.into_iter().zip(slots) {
            self.spawn_attempt(row, slot);
        }
        if recorded.mails_for_worker {
            self.mail_lane.left_for_worker();
        }
        if recorded.webhooks_for_worker {
            self.webhook_lane.left_for_worker();
        }
        Ok(Applied::Handled)
    }

    /// Attempts a claimed delivery in a task of its own, holding `slot` (of the delivery's
    /// kind) until it is done.
    /// Called by the handler, it runs in the handler's span: the e-mail sent right after an
    /// event is part of that event's trace (a retry by the worker later is not).
    fn spawn_attempt(&self, row: DeliveryRow, slot: OwnedSemaphorePermit) {
        let service = self.clone();
        tokio::spawn(
            async move {
                let kind = Kind::of(&row);
                let attempted = service.send_once(row).await;
                // The slot bounds the sends at once; recording the outcome waits for the
                // database's commit, and the delivery's lease keeps it meanwhile.
                drop(slot);
                service.lane(kind).slot_freed();
                if let Some(attempted) = attempted {
                    service.record_attempt(attempted).await;
                }
            }
            .in_current_span(),
        );
    }

    fn lane(&self, kind: Kind) -> &Lane {
        match kind {
            Kind::Mail => &self.mail_lane,
            Kind::Webhook => &self.webhook_lane,
        }
    }

    /// The delivery log in creation order, of one order if `order_id` is given.
    pub async fn deliveries(
        &self,
        order_id: Option<Uuid>,
        page: PageRequest,
    ) -> Result<Page<Delivery>, Error> {
        self.db
            .read(move |conn| {
                let rows = repo::list_deliveries(
                    conn,
                    order_id,
                    page.after.as_deref(),
                    i64::from(page.limit) + 1,
                )?;
                let rows = Page::from_rows(rows, page.limit, |row| row.id.clone());
                Ok(Page {
                    items: rows_to_deliveries(rows.items)?,
                    next_cursor: rows.next_cursor,
                })
            })
            .await
    }

    /// Registers a webhook; the answer never carries the secret. Its target must be one
    /// the policy allows now (`notifications.allow_private_webhooks`); each delivery checks
    /// again.
    pub async fn create_webhook(&self, input: CreateWebhook) -> Result<Webhook, Error> {
        validate_webhook(&input)?;
        let url = url::Url::parse(input.url.trim())
            .map_err(|error| Error::Validation(format!("url: not a URL ({error})")))?;
        target_policy(&self.settings)
            .resolve(&url, self.settings.webhook_timeout)
            .await
            .map_err(|why| Error::Validation(format!("url: {why}")))?;
        let mut events: Vec<String> = Vec::new();
        for event in input.events {
            if !events.contains(&event) {
                events.push(event);
            }
        }
        let events = serde_json::to_string(&events)
            .map_err(|error| Error::Database(DbError::Encoding(error.to_string())))?;
        let row = WebhookRow {
            id: Uuid::now_v7().to_string(),
            url: input.url.trim().to_owned(),
            events,
            secret: input.secret,
            created_at: repo::now(),
        };
        self.db
            .write_with_events(move |conn, at_commit| {
                repo::insert_webhook(conn, &row)?;
                at_commit.transaction_memo::<repo::WebhooksRead>().forget();
                row.clone().into_webhook().map_err(Error::from)
            })
            .await
    }

    /// Webhooks in creation order.
    pub async fn webhooks(&self, page: PageRequest) -> Result<Page<Webhook>, Error> {
        self.db
            .read(move |conn| {
                let rows =
                    repo::list_webhooks(conn, page.after.as_deref(), i64::from(page.limit) + 1)?;
                let rows = Page::from_rows(rows, page.limit, |row| row.id.clone());
                let items = rows
                    .items
                    .into_iter()
                    .map(WebhookRow::into_webhook)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Page {
                    items,
                    next_cursor: rows.next_cursor,
                })
            })
            .await
    }

    /// Removes a webhook; its pending deliveries then fail (`webhook deleted`).
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), Error> {
        let deleted = self
            .db
            .write_with_events(move |conn, at_commit| {
                at_commit.transaction_memo::<repo::WebhooksRead>().forget();
                repo::delete_webhook(conn, id).map_err(Error::from)
            })
            .await?;
        if deleted {
            Ok(())
        } else {
            Err(Error::WebhookNotFound(id))
        }
    }

    /// How long a claimed delivery is held before another worker may take it over.
    fn lease(&self) -> TimeDelta {
        let longest = self
            .settings
            .webhook_timeout
            .max(self.settings.smtp_timeout)
            + Duration::from_secs(30);
        TimeDelta::from_std(longest).unwrap_or(TimeDelta::MAX)
    }

    /// Claims up to `limit` due deliveries of `kind`: found by a read, claimed by a write
    /// only if there are any (the claim checks again that nobody took them in between).
    async fn claim_due(&self, kind: Kind, limit: usize) -> Result<Vec<DeliveryRow>, Error> {
        // Always the same LIMIT: a new value bound to `LIMIT ?` makes SQLite plan again.
        let most = i64::try_from(self.lane(kind).size).unwrap_or(i64::MAX);
        let at = repo::now();
        let mut ids = self
            .db
            .read(move |conn| repo::due(conn, at, kind, most).map_err(Error::from))
            .await?;
        ids.truncate(limit);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.lease();
        self.db
            .write(move |conn| {
                let at = repo::now();
                let until = at.checked_add_signed(lease).unwrap_or(at);
                repo::claim(conn, &ids, at, until).map_err(Error::from)
            })
            .await
    }

    async fn send(&self, row: &DeliveryRow) -> Result<(), Failure> {
        match row.channel() {
            Ok(Channel::Email | Channel::File) => {
                let mail = Mail {
                    id: &row.id,
                    to: &row.recipient,
                    subject: row.subject.as_deref().unwrap_or_default(),
                    text: row.text_body.as_deref().unwrap_or_default(),
                    html: row.html_body.as_deref().unwrap_or_default(),
                };
                let message = channels::message(&self.settings.from, &mail)?;
                self.mailer.send(message, &row.id).await
            }
            Ok(Channel::Webhook) => {
                let Some(webhook_id) = row.webhook_id.clone() else {
                    return Err(Failure::Permanent("no webhook recorded".into()));
                };
                let hook = self
                    .db
                    .read(move |conn| repo::find_webhook(conn, &webhook_id).map_err(DbError::from))
                    .await
                    .map_err(|error| Failure::Transient(error.to_string()))?
                    .ok_or_else(|| Failure::Permanent("webhook deleted".into()))?;
                let body = row.payload.as_deref().unwrap_or_default();
                self.webhooks.post(&row.recipient, &hook.secret, body).await
            }
            Err(error) => Err(Failure::Permanent(error.to_string())),
        }
    }

    /// Makes one attempt at a claimed delivery and records its outcome, unless the
    /// delivery was claimed again meanwhile (this attempt outlived its lease).
    async fn attempt(&self, row: DeliveryRow) {
        if let Some(attempted) = self.send_once(row).await {
            self.record_attempt(attempted).await;
        }
    }

    /// Sends a claimed delivery once; answers what to record of it (none for a row that
    /// was not claimed).
    async fn send_once(&self, row: DeliveryRow) -> Option<Attempted> {
        let Some(claim) = row.claimed_until else {
            // Every row handed here was claimed; one that was not could be sent twice.
            tracing::warn!(delivery = %row.id, "an unclaimed delivery is not attempted");
            return None;
        };
        let span = tracing::info_span!(
            "delivery attempt",
            otel.name = %format_args!("send {}", row.channel),
            otel.kind = "client",
            bazaar.delivery = %row.id,
            bazaar.template = %row.template,
        );
        let outcome = self.send(&row).instrument(span).await;
        let attempts = row.attempts.saturating_add(1);
        let at = repo::now();
        let (status, last_error, next) = match outcome {
            Ok(()) => (DeliveryStatus::Sent, None, at),
            Err(Failure::Permanent(message)) => (DeliveryStatus::Failed, Some(message), at),
            Err(Failure::Transient(message)) => {
                let tried = u32::try_from(attempts).unwrap_or(u32::MAX);
                match self.backoff.after_failure(tried, fastrand::f64()) {
                    AfterFailure::RetryIn(delay) => {
                        let delay = TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
                        let next = at.checked_add_signed(delay).unwrap_or(at);
                        (DeliveryStatus::Retrying, Some(message), next)
                    }
                    AfterFailure::GiveUp => (DeliveryStatus::Failed, Some(message), at),
                }
            }
        };
        Some(Attempted {
            outcome: repo::AttemptOutcome {
                id: row.id.clone(),
                claimed_until: claim,
                status,
                attempts,
                last_error,
                next_attempt_at: next,
            },
            row,
        })
    }

    /// Records an attempt's outcome, unless the delivery was claimed again meanwhile (the
    /// attempt outlived its lease).
    async fn record_attempt(&self, attempted: Attempted) {
        let Attempted { outcome, row } = attempted;
        let (status, attempts, last_error) =
            (outcome.status, outcome.attempts, outcome.last_error.clone());
        let settled = self
            .db
            .write_with_events(move |_conn, at_commit| {
                at_commit.update_at_commit(outcome.clone());
                Ok::<_, DbError>(true)
            })
            .await
            .or_else(|error| match error {
                // The delivery's claim is no longer this attempt's.
                DbError::NotApplied => Ok(false),
                error => Err(error),
            });
        let error = last_error.as_deref().unwrap_or_default();
        match settled {
            Ok(true) => match status {
                DeliveryStatus::Failed => tracing::warn!(
                    delivery = %row.id, recipient = %row.recipient, attempts, error,
                    "delivery failed"
                ),
                DeliveryStatus::Retrying => tracing::info!(
                    delivery = %row.id, attempts, error, "delivery will be retried"
                ),
                DeliveryStatus::Sent => {
                    tracing::debug!(delivery = %row.id, channel = %row.channel, "delivered");
                }
            },
            Ok(false) => tracing::info!(
                delivery = %row.id, outcome = %status, error,
                "an attempt that outlived its lease is dropped: another attempt holds the delivery"
            ),
            Err(error) => {
                // The claim runs out and the delivery is attempted again.
                tracing::warn!(delivery = %row.id, %error, "cannot record a delivery attempt");
            }
        }
    }

    /// Sends every delivery due now, at most `notifications.concurrency` e-mails and
    /// `notifications.webhook_concurrency` webhook calls at once, and answers how many it
    /// attempted; for tests and one-shot runs. The workers do the same continuously.
    pub async fn deliver_due(&self) -> Result<usize, Error> {
        let mut claimed = self.claim_due(Kind::Mail, self.mail_lane.size).await?;
        claimed.extend(
            self.claim_due(Kind::Webhook, self.webhook_lane.size)
                .await?,
        );
        let count = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|row| self.attempt(row))).await;
        Ok(count)
    }

    /// The delivery workers, one for e-mails and one for webhooks, each claiming for its
    /// own slots: neither ever waits for the other's deliveries. They run until their tasks
    /// are aborted.
    pub fn spawn_workers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        [Kind::Mail, Kind::Webhook]
            .into_iter()
            .map(|kind| tokio::spawn(self.clone().run_worker(kind)))
            .collect()
    }

    async fn run_worker(self, kind: Kind) {
        let lane = self.lane(kind).clone();
        loop {
            let free = lane.slots.available_permits();
            let mut claimed_all = false;
            if free > 0 {
                // This claim takes what is due now; what is recorded after it sets the
                // backlog again (and rings).
                lane.backlog.store(false, Ordering::SeqCst);
                match self.claim_due(kind, free).await {
                    Ok(claimed) => {
                        claimed_all = claimed.len() == free;
                        if claimed_all {
                            // More may be due than there were slots for.
                            lane.backlog.store(true, Ordering::SeqCst);
                        }
                        for row in claimed {
                            // Only the handler takes slots besides this worker, and only
                            // e-mail slots for e-mails it sends at once: a wait here is
                            // behind e-mails of this lane, never behind webhooks.
                            let Ok(slot) = Arc::clone(&lane.slots).acquire_owned().await else {
                                return;
                            };
                            self.spawn_attempt(row, slot);
                        }
                    }
                    Err(error) => {
                        lane.backlog.store(true, Ordering::SeqCst);
                        tracing::warn!(%error, ?kind, "cannot claim due deliveries");
                    }
                }
            }
            if claimed_all && lane.slots.available_permits() > 0 {
                continue;
            }
            tokio::select! {
                () = lane.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }
}

#[async_trait]
impl Notifications for NotificationsService {
    async fn deliveries(&self, order_id: Uuid) -> Result<Vec<Delivery>, NotificationsError> {
        self.db
            .read(move |conn| {
                let rows =
                    repo::list_deliveries(conn, Some(order_id), None, MAX_DELIVERIES_PER_ORDER)?;
                rows_to_deliveries(rows)
            })
            .await
            .map_err(NotificationsError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str, events: &[&str], secret: &str) -> CreateWebhook {
        CreateWebhook {
            url: url.into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            secret: secret.into(),
        }
    }

    fn refused(input: CreateWebhook) -> String {
        match validate_webhook(&input) {
            Err(Error::Validation(message)) => message,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn webhook_validation_names_the_field() {
        let ok = webhook("https://example.com/hook", &["orders.order_confirmed"], "s");
        assert!(validate_webhook(&ok).is_ok());
        assert!(
            refused(webhook(
                "ftp://example.com",
                &["orders.order_confirmed"],
                "s"
            ))
            .starts_with("url:")
        );
        assert!(
            refused(webhook("not a url", &["orders.order_confirmed"], "s")).starts_with("url:")
        );
        for with_credentials in [
            "https://shop:pa55w0rd@hooks.example.com/in",
            "https://token@hooks.example.com/in",
        ] {
            let message = refused(webhook(with_credentials, &["orders.order_confirmed"], "s"));
            assert!(
                message.starts_with("url: must not carry credentials"),
                "{message}"
            );
            assert!(
                !message.contains("pa55w0rd") && !message.contains("token@"),
                "{message}"
            );
        }
        assert!(refused(webhook("https://example.com", &[], "s")).starts_with("events:"));
        assert!(
            refused(webhook("https://example.com", &["orders.nope"], "s")).starts_with("events:")
        );
        assert!(
            refused(webhook(
                "https://example.com",
                &["orders.order_confirmed"],
                " "
            ))
            .starts_with("secret:")
        );
    }

    #[test]
    fn events_without_e_mails_plan_none() {
        let event = Envelope::new(
            "catalog",
            "catalog.price_changed",
            "p",
            &serde_json::json!({}),
        )
        .expect("event");
        let plan = plan(&event, "op@example.com").expect("planned");
        assert!(plan.mails.is_empty());
    }

    #[test]
    fn a_payload_that_does_not_parse_fails_the_handler() {
        let event = Envelope::new(
            "orders",
            orders_contract::event_types::ORDER_CONFIRMED,
            Uuid::new_v4(),
            &serde_json::json!({"order": 1}),
        )
        .expect("event");
        assert!(matches!(
            plan(&event, "op@example.com"),
            Err(Error::Event(_))
        ));
    }
}
