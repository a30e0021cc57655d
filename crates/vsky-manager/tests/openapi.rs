//! The OpenAPI document is generated from the code; a copy is committed at
//! docs/openapi.json for readers and client generators. This test fails when
//! the copy is stale.

use utoipa::OpenApi;

const FIX: &str = "regenerate it with: UPDATE_OPENAPI=1 cargo test -p vsky-manager --test openapi";

#[test]
fn committed_openapi_document_is_current() {
    let generated = vsky_manager::http::ApiDoc::openapi()
        .to_pretty_json()
        .unwrap()
        + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
        return;
    }
    let committed =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}; {FIX}"));
    assert!(committed == generated, "docs/openapi.json is stale; {FIX}");
}
