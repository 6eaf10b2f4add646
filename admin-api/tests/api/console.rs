//! The web console over a real socket, as an attacker would probe it: the login (same
//! users, passwords and failed-login limits as Basic), the session cookie's attributes,
//! CSRF on every change authenticated by the cookie, the tenant boundary, logout,
//! expiry, a password change or deletion ending sessions, and the security headers.

use std::time::Duration;

use admin_api::console::session::COOKIE_NAME;
use admin_api::error::{CSRF_TOKEN_MISSING, CSRF_TOKEN_WRONG, SESSION_ENDED};
use admin_api::store::AuditEntry;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// A logged-in console session: its cookie value and CSRF token.
struct Session {
    token: String,
    csrf: String,
}

async fn login_raw(s: &Server, tenant: &str, user: &str, password: &str) -> reqwest::Response {
    s.client
        .post(s.url("/console/api/login"))
        .json(&json!({"tenant": tenant, "user": user, "password": password}))
        .send()
        .await
        .expect("login request")
}

async fn login(s: &Server, tenant: &str, user: &str, password: &str) -> Session {
    let resp = login_raw(s, tenant, user, password).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    let token = cookie
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix(&format!("{COOKIE_NAME}=")))
        .expect("the session cookie")
        .to_string();
    Session {
        token,
        csrf: body["csrfToken"].as_str().unwrap().to_string(),
    }
}

impl Session {
    /// A read with the session cookie.
    async fn get(&self, s: &Server, path: &str) -> (StatusCode, Value, header::HeaderMap) {
        with_cookie(s, Method::GET, path, self, None, None).await
    }

    /// A change with the session cookie and its own CSRF token.
    async fn change(
        &self,
        s: &Server,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value, header::HeaderMap) {
        with_cookie(s, method, path, self, Some(&self.csrf), body).await
    }
}

/// A request authenticated by the session cookie only, with `csrf` as `X-CSRF-Token`.
async fn with_cookie(
    s: &Server,
    method: Method,
    path: &str,
    session: &Session,
    csrf: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value, header::HeaderMap) {
    let mut rb = s
        .client
        .request(method, s.url(path))
        .header(header::COOKIE, format!("{COOKIE_NAME}={}", session.token));
    if let Some(c) = csrf {
        rb = rb.header("X-CSRF-Token", c);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let resp = rb.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value, headers)
}

