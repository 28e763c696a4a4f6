//! The orders module's routes: public `/orders` (spec §3 Orders) and `/internal/orders/*`
//! (the server side of `HttpOrders`, behind the service token).

use actix_web::{HttpRequest, HttpResponse, web};
use chassis::http::{ApiResult, Json, Query, Service, path_id};
use chassis::page::{Page, PageParams};
use chassis::problem::Problem;
use orders_contract::{Order, OrderStatus};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::domain::{PaymentMethod, PlaceOrder, PlaceOrderLine};
use crate::service::OrdersService;

#[derive(OpenApi)]
#[openapi(
    paths(place_order, list_orders, get_order, cancel_order, internal_order),
    components(schemas(Order, PlaceOrder, PlaceOrderLine, PaymentMethod, Problem, Page<Order>)),
    tags((name = "orders", description = "Placing, reading and cancelling orders"))
)]
pub(crate) struct OrdersApi;

pub(crate) fn configure(cfg: &mut web::ServiceConfig, service: OrdersService) {
    let data = web::Data::new(service);
    cfg.service(
        web::scope("/orders")
            .app_data(data.clone())
            .service(web::resource("").post(place_order).get(list_orders))
            .service(web::resource("/{id}").get(get_order))
            .service(web::resource("/{id}/cancel").post(cancel_order)),
    )
    .service(
        web::scope("/internal/orders")
            .app_data(data)
            .service(web::resource("/{id}").get(internal_order)),
    );
}

/// Place an order: validate, snapshot prices, reserve stock, charge, confirm.
///
/// Answers when the saga has ended, or after `orders.sync_wait` with the order still
/// `pending`. The same `Idempotency-Key` with the same body answers the same order.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 255,
        pattern = r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$",
        description = "Makes retries safe: the same key and body answer the same order. 1 to 255 printable ASCII characters")),
    responses(
        (status = 201, body = Order),
        (status = 422, description = "validation_failed, unknown_product, idempotency_key_reused", body = Problem),
        (status = 503, description = "dependency_unavailable: the catalog cannot be reached; no order was created", body = Problem)))]
async fn place_order(
    request: HttpRequest,
    service: web::Data<OrdersService>,
    body: Json<PlaceOrder>,
) -> ApiResult {
    let key = match request.headers().get("Idempotency-Key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Problem::validation("Idempotency-Key: must be printable ASCII"))?
                .to_owned(),
        ),
    };
    let order = service.place(body.into_inner(), key).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/orders/{}", order.id)))
        .json(order))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Whose orders: the e-mail address the orders were placed with.
    #[param(required = true, min_length = 1, pattern = r"^[^\x00]*$")]
    customer_email: Option<String>,
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

/// A customer's orders, newest first.
#[utoipa::path(get, path = "/orders", tag = "orders", params(ListQuery),
    responses((status = 200, body = Page<Order>), (status = 422, body = Problem)))]
async fn list_orders(service: web::Data<OrdersService>, query: Query<ListQuery>) -> ApiResult {
    let query = query.into_inner();
    let customer_email = query
        .customer_email
        .filter(|email| !email.is_empty())
        .ok_or_else(|| Problem::validation("customer_email: required"))?;
    let page = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    }
    .validate()?;
    Ok(HttpResponse::Ok().json(service.list(customer_email, page).await?))
}

/// Read an order.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, description = "order_not_found", body = Problem)))]
async fn get_order(service: web::Data<OrdersService>, id: web::Path<String>) -> ApiResult {
    Ok(HttpResponse::Ok().json(service.order(path_id(&id, "order")?).await?))
}

/// Cancel a confirmed order: its payment is refunded and its stock restocked.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", params(("id" = Uuid, Path)),
    responses((status = 200, description = "cancelled: refunded and restocked", body = Order),
        (status = 202, description = "the cancellation has started, and finishes once billing and the catalog can be reached: the order is still `confirmed`; poll it", body = Order),
        (status = 404, body = Problem),
        (status = 409, description = "order_not_cancellable", body = Problem),
        (status = 503, description = "dependency_unavailable: nothing was changed", body = Problem)))]
async fn cancel_order(service: web::Data<OrdersService>, id: web::Path<String>) -> ApiResult {
    let order = service.cancel(path_id(&id, "order")?).await?;
    if order.status == OrderStatus::Cancelled {
        Ok(HttpResponse::Ok().json(order))
    } else {
        Ok(HttpResponse::Accepted()
            .insert_header(("Location", format!("/orders/{}", order.id)))
            .json(order))
    }
}

/// Read an order (the port's `order`).
#[utoipa::path(get, path = "/internal/orders/{id}", tag = "internal", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, body = Problem)),
    security(("service_token" = [])))]
async fn internal_order(
    _: Service,
    service: web::Data<OrdersService>,
    id: web::Path<String>,
) -> ApiResult {
    Ok(HttpResponse::Ok().json(service.order(path_id(&id, "order")?).await?))
}
