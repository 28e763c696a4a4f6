//! The catalog's routes: public `/catalog/*` (spec §3 Catalog) and `/internal/catalog/*`
//! (the server side of `HttpCatalog`, behind the service token).

use actix_web::{HttpResponse, web};
use catalog_contract::{
    Catalog, LookupRequest, LookupResponse, Product, Reservation, ReserveRequest,
};
use chassis::http::{Admin, ApiResult, Json, Query, Service, path_id, uuid_param};
use chassis::page::{Page, PageParams};
use chassis::problem::Problem;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::domain::{NewProduct, ProductPatch, StockUpdate};
use crate::service::CatalogService;

#[derive(OpenApi)]
#[openapi(
    paths(
        create_product, list_products, get_product, update_product, set_stock,
        lookup_products, reserve, release, commit, restock
    ),
    components(schemas(
        Product, NewProduct, ProductPatch, StockUpdate, Problem, Page<Product>,
        LookupRequest, LookupResponse, ReserveRequest, Reservation
    )),
    tags((name = "catalog", description = "Products, prices and stock"),
         (name = "internal", description = "Service-to-service calls behind the service token"))
)]
pub(crate) struct CatalogApi;

pub(crate) fn configure(cfg: &mut web::ServiceConfig, service: CatalogService) {
    let data = web::Data::new(service);
    cfg.service(
        // One resource per path, so that a wrong method answers 405, not 404.
        web::scope("/catalog")
            .app_data(data.clone())
            .service(
                web::resource("/products")
                    .post(create_product)
                    .get(list_products),
            )
            .service(
                web::resource("/products/{id}")
                    .get(get_product)
                    .patch(update_product),
            )
            .service(web::resource("/products/{id}/stock").put(set_stock)),
    )
    .service(
        web::scope("/internal/catalog")
            .app_data(data)
            .route("/products/lookup", web::post().to(lookup_products))
            .route("/reservations/{order_id}", web::post().to(reserve))
            .route("/reservations/{order_id}/release", web::post().to(release))
            .route("/reservations/{order_id}/commit", web::post().to(commit))
            .route("/reservations/{order_id}/restock", web::post().to(restock)),
    );
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only products whose name or sku contains this text (case-insensitive).
    #[param(pattern = r"^[^\x00]*$")]
    q: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(
        min_length = 2,
        pattern = r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$"
    )]
    cursor: Option<String>,
}

/// Create a product.
#[utoipa::path(post, path = "/catalog/products", tag = "catalog",
    request_body = NewProduct,
    responses(
        (status = 201, body = Product),
        (status = 401, body = Problem), (status = 409, description = "sku_taken", body = Problem),
        (status = 422, body = Problem), (status = 413, body = Problem)),
    security(("admin_token" = [])))]
async fn create_product(
    _: Admin,
    service: web::Data<CatalogService>,
    body: Json<NewProduct>,
) -> ApiResult {
    let product = service.create_product(body.into_inner()).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/catalog/products/{}", product.id)))
        .json(product))
}

/// List products, filtered by `q`, a page at a time.
#[utoipa::path(get, path = "/catalog/products", tag = "catalog",
    params(ListQuery),
    responses((status = 200, body = Page<Product>), (status = 422, body = Problem)))]
async fn list_products(service: web::Data<CatalogService>, query: Query<ListQuery>) -> ApiResult {
    let query = query.into_inner();
    let params = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let page = params.validate()?;
    let products = service.list_products(query.q, page).await?;
    Ok(HttpResponse::Ok().json(products))
}

/// Read a product.
#[utoipa::path(get, path = "/catalog/products/{id}", tag = "catalog",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Product), (status = 404, description = "product_not_found", body = Problem)))]
async fn get_product(service: web::Data<CatalogService>, id: web::Path<String>) -> ApiResult {
    let product = service.product(path_id(&id, "product")?).await?;
    Ok(HttpResponse::Ok().json(product))
}