#[tokio::test]
async fn the_pages_carry_the_security_headers_and_call_no_other_origin() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    for (path, content_type) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
    ] {
        let resp = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{path}");
        let text = resp.text().await.unwrap();
        // No third-party call: no absolute URL anywhere in the page, its script or style.
        assert!(!text.contains("://"), "{path} names another origin");
        if path == "/console/" {
            // Scripts only from files (the policy would block an inline one anyway).
            assert_eq!(text.matches("<script").count(), 1, "{text}");
            assert!(text.contains(r#"<script src="/console/app.js" defer></script>"#));
            assert!(text.contains(r#"id="login-form""#));
        }
    }
    // The login answer carries them too.
    let resp = login_raw(&s, "management", "admin", "wrong").await;
    assert_eq!(resp.headers()[header::X_FRAME_OPTIONS], "DENY");
    // /console leads to /console/.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(s.url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.headers()[header::LOCATION], "/console/");
    s.stop().await;
}

#[tokio::test]
async fn a_login_sets_a_hardened_cookie_that_authenticates_like_basic() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("a").await;
    let resp = login_raw(&s, "a", "admin", TENANT_PASS).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let attrs: Vec<&str> = cookie.split("; ").collect();
    assert!(attrs[0].starts_with(&format!("{COOKIE_NAME}=")), "{cookie}");
    for a in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&a), "{a} missing: {cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["tenant"], "a");
    assert_eq!(body["user"], "admin");
    assert_eq!(body["management"], false);
    assert_eq!(body["roles"], json!(["ROLE_TENANT_ADMIN"]));
    let token = attrs[0].split_once('=').unwrap().1;
    // 256 random bits, base64url.
    assert_eq!(token.len(), 43, "{token}");
    let csrf = body["csrfToken"].as_str().unwrap();
    assert_eq!(csrf.len(), 43);
    assert_ne!(token, csrf);
    assert!(
        !body.to_string().contains(token),
        "the token is in the cookie only"
    );

    let session = Session {
        token: token.to_string(),
        csrf: csrf.to_string(),
    };
    let (st, b, _) = session.get(&s, "/tenant/tenants/a/devices").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // A reloaded page gets its CSRF token back.
    let (st, b, _) = session.get(&s, "/console/api/session").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["csrfToken"], csrf);
    // Two logins, two sessions.
    let other = login(&s, "a", "admin", TENANT_PASS).await;
    assert_ne!(other.token, session.token);
    assert_ne!(other.csrf, session.csrf);
    assert_eq!(session.get(&s, "/tenant/tenants/a").await.0, StatusCode::OK);
    // A login from a browser that holds a session replaces that session.
    let resp = s
        .client
        .post(s.url("/console/api/login"))
        .header(header::COOKIE, format!("{COOKIE_NAME}={}", session.token))
        .json(&json!({"tenant": "a", "user": "admin", "password": TENANT_PASS}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        session.get(&s, "/tenant/tenants/a").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(other.get(&s, "/tenant/tenants/a").await.0, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_counts_like_a_basic_failure() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("a").await;
    let resp = login_raw(&s, "a", "admin", "wrong password").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    // No Basic challenge: a browser would answer it with its own password prompt.
    assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "Invalid credentials");
    let resp = login_raw(&s, "a", "nobody", TENANT_PASS).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The test configuration locks a name after 3 failures from one source: the
    // console's failures and Basic's count together, and the lock holds for both.
    let (st, _) = s.get("/tenant/tenants/a", ("a/admin", "wrong again")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let resp = login_raw(&s, "a", "admin", "third wrong").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = login_raw(&s, "a", "admin", TENANT_PASS).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get(header::RETRY_AFTER).is_some());
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let (st, _) = s.get("/tenant/tenants/a", ("a/admin", TENANT_PASS)).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    // After the lockout the right password opens a session again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    login(&s, "a", "admin", TENANT_PASS).await;
    s.stop().await;
}

#[tokio::test]
async fn a_login_must_be_json_so_a_cross_site_form_cannot_log_anyone_in() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
        let resp = s
            .client
            .post(s.url("/console/api/login"))
            .header(header::CONTENT_TYPE, content_type)
            .body(format!(
                r#"{{"tenant":"management","user":"admin","password":"{ADMIN_PASS}"}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
        assert!(resp.headers().get(header::SET_COOKIE).is_none());
    }
    s.stop().await;
}

#[tokio::test]
async fn a_change_by_cookie_needs_the_sessions_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("a").await;
    let session = login(&s, "a", "admin", TENANT_PASS).await;
    let other = login(&s, "a", "admin", TENANT_PASS).await;
    let device = json!({"commonName": "dev-1"});
    let path = "/tenant/tenants/a/devices";

    let (st, b, _) = with_cookie(&s, Method::POST, path, &session, None, Some(&device)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["error"], "csrf_token_missing");
    assert_eq!(b["message"], CSRF_TOKEN_MISSING);
    let mut wrong = session.csrf.clone();
    wrong.replace_range(0..1, if wrong.starts_with('A') { "B" } else { "A" });
    for bad in [
        wrong.as_str(),
        "",
        other.csrf.as_str(),
        session.token.as_str(),
    ] {
        let (st, b, _) =
            with_cookie(&s, Method::POST, path, &session, Some(bad), Some(&device)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{bad:?}: {b}");
        assert_eq!(b["error"], "csrf_token_invalid");
        assert_eq!(b["message"], CSRF_TOKEN_WRONG);
    }
    // Nothing was created by the refused requests.
    let (st, _) = s
        .get("/tenant/tenants/a/devices/dev-1", ("a/admin", TENANT_PASS))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // The classic cross-site form: a text/plain POST of a chain, and a DELETE and PUT.
    let resp = s
        .client
        .post(s.url("/tenant/trusted-certificates/verify-cert-chain"))
        .header(header::COOKIE, format!("{COOKIE_NAME}={}", session.token))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(ca("X").cert_pem())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    for (method, p, body) in [
        (Method::DELETE, "/tenant/tenants/a/devices/dev-2", None),
        (
            Method::PUT,
            "/tenant/tenants/a/settings",
            Some(json!({"maxDevices": 1})),
        ),
    ] {
        let (st, b, _) = with_cookie(&s, method, p, &session, None, body.as_ref()).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{p}: {b}");
    }
    // With its own token the same change goes through.
    let (st, b, _) = session.change(&s, Method::POST, path, Some(&device)).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    // Reads need no token.
    let (st, b, _) = session.get(&s, path).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["devices"][0]["commonName"], "dev-1");
    s.stop().await;
}

#[tokio::test]
async fn tenant_as_console_session_cannot_read_or_change_tenant_b() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("a").await;
    s.tenant("b").await;
    let b_login = "b/admin";
    let (st, _) = s
        .post(
            "/tenant/tenants/b/devices",
            (b_login, TENANT_PASS),
            &json!({"commonName": "b-dev"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let _b_online = s
        .admin
        .device_online("b", "b-dev", "192.0.2.7".parse().unwrap());
    let a = login(&s, "a", "admin", TENANT_PASS).await;
    for path in [
        "/tenant/tenants/b",
        "/tenant/tenants/b/devices",
        "/tenant/tenants/b/devices/b-dev",
        "/tenant/tenants/b/trusted-certificates",
        "/tenant/tenants/b/refusals",
        "/tenant/tenants/b/connections",
        "/user/b/users",
    ] {
        let (st, b, _) = a.get(&s, path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {b}");
        assert_eq!(b["message"], "Tenant b not found", "{path}");
    }
    let (st, b, _) = a
        .change(
            &s,
            Method::PUT,
            "/tenant/tenants/b/devices/b-dev",
            Some(&json!({"status": "BLOCKED"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{b}");
    let (_, b) = s
        .get("/tenant/tenants/b/devices/b-dev", (b_login, TENANT_PASS))
        .await;
    assert_eq!(b["status"], "REGISTERED");
    // Management-only operations stay management-only.
    let (st, b, _) = a
        .change(
            &s,
            Method::POST,
            "/tenant/tenants",
            Some(
                &json!({"id": "c", "company": "c", "adminName": "admin", "adminPass": TENANT_PASS}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    // The audit log is a's only.
    let (st, b, _) = a.get(&s, "/audit?tenant=b&pageSize=100").await;
    assert_eq!(st, StatusCode::OK);
    let records = b["auditRecords"].as_array().unwrap();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r["tenant"] == "a"), "{b}");
    s.stop().await;
}

#[tokio::test]
async fn refusals_and_connections_are_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("a").await;
    s.tenant("b").await;
    let refusal = |reason: &str| admin_api::live::HandshakeRefusal {
        reason: reason.into(),
        detail: format!("{reason}: in words"),
        subject: "CN=dev-9".into(),
        fingerprint: "ab".repeat(20),
        source: "198.51.100.4".parse().unwrap(),
    };
    s.admin.record_refusal("a", refusal("unknown_ca"));
    s.admin.record_refusal("a", refusal("unknown_ca"));
    s.admin.record_refusal("a,b", refusal("ambiguous_tenant"));
    s.admin.record_refusal("gone", refusal("unknown_ca"));
    let online = s
        .admin
        .device_online("a", "dev-1", "198.51.100.5".parse().unwrap());
    let a = login(&s, "a", "admin", TENANT_PASS).await;
    let (st, body, _) = a.get(&s, "/tenant/tenants/a/refusals").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let r = body["refusals"].as_array().unwrap();
    assert_eq!(r.len(), 2, "{body}");
    assert_eq!(r[0]["reason"], "ambiguous_tenant");
    assert_eq!(r[1]["reason"], "unknown_ca");
    assert_eq!(r[1]["count"], 2);
    assert_eq!(r[1]["subject"], "CN=dev-9");
    assert_eq!(r[1]["source"], "198.51.100.4");
    assert_eq!(r[1]["fingerprint"], "ab".repeat(20));
    assert!(r[1]["time"].as_str().unwrap().ends_with('Z'));
    let (_, body) = s
        .get("/tenant/tenants/b/refusals", ("b/admin", TENANT_PASS))
        .await;
    assert_eq!(body["refusals"].as_array().unwrap().len(), 1, "{body}");
    let (_, body, _) = a.get(&s, "/tenant/tenants/a/connections").await;
    assert_eq!(body["connections"][0]["commonName"], "dev-1", "{body}");
    assert_eq!(body["connections"][0]["source"], "198.51.100.5");
    let (_, body) = s
        .get("/tenant/tenants/b/connections", ("b/admin", TENANT_PASS))
        .await;
    assert_eq!(body["connections"], json!([]));
    drop(online);
    let (_, body, _) = a.get(&s, "/tenant/tenants/a/connections").await;
    assert_eq!(body["connections"], json!([]), "disconnected");
    s.stop().await;
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let session = login(&s, "management", "admin", ADMIN_PASS).await;
    let (st, b, _) = with_cookie(
        &s,
        Method::POST,
        "/console/api/logout",
        &session,
        None,
        None,
    )
    .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "logout needs the CSRF token too: {b}"
    );
    let (st, _, h) = session
        .change(&s, Method::POST, "/console/api/logout", None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let cleared = h[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with(&format!("{COOKIE_NAME}=;")),
        "{cleared}"
    );
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    for path in ["/tenant/tenants", "/console/api/session"] {
        let (st, b, h) = session.get(&s, path).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(b["error"], "session_ended");
        assert_eq!(b["message"], SESSION_ENDED);
        // No Basic prompt in the browser: the console shows its own login form.
        assert!(h.get(header::WWW_AUTHENTICATE).is_none(), "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_absolute_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.console_idle_timeout = Duration::from_millis(400);
    cfg.console_session_lifetime = Duration::from_millis(1500);
    let s = start_with(cfg).await;
    let idle = login(&s, "management", "admin", ADMIN_PASS).await;
    let busy = login(&s, "management", "admin", ADMIN_PASS).await;
    let get = |sess| with_cookie(&s, Method::GET, "/tenant/tenants", sess, None, None);
    // Used every 200 ms, a session outlives its idle timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(&busy).await.0, StatusCode::OK);
    }
    // ...while one left alone ends.
    assert_eq!(get(&idle).await.0, StatusCode::UNAUTHORIZED);
    // Still used, the busy one ends at its absolute lifetime.
    let mut ended_after = None;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if get(&busy).await.0 == StatusCode::UNAUTHORIZED {
            ended_after = Some(i);
            break;
        }
    }
    assert!(
        ended_after.is_some(),
        "the lifetime did not end the session"
    );
    // Ended for good: a later request does not revive it.
    assert_eq!(get(&busy).await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn a_password_change_or_the_users_deletion_ends_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login_name = s.tenant("a").await;
    for user in ["bob", "carol"] {
        let (st, b) = s
            .post(
                "/user/a/users",
                (&login_name, TENANT_PASS),
                &json!({"userName": user, "password": "user-pass-1", "roles": ["ROLE_TENANT_ADMIN"]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
    }
    let bob = login(&s, "a", "bob", "user-pass-1").await;
    let carol = login(&s, "a", "carol", "user-pass-1").await;
    let get = |sess| with_cookie(&s, Method::GET, "/tenant/tenants/a", sess, None, None);
    assert_eq!(get(&bob).await.0, StatusCode::OK);
    assert_eq!(get(&carol).await.0, StatusCode::OK);
    // Bob's password changes in the store (as another node would change it).
    let hash = admin_api::PasswordHashing {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    }
    .hash("new-pass-22")
    .unwrap();
    s.admin
        .store()
        .set_password(
            "a",
            "bob",
            hash,
            AuditEntry::new("test", Some("a"), "PASSWORD_RESET").target("bob"),
        )
        .await
        .unwrap();
    let (st, b, _) = get(&bob).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{b}");
    assert_eq!(b["message"], SESSION_ENDED);
    login(&s, "a", "bob", "new-pass-22").await;
    // Carol is deleted.
    let (st, _) = s
        .delete("/user/a/users/carol", (&login_name, TENANT_PASS))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(get(&carol).await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn basic_clients_are_unaffected_and_a_cookie_never_adds_rights() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login_name = s.tenant("a").await;
    let session = login(&s, "a", "admin", TENANT_PASS).await;
    // Basic credentials and a cookie: Basic decides, no CSRF token needed.
    let resp = s
        .client
        .post(s.url("/tenant/tenants/a/devices"))
        .basic_auth(&login_name, Some(TENANT_PASS))
        .header(header::COOKIE, format!("{COOKIE_NAME}={}", session.token))
        .json(&json!({"commonName": "basic-dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Wrong Basic credentials are not rescued by a valid cookie.
    let resp = s
        .client
        .get(s.url("/tenant/tenants/a"))
        .basic_auth(&login_name, Some("wrong"))
        .header(header::COOKIE, format!("{COOKIE_NAME}={}", session.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A forged or stale cookie authenticates nothing.
    let forged = Session {
        token: "A".repeat(43),
        csrf: session.csrf.clone(),
    };
    let (st, b, h) = forged
        .change(&s, Method::GET, "/tenant/tenants/a", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(b["error"], "session_ended");
    assert!(h.get(header::WWW_AUTHENTICATE).is_none());
    // Without any credentials the API answers as before (Basic challenge).
    let resp = s
        .client
        .get(s.url("/tenant/tenants/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_some());
    // The console's script (X-CSRF-Token, no cookie) gets no Basic challenge.
    let resp = s
        .client
        .get(s.url("/tenant/tenants/a"))
        .header("X-CSRF-Token", "")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());
    // A read-only user's session reads but does not change, as with Basic.
    let (st, _) = s
        .post(
            "/user/a/users",
            (&login_name, TENANT_PASS),
            &json!({"userName": "reader", "password": "reader-pass-1", "roles": ["ROLE_TENANT_READ"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let reader = login(&s, "a", "reader", "reader-pass-1").await;
    let (st, _, _) = reader.get(&s, "/tenant/tenants/a/devices").await;
    assert_eq!(st, StatusCode::OK);
    let (st, b, _) = reader
        .change(
            &s,
            Method::POST,
            "/tenant/tenants/a/devices",
            Some(&json!({"commonName": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(
        b["message"],
        "This operation requires the role ROLE_TENANT_ADMIN"
    );
    s.stop().await;
}
