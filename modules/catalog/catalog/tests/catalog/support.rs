//! Fixtures: a catalog on a throw-away database, an actix app or server around it.

use catalog::{CatalogModule, MIGRATIONS, NewProduct};
use catalog_contract::{Money, Product};
use chassis::db::Backend;
use chassis::testing::TestDatabase;

pub(crate) use chassis::testing::{
    ADMIN_TOKEN, SERVICE_TOKEN, TestServer as RemoteServer, module_app as app,
};

/// A catalog module on its own database, which lives as long as this value.
pub(crate) struct LocalCatalog {
    pub(crate) module: CatalogModule,
    _db: TestDatabase,
}

/// A catalog on a fresh database of `backend`; `None` when PostgreSQL is unreachable
/// outside CI (the reason is printed).
pub(crate) async fn local(backend: Backend) -> Option<LocalCatalog> {
    let db = TestDatabase::new(backend)?;
    let database = db.open(MIGRATIONS).await;
    Some(LocalCatalog {
        module: CatalogModule::new(
            database,
            "EUR",
            &catalog_contract::CatalogSettings::default(),
        ),
        _db: db,
    })
}

/// A product with a unique sku.
pub(crate) async fn product(module: &CatalogModule, name: &str, stock: i64) -> Product {
    module
        .service()
        .create_product(NewProduct {
            sku: format!("SKU-{}", uuid::Uuid::new_v4().simple()),
            name: name.into(),
            description: None,
            price: Money {
                amount: 1000,
                currency: "EUR".into(),
            },
            stock: Some(stock),
        })
        .await
        .expect("creates product")
}

pub(crate) async fn stock_of(
    module: &CatalogModule,
    product: &Product,
) -> catalog_contract::StockLevels {
    module
        .service()
        .product(product.id)
        .await
        .expect("reads product")
        .stock
}