/// Change a product's name, description or price.
#[utoipa::path(patch, path = "/catalog/products/{id}", tag = "catalog",
    params(("id" = Uuid, Path)), request_body = ProductPatch,
    responses((status = 200, body = Product), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("admin_token" = [])))]
async fn update_product(
    _: Admin,
    service: web::Data<CatalogService>,
    id: web::Path<String>,
    body: Json<ProductPatch>,
) -> ApiResult {
    let product = service
        .update_product(path_id(&id, "product")?, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(product))
}

/// Set the units on hand.
#[utoipa::path(put, path = "/catalog/products/{id}/stock", tag = "catalog",
    params(("id" = Uuid, Path)), request_body = StockUpdate,
    responses((status = 200, body = Product), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "stock_below_reserved", body = Problem), (status = 422, body = Problem)),
    security(("admin_token" = [])))]
async fn set_stock(
    _: Admin,
    service: web::Data<CatalogService>,
    id: web::Path<String>,
    body: Json<StockUpdate>,
) -> ApiResult {
    let product = service
        .set_stock(path_id(&id, "product")?, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(product))
}

/// Look products up by id (the port's `products`).
#[utoipa::path(post, path = "/internal/catalog/products/lookup", tag = "internal",
    request_body = LookupRequest,
    responses((status = 200, body = LookupResponse), (status = 404, body = Problem)),
    security(("service_token" = [])))]
async fn lookup_products(
    _: Service,
    service: web::Data<CatalogService>,
    body: Json<LookupRequest>,
) -> ApiResult {
    let items = service.products(&body.ids).await?;
    Ok(HttpResponse::Ok().json(LookupResponse { items }))
}

/// Reserve stock for an order (idempotent per order).
#[utoipa::path(post, path = "/internal/catalog/reservations/{order_id}", tag = "internal",
    params(("order_id" = Uuid, Path)), request_body = ReserveRequest,
    responses((status = 200, body = Reservation), (status = 409, body = Problem), (status = 404, body = Problem)),
    security(("service_token" = [])))]
async fn reserve(
    _: Service,
    service: web::Data<CatalogService>,
    order: web::Path<String>,
    body: Json<ReserveRequest>,
) -> ApiResult {
    let reservation = service
        .reserve(uuid_param(&order, "order_id")?, &body.lines)
        .await?;
    Ok(HttpResponse::Ok().json(reservation))
}

/// Release an order's reservation (idempotent).
#[utoipa::path(post, path = "/internal/catalog/reservations/{order_id}/release", tag = "internal",
    params(("order_id" = Uuid, Path)),
    responses((status = 200, body = Reservation), (status = 409, body = Problem)),
    security(("service_token" = [])))]
async fn release(
    _: Service,
    service: web::Data<CatalogService>,
    order: web::Path<String>,
) -> ApiResult {
    let reservation = service.release(uuid_param(&order, "order_id")?).await?;
    Ok(HttpResponse::Ok().json(reservation))
}

/// Commit an order's reservation: the stock is sold (idempotent).
#[utoipa::path(post, path = "/internal/catalog/reservations/{order_id}/commit", tag = "internal",
    params(("order_id" = Uuid, Path)),
    responses((status = 200, body = Reservation), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("service_token" = [])))]
async fn commit(
    _: Service,
    service: web::Data<CatalogService>,
    order: web::Path<String>,
) -> ApiResult {
    let reservation = service.commit(uuid_param(&order, "order_id")?).await?;
    Ok(HttpResponse::Ok().json(reservation))
}

/// Put a cancelled order's stock back on hand (idempotent).
#[utoipa::path(post, path = "/internal/catalog/reservations/{order_id}/restock", tag = "internal",
    params(("order_id" = Uuid, Path)),
    responses((status = 200, body = Reservation), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("service_token" = [])))]
async fn restock(
    _: Service,
    service: web::Data<CatalogService>,
    order: web::Path<String>,
) -> ApiResult {
    let reservation = service.restock(uuid_param(&order, "order_id")?).await?;
    Ok(HttpResponse::Ok().json(reservation))
}
