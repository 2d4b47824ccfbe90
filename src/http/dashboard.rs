//! The dashboard (`dashboard/README.md`): a page showing one account's clients, connections,
//! sessions and events live, served at `/dashboard/` from the files of the repository's
//! `dashboard/` folder, with the JavaScript client library (`clients/js/cradle.js`) beside
//! them as `/dashboard/cradle.js`. The files are embedded in the binary (`include_str!`), so a
//! release needs nothing beside it.
//!
//! The page is not part of the JSON API: none of these routes is in the OpenAPI description,
//! and this file is deliberately not one of the routers `openapi.rs`' drift test reads. Every
//! file is public (the page holds no secret: it asks for a token and sends it to the API) and
//! served with a Content-Security-Policy that runs only the page's own scripts and styles and
//! lets it connect to any HTTP server (its optional server URL).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{ApiError, AppState};

/// The dashboard's files: name under `/dashboard/`, content type, content.
const FILES: [(&str, &str, &str); 4] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../dashboard/index.html"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboard/dashboard.css"),
    ),
    (
        "cradle.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/js/cradle.js"),
    ),
];

/// What the page may load and reach: its own scripts, styles and icon, and any HTTP server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The dashboard's routes: `/dashboard` (a redirect to the folder), `/dashboard/` and its files.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(to_folder))
        .route("/dashboard/", get(index))
        .route("/dashboard/{file}", get(file))
}

/// `/dashboard` → `dashboard/`: the page's links are relative to its folder. The `Location`
/// is relative too, so a proxy's path prefix is kept.
async fn to_folder() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("dashboard/"))],
    )
        .into_response()
}

/// `/dashboard/`: the page.
async fn index() -> Response {
    serve("index.html").unwrap_or_else(|| ApiError::NotFound.into_response())
}

/// `/dashboard/{file}`: one of the page's files; any other name is the API's JSON `404`.
async fn file(Path(name): Path<String>) -> Response {
    serve(&name).unwrap_or_else(|| ApiError::NotFound.into_response())
}

/// The answer for the file `name`, or `None` when there is no such file.
fn serve(name: &str) -> Option<Response> {
    let (_, content_type, body) = FILES.iter().find(|(n, _, _)| *n == name)?;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // Always revalidated: an upgraded Cradle serves its own page at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    Some((headers, *body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_page_when_reading_its_links_then_each_file_it_loads_is_served() {
        let index = FILES[0].2;
        for linked in ["dashboard.css", "dashboard.js"] {
            assert!(
                index.contains(&format!("\"{linked}\"")),
                "index.html loads {linked}"
            );
            assert!(serve(linked).is_some(), "{linked} is served");
        }
        let script = FILES[1].2;
        assert!(
            script.contains("from \"./cradle.js\""),
            "dashboard.js imports the library"
        );
        assert!(serve("cradle.js").is_some());
        assert!(serve("nope.js").is_none());
        assert!(serve("../Cargo.toml").is_none());
    }

    #[test]
    fn given_each_file_when_served_then_its_content_type_fits_its_extension() {
        for (name, content_type, body) in FILES {
            assert!(!body.is_empty(), "{name}");
            let expected = match name.rsplit('.').next() {
                Some("html") => "text/html",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                other => panic!("{name}: an extension the dashboard does not use: {other:?}"),
            };
            assert!(content_type.starts_with(expected), "{name}: {content_type}");
        }
    }

    #[test]
    fn given_the_api_description_when_listing_paths_then_the_dashboard_is_not_in_it() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(super::super::openapi::ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(
            paths.keys().all(|p| !p.starts_with("/dashboard")),
            "the dashboard is a page, not an API route"
        );
    }
}
