//! The HTTP API's description, OpenAPI 3.1, generated from the handlers' annotations and their
//! request and response types (served at `/v1/openapi.json`). `tests/openapi.rs`' counterpart,
//! `every_documented_route_is_served`, calls every documented route on the real server.

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
