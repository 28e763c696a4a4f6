//! The catalog's queries, written once for both backends against `DbConnection`.
//!
//! A hold is a single conditional `UPDATE` (`… WHERE on_hand - reserved >= qty`), so that
//! no interleaving of concurrent reservations can oversell, on SQLite or PostgreSQL. The
//! stock a reservation's later move sells, releases or puts back moves once that move, a
//! conditional `UPDATE` of its status, has gone through; it is left to the batch
//! ([`StockMove`]).

use catalog_contract::{Money, Product, ReservationStatus, StockLevels, StockLine};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use chassis::db::{
    DbConnection, DeferredRow, DeferredUpdate, Riders, all_changed, update, update_all,
};
use chassis::per_backend;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use uuid::Uuid;

use crate::domain::falls_low;
use crate::schema::{products, reservations};

diesel::define_sql_function!(fn lower(text: diesel::sql_types::Text) -> diesel::sql_types::Text);

pub(crate) use chassis::db::utc_now as now;

/// The conditional `UPDATE` of an order's reservation from `$from` to `$to`: for
/// [`move_reservation`] and [`ReservationMove`] alike.
macro_rules! move_reservation_statement {
    ($order_id:expr, $from:expr, $to:expr) => {
        update(
            reservations::table,
            reservations::order_id
                .eq($order_id.to_string())
                .and(reservations::status.eq($from.as_str())),
            (
                reservations::status.eq($to.as_str()),
                reservations::updated_at.eq(now()),
            ),
        )
    };
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = products)]
pub(crate) struct ProductRow {
    pub(crate) id: String,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) price_amount: i64,
    pub(crate) currency: String,
    pub(crate) on_hand: i64,
    pub(crate) reserved: i64,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
}

impl ProductRow {
    pub(crate) fn into_product(self) -> Product {
        Product {
            // Ids are written by this module only, always as UUIDs.
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            sku: self.sku,
            name: self.name,
            description: self.description,
            price: Money {
                amount: self.price_amount,
                currency: self.currency,
            },
            stock: StockLevels {
                on_hand: self.on_hand,
                reserved: self.reserved,
                available: self.on_hand - self.reserved,
            },
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
        }
    }
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = products)]
pub(crate) struct ProductChanges {
    pub(crate) name: Option<String>,
    pub(crate) description: Option<Option<String>>,
    pub(crate) price_amount: Option<i64>,
    pub(crate) currency: Option<String>,
    pub(crate) updated_at: Option<NaiveDateTime>,
}

pub(crate) fn insert_product(conn: &mut DbConnection, row: &ProductRow) -> QueryResult<()> {
    per_backend!(conn, |conn| {
        diesel::insert_into(products::table)
            .values(row)
            .execute(conn)
            .map(|_| ())
    })
}

pub(crate) fn find_product(conn: &mut DbConnection, id: Uuid) -> QueryResult<Option<ProductRow>> {
    per_backend!(conn, |conn| {
        products::table
            .find(id.to_string())
            .select(ProductRow::as_select())
            .get_result(conn)
            .optional()
    })
}

/// The products of `ids` that exist, each once, by id. One id is the kept lookup of
/// [`find_product`] (an order names few products, and SQLite would parse and plan an `IN`
/// list afresh each time); several are one statement, which on PostgreSQL binds them as
/// one array (`= ANY($1)`): the lookups shared by concurrent orders (`SharedLookup`).
pub(crate) fn find_products(
    conn: &mut DbConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<(Uuid, ProductRow)>> {
    let mut unique = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if let [id] = unique[..] {
        return Ok(find_product(conn, id)?
            .map(|row| (id, row))
            .into_iter()
            .collect());
    }
    let wanted: std::collections::HashMap<String, Uuid> =
        unique.iter().map(|id| (id.to_string(), *id)).collect();
    let rows: Vec<ProductRow> = per_backend!(conn, |conn| {
        products::table
            .filter(products::id.eq_any(wanted.keys()))
            .select(ProductRow::as_select())
            .load(conn)
    })?;
    // Every row found is one of `wanted`: the statement asked for no other.
    Ok(rows
        .into_iter()
        .filter_map(|row| Some((*wanted.get(&row.id)?, row)))
        .collect())
}

/// Up to `limit` products in id order (UUIDv7: creation order), after `after`, whose name
/// or sku contains `query` (case-insensitive).
pub(crate) fn list_products(
    conn: &mut DbConnection,
    query: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<ProductRow>> {
    per_backend!(conn, |conn| {
        let mut select = products::table
            .select(ProductRow::as_select())
            .order(products::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            select = select.filter(products::id.gt(after.to_owned()));
        }
        if let Some(query) = query {
            let pattern = format!("%{}%", escape_like(&query.to_lowercase()));
            select = select.filter(
                lower(products::name)
                    .like(pattern.clone())
                    .escape('\\')
                    .or(lower(products::sku).like(pattern).escape('\\')),
            );
        }
        select.load(conn)
    })
}

fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub(crate) fn update_product(
    conn: &mut DbConnection,
    id: Uuid,
    changes: &ProductChanges,
) -> QueryResult<usize> {
    per_backend!(conn, |conn| {
        update(products::table, products::id.eq(id.to_string()), changes).execute(conn)
    })
}

/// Takes the product's row lock (a no-op update) and answers whether the product exists.
/// Read-then-write sequences call it first, so that on PostgreSQL what they read cannot
/// change before they write, and the events they raise follow commit order.
pub(crate) fn lock_product(conn: &mut DbConnection, id: Uuid) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        update(
            products::table,
            products::id.eq(id.to_string()),
            products::updated_at.eq(products::updated_at),
        )
        .execute(conn)
        .map(|rows| rows == 1)
    })
}

