//! The web console for tenant admins at `/console/`: static pages compiled into the
//! binary (plain HTML, CSS and JavaScript; no third-party request leaves the page), a
//! login that opens a cookie session, and the REST API called by the page's script.
//!
//! A console session authenticates a REST request exactly as Basic credentials of the
//! same user would (the tenant boundary is the [`Principal`]'s, unchanged), with two
//! additions: a request that changes something must carry the session's CSRF token in
//! `X-CSRF-Token`, and a failed session answers 401 without `WWW-Authenticate`, so the
//! browser shows the console's login form rather than its own password prompt. A request
//! with an `Authorization` header is a Basic request, whatever cookie it carries.

pub mod session;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::routes::JsonBody;
use crate::Admin;
use session::{SessionRefused, COOKIE_NAME, CSRF_HEADER};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The Content-Security-Policy of every console response: the page's own script and
/// style only (no inline script, no other origin), no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The console's routes (pages and session endpoints), with their security headers.
pub(crate) fn routes() -> Router<Admin> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/app.css", get(app_css))
        .route("/console/api/login", post(login))
        .route("/console/api/logout", post(logout))
        .route("/console/api/session", get(current))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Adds the console's security headers to every answer of its routes.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The session cookie's value in a request, if it carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
}

/// True for the methods that change something (everything but GET, HEAD, OPTIONS).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

/// Whether a request without credentials comes from the console's script (it always
/// sends `X-CSRF-Token`, empty before login): then its 401 must not ask the browser
/// for Basic credentials.
pub(crate) fn from_console(headers: &HeaderMap) -> bool {
    headers.contains_key(CSRF_HEADER)
}

impl From<SessionRefused> for ApiError {
    fn from(r: SessionRefused) -> Self {
        match r {
            SessionRefused::Ended => ApiError::SessionEnded,
            SessionRefused::CsrfMissing => ApiError::CsrfTokenMissing,
            SessionRefused::CsrfWrong => ApiError::CsrfTokenWrong,
        }
    }
}

impl Admin {
    /// The caller of a request authenticated by a console session cookie: the session
    /// must be live, carry the CSRF token when the request changes something, and its
    /// user must still exist with the password it logged in with (read from the store,
    /// so a change on another node counts too).
    pub(crate) async fn session_principal(
        &self,
        token: &str,
        changes_state: bool,
        csrf: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let sessions = &self.inner.sessions;
        let (info, tag) = sessions.check(token, changes_state, csrf)?;
        let record = self.store().user(&info.tenant, &info.user).await?;
        match record {
            Some(r) if sessions.confirm(token, tag, Some(&r.password_hash)) => Ok(Principal {
                tenant: r.tenant,
                user: r.user_name,
                roles: r.roles,
            }),
            _ => {
                sessions.confirm(token, tag, None);
                Err(ApiError::SessionEnded)
            }
        }
    }

    /// Ends every console session of a user (deleted, or its password changed). A
    /// session also ends at its next request when the store no longer has its user or
    /// password, so this only frees the memory sooner.
    pub(crate) fn end_console_sessions(&self, tenant: &str, user: &str) {
        self.inner.sessions.end_user(tenant, user);
    }
}

/// Console login.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleLogin {
    /// The tenant id.
    #[schema(min_length = 1, max_length = 64)]
    pub tenant: String,
    /// The user name.
    #[schema(min_length = 1, max_length = 64)]
    pub user: String,
    /// The password.
    #[schema(min_length = 1, max_length = 256)]
    pub password: String,
}

impl std::fmt::Debug for ConsoleLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleLogin")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A console session, as the page needs it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleSession {
    /// The user's tenant.
    pub tenant: String,
    /// The user name.
    pub user: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// True for the management tenant (it sees every tenant).
    pub management: bool,
    /// The token to send in `X-CSRF-Token` with every request that changes something.
    pub csrf_token: String,
    /// The session ends after this many seconds without a request.
    pub idle_timeout_seconds: u64,
    /// The session ends in this many seconds whatever happens.
    pub expires_in_seconds: u64,
}

