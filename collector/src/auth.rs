//! Who may do what on every listener: bearer tokens with scopes, checked by one HTTP middleware
//! ([`require`]) on the OTLP, Zipkin and query ports and by [`Auth::authorize`] in the gRPC
//! services.
//!
//! Tokens are configured as `[[auth.tokens]]` entries (`name`, `token`, `scopes`, optionally
//! `services` and `classes`) and compared in constant time. A scope grants one kind of access:
//! [`Scope::Ingest`] (OTLP and Zipkin), [`Scope::Read`] (query APIs, dashboard data, SQL),
//! [`Scope::Proxy`] (priority polls and watches, only for the token's `services` when it lists
//! some) and [`Scope::Admin`] (classes, objectives, overrides; implies every other scope). A
//! missing or unknown token is 401 / `UNAUTHENTICATED`, a token without the scope 403 /
//! `PERMISSION_DENIED`, both naming what is missing.
//!
//! An entry may instead (or as well) name a `client_cert`: a URI (a mesh's SPIFFE ID) or DNS
//! name among the subject alternative names of a client certificate that `[tls] client_ca`
//! verified. A request with no `Authorization` header over such a connection is that entry's
//! holder ([`crate::peer`]); a bearer token, when sent, decides instead.
//!
//! With no tokens configured (the demo), every request is served as today except those an
//! [`Access`] marks `loopback_only` (changing the mesh, SQL), which only loopback clients may
//! make. The caller's identity ([`Caller`]) is put into the request's extensions for handlers
//! that bind it further (a proxy token's service, an ingest token's classes).

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use meshtrace_model::class::{set_sender, strip_class_claims};
use meshtrace_model::tenant::{TenantId, TENANT_HEADER};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::peer::Peer;
use crate::validate::{Batch, RejectReason};

/// One kind of access a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ingest,
    Read,
    Proxy,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Proxy => "proxy",
            Scope::Admin => "admin",
        }
    }
}

/// One configured token (`[[auth.tokens]]`). Its `Debug` form leaves the token out.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (logged, never the token itself).
    pub name: String,
    /// The bearer token (at least 16 characters); may be left out when `client_cert` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    pub scopes: Vec<Scope>,
    /// A URI (e.g. a SPIFFE ID) or DNS name in the subject alternative names of a verified
    /// client certificate: a client presenting it needs no bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// `proxy`: the services it may read priorities of and register as; `ingest`: the
    /// services it may send spans of (others are rejected). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// `ingest`: the trace classes its spans may claim. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// The tenant the token acts for: its requests belong to it, and an `X-Scope-OrgID`
    /// naming another is refused. None: the header's tenant (or `single`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("services", &self.services)
            .field("classes", &self.classes)
            .field("tenant", &self.tenant)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

/// A file of tokens (`--auth-tokens-file`): `[[tokens]]` entries as in `[[auth.tokens]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenConfig>,
}

/// Reads the `[[tokens]]` of a tokens file.
pub fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading tokens file {}: {e}", path.display()))?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| {
        format!(
            "parsing tokens file {}: {}",
            path.display(),
            toml_error(&text, &e)
        )
    })?;
    Ok(file.tokens)
}

/// A TOML error without the quoted source line (which may hold a token): its message and line.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!("{} (line {line})", e.message())
        }
        None => e.message().to_string(),
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Any one of these scopes will do (admin always does).
    pub scopes: &'static [Scope],
    /// Without tokens configured, only loopback clients may do this.
    pub loopback_only: bool,
}

impl Access {
    pub const INGEST: Access = Access::of(&[Scope::Ingest]);
    pub const READ: Access = Access::of(&[Scope::Read]);
    pub const ADMIN: Access = Access {
        scopes: &[],
        loopback_only: true,
    };

    pub const fn of(scopes: &'static [Scope]) -> Access {
        Access {
            scopes,
            loopback_only: false,
        }
    }

    /// The same scopes, for loopback clients only when no tokens are configured.
    pub const fn loopback_only(self) -> Access {
        Access {
            loopback_only: true,
            ..self
        }
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    /// The holder of a configured token.
    Token(Arc<TokenConfig>),
    /// Anyone: no tokens are configured.
    Anonymous,
}

impl Caller {
    /// The token's name, for messages and logs.
    pub fn name(&self) -> &str {
        match self {
            Caller::Token(t) => &t.name,
            Caller::Anonymous => "anonymous",
        }
    }

