use std::sync::Arc;

use async_trait::async_trait;
use chassis::port::{Mode, observe};
use uuid::Uuid;

use crate::dto::{Product, Reservation, StockLine};
use crate::error::CatalogError;

/// Most ids one [`Catalog::products`] call may ask for.
pub const MAX_LOOKUP_IDS: usize = 200;
/// Most lines one reservation may have.
pub const MAX_RESERVATION_LINES: usize = 100;

/// The catalog as other modules see it: product look-ups and the stock side of an order.
///
/// Every method MUST return [`CatalogError::Unavailable`] when the catalog cannot be
/// reached (its database is down, or its process is), whether it runs in this process or
/// not, and callers MUST treat that as "try again later". Every stock method is
/// idempotent per `order_id`: calling it again after a success (or after a lost answer)
/// MUST NOT move stock twice and MUST answer the same reservation.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Catalog: Send + Sync {
    /// The products with these ids, in the order asked.
    ///
    /// MUST return [`CatalogError::ProductNotFound`] naming the first id it does not know,
    /// and [`CatalogError::InvalidRequest`] for more than [`MAX_LOOKUP_IDS`] ids. An empty
    /// list answers an empty list.
    async fn products(&self, ids: &[Uuid]) -> Result<Vec<Product>, CatalogError>;

    /// Holds stock for all lines of an order, or for none.
    ///
    /// MUST return [`CatalogError::InvalidRequest`] for no lines, more than
    /// [`MAX_RESERVATION_LINES`] lines, a quantity of 0 or a product named twice;
    /// [`CatalogError::ProductNotFound`] for an unknown product; and
    /// [`CatalogError::OutOfStock`] naming a product whose available stock is below the
    /// quantity — in every error case nothing is held. Reserving again for the same order
    /// with the same lines MUST answer the existing reservation without holding more; with
    /// other lines, or after the order's reservation was released, it MUST return
    /// [`CatalogError::ReservationConflict`].
    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[StockLine],
    ) -> Result<Reservation, CatalogError>;

    /// Gives an order's held stock back.
    ///
    /// A reserved order becomes `released`; a released one answers as is. Releasing an
    /// order that has no reservation records it as released, so that a late `reserve`
    /// for it is refused. MUST return [`CatalogError::ReservationConflict`] for a committed
    /// or restocked order.
    async fn release(&self, order_id: Uuid) -> Result<Reservation, CatalogError>;

    /// Sells an order's held stock: it leaves both `reserved` and `on_hand`.
    ///
    /// A reserved order becomes `committed`; a committed one answers as is. MUST return
    /// [`CatalogError::ReservationNotFound`] for an order with no reservation and
    /// [`CatalogError::ReservationConflict`] for a released or restocked one.
    async fn commit(&self, order_id: Uuid) -> Result<Reservation, CatalogError>;

    /// Puts a cancelled order's sold stock back on hand.
    ///
    /// A committed order becomes `restocked`; a restocked one answers as is. MUST return
    /// [`CatalogError::ReservationNotFound`] for an order with no reservation and
    /// [`CatalogError::ReservationConflict`] for a reserved or released one.
    async fn restock(&self, order_id: Uuid) -> Result<Reservation, CatalogError>;
}

/// The port as the composition root hands it out, local or remote alike: each call is a
/// span and a latency sample (`chassis::port::observe`), so an order's trace and metrics
/// have the same shape wherever the module runs.
pub fn observed(port: Arc<dyn Catalog>, mode: Mode) -> Arc<dyn Catalog> {
    Arc::new(Observed { port, mode })
}

struct Observed {
    port: Arc<dyn Catalog>,
    mode: Mode,
}

#[async_trait]
impl Catalog for Observed {
    async fn products(&self, ids: &[Uuid]) -> Result<Vec<Product>, CatalogError> {
        observe(
            crate::MODULE,
            "products",
            self.mode,
            self.port.products(ids),
        )
        .await
    }

    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[StockLine],
    ) -> Result<Reservation, CatalogError> {
        observe(
            crate::MODULE,
            "reserve",
            self.mode,
            self.port.reserve(order_id, lines),
        )
        .await
    }

    async fn release(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        observe(
            crate::MODULE,
            "release",
            self.mode,
            self.port.release(order_id),
        )
        .await
    }

    async fn commit(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        observe(
            crate::MODULE,
            "commit",
            self.mode,
            self.port.commit(order_id),
        )
        .await
    }

    async fn restock(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        observe(
            crate::MODULE,
            "restock",
            self.mode,
            self.port.restock(order_id),
        )
        .await
    }
}