/// Sets `on_hand` unless it would fall below what is reserved; answers whether it did.
pub(crate) fn set_on_hand(conn: &mut DbConnection, id: Uuid, on_hand: i64) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        update(
            products::table,
            products::id
                .eq(id.to_string())
                .and(products::reserved.le(on_hand)),
            (
                products::on_hand.eq(on_hand),
                products::updated_at.eq(now()),
            ),
        )
        .execute(conn)
        .map(|rows| rows == 1)
    })
}

/// The conditional `UPDATE` of a hold of `$quantity` units of `$product_id`: for [`hold`]
/// and [`Hold`] alike.
macro_rules! hold_statement {
    ($product_id:expr, $quantity:expr) => {
        update(
            products::table,
            products::id
                .eq($product_id.to_string())
                .and((products::on_hand - products::reserved).ge($quantity)),
            (
                products::reserved.eq(products::reserved + $quantity),
                products::updated_at.eq(now()),
            ),
        )
    };
}

/// Holds `quantity` units if that many are available; answers the product as it is after,
/// or `None` when it did not (not enough, or no such product).
pub(crate) fn hold(
    conn: &mut DbConnection,
    product_id: Uuid,
    quantity: i64,
) -> QueryResult<Option<ProductRow>> {
    per_backend!(conn, |conn| hold_statement!(product_id, quantity)
        .returning(ProductRow::as_select())
        .get_result(conn)
        .optional())
}

/// Units held for a reservation, left to the batch (`Events::update_at_commit`) with the
/// reservation's row: on PostgreSQL the holds of a batch are one conditional statement,
/// summed by product. A product short of the units its holds in the batch add up to, an
/// unknown one, or one whose available stock the holds take below the low-stock
/// threshold (an event to raise, which only a hold made at once raises) fails the batch:
/// the write that left the hold gets [`DbError::NotApplied`](chassis::db::DbError::NotApplied), and `reserve`
/// then holds at once, one by one, as [`hold`] does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    product_id: Uuid,
    quantity: i64,
    low_stock_threshold: i64,
}

impl Hold {
    pub(crate) fn new(product_id: Uuid, quantity: i64, low_stock_threshold: i64) -> Self {
        Self {
            product_id,
            quantity,
            low_stock_threshold,
        }
    }
}

impl DeferredUpdate for Hold {
    fn update_all(
        conn: &mut DbConnection,
        holds: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        let mut by_product: BTreeMap<Uuid, i64> = BTreeMap::new();
        for hold in holds {
            *by_product.entry(hold.product_id).or_default() += hold.quantity;
        }
        let threshold = holds.iter().map(|hold| hold.low_stock_threshold).max();
        let statements = by_product
            .iter()
            .map(|(&id, &quantity)| {
                hold_statement!(id, quantity).returning((
                    products::id,
                    products::on_hand,
                    products::reserved,
                ))
            })
            .collect();
        let held: Vec<(String, i64, i64)> = update_all(conn, statements, riders)?;
        all_changed(held.len(), by_product.len())?;
        for (id, on_hand, reserved) in held {
            let id = Uuid::parse_str(&id)
                .map_err(|error| diesel::result::Error::DeserializationError(error.into()))?;
            let quantity = by_product.get(&id).copied().unwrap_or_default();
            let available_after = on_hand - reserved;
            if threshold.is_some_and(|threshold| {
                falls_low(threshold, available_after + quantity, available_after)
            }) {
                return Err(diesel::result::Error::NotFound);
            }
        }
        Ok(())
    }
}

