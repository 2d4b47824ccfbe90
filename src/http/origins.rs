//! Browser origins: which web pages may call the HTTP API and open `/ws`
//! (`http.allowed_origins`), and the CORS answers the Fetch standard asks for.
//!
//! A request without an `Origin` header (a device, a script, curl) is never affected. A
//! request with one gets CORS headers only when its origin is allowed; a preflight from any
//! other origin is refused with `403` and no CORS header, and so is a `/ws` upgrade
//! ([`Origins::refusal`], called by the `/ws` route before anything else). Unset, the list is
//! the loopback origins (`http://localhost:*`, `http://127.0.0.1:*`, `http://[::1]:*`, and
//! their `https` forms): a page of a website the developer visits can then neither call a
//! Cradle on loopback nor take over one of its client ids.

use std::collections::HashSet;
use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::metrics::HttpRefusal;
use super::{ApiError, AppState};

/// Methods a page may use (answered in a preflight).
const ALLOW_METHODS: &str = "GET, PUT, POST, DELETE";
/// Request headers a page may send (answered in a preflight).
const ALLOW_HEADERS: &str = "Authorization, Content-Type, X-Cradle-Account, Last-Event-ID";
/// Response headers a page may read besides the CORS-safelisted ones.
const EXPOSE_HEADERS: &str = "Retry-After, WWW-Authenticate";
/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE_SECS: &str = "600";

/// The origins allowed to use Cradle from a browser.
#[derive(Debug, Clone)]
pub(crate) enum Origins {
    /// `http.allowed_origins` unset: loopback origins only.
    Loopback,
    /// These origins (ASCII serialisations, as browsers send them).
    List(HashSet<String>),
}

impl Origins {
    /// The policy of `http.allowed_origins` (entries already validated by the config).
    pub(crate) fn from_config(allowed: Option<&[String]>) -> Self {
        match allowed {
            None => Self::Loopback,
            Some(list) => Self::List(
                list.iter()
                    .filter_map(|o| crate::config::normalize_origin(o).ok())
                    .collect(),
            ),
        }
    }

    /// Whether a page of `origin` (an `Origin` header's value) may use Cradle.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Loopback => is_loopback_origin(origin),
            Self::List(list) => {
                crate::config::normalize_origin(origin).is_ok_and(|o| list.contains(&o))
            }
        }
    }

    /// The `403` (`origin_not_allowed`) to answer a request whose `Origin` is present and
    /// not allowed, counted and logged; `None` for any other request.
    pub(crate) fn refusal(&self, state: &AppState, headers: &HeaderMap) -> Option<Response> {
        origin(headers)
            .filter(|o| !self.allows(o))
            .map(|o| refuse(state, o))
    }
}

/// The request's `Origin`, when present and text.
fn origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""))
}

/// Whether `origin` is `http(s)://` on a loopback host (`localhost`, `*.localhost`, or a
/// loopback address), any port.
fn is_loopback_origin(origin: &str) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// `403 origin_not_allowed`, with no CORS header.
fn refuse(state: &AppState, origin: &str) -> Response {
    state.metrics.refused(HttpRefusal::Origin);
    tracing::warn!(
        origin,
        "request refused: its Origin is not in http.allowed_origins"
    );
    ApiError::Refused {
        status: StatusCode::FORBIDDEN,
        code: "origin_not_allowed",
        message: "this page's origin may not use Cradle: add it to http.allowed_origins".into(),
        retry_after_secs: None,
    }
    .into_response()
}

/// The CORS layer: answers preflights (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) itself, `204` for an allowed origin and `403` for any
/// other, and adds `Access-Control-Allow-Origin` (with `Vary: Origin`) to every response to
/// an allowed origin. Requests without `Origin` pass untouched.
pub(super) async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(origin) = origin(request.headers()).map(str::to_owned) else {
        return next.run(request).await;
    };
    let allowed = state.origins.allows(&origin);
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        if !allowed {
            return refuse(&state, &origin);
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        allow(h, &origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
        h.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        return response;
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    if allowed {
        allow(h, &origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    } else {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// `Access-Control-Allow-Origin: origin` and `Vary: Origin` (the answer depends on it).
fn allow(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(origins: &[&str]) -> Origins {
        let owned: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        Origins::from_config(Some(&owned))
    }

    #[test]
    fn unset_allows_loopback_origins_only() {
        let o = Origins::from_config(None);
        for ok in [
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "http://127.5.0.1",
            "https://[::1]:3000",
            "http://app.localhost:1",
        ] {
            assert!(o.allows(ok), "{ok}");
        }
        for refused in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://192.168.1.10:8080",
            "null",
            "file://",
            "",
            "ws://127.0.0.1:8080",
        ] {
            assert!(!o.allows(refused), "{refused}");
        }
    }

    #[test]
    fn a_list_allows_exactly_its_origins_whatever_their_spelling() {
        let o = list(&["https://App.Example.com", "http://127.0.0.1:5173/"]);
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("https://app.example.com:443"));
        assert!(o.allows("http://127.0.0.1:5173"));
        assert!(!o.allows("http://app.example.com"));
        assert!(!o.allows("https://app.example.com:8443"));
        assert!(!o.allows("http://127.0.0.1:5174"));
        assert!(
            !o.allows("http://localhost:5173"),
            "a list replaces the loopback default"
        );
    }

    #[test]
    fn an_empty_list_allows_no_page() {
        assert!(!list(&[]).allows("http://127.0.0.1:1"));
    }
}