impl std::fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSession")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("csrf_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn view(admin: &Admin, who: &Principal, csrf: String, expires_in: u64) -> ConsoleSession {
    ConsoleSession {
        tenant: who.tenant.clone(),
        user: who.user.clone(),
        roles: who.roles.iter().map(|r| r.as_str().to_string()).collect(),
        management: who.is_management(),
        csrf_token: csrf,
        idle_timeout_seconds: admin.inner.sessions.idle().as_secs(),
        expires_in_seconds: expires_in,
    }
}

fn set_cookie(value: &str, clear: bool) -> HeaderValue {
    let tail = if clear { "; Max-Age=0" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{tail}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// Logs in with a user's tenant, name and password (the same users, passwords and
/// failed-login limits as Basic authentication) and opens a console session. A JSON
/// body is required: a cross-site form cannot send one without the browser asking this
/// server first, which it never allows.
#[utoipa::path(post, path = "/console/api/login", tag = "console",
    request_body = ConsoleLogin,
    responses(
        (status = 200, description = "Logged in: the session cookie is set (HttpOnly; Secure; SameSite=Strict)", body = ConsoleSession),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn login(
    State(admin): State<Admin>,
    connect: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ConsoleLogin>,
) -> Result<Response, ApiError> {
    let too_long = |v: &str, max: usize| v.is_empty() || v.chars().count() > max;
    if too_long(&body.tenant, 64) || too_long(&body.user, 64) || too_long(&body.password, 256) {
        return Err(ApiError::unprocessable(
            "tenant and user must be 1 to 64 characters, password 1 to 256",
        ));
    }
    let source = connect.map(|c| c.0 .0.ip());
    let who = admin
        .authenticate(&body.tenant, &body.user, &body.password, source)
        .await
        .map_err(|e| match e {
            ApiError::Unauthorized(m) => ApiError::LoginFailed(m),
            other => other,
        })?;
    // The hash the password was just checked against: a later change ends the session.
    let record = admin
        .store()
        .user(&who.tenant, &who.user)
        .await?
        .ok_or(ApiError::SessionEnded)?;
    // A new login replaces the browser's previous session rather than leaving it live.
    if let Some(old) = session_cookie(&headers) {
        admin.inner.sessions.end(&old);
    }
    let new = admin
        .inner
        .sessions
        .create(&who.tenant, &who.user, &record.password_hash);
    tracing::info!(tenant = %who.tenant, user = %who.user, "console login");
    let lifetime = admin.inner.sessions.lifetime().as_secs();
    let mut resp = axum::Json(view(&admin, &who, new.csrf, lifetime)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&new.token, false));
    Ok(resp)
}

/// The current console session (after a page reload): who, and its CSRF token.
#[utoipa::path(get, path = "/console/api/session", tag = "console",
    responses(
        (status = 200, body = ConsoleSession),
        (status = 401, description = "No live session (never opened, logged out, expired, or the user's password changed)", body = ErrorBody)),
    security(("console" = [])))]
pub async fn current(State(admin): State<Admin>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = session_cookie(&headers).ok_or(ApiError::SessionEnded)?;
    let who = admin.session_principal(&token, false, None).await?;
    let sessions = &admin.inner.sessions;
    let (info, _) = sessions.check(&token, false, None)?;
    let csrf = sessions.csrf(&token).ok_or(ApiError::SessionEnded)?;
    Ok(axum::Json(view(&admin, &who, csrf, info.expires_in)).into_response())
}

/// Ends the console session (needs its CSRF token, like every change).
#[utoipa::path(post, path = "/console/api/logout", tag = "console",
    params(("X-CSRF-Token" = String, Header, description = "The session's CSRF token")),
    responses(
        (status = 204, description = "Logged out; the cookie is cleared"),
        (status = 401, body = ErrorBody), (status = 403, description = "CSRF token missing or wrong", body = ErrorBody)),
    security(("console" = [])))]
pub async fn logout(State(admin): State<Admin>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = session_cookie(&headers).ok_or(ApiError::SessionEnded)?;
    let who = admin
        .session_principal(&token, true, csrf_header(&headers))
        .await?;
    admin.inner.sessions.end(&token);
    tracing::info!(tenant = %who.tenant, user = %who.user, "console logout");
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", true));
    Ok(resp)
}
