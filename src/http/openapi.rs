//! The HTTP API's description, OpenAPI 3.1, generated from the handlers' annotations and their
//! request and response types (served at `/v1/openapi.json`). Two tests keep it and the
//! routers one: below, every route the routers' source declares is documented, method by
//! method; `tests/http_auth.rs`' `every_documented_route_is_served…` calls every documented
//! route on the real server.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;

/// The whole description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cradle",
        description = "The realtime backbone of a baby-monitor product: presence, sessions, the event log, administration. Every error answers with `ErrorBody`."
    ),
    paths(
        super::api::clients,
        super::api::events,
        super::api::connections,
        super::stream::account_stream,
        super::stream::every_account_stream,
        super::history::client_history,
        super::history::availability,
        super::sessions::start,
        super::sessions::end,
        super::sessions::baby_stations,
        super::sessions::parent_stations,
        super::sessions::usage_route,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ws::upgrade,
        super::admin::list_accounts,
        super::admin::get_account,
        super::admin::put_account,
        super::admin::delete_account,
        super::admin::provision_devices,
        super::admin::list_credentials,
        super::admin::issue_credential,
        super::admin::get_credential,
        super::admin::revoke_credential,
        super::admin::rotate_credential,
        super::admin::disconnect_client,
        super::admin::all_connections,
        super::admin::list_bans,
        super::admin::lift_ban,
        openapi_json,
    ),
    modifiers(&Bearer)
)]
pub(crate) struct ApiDoc;

/// The `bearer` security scheme: account tokens, operator and administrator secrets, the
/// admin token.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/v1/openapi.json", get(openapi_json))
}

/// This description.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", summary = "This API's OpenAPI 3.1 description.", responses((status = 200, description = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The routers' source: every file of this module that declares routes.
    const ROUTERS: [&str; 8] = [
        include_str!("admin.rs"),
        include_str!("api.rs"),
        include_str!("history.rs"),
        include_str!("openapi.rs"),
        include_str!("ops.rs"),
        include_str!("sessions.rs"),
        include_str!("stream.rs"),
        include_str!("ws.rs"),
    ];
    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

    /// The (path, method) of every `.route("…", get(…).post(…))` in `source`.
    fn declared(source: &str) -> BTreeSet<(String, String)> {
        let mut routes = BTreeSet::new();
        let call = [".route", "("].concat();
        // Tests are not routers.
        let source = source.split("#[cfg(test)]").next().unwrap_or_default();
        for (at, _) in source.match_indices(&call) {
            let rest = source[at + call.len()..].trim_start();
            let Some(rest) = rest.strip_prefix('"') else {
                continue;
            };
            let Some((path, rest)) = rest.split_once('"') else {
                continue;
            };
            // The methods: up to the `.route(`'s closing parenthesis.
            let (mut depth, mut end) = (1usize, rest.len());
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 1 => {
                        end = i;
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            let chain = &rest[..end];
            for method in METHODS {
                let found = chain.match_indices(&format!("{method}(")).any(|(i, _)| {
                    !chain[..i]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if found {
                    routes.insert((path.to_string(), method.to_string()));
                }
            }
        }
        routes
    }

    #[test]
    fn given_the_routers_source_when_describing_then_every_declared_route_and_method_is_documented_and_nothing_else(
    ) {
        let served: BTreeSet<_> = ROUTERS.iter().flat_map(|s| declared(s)).collect();
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|m| METHODS.contains(&m.as_str()))
                    .map(|m| (path.clone(), m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(served.len() >= 27, "{served:?}");
        assert_eq!(
            served.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "served but not documented"
        );
        assert_eq!(
            documented.difference(&served).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "documented but not declared"
        );
    }

    /// `docs/openapi.json` is this description, for readers without a running Cradle;
    /// `CRADLE_TEST_BLESS=1 cargo test --lib openapi` writes it anew after a change.
    #[test]
    fn given_the_committed_description_when_generating_then_it_is_the_same() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let generated = serde_json::to_string_pretty(&ApiDoc::openapi()).unwrap() + "\n";
        if std::env::var_os("CRADLE_TEST_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the generated description: run \
             CRADLE_TEST_BLESS=1 cargo test --lib openapi and commit it"
        );
    }

    #[test]
    fn given_a_route_chain_when_reading_it_then_each_method_is_found_once_and_handler_names_are_not_methods(
    ) {
        let src = [
            r#"Router::new().route("/a", get(get_account).put(budget))"#,
            r#".route(
  "/b/{id}", axum::routing::delete(lift))"#,
        ]
        .concat();
        let found: Vec<_> = declared(&src).into_iter().collect();
        assert_eq!(
            found,
            [
                ("/a".to_string(), "get".to_string()),
                ("/a".to_string(), "put".to_string()),
                ("/b/{id}".to_string(), "delete".to_string()),
            ]
        );
    }
}
