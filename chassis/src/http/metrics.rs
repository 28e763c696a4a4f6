use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

/// Middleware (`actix_web::middleware::from_fn`) counting requests by method, route
/// pattern and status, and timing them. Routes are patterns (`/catalog/products/{id}`),
/// so the label set stays bounded whatever ids clients send.
pub async fn record_request_metrics(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = request.method().to_string();
    let response = next.call(request).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "bazaar_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.clone(),
    )
    .increment(1);
    metrics::histogram!(
        "bazaar_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => status,
    )
    .record(started.elapsed().as_secs_f64());
    Ok(response)
}
