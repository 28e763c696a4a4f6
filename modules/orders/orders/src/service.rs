use std::sync::Arc;

use async_trait::async_trait;
use billing_contract::Billing;
use catalog_contract::{Catalog, CatalogError};
use chassis::db::{Backend, Database, is_unique_violation, utc_now};
use chassis::page::{Page, PageRequest};
use futures::StreamExt;
use orders_contract::{Order, OrderStatus, Orders, OrdersError, OrdersSettings};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::{PlaceOrder, Step, validate_idempotency_key};
use crate::error::Error;
use crate::repository::{self as repo, LineRow, OrderRow};
use crate::saga::Saga;

/// Sagas the recovery worker resumes at once.
const RECOVERY_CONCURRENCY: usize = 16;
/// How often a request waiting for another request's saga looks at the order again.
const SAGA_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The orders module's behaviour: placing, reading and cancelling orders, and the
/// [`Orders`] port other modules call.
#[derive(Clone)]
pub struct OrdersService {
    db: Database,
    catalog: Arc<dyn Catalog>,
    currency: String,
    settings: OrdersSettings,
    saga: Arc<Saga>,
    /// One per placed order whose saga task is running: `orders.max_sagas_in_flight`.
    sagas_in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for OrdersService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrdersService")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl OrdersService {
    /// `catalog` and `billing` are the ports of those modules, local or remote.
    pub fn new(
        db: Database,
        currency: impl Into<String>,
        settings: OrdersSettings,
        catalog: Arc<dyn Catalog>,
        billing: Arc<dyn Billing>,
    ) -> Self {
        let saga = Arc::new(Saga::new(
            db.clone(),
            Arc::clone(&catalog),
            billing,
            settings.clone(),
        ));
        Self {
            db,
            catalog,
            currency: currency.into(),
            sagas_in_flight: Arc::new(tokio::sync::Semaphore::new(
                settings.max_sagas_in_flight.max(1),
            )),
            settings,
            saga,
        }
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Places an order (spec §4): validates it, snapshots the products' prices, stores it
    /// as `pending` and runs the saga, answering when the saga has ended or after
    /// `orders.sync_wait`, whichever comes first.
    pub async fn place(
        &self,
        request: PlaceOrder,
        idempotency_key: Option<String>,
    ) -> Result<Order, Error> {
        request.validate()?;
        let fingerprint = request.fingerprint();
        if let Some(key) = &idempotency_key {
            validate_idempotency_key(key)?;
            if let Some(order) = self.replay(key, &fingerprint).await? {
                return Ok(order);
            }
        }
        // Taken before anything is stored, so that a refusal creates nothing; held by the
        // saga's task until it ends.
        let in_flight = Arc::clone(&self.sagas_in_flight)
            .try_acquire_owned()
            .map_err(|_| {
                metrics::counter!("bazaar_orders_refused_total", "reason" => "overloaded")
                    .increment(1);
                Error::Unavailable(format!(
                    "{} orders are being placed; try again shortly",
                    self.settings.max_sagas_in_flight
                ))
            })?;
        let ids: Vec<Uuid> = request.lines.iter().map(|line| line.product_id).collect();
        let products = self
            .catalog
            .products(&ids)
            .await
            .map_err(|error| match error {
                CatalogError::ProductNotFound(id) => Error::UnknownProduct(id),
                CatalogError::InvalidRequest(message) => Error::Validation(message),
                other => Error::Unavailable(format!("the catalog cannot be reached: {other}")),
            })?;

        let id = Uuid::now_v7();
        let key = id.to_string();
        let mut total: i64 = 0;
        let mut lines = Vec::with_capacity(products.len());
        for (position, (line, product)) in request.lines.iter().zip(products).enumerate() {
            if product.price.currency != self.currency {
                return Err(Error::Validation(format!(
                    "lines[{position}].product_id: priced in {}, not in the shop's {}",
                    product.price.currency, self.currency
                )));
            }
            let line_total = product
                .price
                .amount
                .checked_mul(i64::from(line.quantity))
                .ok_or_else(|| {
                    Error::Validation(format!(
                        "lines[{position}].quantity: the line total is too large"
                    ))
                })?;
            total = total
                .checked_add(line_total)
                .ok_or_else(|| Error::Validation("lines: the order total is too large".into()))?;
            lines.push(LineRow {
                product_id: product.id.to_string(),
                sku: product.sku,
                name: product.name,
                quantity: i64::from(line.quantity),
                unit_price: product.price.amount,
                line_total,
            });
        }
        let now = utc_now();
        let row = OrderRow {
            id: key,
            status: OrderStatus::Pending.as_str().into(),
            customer_email: request.customer_email.clone(),
            total_amount: total,
            currency: self.currency.clone(),
            rejection_reason: None,
            payment_token: Some(request.payment.token.clone()),
            saga_step: Some(Step::Reserve.as_str().into()),
            saga_attempts: 0,
            saga_next_at: None,
            saga_deadline: self.saga.deadline(),
            saga_owner: Some(self.saga.new_run()),
            saga_lease_until: Some(self.saga.lease_until()),
            saga_error: None,
            created_at: now,
            updated_at: now,
            lines: repo::encode_lines(&lines),
        };
        let stored_key = idempotency_key.clone();
        let (saga_row, saga_lines) = (row.clone(), lines.clone());
        let placed = row.clone().into_order(lines.clone());
        let stored = self
            .db
            .write_with_events(move |_conn, at_commit| {
                // Nothing reads a new order before its batch commits: it goes in with the
                // batch's others, its key after it; a key already taken is this write's
                // answer.
                at_commit.insert_at_commit(row.clone());
                if let Some(key) = &stored_key {
                    at_commit.insert_at_commit(repo::IdempotencyKeyRow::new(key, &fingerprint, id));
                }
                Ok::<_, Error>(())
            })
            .await;
        match (stored, &idempotency_key) {
            (Ok(()), _) => {}
            // The same key was stored by a concurrent request first.
            (Err(Error::Database(chassis::db::DbError::Query(error))), Some(key))
                if is_unique_violation(&error) =>
            {
                return self
                    .replay(key, &request.fingerprint())
                    .await?
                    .ok_or_else(|| {
                        Error::Unavailable(
                            "the order of this key is not readable yet; retry".into(),
                        )
                    });
            }
            // The connection went away: the commit may have happened or not. Only an order
            // known not to be stored may be answered 503, so look.
            (Err(error @ Error::Database(chassis::db::DbError::Unavailable(_))), _) => {
                if !self.stored_after_all(id).await {
                    return Err(error);
                }
                tracing::warn!(order_id = %id, %error, "the order was stored although its write failed");
            }
            (Err(error), _) => return Err(error),
        }
        metrics::counter!("bazaar_orders_placed_total").increment(1);
        let saga = Arc::clone(&self.saga);
        // The saga runs in the request's span: its steps belong to the order's trace.
        let running = tokio::spawn(
            async move {
                let _in_flight = in_flight;
                saga.run_new(saga_row, saga_lines).await.unwrap_or_else(|error| {
                    tracing::warn!(order_id = %id, %error, "saga stopped; the recovery worker resumes it");
                    None
                })
            }
            .in_current_span(),
        );
        // The saga goes on after the answer if it takes longer than `sync_wait`. The order
        // exists from here on, so the answer is the order, never an error: as read now,
        // or, should the database not answer, as it was placed (`pending`).
        match tokio::time::timeout(self.settings.sync_wait, running).await {
            Ok(Ok(Some(ended))) => Ok(ended),
            _ => Ok(self.order(id).await.unwrap_or_else(|error| {
                tracing::warn!(order_id = %id, %error, "cannot read the order placed; answering it as placed");
                placed
            })),
        }
    }

    /// Whether the order `id`, whose write failed with the database unreachable, was
    /// committed after all. Looks until the database answers or `orders.sync_wait` has
    /// passed; an order that cannot be seen by then is taken as not stored.
    async fn stored_after_all(&self, id: Uuid) -> bool {
        let give_up = tokio::time::Instant::now() + self.settings.sync_wait;
        loop {
            let found = self
                .db
                .read(move |conn| repo::find_row(conn, id).map_err(Error::from))
                .await;
            match found {
                Ok(row) => return row.is_some(),
                Err(_) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(SAGA_POLL).await;
                }
                Err(_) => return false,
            }
        }
    }