/// A change of a product's stock that a reservation's move makes, left to the batch
/// (`Events::update_at_commit`): units sold (out of `reserved` and `on_hand`), released
/// (out of `reserved`) or put back (onto `on_hand`). The reservation's conditional move
/// decides, in the write, that the stock moves; what the stock then is, nobody in the
/// write needs. A hold later in the batch decides on what is available: a sale leaves it
/// as it was, and a release or a put-back, applied after, counts as having come after the
/// hold. On PostgreSQL a batch's moves are one statement, one row per product.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StockMove {
    product_id: Uuid,
    on_hand: i64,
    reserved: i64,
}

impl StockMove {
    /// Held units sold: they leave `reserved` and `on_hand`.
    pub(crate) fn sell(product_id: Uuid, quantity: i64) -> Self {
        Self {
            product_id,
            on_hand: -quantity,
            reserved: -quantity,
        }
    }

    /// Held units given back.
    pub(crate) fn release(product_id: Uuid, quantity: i64) -> Self {
        Self {
            product_id,
            on_hand: 0,
            reserved: -quantity,
        }
    }

    /// Sold units put back on hand.
    pub(crate) fn put_back(product_id: Uuid, quantity: i64) -> Self {
        Self {
            product_id,
            on_hand: quantity,
            reserved: 0,
        }
    }
}

impl DeferredUpdate for StockMove {
    fn update_all(
        conn: &mut DbConnection,
        moves: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        // One change a product, whatever the number of orders that moved its stock.
        let mut by_product: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
        for stock_move in moves {
            let (on_hand, reserved) = by_product.entry(stock_move.product_id).or_default();
            *on_hand += stock_move.on_hand;
            *reserved += stock_move.reserved;
        }
        let at = now();
        let statements = by_product
            .iter()
            .map(|(id, (on_hand, reserved))| {
                update(
                    products::table,
                    products::id.eq(id.to_string()),
                    (
                        products::on_hand.eq(products::on_hand + *on_hand),
                        products::reserved.eq(products::reserved + *reserved),
                        products::updated_at.eq(at),
                    ),
                )
                .returning(products::id)
            })
            .collect();
        let moved: Vec<String> = update_all(conn, statements, riders)?;
        all_changed(moved.len(), by_product.len())
    }
}

/// An order's reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredReservation {
    pub(crate) status: ReservationStatus,
    /// Sorted by product id.
    pub(crate) lines: Vec<StockLine>,
}

pub(crate) fn find_reservation(
    conn: &mut DbConnection,
    order_id: Uuid,
) -> QueryResult<Option<StoredReservation>> {
    let found: Option<(String, String)> = per_backend!(conn, |conn| {
        reservations::table
            .find(order_id.to_string())
            .select((reservations::status, reservations::lines))
            .get_result(conn)
            .optional()
    })?;
    let Some((status, lines)) = found else {
        return Ok(None);
    };
    let status = ReservationStatus::parse(&status).ok_or_else(|| {
        diesel::result::Error::DeserializationError(
            format!("unknown reservation status {status:?}").into(),
        )
    })?;
    Ok(Some(StoredReservation {
        status,
        lines: decode_lines(&lines)?,
    }))
}

/// A reservation's lines as its row keeps them: `[[product id, quantity], …]`, in the
/// order given (sorted by product id: `domain::normalize_lines`).
fn encode_lines(lines: &[StockLine]) -> String {
    let pairs: Vec<(Uuid, u32)> = lines
        .iter()
        .map(|line| (line.product_id, line.quantity))
        .collect();
    // A vector of UUIDs and integers always encodes.
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_owned())
}

fn decode_lines(stored: &str) -> QueryResult<Vec<StockLine>> {
    let pairs: Vec<(Uuid, u32)> = serde_json::from_str(stored).map_err(|error| {
        diesel::result::Error::DeserializationError(
            format!("a reservation's lines {stored:?}: {error}").into(),
        )
    })?;
    let mut lines: Vec<StockLine> = pairs
        .into_iter()
        .map(|(product_id, quantity)| StockLine {
            product_id,
            quantity,
        })
        .collect();
    lines.sort_by_key(|line| line.product_id);
    Ok(lines)
}

/// Records an order's reservation with its lines, in one row. A unique violation means a
/// reservation of that order is stored already.
pub(crate) fn insert_reservation(
    conn: &mut DbConnection,
    reservation: &NewReservation,
) -> QueryResult<()> {
    NewReservation::insert_all(conn, std::slice::from_ref(reservation))
}

/// A reservation's row: its lines in it (`reservations.lines`).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = reservations)]
pub(crate) struct NewReservation {
    order_id: String,
    status: String,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    lines: String,
}

