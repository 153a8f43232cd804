//! The API documents: each service's OpenAPI document is generated from its code and served at
//! `/openapi.json`, with a reference page at `/docs` that renders it in the browser and needs
//! nothing from the network. Copies are checked in under `docs/`, kept current by a test.

use std::path::Path;

use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The reference page served at `/docs`: it loads `openapi.json` from next to itself.
pub const DOCS_PAGE: &str = include_str!("docs.html");

/// The document as checked in: pretty JSON with a final newline.
pub fn render(document: &OpenApi) -> String {
    let mut json = document.to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}

/// Checks that the file at `path` holds `document`; with `CHRONICLE_UPDATE_DOCS` set, writes it
/// instead. The error says how to bring the copy up to date.
pub fn check_copy(document: &OpenApi, path: &Path) -> Result<(), String> {
    let rendered = render(document);
    if std::env::var_os("CHRONICLE_UPDATE_DOCS").is_some() {
        return std::fs::write(path, rendered)
            .map_err(|err| format!("cannot write {}: {err}", path.display()));
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    if checked_in == rendered {
        return Ok(());
    }
    Err(format!(
        "{} is not what the code generates: run `CHRONICLE_UPDATE_DOCS=1 cargo test --workspace \
         --test openapi_docs` and commit the result",
        path.display()
    ))
}

/// Declares the `bearer` security scheme that operations with `security(("bearer" = []))` name:
/// an `Authorization: Bearer <JWT>` header.
pub fn add_bearer_scheme(openapi: &mut OpenApi) {
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

/// What `str::trim` removes (Unicode White_Space), as the inside of a regex character class.
/// Patterns are ECMA-262 (JSON Schema) and Python (schemathesis) alike: `\uXXXX` escapes, no
/// flags.
pub const SPACE: &str = r"\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// A pattern for text that is valid when it holds no U+0000 and `min..=max` Unicode scalar
/// values once surrounding white space is trimmed (`min` is 0 or 1, `max` at least 2).
pub fn trimmed_text_pattern(min: usize, max: usize) -> String {
    let core = format!(
        "[^\\x00{SPACE}]([^\\x00]{{0,{inner}}}[^\\x00{SPACE}])?",
        inner = max - 2
    );
    if min == 0 {
        format!("^[{SPACE}]*({core}[{SPACE}]*)?$")
    } else {
        format!("^[{SPACE}]*{core}[{SPACE}]*$")
    }
}
