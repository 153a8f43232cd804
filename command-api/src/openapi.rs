//! The OpenAPI 3.1 document of the command API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use chronicle_infra::problem::ProblemBody;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::handlers;

pub(crate) use chronicle_infra::http::MinPositions;

/// The `Idempotency-Key` header every command accepts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct IdempotencyHeader {
    /// 1–64 printable ASCII characters. A retry with the same key by the same user returns the
    /// first answer and never takes effect twice.
    #[serde(rename = "Idempotency-Key")]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle command API",
        version = "1",
        description = "Commands become events in Chronicle's log. Every 2xx answer comes after the \
                       broker acknowledged the event, and carries its `position`."
    ),
    paths(
        handlers::register,
        handlers::update_profile,
        handlers::publish,
        handlers::delete_post,
        handlers::like,
        handlers::unlike,
        handlers::follow,
        handlers::unfollow,
    ),
    components(schemas(ProblemBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "users", description = "Registration, profiles and follows"),
        (name = "posts", description = "Posts and likes"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The command API's OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_command_in_openapi_3_1() {
        let json = serde_json::to_value(document()).expect("serialises");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let paths = json["paths"].as_object().expect("paths");
        for (path, method) in [
            ("/v1/users", "post"),
            ("/v1/users/me", "patch"),
            ("/v1/posts", "post"),
            ("/v1/posts/{post_id}", "delete"),
            ("/v1/posts/{post_id}/like", "put"),
            ("/v1/posts/{post_id}/like", "delete"),
            ("/v1/users/me/following/{user_id}", "put"),
            ("/v1/users/me/following/{user_id}", "delete"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is not documented"
            );
        }
    }
}