impl NewReservation {
    pub(crate) fn new(order_id: Uuid, status: ReservationStatus, lines: &[StockLine]) -> Self {
        let at = now();
        Self {
            order_id: order_id.to_string(),
            status: status.as_str().to_owned(),
            created_at: at,
            updated_at: at,
            lines: encode_lines(lines),
        }
    }
}

// A new reservation may be inserted at its batch's commit, with the batch's others.
chassis::deferred_row!(NewReservation => reservations {
    order_id, status, created_at, updated_at, lines
});

/// A reservation's move from one status to another, with the stock its lines move, left
/// to the batch (`Events::update_at_commit`): on PostgreSQL the moves of a batch are one
/// statement of conditional `UPDATE … RETURNING`s (`chassis::db::Together`) and their
/// stock one more, where each move alone is two. The move happens only from `from` (the conditional write
/// that makes it happen once, as [`move_reservation`]); a reservation not in `from` fails
/// the batch, and the write that left the move gets
/// [`DbError::NotApplied`](chassis::db::DbError::NotApplied) — its caller then moves it at once, and looks.
/// The lines moved come back through [`ReservationMove::moved`], for the write's caller
/// once the write has committed.
#[derive(Debug, Clone)]
pub(crate) struct ReservationMove {
    order_id: Uuid,
    from: ReservationStatus,
    to: ReservationStatus,
    stock_move: fn(Uuid, i64) -> StockMove,
    moved: Arc<OnceLock<Vec<StockLine>>>,
}

impl ReservationMove {
    pub(crate) fn new(
        order_id: Uuid,
        from: ReservationStatus,
        to: ReservationStatus,
        stock_move: fn(Uuid, i64) -> StockMove,
    ) -> Self {
        Self {
            order_id,
            from,
            to,
            stock_move,
            moved: Arc::default(),
        }
    }

    /// Where the lines moved are put when the batch applies the move.
    pub(crate) fn moved(&self) -> Arc<OnceLock<Vec<StockLine>>> {
        Arc::clone(&self.moved)
    }
}

impl DeferredUpdate for ReservationMove {
    fn update_all(
        conn: &mut DbConnection,
        moves: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        let statements = moves
            .iter()
            .map(|m| {
                move_reservation_statement!(m.order_id, m.from, m.to)
                    .returning((reservations::order_id, reservations::lines))
            })
            .collect();
        // The stock moves after it are the kind's last statement: they carry the riders.
        let moved: Vec<(String, String)> = update_all(conn, statements, &mut Riders::none())?;
        let mut moved_lines: Vec<(usize, Vec<StockLine>)> = Vec::with_capacity(moved.len());
        for (order_id, lines) in moved {
            let order_id = Uuid::parse_str(&order_id)
                .map_err(|error| diesel::result::Error::DeserializationError(error.into()))?;
            let at = moves
                .iter()
                .position(|m| m.order_id == order_id)
                .ok_or(diesel::result::Error::NotFound)?;
            moved_lines.push((at, decode_lines(&lines)?));
        }
        // An order twice in the batch (two calls racing) moved once: the other fails.
        all_changed(moved_lines.len(), moves.len())?;
        let mut stock_moves = Vec::new();
        for (at, lines) in moved_lines {
            let reservation_move = &moves[at];
            stock_moves.extend(lines.iter().map(|line| {
                (reservation_move.stock_move)(line.product_id, i64::from(line.quantity))
            }));
            // A slot already set is that of an earlier run of the batch, rolled back: the
            // write runs again with a new one, so this one is read by nobody.
            let _ = reservation_move.moved.set(lines);
        }
        riders.to_the_last(stock_moves.chunks(100), |chunk, riders| {
            StockMove::update_all(conn, chunk, riders)
        })
    }
}

/// Moves an order's reservation from `from` to `to`; answers its lines if it did, `None`
/// if it was not in `from`. The status in the `WHERE` clause makes the move happen once:
/// of concurrent callers (PostgreSQL runs them at once; the second waits for the first's
/// row lock, then finds the status moved) exactly one sees a row updated, and only that
/// one may move the stock. The lines come back with the move (`RETURNING`), not by a look
/// of their own.
pub(crate) fn move_reservation(
    conn: &mut DbConnection,
    order_id: Uuid,
    from: ReservationStatus,
    to: ReservationStatus,
) -> QueryResult<Option<Vec<StockLine>>> {
    let moved: Option<String> = per_backend!(conn, |conn| {
        move_reservation_statement!(order_id, from, to)
            .returning(reservations::lines)
            .get_result(conn)
            .optional()
    })?;
    moved.as_deref().map(decode_lines).transpose()
}
