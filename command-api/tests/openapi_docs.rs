//! The copy of the API document checked in under `docs/` is what the code generates.

#[test]
fn the_checked_in_openapi_document_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/command-api.openapi.json");
    if let Err(stale) = chronicle_infra::apidoc::check_copy(&command_api::openapi_document(), &path)
    {
        panic!("{stale}");
    }
}
