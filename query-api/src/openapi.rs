//! The OpenAPI 3.1 document of the query API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use chronicle_infra::problem::ProblemBody;
use utoipa::OpenApi;

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
    tags(
        (name = "users", description = "Profiles and follow lists"),
        (name = "posts", description = "Posts, feeds and likes"),
    )
)]
struct ApiDoc;

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
}
