use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;
use crate::problem::Problem;
use crate::secret::Secret;

/// The configured tokens; registered once as `web::Data<Tokens>` on the app.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    admin: Option<Secret>,
    service: Option<Secret>,
}

impl Tokens {
    pub fn new(admin: Option<Secret>, service: Option<Secret>) -> Self {
        Self { admin, service }
    }

    pub fn from_settings(settings: &AuthSettings) -> Self {
        Self::new(settings.admin_token.clone(), settings.service_token.clone())
    }
}

/// Proof that the request carried `Authorization: Bearer <auth.admin_token>`.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// Proof that the request carried `Authorization: Bearer <auth.service_token>`.
#[derive(Debug, Clone, Copy)]
pub struct Service;

impl FromRequest for Admin {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(request, "admin", |tokens| tokens.admin.as_ref()).map(|()| Admin))
    }
}

impl FromRequest for Service {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(request, "service", |tokens| tokens.service.as_ref()).map(|()| Service))
    }
}

fn check(
    request: &HttpRequest,
    role: &str,
    expected: impl Fn(&Tokens) -> Option<&Secret>,
) -> Result<(), Problem> {
    let tokens = request.app_data::<web::Data<Tokens>>();
    let Some(expected) = tokens.and_then(|tokens| expected(tokens)) else {
        return Err(Problem::unauthorized(format!(
            "{role} endpoints are disabled: no auth.{role}_token is configured"
        )));
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        None => Err(Problem::unauthorized(format!(
            "send Authorization: Bearer <{role} token>"
        ))),
        Some(presented) if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) => {
            Ok(())
        }
        Some(_) => Err(Problem::unauthorized(format!("the {role} token is wrong"))),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, test};

    use super::*;

    async fn admin_only(_: Admin) -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    #[actix_web::test]
    async fn admin_token_is_required_and_checked() {
        let tokens = Tokens::new(Some(Secret::new("s3cret")), None);
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(tokens))
                .route("/", web::get().to(admin_only)),
        )
        .await;
        let missing =
            test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(missing.status(), 401);
        let wrong = test::TestRequest::get()
            .uri("/")
            .insert_header(("Authorization", "Bearer nope"))
            .to_request();
        assert_eq!(test::call_service(&app, wrong).await.status(), 401);
        let right = test::TestRequest::get()
            .uri("/")
            .insert_header(("Authorization", "Bearer s3cret"))
            .to_request();
        assert_eq!(test::call_service(&app, right).await.status(), 200);
        for scheme in ["bearer", "BEARER"] {
            let any_case = test::TestRequest::get()
                .uri("/")
                .insert_header(("Authorization", format!("{scheme} s3cret")))
                .to_request();
            assert_eq!(
                test::call_service(&app, any_case).await.status(),
                200,
                "the scheme {scheme:?} is Bearer"
            );
        }
        let other_scheme = test::TestRequest::get()
            .uri("/")
            .insert_header(("Authorization", "Basic s3cret"))
            .to_request();
        assert_eq!(test::call_service(&app, other_scheme).await.status(), 401);
    }

    #[actix_web::test]
    async fn unset_token_answers_401_for_any_credentials() {
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(Tokens::default()))
                .route("/", web::get().to(admin_only)),
        )
        .await;
        let request = test::TestRequest::get()
            .uri("/")
            .insert_header(("Authorization", "Bearer "))
            .to_request();
        let response = test::call_service(&app, request).await;
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["code"], "unauthorized");
    }
}
