//! Fixtures: a catalog on a throw-away database, an actix app or server around it.

use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpServer, web};
use catalog::{CatalogModule, MIGRATIONS, NewProduct};
use catalog_contract::{Money, Product};
use chassis::db::Backend;
use chassis::http::{Tokens, configure_extractors, problem_for_error_responses};
use chassis::module::LocalModule;
use chassis::secret::Secret;
use chassis::testing::TestDatabase;
use url::Url;

pub(crate) const ADMIN_TOKEN: &str = "test-admin-token";
pub(crate) const SERVICE_TOKEN: &str = "test-service-token";

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

/// The app the composition root would build around the catalog.
pub(crate) fn app(
    module: CatalogModule,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .wrap(problem_for_error_responses())
        .app_data(web::Data::new(Tokens::new(
            Some(Secret::new(ADMIN_TOKEN)),
            Some(Secret::new(SERVICE_TOKEN)),
        )))
        .configure(configure_extractors)
        .configure(move |cfg| module.configure(cfg))
}

/// The catalog served over HTTP on a free port of 127.0.0.1.
pub(crate) struct RemoteServer {
    pub(crate) url: Url,
    handle: ServerHandle,
}

impl RemoteServer {
    pub(crate) async fn start(module: &CatalogModule) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds a free port");
        let address = listener.local_addr().expect("has an address");
        let module = module.clone();
        let server = HttpServer::new(move || app(module.clone()))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .expect("listens")
            .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: Url::parse(&format!("http://{address}/")).expect("valid url"),
            handle,
        }
    }

    pub(crate) async fn stop(self) {
        self.handle.stop(false).await;
    }
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
