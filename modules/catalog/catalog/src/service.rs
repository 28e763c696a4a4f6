use async_trait::async_trait;
use catalog_contract::{
    Catalog, CatalogError, CatalogSettings, MAX_LOOKUP_IDS, PriceChanged, Product, ProductCreated,
    Reservation, ReservationStatus, StockLine, StockLow, event_types,
};
use chassis::db::{Database, DbConnection, DbError, SharedLookup, is_unique_violation};
use chassis::events::{Envelope, Events};
use chassis::page::{Page, PageRequest};
use uuid::Uuid;

use crate::domain::{NewProduct, ProductPatch, StockUpdate, falls_low, normalize_lines};
use crate::error::Error;
use crate::repository::{self as repo, ProductChanges, ProductRow, StoredReservation};

/// The catalog's behaviour: the admin operations behind its public routes, and the
/// [`Catalog`] port other modules call.
#[derive(Debug, Clone)]
pub struct CatalogService {
    db: Database,
    /// The products orders price their lines with, read for concurrent orders together.
    products: SharedLookup<Uuid, Product>,
    currency: String,
    low_stock_threshold: i64,
}

/// The products of `ids` found, for [`CatalogService::products`]' shared lookup.
fn products_by_id(
    conn: &mut DbConnection,
    ids: &[Uuid],
) -> diesel::QueryResult<Vec<(Uuid, Product)>> {
    Ok(repo::find_products(conn, ids)?
        .into_iter()
        .map(|(id, row)| (id, row.into_product()))
        .collect())
}

/// Adds an event about `product_id` to the transaction's outbox.
fn raise(
    events: &mut Events,
    event_type: &str,
    product_id: &str,
    payload: &impl serde::Serialize,
) -> Result<(), Error> {
    let event = Envelope::new(catalog_contract::MODULE, event_type, product_id, payload)
        .map_err(|error| Error::Database(DbError::Encoding(error.to_string())))?;
    events.push(event);
    Ok(())
}

impl CatalogService {
    /// `currency` is the shop's one currency (`shop.currency`).
    pub fn new(db: Database, currency: impl Into<String>, settings: &CatalogSettings) -> Self {
        Self {
            products: SharedLookup::new(db.clone(), products_by_id),
            db,
            currency: currency.into(),
            low_stock_threshold: settings.low_stock_threshold,
        }
    }

    pub async fn create_product(&self, input: NewProduct) -> Result<Product, Error> {
        input.validate(&self.currency)?;
        let at = repo::now();
        let row = ProductRow {
            id: Uuid::now_v7().to_string(),
            sku: input.sku,
            name: input.name,
            description: input.description,
            price_amount: input.price.amount,
            currency: input.price.currency,
            on_hand: input.stock.unwrap_or(0),
            reserved: 0,
            created_at: at,
            updated_at: at,
        };
        self.db
            .write_with_events(move |conn, events| {
                match repo::insert_product(conn, &row) {
                    Err(error) if is_unique_violation(&error) => {
                        return Err(Error::SkuTaken(row.sku.clone()));
                    }
                    other => other?,
                }
                let product = row.clone().into_product();
                raise(
                    events,
                    event_types::PRODUCT_CREATED,
                    &product.id.to_string(),
                    &ProductCreated {
                        product: product.clone(),
                    },
                )?;
                Ok(product)
            })
            .await
    }

    pub async fn product(&self, id: Uuid) -> Result<Product, Error> {
        self.db
            .read(move |conn| {
                repo::find_product(conn, id)?
                    .map(ProductRow::into_product)
                    .ok_or(Error::ProductNotFound(id))
            })
            .await
    }

    pub async fn list_products(
        &self,
        query: Option<String>,
        page: PageRequest,
    ) -> Result<Page<Product>, Error> {
        let query = query.filter(|q| !q.is_empty());
        self.db
            .read(move |conn| {
                let rows = repo::list_products(
                    conn,
                    query.as_deref(),
                    page.after.as_deref(),
                    i64::from(page.limit) + 1,
                )?;
                Ok(Page::from_rows(rows, page.limit, |row| row.id.clone())
                    .map(ProductRow::into_product))
            })
            .await
    }

