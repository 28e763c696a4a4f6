//! Notifications' routes: admin `/notifications` and `/notifications/webhooks` (spec §3
//! Notifications) and `/internal/notifications/*` (the server side of
//! `HttpNotifications`, behind the service token).

use actix_web::{HttpResponse, web};
use chassis::http::{Admin, ApiResult, Json, Query, Service, path_id, uuid_param};
use chassis::page::{Page, PageParams, PageRequest};
use chassis::problem::Problem;
use notifications_contract::{
    Channel, CreateWebhook, Delivery, DeliveryStatus, Notifications, Webhook,
};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::service::NotificationsService;

#[derive(OpenApi)]
#[openapi(
    paths(list_deliveries, create_webhook, list_webhooks, delete_webhook, internal_deliveries),
    components(schemas(Delivery, DeliveryStatus, Channel, Webhook, CreateWebhook, Problem,
        Page<Delivery>, Page<Webhook>)),
    tags((name = "notifications", description = "The delivery log and webhooks"),
         (name = "internal", description = "Service-to-service calls behind the service token"))
)]
pub(crate) struct NotificationsApi;

pub(crate) fn configure(cfg: &mut web::ServiceConfig, service: NotificationsService) {
    let data = web::Data::new(service);
    // One resource per path, so that a wrong method answers 405, not 404.
    cfg.service(
        web::resource("/notifications")
            .app_data(data.clone())
            .get(list_deliveries),
    )
    .service(
        web::resource("/notifications/webhooks")
            .app_data(data.clone())
            .get(list_webhooks)
            .post(create_webhook),
    )
    .service(
        web::resource("/notifications/webhooks/{id}")
            .app_data(data.clone())
            .delete(delete_webhook),
    )
    .service(
        web::resource("/internal/notifications/deliveries")
            .app_data(data)
            .get(internal_deliveries),
    );
}

fn page(limit: Option<u32>, cursor: Option<String>) -> Result<PageRequest, Problem> {
    PageParams { limit, cursor }
        .validate()
        .map_err(Problem::from)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveriesQuery {
    /// Only the deliveries about this order (a UUID).
    #[param(value_type = Option<Uuid>)]
    order_id: Option<String>,
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

/// The delivery log: e-mails and webhook calls in creation order (oldest first).
#[utoipa::path(get, path = "/notifications", tag = "notifications",
    params(DeliveriesQuery),
    responses((status = 200, body = Page<Delivery>), (status = 401, body = Problem),
        (status = 422, body = Problem)),
    security(("admin_token" = [])))]
async fn list_deliveries(
    _: Admin,
    service: web::Data<NotificationsService>,
    query: Query<DeliveriesQuery>,
) -> ApiResult {
    let query = query.into_inner();
    let order = query
        .order_id
        .as_deref()
        .map(|raw| uuid_param(raw, "order_id"))
        .transpose()?;
    let page = page(query.limit, query.cursor)?;
    let deliveries = service.deliveries(order, page).await?;
    Ok(HttpResponse::Ok().json(deliveries))
}

/// Register a webhook: every event of the given types is POSTed to `url` as its envelope
/// JSON, signed in `X-Bazaar-Signature: sha256=<hex HMAC-SHA256 of the body under secret>`.
#[utoipa::path(post, path = "/notifications/webhooks", tag = "notifications",
    request_body = CreateWebhook,
    responses((status = 201, body = Webhook), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("admin_token" = [])))]
async fn create_webhook(
    _: Admin,
    service: web::Data<NotificationsService>,
    body: Json<CreateWebhook>,
) -> ApiResult {
    let webhook = service.create_webhook(body.into_inner()).await?;
    Ok(HttpResponse::Created().json(webhook))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WebhooksQuery {
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

/// List webhooks in creation order (secrets are never answered).
#[utoipa::path(get, path = "/notifications/webhooks", tag = "notifications",
    params(WebhooksQuery),
    responses((status = 200, body = Page<Webhook>), (status = 401, body = Problem),
        (status = 422, body = Problem)),
    security(("admin_token" = [])))]
async fn list_webhooks(
    _: Admin,
    service: web::Data<NotificationsService>,
    query: Query<WebhooksQuery>,
) -> ApiResult {
    let query = query.into_inner();
    let webhooks = service.webhooks(page(query.limit, query.cursor)?).await?;
    Ok(HttpResponse::Ok().json(webhooks))
}

/// Remove a webhook; deliveries to it not yet made fail.
#[utoipa::path(delete, path = "/notifications/webhooks/{id}", tag = "notifications",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem),
        (status = 404, description = "webhook_not_found", body = Problem)),
    security(("admin_token" = [])))]
async fn delete_webhook(
    _: Admin,
    service: web::Data<NotificationsService>,
    id: web::Path<String>,
) -> ApiResult {
    service.delete_webhook(path_id(&id, "webhook")?).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InternalQuery {
    /// The order (a UUID).
    #[param(value_type = Uuid, required = true)]
    order_id: Option<String>,
}

/// The deliveries about an order (the port's `deliveries`).
#[utoipa::path(get, path = "/internal/notifications/deliveries", tag = "internal",
    params(InternalQuery),
    responses((status = 200, body = Vec<Delivery>), (status = 401, body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "dependency_unavailable: try again later", body = Problem)),
    security(("service_token" = [])))]
async fn internal_deliveries(
    _: Service,
    service: web::Data<NotificationsService>,
    query: Query<InternalQuery>,
) -> ApiResult {
    let Some(raw) = query.into_inner().order_id else {
        return Err(Problem::validation("order_id: required"));
    };
    let deliveries =
        Notifications::deliveries(service.get_ref(), uuid_param(&raw, "order_id")?).await?;
    Ok(HttpResponse::Ok().json(deliveries))
}