    /// The order stored under `key`, if the key was used for this same request.
    async fn replay(&self, key: &str, fingerprint: &str) -> Result<Option<Order>, Error> {
        let key = key.to_owned();
        let found = self
            .db
            .read(move |conn| repo::find_idempotency_key(conn, &key).map_err(Error::from))
            .await?;
        match found {
            None => Ok(None),
            Some((order_id, stored)) if stored == fingerprint => {
                self.order(order_id).await.map(Some)
            }
            Some(_) => Err(Error::IdempotencyKeyReused),
        }
    }

    pub async fn order(&self, id: Uuid) -> Result<Order, Error> {
        self.db
            .read(move |conn| repo::find_order(conn, id)?.ok_or(Error::OrderNotFound(id)))
            .await
    }

    /// A customer's orders, newest first.
    pub async fn list(
        &self,
        customer_email: String,
        page: PageRequest,
    ) -> Result<Page<Order>, Error> {
        self.db
            .read(move |conn| {
                let orders = repo::list_by_customer(
                    conn,
                    &customer_email,
                    page.after.as_deref(),
                    i64::from(page.limit) + 1,
                )?;
                Ok(Page::from_rows(orders, page.limit, |order| {
                    order.id.to_string()
                }))
            })
            .await
    }

    /// Cancels a confirmed order: refund, then restock. Cancelling a cancelled order
    /// answers it as is; any other status is `order_not_cancellable`. Answers the order
    /// `cancelled`, or still `confirmed` when the cancellation has started but billing or
    /// the catalog cannot be reached now (the recovery worker finishes it).
    pub async fn cancel(&self, id: Uuid) -> Result<Order, Error> {
        let before = self.order(id).await?;
        match before.status {
            OrderStatus::Cancelled => return Ok(before),
            OrderStatus::Confirmed => {}
            status => {
                return Err(Error::NotCancellable {
                    order_id: id,
                    status: status.as_str(),
                });
            }
        }
        let run = self.saga.new_run();
        let owner = run.clone();
        let lease_until = self.saga.lease_until();
        let started = self
            .db
            .write(move |conn| {
                repo::start_cancellation(conn, id, &owner, lease_until).map_err(Error::from)
            })
            .await?;
        let order = if started {
            // The cancellation is recorded: from here on the answer is the order, never an
            // error. Should the database fail under this run, the order is answered as it
            // was (still `confirmed`: under way), and the recovery worker finishes it.
            let ran = match self.saga.run_claimed(id, run).await {
                Ok(_) => self.order(id).await,
                Err(error) => Err(error),
            };
            ran.unwrap_or_else(|error| {
                tracing::warn!(order_id = %id, %error, "cancellation recorded; answering the order as it was");
                before
            })
        } else if let Some(ended) = self.saga.run(id).await? {
            // A cancellation started earlier had stopped for a peer; this run finished it.
            ended
        } else {
            // Another request's run holds the cancellation (a double click, a retry): it
            // refunds and restocks; this one answers what that run comes to.
            self.await_saga(id).await?
        };
        match order.status {
            // Still `confirmed`: the cancellation is recorded and the recovery worker
            // finishes it once billing and the catalog answer. Something has changed, so
            // the answer is the order (the edge says 202), not an error.
            OrderStatus::Cancelled | OrderStatus::Confirmed => Ok(order),
            status => Err(Error::NotCancellable {
                order_id: id,
                status: status.as_str(),
            }),
        }
    }