    pub async fn update_product(&self, id: Uuid, patch: ProductPatch) -> Result<Product, Error> {
        patch.validate(&self.currency)?;
        let changes = ProductChanges {
            name: patch.name,
            description: patch.description,
            price_amount: patch.price.as_ref().map(|price| price.amount),
            currency: patch.price.map(|price| price.currency),
            updated_at: Some(repo::now()),
        };
        self.db
            .write_with_events(move |conn, events| {
                if !repo::lock_product(conn, id)? {
                    return Err(Error::ProductNotFound(id));
                }
                let before = repo::find_product(conn, id)?
                    .map(ProductRow::into_product)
                    .ok_or(Error::ProductNotFound(id))?;
                repo::update_product(conn, id, &changes)?;
                let after = repo::find_product(conn, id)?
                    .map(ProductRow::into_product)
                    .ok_or(Error::ProductNotFound(id))?;
                if after.price != before.price {
                    let change = PriceChanged {
                        product_id: id,
                        sku: after.sku.clone(),
                        old_price: before.price,
                        new_price: after.price.clone(),
                    };
                    raise(events, event_types::PRICE_CHANGED, &id.to_string(), &change)?;
                }
                Ok(after)
            })
            .await
    }

    pub async fn set_stock(&self, id: Uuid, update: StockUpdate) -> Result<Product, Error> {
        update.validate()?;
        let threshold = self.low_stock_threshold;
        self.db
            .write_with_events(move |conn, events| {
                if !repo::lock_product(conn, id)? {
                    return Err(Error::ProductNotFound(id));
                }
                let before = repo::find_product(conn, id)?.ok_or(Error::ProductNotFound(id))?;
                if !repo::set_on_hand(conn, id, update.on_hand)? {
                    return Err(Error::StockBelowReserved {
                        on_hand: update.on_hand,
                        reserved: before.reserved,
                    });
                }
                let after = repo::find_product(conn, id)?
                    .map(ProductRow::into_product)
                    .ok_or(Error::ProductNotFound(id))?;
                raise_if_low(events, threshold, before.on_hand - before.reserved, &after)?;
                Ok(after)
            })
            .await
    }

    /// Moves an existing reservation from `from` to `to`, moving each line's stock by
    /// `stock_move`; answers as is when it is already in `to`. The status moves first, by
    /// a conditional write, so that of concurrent calls only the one that moved it moves
    /// the stock. The common call finds the reservation in `from`: its move is left to the
    /// batch (`repo::ReservationMove`), and only one that finds it elsewhere moves at once
    /// and looks ([`CatalogService::transition_now`]).
    async fn transition(
        &self,
        order_id: Uuid,
        from: ReservationStatus,
        to: ReservationStatus,
        stock_move: fn(Uuid, i64) -> repo::StockMove,
    ) -> Result<Reservation, CatalogError> {
        let moved = self
            .db
            .write_with_events(move |_conn, at_commit| {
                let reservation_move = repo::ReservationMove::new(order_id, from, to, stock_move);
                let moved = reservation_move.moved();
                at_commit.update_at_commit(reservation_move);
                Ok::<_, Error>(moved)
            })
            .await;
        match moved {
            Ok(moved) => {
                let lines = moved.get().cloned().ok_or_else(|| {
                    CatalogError::Internal(format!(
                        "the move of order {order_id}'s reservation committed without its lines"
                    ))
                })?;
                Ok(reservation(
                    order_id,
                    StoredReservation { status: to, lines },
                ))
            }
            // Not in `from`: moved already, in another state, or unknown.
            Err(Error::Database(DbError::NotApplied)) => {
                self.transition_now(order_id, from, to, stock_move).await
            }
            Err(error) => Err(error.into()),
        }
    }

