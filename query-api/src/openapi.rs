//! The OpenAPI 3.1 document of the query API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use chronicle_infra::apidoc::trimmed_text_pattern;
use chronicle_infra::problem::ProblemBody;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, Required};
use utoipa::{Modify, OpenApi};

use crate::{handlers, notifications, search, stream};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle query API",
        version = "1",
        description = "Profiles, feeds, search and the caller's notifications from Chronicle's \
                       read models. Reads never wait unless given `min_position`; lists are \
                       keyset-paginated, newest first (search results: most relevant first)."
    ),
    paths(
        handlers::profile,
        handlers::profile_by_handle,
        handlers::author_feed,
        handlers::timeline,
        handlers::followers,
        handlers::following,
        handlers::global_feed,
        handlers::post,
        handlers::likes,
        search::posts,
        search::users,
        notifications::list,
        notifications::unread_count,
        stream::feed,
        stream::timeline,
        stream::notifications,
    ),
    components(schemas(ProblemBody)),
    modifiers(&BearerAuth, &SharedProblems, &Constraints),
    tags(
        (name = "users", description = "Profiles and follow lists"),
        (name = "posts", description = "Posts, feeds and likes"),
        (name = "search", description = "Posts by full text, users by handle and display name"),
        (name = "notifications", description = "The caller's notifications (bearer token)"),
        (name = "streams", description = "Server-sent events: the feed, a timeline and the caller's notifications, live, resumable"),
    )
)]
struct ApiDoc;

/// Private reads take the bearer tokens the command API issues.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        chronicle_infra::apidoc::add_bearer_scheme(openapi);
    }
}

/// The problems every route can answer because of the layers all routes share (the rate limit
/// per address, the request timeout, the body limit).
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

/// A cursor (`cursor::Cursor::encode`): 24 bytes (a time in microseconds since the epoch, then an
/// id) as 32 characters of unpadded base64url. The first character keeps the time between the
/// epoch and the year 257,000 or so: every cursor this service makes, and none it refuses.
pub(crate) const CURSOR_PATTERN: &str = "^[A-Za-b][A-Za-z0-9_-]{31}$";

/// States in the document the shapes the derived schemas cannot say: a `min_position` is a
/// position, a `cursor` is a cursor, a search's `q` is text of 1 to 256 characters once trimmed.
struct Constraints;

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let position = string_schema(POSITION_PATTERN, 16);
        let cursor = string_schema(CURSOR_PATTERN, 32);
        let search_text: Schema = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some(trimmed_text_pattern(1, search::MAX_QUERY_CHARS)))
            .into();
        for item in openapi.paths.paths.values_mut() {
            for parameter in item
                .get
                .iter_mut()
                .flat_map(|operation| operation.parameters.iter_mut().flatten())
            {
                let RefOr::T(parameter) = parameter else {
                    continue;
                };
                match parameter.name.as_str() {
                    "min_position" => {
                        parameter.required = Required::False;
                        parameter.schema =
                            Some(ArrayBuilder::new().items(RefOr::T(position.clone())).into());
                    }
                    "cursor" => parameter.schema = Some(cursor.clone().into()),
                    "q" => parameter.schema = Some(search_text.clone().into()),
                    _ => {}
                }
            }
        }
    }
}

/// A string of exactly `length` characters matching `pattern`.
fn string_schema(pattern: &str, length: usize) -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(pattern))
        .min_length(Some(length))
        .max_length(Some(length))
        .into()
}

/// The query API's OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_read_in_openapi_3_1() {
        let json = serde_json::to_value(document()).expect("serialises");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let paths = json["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), 16, "{:?}", paths.keys().collect::<Vec<_>>());
        for path in paths.values() {
            assert!(path["get"].is_object());
        }
    }

    #[test]
    fn documents_every_status_a_read_can_answer() {
        let json = serde_json::to_value(document()).expect("serialises");
        for (path, item) in json["paths"].as_object().expect("paths") {
            let responses = &item["get"]["responses"];
            let mut statuses = vec!["200", "400", "408", "413", "429", "500", "503"];
            if path.contains('{') {
                statuses.push("404");
            }
            if path.starts_with("/v1/me/") {
                statuses.push("401");
            }
            for status in statuses {
                assert!(
                    responses[status].is_object(),
                    "GET {path} does not document {status}"
                );
            }
            for status in ["429", "503"] {
                assert!(
                    responses[status]["headers"]["Retry-After"].is_object(),
                    "GET {path}: {status} without Retry-After"
                );
            }
        }
        let schemas = &json["components"]["schemas"];
        for page in [
            "Page_Post",
            "Page_UserSummary",
            "Page_Like",
            "Page_Notification",
        ] {
            let required = schemas[page]["required"].as_array().expect("required");
            assert!(required.contains(&"next_cursor".into()), "{page}");
        }
    }
}
