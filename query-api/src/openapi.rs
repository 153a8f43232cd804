//! The OpenAPI 3.1 document of the query API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use chronicle_infra::problem::ProblemBody;
use utoipa::{Modify, OpenApi};

use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle query API",
        version = "1",
        description = "Profiles and feeds from Chronicle's read models. Reads never wait unless \
                       given `min_position`; lists are keyset-paginated, newest first."
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
    ),
    components(schemas(ProblemBody)),
    modifiers(&SharedProblems),
    tags(
        (name = "users", description = "Profiles and follow lists"),
        (name = "posts", description = "Posts, feeds and likes"),
    )
)]
struct ApiDoc;

/// The problems every route can answer because of the layers all routes share (the rate limit
/// per address, the request timeout, the body limit).
struct SharedProblems;

impl Modify for SharedProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        chronicle_infra::problem::document_shared_problems(openapi);
    }
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
        assert_eq!(paths.len(), 9, "{:?}", paths.keys().collect::<Vec<_>>());
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
        for page in ["Page_Post", "Page_UserSummary", "Page_Like"] {
            let required = schemas[page]["required"].as_array().expect("required");
            assert!(required.contains(&"next_cursor".into()), "{page}");
        }
    }
}
