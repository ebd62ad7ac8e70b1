//! Who may reach what on the query port, and what browsers may not do to it.
//!
//! - [`route_access`]: the scope each route needs. `/readyz`, `/metrics`, the OpenAPI document
//!   and the dashboard's files are open; priority polls take `proxy` (or `read`); changes to
//!   classes, objectives and overrides take `admin`; SQL and every other `/api` read take
//!   `read`. Without tokens, changes and SQL are for loopback clients only ([`Access`]).
//! - [`check_request`]: a `Host` allow-list (localhost names, the bind address and
//!   `[auth] allowed_hosts`), so a page whose DNS name was rebound to this address cannot
//!   script the API;
//! - [`JsonBody`]: the body of every `POST`/`PUT`, only with `Content-Type: application/json`,
//!   so no page can send one as a "simple" cross-origin request (CORS is off unless
//!   `[auth] cors_origins` lists origins).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_collector::auth::{Access, Scope};
use meshtrace_collector::receiver::http::media_type;

/// The access a request on the query port needs; `None`: open to anyone.
pub fn route_access(method: &Method, path: &str) -> Option<Access> {
    const PROXY: Access = Access::of(&[Scope::Proxy, Scope::Read]);
    if !path.starts_with("/api/") || path == "/api/v1/openapi.json" {
        return None;
    }
    let changes = !matches!(*method, Method::GET | Method::HEAD);
    Some(match path {
        "/api/v1/sql" => Access::READ.loopback_only(),
        "/api/v1/priorities" if !changes => PROXY,
        _ if changes => Access::ADMIN,
        _ => Access::READ,
    })
}

/// The `Host` names the query port answers to.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    names: Arc<[String]>,
    any: bool,
}

impl AllowedHosts {
    /// Localhost names, the bind address (unless it is a wildcard) and `extra` (`*`: any).
    pub fn new(bind: SocketAddr, extra: &[String]) -> AllowedHosts {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(String::from)
            .collect();
        if !bind.ip().is_unspecified() {
            names.push(bind.ip().to_string());
        }
        names.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        AllowedHosts {
            any: names.iter().any(|n| n == "*"),
            names: names.into(),
        }
    }

    /// Whether a `Host` header value (with or without its port) names this server.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
        };
        let name = name.trim_end_matches('.');
        self.names.iter().any(|n| {
            n == name
                || n.strip_prefix("*.")
                    .is_some_and(|d| name.ends_with(&format!(".{d}")))
        })
    }
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The middleware of [`AllowedHosts`].
pub async fn check_request(
    State(hosts): State<AllowedHosts>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !hosts.allows(host) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "host {host:?} is not one this server answers to; add it to [auth] allowed_hosts"
            ),
        );
    }
    next.run(request).await
}

/// A request body sent as `application/json` (else 415).
pub struct JsonBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody, Response> {
        let media = media_type(request.headers());
        if media != "application/json" {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type {media:?}; send application/json"),
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(JsonBody(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_scopes_of_what_they_do() {
        let get = |p: &str| route_access(&Method::GET, p);
        assert_eq!(get("/readyz"), None);
        assert_eq!(get("/metrics"), None);
        assert_eq!(get("/trace/abc"), None);
        assert_eq!(get("/api/traces"), Some(Access::READ));
        assert!(get("/api/v1/priorities")
            .unwrap()
            .scopes
            .contains(&Scope::Proxy));
        let put = route_access(&Method::PUT, "/api/v1/priorities/overrides").unwrap();
        assert_eq!(put, Access::ADMIN);
        let sql = route_access(&Method::POST, "/api/v1/sql").unwrap();
        assert!(sql.loopback_only && sql.scopes == [Scope::Read]);
    }

    #[test]
    fn hosts_are_matched_without_their_port() {
        let bind: SocketAddr = "0.0.0.0:16686".parse().unwrap();
        let hosts = AllowedHosts::new(bind, &["meshtrace.example.com".into(), "*.svc".into()]);
        for ok in [
            "localhost:16686",
            "127.0.0.1",
            "[::1]:16686",
            "meshtrace.example.com",
            "q.ns.svc:80",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in ["evil.example.com", "10.0.0.1:16686", "", "svc"] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        let bound = AllowedHosts::new("10.0.0.1:16686".parse().unwrap(), &[]);
        assert!(bound.allows("10.0.0.1:16686"));
        assert!(AllowedHosts::new(bind, &["*".into()]).allows("anything"));
    }
}
