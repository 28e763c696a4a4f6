//! Fixtures: a catalog on a throw-away database, an actix app or server around it.

use catalog::{CatalogModule, MIGRATIONS, NewProduct};
use catalog_contract::{Money, Product};
use chassis::db::Backend;
use chassis::testing::TestDatabase;
pub(crate) use chassis::testing::racing_instances;

pub(crate) use chassis::testing::{
    ADMIN_TOKEN, SERVICE_TOKEN, TestServer as RemoteServer, module_app as app,
};

/// A catalog module on its own database, which lives as long as this value; with
/// [`local_instances`], more instances of it on the same database.
pub(crate) struct LocalCatalog {
    pub(crate) module: CatalogModule,
    /// The instances after `module`, each with a `Database` handle of its own.
    replicas: Vec<CatalogModule>,
    _db: TestDatabase,
}

impl LocalCatalog {
    /// The instance of the `i`-th of concurrent calls: round-robin over `module` and its
    /// replicas.
    pub(crate) fn instance(&self, i: usize) -> &CatalogModule {
        match i % (1 + self.replicas.len()) {
            0 => &self.module,
            n => &self.replicas[n - 1],
        }
    }
}

/// A catalog on a fresh database of `backend`; `None` when PostgreSQL is unreachable
/// outside CI (the reason is printed).
pub(crate) async fn local(backend: Backend) -> Option<LocalCatalog> {
    local_instances(backend, 1).await
}

/// `n` (at least one) catalogs on one fresh database of `backend`, each with its own
/// `Database` handle (its own pool), as separate processes of the module would have.
pub(crate) async fn local_instances(backend: Backend, n: usize) -> Option<LocalCatalog> {
    let db = TestDatabase::new(backend)?;
    let mut instances = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        // A new pool on the same database each time; the migrations find nothing left to
        // do after the first.
        let database = db.open(MIGRATIONS).await;
        instances.push(CatalogModule::new(
            database,
            "EUR",
            &catalog_contract::CatalogSettings::default(),
        ));
    }
    let module = instances.remove(0);
    Some(LocalCatalog {
        module,
        replicas: instances,
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
