//! The OpenAPI 3.1 document of the command API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use chronicle_infra::apidoc::{SPACE, trimmed_text_pattern};
use chronicle_infra::problem::ProblemBody;
use serde::Deserialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{RefOr, Required};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::{account, handlers};

pub(crate) use chronicle_infra::http::MinPositions;

/// The `Idempotency-Key` header every command accepts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct IdempotencyHeader {
    /// 1–64 printable ASCII characters. A retry with the same key by the same user returns the
    /// first answer and never takes effect twice; reusing a key for a different request is a
    /// 422. (HTTP drops spaces around a header value, so a key neither starts nor ends with one.)
    /// A key is remembered for `CHRONICLE_IDEMPOTENCY_KEY_TTL_HOURS` (24 hours by default) from
    /// its first use; after that it is a new key. A 503 `outcome_unknown` answer carries the
    /// key to retry with (in this header and in `idempotency_key`), one the server assigned if
    /// the request had none.
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
        handlers::read_notifications,
        account::login,
        account::logout,
        account::change_password,
        account::erase,
    ),
    components(schemas(ProblemBody)),
    modifiers(&BearerAuth, &SharedProblems, &Constraints),
    tags(
        (name = "users", description = "Registration, profiles, follows and erasure"),
        (name = "posts", description = "Posts and likes"),
        (name = "notifications", description = "Marking notifications read"),
        (name = "sessions", description = "Logging in and out, and passwords (not events: \
                                           credentials never enter the log)"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        chronicle_infra::apidoc::add_bearer_scheme(openapi);
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

/// A `position` (`chronicle_infra::Position::encode`): 12 bytes (partition, then offset, both
/// big-endian and non-negative) as 16 characters of unpadded base64url. The first character
/// carries the partition's sign bit, the sixth the offset's.
pub(crate) const POSITION_PATTERN: &str =
    "^[A-Za-f][A-Za-z0-9_-]{4}[A-HQ-Xg-nw-z0-3][A-Za-z0-9_-]{10}$";

/// A handle as `validate::handle` accepts it: surrounding white space, then 3–30 characters that
/// lowercase to `[a-z0-9_]` (ASCII letters, and U+212A KELVIN SIGN, which lowercases to `k`).
fn handle_pattern() -> String {
    format!("^[{SPACE}]*[A-Za-z0-9_\\u212A]{{3,30}}[{SPACE}]*$")
}

/// States in the document the field rules `validate` enforces, which the derived schemas cannot
/// say: patterns for trimmed lengths and handles, the shape of a position, and that a profile
/// change names at least one field.
struct Constraints;

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let display_name = trimmed_text_pattern(1, 50);
        let bio = trimmed_text_pattern(0, 160);
        let rules = [
            ("RegisterRequest", "handle", handle_pattern()),
            ("RegisterRequest", "display_name", display_name.clone()),
            ("RegisterRequest", "bio", bio.clone()),
            ("ProfileRequest", "display_name", display_name),
            ("ProfileRequest", "bio", bio),
            ("PublishRequest", "body", trimmed_text_pattern(1, 1000)),
        ];
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (schema, field, pattern) in rules {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
                && let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field)
            {
                property.pattern = Some(pattern);
            }
        }
        if let Some(profile) = components.schemas.get_mut("ProfileRequest") {
            *profile = at_least_one_field(profile.clone(), &["display_name", "bio"]);
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                constrain_positions(operation, path == "/v1/posts");
            }
        }
    }
}

/// `schema` (an object of optional, nullable fields) with at least one of `fields` given and not
/// null: `{}` and `{"bio": null}` are refused.
fn at_least_one_field(schema: RefOr<Schema>, fields: &[&str]) -> RefOr<Schema> {
    let mut any = AnyOfBuilder::new();
    for field in fields {
        any = any.item(
            ObjectBuilder::new()
                .property(*field, ObjectBuilder::new().schema_type(Type::String))
                .required(*field),
        );
    }
    let description = match &schema {
        RefOr::T(Schema::Object(object)) => object.description.clone(),
        _ => None,
    };
    AllOfBuilder::new()
        .item(schema)
        .item(any)
        .description(description)
        .into()
}

/// Gives every `min_position` parameter of `operation` the shape of a position. A publish
/// (`only_with_reply_to`) reads it only to wait for the post it replies to.
fn constrain_positions(operation: &mut Operation, only_with_reply_to: bool) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter
            && parameter.name == "min_position"
        {
            parameter.required = Required::False;
            if only_with_reply_to {
                parameter.description = Some(
                    "Only with `reply_to`: wait until the read models include this position \
                     (the `position` of the post replied to) before checking that it exists; \
                     repeat for several. Waits at most `CHRONICLE_CONSISTENCY_WAIT_MS`, then \
                     answers 503 `stale_read`. Without `reply_to` it is not waited for, but a \
                     malformed one is still a 400 `invalid_position`."
                        .to_owned(),
                );
            }
            parameter.schema = Some(
                ArrayBuilder::new()
                    .items(
                        ObjectBuilder::new()
                            .schema_type(SchemaType::Type(Type::String))
                            .pattern(Some(POSITION_PATTERN))
                            .min_length(Some(16))
                            .max_length(Some(16)),
                    )
                    .into(),
            );
        }
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
            ("/v1/me/notifications/read", "post"),
            ("/v1/sessions", "post"),
            ("/v1/sessions/current", "delete"),
            ("/v1/users/me/password", "put"),
            ("/v1/users/me", "delete"),
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
                // Sessions and passwords are not commands: no event, no Idempotency-Key. An
                // erasure is idempotent by itself: it takes a key, but stores no answer under
                // it, so a key cannot be reused for another request.
                let command = operation["tags"][0] != "sessions";
                let erasure = (path.as_str(), method.as_str()) == ("/v1/users/me", "delete");
                let mut statuses = vec!["408", "413", "429", "500", "503"];
                if command || operation["requestBody"].is_object() {
                    statuses.push("400");
                }
                if command && !erasure {
                    // Every command takes an Idempotency-Key, which may be reused for another
                    // request.
                    statuses.push("422");
                }
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
                if !command {
                    continue;
                }
                let key = operation["parameters"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
                    .expect("Idempotency-Key");
                assert_eq!(key["schema"]["maxLength"], 64);
            }
        }
        assert_eq!(operations, 13);
        assert!(paths["/v1/posts"]["post"]["responses"]["404"].is_object());
        assert!(paths["/v1/users"]["post"]["responses"]["409"].is_object());
        assert!(paths["/v1/posts/{post_id}"]["delete"]["responses"]["403"].is_object());
        assert!(paths["/v1/users/me"]["delete"]["responses"]["403"].is_object());
    }
}