    /// Whether this caller may act for `service` under `scope` (a token's `services` bind
    /// it; admins and anonymous callers may act for any).
    pub fn may_act_for(&self, scope: Scope, service: &str) -> bool {
        match self {
            Caller::Token(t) if !t.scopes.contains(&Scope::Admin) && t.scopes.contains(&scope) => {
                t.services.is_empty() || t.services.iter().any(|s| s == service)
            }
            _ => true,
        }
    }

    /// Whether spans from this caller may claim `class` (see [`TokenConfig::classes`]).
    pub fn may_claim_class(&self, class: &str) -> bool {
        match self {
            Caller::Token(t) => t.classes.is_empty() || t.classes.iter().any(|c| c == class),
            Caller::Anonymous => true,
        }
    }
}

/// Applies what an ingest token may speak for to a decoded batch: spans of services outside
/// its `services` are rejected (named in the partial success), and class claims outside its
/// `classes` are removed (counted in [`Batch::stripped`]), so the trace is classified by the
/// rules instead. Every span is stamped with the token's name as its sender (`set_sender`);
/// anonymous callers (no tokens configured) may claim anything and name no sender.
pub fn police(caller: &Caller, batch: &mut Batch) {
    let Caller::Token(token) = caller else {
        for span in &mut batch.spans {
            batch.restamped += u64::from(set_sender(span, None));
        }
        return;
    };
    if !token.services.is_empty() {
        let spans = std::mem::take(&mut batch.spans);
        for span in spans {
            if token.services.contains(&span.service_name) {
                batch.spans.push(span);
            } else {
                let at = format!("span {}", hex::encode(span.span_id));
                let problem = format!(
                    "token {:?} may not send spans of service {:?}",
                    token.name, span.service_name
                );
                batch.reject(RejectReason::ServiceNotAllowed, at, problem);
            }
        }
    }
    for span in &mut batch.spans {
        batch.restamped += u64::from(set_sender(span, Some(&token.name)));
    }
    if !token.classes.is_empty() {
        for span in &mut batch.spans {
            let allowed = |class: &str| token.classes.iter().any(|c| c == class);
            batch.stripped += u64::from(strip_class_claims(span, allowed));
        }
    }
}

/// Handlers behind [`require`] take the caller as an argument; without the middleware (no
/// caller recorded) it is [`Caller::Anonymous`].
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Caller, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous))
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The `X-Scope-OrgID` header is not a tenant identifier.
    #[error("{0}")]
    BadTenant(String),
}

