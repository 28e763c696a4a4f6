//! Billing's routes: admin `/billing/*` (spec §3 Billing) and `/internal/billing/*` (the
//! server side of `HttpBilling`, behind the service token).

use actix_web::{HttpResponse, web};
use billing_contract::{Billing, ChargeRequest, Payment, PaymentStatus};
use chassis::http::{Admin, ApiResult, Json, Query, Service, path_id, uuid_param};
use chassis::page::{Page, PageParams};
use chassis::problem::Problem;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::domain::Invoice;
use crate::service::BillingService;

#[derive(OpenApi)]
#[openapi(
    paths(list_payments, get_invoice, charge, refund),
    components(schemas(Payment, PaymentStatus, Invoice, ChargeRequest, Problem, Page<Payment>)),
    tags((name = "billing", description = "Payments and invoices"),
         (name = "internal", description = "Service-to-service calls behind the service token"))
)]
pub(crate) struct BillingApi;

pub(crate) fn configure(cfg: &mut web::ServiceConfig, service: BillingService) {
    let data = web::Data::new(service);
    cfg.service(
        // One resource per path, so that a wrong method answers 405, not 404.
        web::scope("/billing")
            .app_data(data.clone())
            .service(web::resource("/payments").get(list_payments))
            .service(web::resource("/invoices/{id}").get(get_invoice)),
    )
    .service(
        web::scope("/internal/billing")
            .app_data(data)
            .service(web::resource("/charges").post(charge))
            .service(web::resource("/payments/{order_id}/refund").post(refund)),
    );
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PaymentsQuery {
    /// Only the payment of this order (a UUID).
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

/// List payments in creation order (oldest first), a page at a time.
#[utoipa::path(get, path = "/billing/payments", tag = "billing",
    params(PaymentsQuery),
    responses((status = 200, body = Page<Payment>), (status = 401, body = Problem),
        (status = 422, body = Problem)),
    security(("admin_token" = [])))]
async fn list_payments(
    _: Admin,
    service: web::Data<BillingService>,
    query: Query<PaymentsQuery>,
) -> ApiResult {
    let query = query.into_inner();
    let order = query
        .order_id
        .as_deref()
        .map(|raw| uuid_param(raw, "order_id"))
        .transpose()?;
    let params = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let page = params.validate()?;
    let payments = service.payments(order, page).await?;
    Ok(HttpResponse::Ok().json(payments))
}

/// Read an invoice.
#[utoipa::path(get, path = "/billing/invoices/{id}", tag = "billing",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Invoice), (status = 401, body = Problem),
        (status = 404, description = "invoice_not_found", body = Problem)),
    security(("admin_token" = [])))]
async fn get_invoice(
    _: Admin,
    service: web::Data<BillingService>,
    id: web::Path<String>,
) -> ApiResult {
    let invoice = service.invoice(path_id(&id, "invoice")?).await?;
    Ok(HttpResponse::Ok().json(invoice))
}

/// Charge an order once (the port's `charge`; idempotent per order).
#[utoipa::path(post, path = "/internal/billing/charges", tag = "internal",
    request_body = ChargeRequest,
    responses((status = 200, body = Payment), (status = 401, body = Problem),
        (status = 409, description = "charge_conflict", body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "dependency_unavailable: try again later", body = Problem)),
    security(("service_token" = [])))]
async fn charge(
    _: Service,
    service: web::Data<BillingService>,
    body: Json<ChargeRequest>,
) -> ApiResult {
    let payment = service.charge(body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(payment))
}

/// Refund an order's payment in full (the port's `refund`; idempotent).
#[utoipa::path(post, path = "/internal/billing/payments/{order_id}/refund", tag = "internal",
    params(("order_id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 401, body = Problem),
        (status = 404, description = "payment_not_found", body = Problem),
        (status = 409, description = "payment_not_refundable", body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "dependency_unavailable: try again later", body = Problem)),
    security(("service_token" = [])))]
async fn refund(
    _: Service,
    service: web::Data<BillingService>,
    order: web::Path<String>,
) -> ApiResult {
    let payment = service.refund(uuid_param(&order, "order_id")?).await?;
    Ok(HttpResponse::Ok().json(payment))
}