    /// [`CatalogService::transition`], the move made at once, and the reservation looked
    /// at when it is not in `from`.
    async fn transition_now(
        &self,
        order_id: Uuid,
        from: ReservationStatus,
        to: ReservationStatus,
        stock_move: fn(Uuid, i64) -> repo::StockMove,
    ) -> Result<Reservation, CatalogError> {
        self.db
            .write_with_events(move |conn, at_commit| {
                // The move first, without a look: the common call finds the reservation in
                // `from`, and the look is a round trip on PostgreSQL.
                let Some(lines) = repo::move_reservation(conn, order_id, from, to)? else {
                    // Not in `from`: moved already (by an earlier or a concurrent call, which
                    // moved the stock too), in another state, or unknown.
                    let now = repo::find_reservation(conn, order_id)?
                        .ok_or(CatalogError::ReservationNotFound(order_id))?;
                    return if now.status == to {
                        Ok(reservation(order_id, now))
                    } else {
                        Err(conflict(order_id, now.status))
                    };
                };
                for line in &lines {
                    at_commit
                        .update_at_commit(stock_move(line.product_id, i64::from(line.quantity)));
                }
                Ok(reservation(
                    order_id,
                    StoredReservation { status: to, lines },
                ))
            })
            .await
            .map_err(CatalogError::from)
    }

    async fn try_reserve(
        &self,
        order_id: Uuid,
        lines: Vec<StockLine>,
        attempt: Attempt,
    ) -> Result<Reservation, Error> {
        let threshold = self.low_stock_threshold;
        self.db
            .write_with_events(move |conn, events| {
                if attempt == Attempt::HoldAtCommit {
                    for line in &lines {
                        let quantity = i64::from(line.quantity);
                        events.update_at_commit(repo::Hold::new(
                            line.product_id,
                            quantity,
                            threshold,
                        ));
                    }
                    events.insert_at_commit(repo::NewReservation::new(
                        order_id,
                        ReservationStatus::Reserved,
                        &lines,
                    ));
                    return Ok(reservation(
                        order_id,
                        StoredReservation {
                            status: ReservationStatus::Reserved,
                            lines: lines.clone(),
                        },
                    ));
                }
                if attempt == Attempt::LookFirst
                    && let Some(stored) = repo::find_reservation(conn, order_id)?
                {
                    return if stored.status != ReservationStatus::Released && stored.lines == lines
                    {
                        Ok(reservation(order_id, stored))
                    } else {
                        Err(conflict(order_id, stored.status))
                    };
                }
                for line in &lines {
                    let Some(after) = repo::hold(conn, line.product_id, i64::from(line.quantity))?
                    else {
                        // A reservation stored already answers a repeated call, not the
                        // stock (which its own hold may have taken): `reserve` looks then.
                        if repo::find_reservation(conn, order_id)?.is_some() {
                            return Err(Error::ReservationExists(order_id));
                        }
                        return Err(match repo::find_product(conn, line.product_id)? {
                            None => CatalogError::ProductNotFound(line.product_id).into(),
                            Some(_) => CatalogError::OutOfStock {
                                product_id: line.product_id,
                            }
                            .into(),
                        });
                    };
                    let after = after.into_product();
                    let before = after.stock.available + i64::from(line.quantity);
                    raise_if_low(events, threshold, before, &after)?;
                }
                // Nothing reads the reservation before its batch commits: it goes in with
                // the batch's others. One stored already (by an earlier or a concurrent
                // call) breaks its key there, which is this try's answer; `reserve` looks
                // then.
                events.insert_at_commit(repo::NewReservation::new(
                    order_id,
                    ReservationStatus::Reserved,
                    &lines,
                ));
                Ok(reservation(
                    order_id,
                    StoredReservation {
                        status: ReservationStatus::Reserved,
                        lines: lines.clone(),
                    },
                ))
            })
            .await
    }
}

/// How a try of `reserve` goes about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The holds left to the batch (`repo::Hold`), without a look.
    HoldAtCommit,
    /// Each hold at once, without a look.
    HoldNow,
    /// A look for the order's reservation first, then each hold at once.
    LookFirst,
}