impl AuthError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AuthError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            AuthError::BadTenant(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn grpc_status(&self) -> tonic::Status {
        match self {
            AuthError::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            AuthError::PermissionDenied(m) => tonic::Status::permission_denied(m.clone()),
            AuthError::BadTenant(m) => tonic::Status::invalid_argument(m.clone()),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Bearer realm=\"meshtrace\"");
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The configured tokens. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Arc<[Arc<TokenConfig>]>,
}

impl Auth {
    /// Checks the tokens: names non-empty, every entry with a scope and a token or a client
    /// certificate name, tokens at least 16 characters and distinct, certificate names
    /// distinct.
    pub fn new(tokens: Vec<TokenConfig>) -> Result<Auth, String> {
        for (i, t) in tokens.iter().enumerate() {
            if t.name.is_empty() || t.scopes.is_empty() {
                return Err(format!("auth token #{} needs a name and scopes", i + 1));
            }
            let cert = t.client_cert.as_deref();
            if cert.is_some_and(str::is_empty) || (t.token.is_empty() && cert.is_none()) {
                return Err(format!(
                    "auth token {:?} needs a token or a client_cert",
                    t.name
                ));
            }
            if !t.token.is_empty() && t.token.chars().count() < 16 {
                return Err(format!(
                    "auth token {:?} is shorter than 16 characters",
                    t.name
                ));
            }
            if !t.token.is_empty() && tokens[..i].iter().any(|o| o.token == t.token) {
                return Err(format!("auth token {:?} repeats another token", t.name));
            }
            if cert.is_some() && tokens[..i].iter().any(|o| o.client_cert.as_deref() == cert) {
                return Err(format!(
                    "auth token {:?} repeats another entry's client_cert",
                    t.name
                ));
            }
            if let Some(Err(e)) = t.tenant.as_deref().map(TenantId::parse) {
                return Err(format!("auth token {:?}: {e}", t.name));
            }
        }
        Ok(Auth {
            tokens: tokens.into_iter().map(Arc::new).collect(),
        })
    }

    /// Whether tokens are configured (and so required).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether some entry names a client certificate (which needs `[tls] client_ca`).
    pub fn uses_client_certs(&self) -> bool {
        self.tokens.iter().any(|t| t.client_cert.is_some())
    }

    /// The entry whose `client_cert` is among a verified certificate's names.
    fn find_cert(&self, names: &[String]) -> Option<Arc<TokenConfig>> {
        self.tokens
            .iter()
            .find(|t| {
                t.client_cert
                    .as_deref()
                    .is_some_and(|want| names.iter().any(|n| n == want))
            })
            .cloned()
    }

    /// The token an `Authorization: Bearer` value names, compared in constant time with every
    /// configured token.
    fn find(&self, presented: &[u8]) -> Option<Arc<TokenConfig>> {
        let mut found = None;
        for t in self.tokens.iter().filter(|t| !t.token.is_empty()) {
            if bool::from(t.token.as_bytes().ct_eq(presented)) {
                found = Some(t.clone());
            }
        }
        found
    }

    /// Decides one request from its `Authorization` header and its peer (its address, and
    /// the names of its verified client certificate when there is no header).
    pub fn authorize(
        &self,
        authorization: Option<&HeaderValue>,
        peer: &Peer,
        access: Access,
    ) -> Result<Caller, AuthError> {
        if !self.enabled() {
            // `::ffff:127.0.0.1` when an IPv6 socket accepts IPv4.
            let loopback = peer.ip().is_some_and(|ip| ip.to_canonical().is_loopback());
            if access.loopback_only && !loopback {
                return Err(AuthError::PermissionDenied(
                    "no auth tokens are configured, so this endpoint only serves loopback \
                     clients; configure [[auth.tokens]] to use it remotely"
                        .into(),
                ));
            }
            return Ok(Caller::Anonymous);
        }
        let needed = || {
            let mut names: Vec<&str> = access.scopes.iter().map(|s| s.as_str()).collect();
            names.push("admin");
            names.join(" or ")
        };
        let token = match authorization {
            Some(value) => self.bearer(value)?,
            None => self.find_cert(&peer.cert_names).ok_or_else(|| {
                AuthError::Unauthenticated(format!(
                    "missing bearer token: send Authorization: Bearer <token> with scope {}",
                    needed()
                ))
            })?,
        };
        let granted = token.scopes.contains(&Scope::Admin)
            || access.scopes.iter().any(|s| token.scopes.contains(s));
        if !granted {
            return Err(AuthError::PermissionDenied(format!(
                "token {:?} lacks scope {}",
                token.name,
                needed()
            )));
        }
        Ok(Caller::Token(token))
    }
}

impl Auth {
    /// The entry an `Authorization: Bearer` value names.
    fn bearer(&self, value: &HeaderValue) -> Result<Arc<TokenConfig>, AuthError> {
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or_else(|| {
                AuthError::Unauthenticated("the Authorization header must be Bearer <token>".into())
            })?;
        self.find(presented.trim_ascii())
            .ok_or_else(|| AuthError::Unauthenticated("unknown bearer token".into()))
    }
}

/// The tenant a request acts for: the one its token binds, else the one its `X-Scope-OrgID`
/// header names, else [`TenantId::SINGLE`]. A header naming another tenant than the token's
/// is refused (403), a malformed one is 400.
pub fn tenant_of(caller: &Caller, header: Option<&[u8]>) -> Result<TenantId, AuthError> {
    let named = match header {
        None => None,
        Some(raw) => {
            let text = std::str::from_utf8(raw)
                .map_err(|_| AuthError::BadTenant("X-Scope-OrgID is not UTF-8".into()))?;
            Some(TenantId::parse(text.trim()).map_err(AuthError::BadTenant)?)
        }
    };
    let bound = match caller {
        Caller::Token(t) => t.tenant.as_deref(),
        Caller::Anonymous => None,
    };
    match (bound, named) {
        (Some(own), Some(named)) if own != named.as_str() => {
            Err(AuthError::PermissionDenied(format!(
                "token {:?} acts for tenant {own:?}, not {:?}",
                caller.name(),
                named.as_str()
            )))
        }
        // Checked when the tokens were read.
        (Some(own), _) => TenantId::parse(own).map_err(AuthError::BadTenant),
        (None, named) => Ok(named.unwrap_or_default()),
    }
}

/// The tenant header of a request, if any.
pub fn tenant_header(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(TENANT_HEADER).map(HeaderValue::as_bytes)
}

/// The state of [`require`]: the tokens and which access each request needs (`None`: open).
#[derive(Clone)]
pub struct Guard {
    pub auth: Auth,
    pub access: fn(&http::Method, &str) -> Option<Access>,
}

/// The middleware: refuses what the caller may not do, else serves it with the [`Caller`] and
/// its [`TenantId`] (see [`tenant_of`]) in the request's extensions. Open requests (no
/// access needed: health, the dashboard's files) belong to the default tenant whatever they
/// name, so that no one opens a tenant or reads its state without a say from the tokens.
pub async fn require(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let peer = Peer::of(request.extensions());
    let decided = match (guard.access)(request.method(), request.uri().path()) {
        None => Ok((Caller::Anonymous, TenantId::single())),
        Some(access) => guard
            .auth
            .authorize(authorization(request.headers()), &peer, access)
            .and_then(|caller| {
                let tenant = tenant_of(&caller, tenant_header(request.headers()))?;
                Ok((caller, tenant))
            }),
    };
    match decided {
        Ok((caller, tenant)) => {
            request.extensions_mut().insert(caller);
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        Err(e) => {
            let peer = peer.addr;
            tracing::debug!(path = request.uri().path(), ?peer, error = %e, "request refused");
            e.into_response()
        }
    }
}

/// Handlers behind [`require`] take the tenant as an argument; without the middleware it is
/// [`TenantId::SINGLE`].
pub struct Tenant(pub TenantId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Tenant {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Tenant, Self::Rejection> {
        Ok(Tenant(
            parts
                .extensions
                .get::<TenantId>()
                .cloned()
                .unwrap_or_default(),
        ))
    }
}

/// The `Authorization` header, if any.
pub fn authorization(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(AUTHORIZATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, token: &str, scopes: &[Scope]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            token: token.into(),
            scopes: scopes.to_vec(),
            services: vec![],
            classes: vec![],
            tenant: None,
            client_cert: None,
        }
    }

    fn bearer(t: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    #[test]
    fn scopes_decide_and_errors_name_what_is_missing() {
        let auth = Auth::new(vec![
            token("collector", "ingest-token-0123456789", &[Scope::Ingest]),
            token("ops", "admin-token-0123456789", &[Scope::Admin]),
        ])
        .unwrap();
        let remote = &Peer::at("10.0.0.7".parse().unwrap());
        let ingest = bearer("ingest-token-0123456789");
        assert!(auth
            .authorize(Some(&ingest), remote, Access::INGEST)
            .is_ok());
        let e = auth
            .authorize(Some(&ingest), remote, Access::READ)
            .unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert!(e.to_string().contains("lacks scope read or admin"), "{e}");
        let admin = bearer("admin-token-0123456789");
        assert!(auth.authorize(Some(&admin), remote, Access::READ).is_ok());
        let e = auth.authorize(None, remote, Access::READ).unwrap_err();
        assert_eq!(e.http_status(), 401);
        let wrong = bearer("ingest-token-012345678");
        let e = auth
            .authorize(Some(&wrong), remote, Access::INGEST)
            .unwrap_err();
        assert_eq!(e, AuthError::Unauthenticated("unknown bearer token".into()));
    }

    #[test]
    fn without_tokens_only_loopback_may_do_loopback_only_things() {
        let auth = Auth::default();
        let remote = &Peer::at("192.168.1.9".parse().unwrap());
        let local = &Peer::at("127.0.0.1".parse().unwrap());
        assert!(auth.authorize(None, remote, Access::READ).is_ok());
        assert!(auth.authorize(None, local, Access::ADMIN).is_ok());
        let e = auth.authorize(None, remote, Access::ADMIN).unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert!(auth
            .authorize(None, &Peer::default(), Access::ADMIN)
            .is_err());
    }

    #[test]
    fn weak_or_repeated_tokens_are_refused() {
        assert!(Auth::new(vec![token("a", "short", &[Scope::Read])]).is_err());
        let t = "a-long-enough-token-here";
        let two = vec![
            token("a", t, &[Scope::Read]),
            token("b", t, &[Scope::Admin]),
        ];
        assert!(Auth::new(two).unwrap_err().contains("repeats"));
        assert!(Auth::new(vec![token("a", t, &[])]).is_err());
    }

    #[test]
    fn a_malformed_tokens_file_is_reported_without_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let secret = "s3cret-token-value-0123";
        std::fs::write(
            &path,
            format!("[[tokens]]\nname = \"a\"\ntoken = \"{secret}\\q\"\n"),
        )
        .unwrap();
        let e = read_tokens_file(&path).unwrap_err();
        assert!(!e.contains(secret), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn a_proxy_token_acts_only_for_its_services() {
        let mut t = token("reviews-sidecar", "proxy-token-0123456789", &[Scope::Proxy]);
        t.services = vec!["reviews".into()];
        let caller = Caller::Token(Arc::new(t));
        assert!(caller.may_act_for(Scope::Proxy, "reviews"));
        assert!(!caller.may_act_for(Scope::Proxy, "ratings"));
        assert!(Caller::Anonymous.may_act_for(Scope::Proxy, "ratings"));
    }

    #[test]
    fn a_token_binds_its_tenant_and_the_header_names_the_others() {
        let anonymous = Caller::Anonymous;
        assert!(tenant_of(&anonymous, None).unwrap().is_single());
        assert_eq!(
            tenant_of(&anonymous, Some(b"acme")).unwrap().as_str(),
            "acme"
        );
        let e = tenant_of(&anonymous, Some(b"../x")).unwrap_err();
        assert_eq!(e.http_status(), 400);
        let mut t = token(
            "acme-collector",
            "ingest-token-0123456789",
            &[Scope::Ingest],
        );
        t.tenant = Some("acme".into());
        let bound = Caller::Token(Arc::new(t));
        assert_eq!(tenant_of(&bound, None).unwrap().as_str(), "acme");
        assert_eq!(tenant_of(&bound, Some(b"acme")).unwrap().as_str(), "acme");
        let e = tenant_of(&bound, Some(b"globex")).unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert!(e.to_string().contains("acts for tenant \"acme\""), "{e}");
    }

    #[test]
    fn a_verified_certificate_name_stands_for_its_entry() {
        let mut sidecar = token("reviews-sidecar", "", &[Scope::Proxy]);
        sidecar.client_cert = Some("spiffe://mesh.test/ns/default/sa/reviews".into());
        let auth = Auth::new(vec![
            sidecar,
            token("collector", "ingest-token-0123456789", &[Scope::Ingest]),
        ])
        .unwrap();
        let with_cert = |names: &[&str]| Peer {
            addr: None,
            cert_names: names.iter().map(|n| n.to_string()).collect(),
        };
        let reviews = with_cert(&["spiffe://mesh.test/ns/default/sa/reviews"]);
        let proxy = Access::of(&[Scope::Proxy]);
        let caller = auth.authorize(None, &reviews, proxy).unwrap();
        assert_eq!(caller.name(), "reviews-sidecar");
        let e = auth.authorize(None, &reviews, Access::READ).unwrap_err();
        assert_eq!(e.http_status(), 403);
        let other = with_cert(&["spiffe://mesh.test/ns/default/sa/ratings"]);
        let e = auth.authorize(None, &other, proxy).unwrap_err();
        assert_eq!(e.http_status(), 401);
        // A bearer token decides when sent; an empty one names no certificate-only entry.
        let ingest = bearer("ingest-token-0123456789");
        let e = auth.authorize(Some(&ingest), &reviews, proxy).unwrap_err();
        assert_eq!(e.http_status(), 403);
        let empty = HeaderValue::from_static("Bearer ");
        let e = auth.authorize(Some(&empty), &reviews, proxy).unwrap_err();
        assert_eq!(e.http_status(), 401);
        assert!(Auth::new(vec![token("nothing", "", &[Scope::Read])]).is_err());
    }
}
