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
    /// first answer and never takes effect twice; reusing a key for a different request is a
    /// 422. (HTTP drops spaces around a header value, so a key neither starts nor ends with one.)
    #[serde(rename = "Idempotency-Key")]
    #[param(value_type = String, required = false, min_length = 1, max_length = 64,
            pattern = "^[!-~]([ -~]{0,62}[!-~])?$")]
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
    modifiers(&BearerAuth, &SharedProblems),
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

/// The problems every route can answer because of the layers all routes share (rate limits,
/// timeouts, the body limit, the JSON body reader).
struct SharedProblems;

impl Modify for SharedProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        chronicle_infra::problem::document_shared_problems(openapi);
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

    #[test]
    fn documents_every_status_a_command_can_answer() {
        let json = serde_json::to_value(document()).expect("serialises");
        let paths = json["paths"].as_object().expect("paths");
        let mut operations = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                operations += 1;
                let responses = &operation["responses"];
                // Every command takes an Idempotency-Key, which may be reused for another request.
                let mut statuses = vec!["400", "408", "413", "422", "429", "500", "503"];
                if operation["requestBody"].is_object() {
                    statuses.push("415");
                }
                if operation["security"].is_array() {
                    statuses.push("401");
                }
                if path.contains('{') {
                    statuses.push("404");
                }
                for status in statuses {
                    assert!(
                        responses[status].is_object(),
                        "{method} {path} does not document {status}"
                    );
                }
                for status in ["429", "503"] {
                    assert!(
                        responses[status]["headers"]["Retry-After"].is_object(),
                        "{method} {path}: {status} without Retry-After"
                    );
                }
                let key = operation["parameters"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
                    .expect("Idempotency-Key");
                assert_eq!(key["schema"]["maxLength"], 64);
            }
        }
        assert_eq!(operations, 8);
        assert!(paths["/v1/posts"]["post"]["responses"]["404"].is_object());
        assert!(paths["/v1/users"]["post"]["responses"]["409"].is_object());
        assert!(paths["/v1/posts/{post_id}"]["delete"]["responses"]["403"].is_object());
    }
}