/// Raises `catalog.stock_low` when a change takes a product's available stock below the
/// threshold (`domain::falls_low`).
fn raise_if_low(
    events: &mut Events,
    threshold: i64,
    available_before: i64,
    after: &Product,
) -> Result<(), Error> {
    if falls_low(threshold, available_before, after.stock.available) {
        let low = StockLow {
            product_id: after.id,
            sku: after.sku.clone(),
            name: after.name.clone(),
            available: after.stock.available,
            threshold,
        };
        raise(events, event_types::STOCK_LOW, &after.id.to_string(), &low)?;
    }
    Ok(())
}

fn reservation(order_id: Uuid, stored: StoredReservation) -> Reservation {
    Reservation {
        order_id,
        status: stored.status,
        lines: stored.lines,
    }
}

/// Whether a write failed only because a concurrent call for the same order inserted its
/// reservation row first.
fn lost_race(error: &Error) -> bool {
    matches!(error, Error::Database(DbError::Query(error)) if is_unique_violation(error))
}

fn conflict(order_id: Uuid, status: ReservationStatus) -> Error {
    Error::Port(CatalogError::ReservationConflict { order_id, status })
}

#[async_trait]
impl Catalog for CatalogService {
    async fn products(&self, ids: &[Uuid]) -> Result<Vec<Product>, CatalogError> {
        if ids.len() > MAX_LOOKUP_IDS {
            return Err(CatalogError::InvalidRequest(format!(
                "ids: at most {MAX_LOOKUP_IDS} per call"
            )));
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.products.get(ids).await.map_err(Error::from)?;
        ids.iter()
            .map(|id| match found.get(id) {
                Some(product) => Ok(product.clone()),
                None => Err(CatalogError::from(Error::ProductNotFound(*id))),
            })
            .collect()
    }

    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[StockLine],
    ) -> Result<Reservation, CatalogError> {
        let lines = normalize_lines(lines)?;
        // The first try inserts the reservation without looking for one, and leaves its
        // holds to the batch: a first reserve of stock that is there is the common call,
        // and a look, or a hold of its own, is a round trip on PostgreSQL. Holds that do
        // not all go through (stock short, a product unknown, or the stock falling low,
        // which raises an event) are tried again at once, one by one. A reservation that
        // exists (a repeated call, or a concurrent one that committed first) fails the
        // insert on its key, and a last try looks and answers it (or the conflict).
        let first = match self
            .try_reserve(order_id, lines.clone(), Attempt::HoldAtCommit)
            .await
        {
            Err(Error::Database(DbError::NotApplied)) => {
                self.try_reserve(order_id, lines.clone(), Attempt::HoldNow)
                    .await
            }
            first => first,
        };
        match first {
            Err(error) if lost_race(&error) || matches!(error, Error::ReservationExists(_)) => self
                .try_reserve(order_id, lines, Attempt::LookFirst)
                .await
                .map_err(CatalogError::from),
            other => other.map_err(CatalogError::from),
        }
    }

    async fn release(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        let released = self
            .db
            .write(move |conn| {
                if repo::find_reservation(conn, order_id)?.is_none() {
                    // Remember the release, so that a reserve arriving late is refused.
                    repo::insert_reservation(
                        conn,
                        &repo::NewReservation::new(order_id, ReservationStatus::Released, &[]),
                    )?;
                    return Ok(Some(Reservation {
                        order_id,
                        status: ReservationStatus::Released,
                        lines: Vec::new(),
                    }));
                }
                Ok::<_, Error>(None)
            })
            .await;
        match released {
            Ok(Some(tombstone)) => Ok(tombstone),
            Err(error) if !lost_race(&error) => Err(error.into()),
            // A reservation exists, or a concurrent call has just recorded one.
            _ => {
                self.transition(
                    order_id,
                    ReservationStatus::Reserved,
                    ReservationStatus::Released,
                    repo::StockMove::release,
                )
                .await
            }
        }
    }

    async fn commit(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        self.transition(
            order_id,
            ReservationStatus::Reserved,
            ReservationStatus::Committed,
            repo::StockMove::sell,
        )
        .await
    }

    async fn restock(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        self.transition(
            order_id,
            ReservationStatus::Committed,
            ReservationStatus::Restocked,
            repo::StockMove::put_back,
        )
        .await
    }
}