    /// The order once its saga has ended, or as it stands after `orders.sync_wait`.
    async fn await_saga(&self, id: Uuid) -> Result<Order, Error> {
        let give_up = tokio::time::Instant::now() + self.settings.sync_wait;
        loop {
            let running = self
                .db
                .read(move |conn| {
                    let row = repo::find_row(conn, id)?.ok_or(Error::OrderNotFound(id))?;
                    Ok::<_, Error>(row.step().is_some())
                })
                .await?;
            if !running || tokio::time::Instant::now() >= give_up {
                return self.order(id).await;
            }
            tokio::time::sleep(SAGA_POLL).await;
        }
    }

    /// One pass of the recovery worker: resumes every saga that is due and not held by a
    /// live process; answers how many it looked at.
    pub async fn recover_due(&self) -> Result<usize, Error> {
        let due = self
            .db
            .read(|conn| repo::due_sagas(conn, 200).map_err(Error::from))
            .await?;
        let count = due.len();
        futures::stream::iter(due)
            .for_each_concurrent(RECOVERY_CONCURRENCY, |id| {
                let saga = Arc::clone(&self.saga);
                async move {
                    if let Err(error) = saga.run(id).await {
                        tracing::warn!(order_id = %id, %error, "cannot resume saga");
                    }
                }
            })
            .await;
        Ok(count)
    }

    /// Runs the recovery worker: at start (after a crash every pending saga is resumed) and
    /// every `orders.recovery_interval`.
    pub fn spawn_recovery(&self) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            if service.db.backend() == Backend::Sqlite {
                // One process owns a SQLite file: leases left by a crashed run are stale.
                let reset = service
                    .db
                    .write(|conn| repo::release_all_leases(conn).map_err(Error::from))
                    .await;
                if let Err(error) = reset {
                    tracing::error!(%error, "cannot reset saga leases");
                }
            }
            loop {
                if let Err(error) = service.recover_due().await {
                    tracing::warn!(%error, "saga recovery pass failed");
                }
                tokio::time::sleep(service.settings.recovery_interval).await;
            }
        })
    }
}

#[async_trait]
impl Orders for OrdersService {
    async fn order(&self, id: Uuid) -> Result<Order, OrdersError> {
        OrdersService::order(self, id)
            .await
            .map_err(OrdersError::from)
    }
}
