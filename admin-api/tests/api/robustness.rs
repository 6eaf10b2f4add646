//! Robustness in the spirit of schemathesis: the OpenAPI document is well formed, every
//! documented operation answers with a documented status, and hostile input (garbage
//! JSON and PEM, huge bodies, odd methods, random bytes) gets a JSON 4xx, never a 5xx.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let path = reference.strip_prefix("#/")?;
    path.split('/').try_fold(doc, |v, seg| v.get(seg))
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                collect_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Every (method, path template, operation) of the document, deletes last.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.clone(), path.clone(), op.clone()));
        }
    }
    let rank = |m: &str| {
        ["get", "post", "put", "delete"]
            .iter()
            .position(|x| *x == m)
            .unwrap_or(9)
    };
    ops.sort_by_key(|(m, p, _)| (rank(m), p.clone()));
    ops
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (st, doc) = s.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["basic"]["scheme"],
        "basic"
    );

    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in &refs {
        assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
    }

    let ops = operations(&doc);
    let mut ids = HashSet::new();
    for (method, path, op) in &ops {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
        let declared: HashSet<&str> = op["parameters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let in_template: HashSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(declared, in_template, "{method} {path}: path parameters");
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}"
        );
        assert!(
            op["responses"]["401"].is_object(),
            "{method} {path} documents 401"
        );
        // Every change can meet a full store.
        if method != "get" && path != "/tenant/trusted-certificates/verify-cert-chain" {
            assert_eq!(
                op["responses"]["507"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} documents 507"
            );
        }
    }
    // Every resource of the issue is documented.
    let documented: HashSet<(String, String)> =
        ops.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    for (m, p) in [
        ("post", "/tenant/tenants"),
        ("get", "/tenant/tenants"),
        ("put", "/tenant/tenants/{tenant_id}"),
        ("post", "/user/{tenant_id}/users"),
        ("delete", "/user/{tenant_id}/users/{user_name}"),
        ("post", "/tenant/tenants/{tenant_id}/trusted-certificates"),
        (
            "post",
            "/tenant/tenants/{tenant_id}/trusted-certificates/bulk",
        ),
        (
            "put",
            "/tenant/tenants/{tenant_id}/trusted-certificates/{fingerprint}",
        ),
        (
            "post",
            "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/verification-code",
        ),
        (
            "post",
            "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/pop",
        ),
        ("put", "/tenant/trusted-certificates/settings/crl"),
        ("get", "/tenant/trusted-certificates/settings/crl"),
        ("post", "/tenant/tenants/{tenant_id}/crls"),
        ("post", "/tenant/trusted-certificates/verify-cert-chain"),
        ("get", "/tenant/tenants/{tenant_id}/devices"),
        ("post", "/tenant/tenants/{tenant_id}/devices"),
        (
            "delete",
            "/tenant/tenants/{tenant_id}/devices/{common_name}",
        ),
        ("put", "/system/ssl-certificate"),
        ("get", "/audit"),
    ] {
        assert!(
            documented.contains(&(m.to_string(), p.to_string())),
            "{m} {p} is not documented"
        );
    }
}

/// Sends one request for an operation with fixture values and a body of the kind the
/// operation takes.
async fn call(
    s: &Server,
    method: &str,
    path: &str,
    op: &Value,
    auth: Option<Creds<'_>>,
    fp: &str,
) -> reqwest::Response {
    let tenant = if method == "delete" && path == "/tenant/tenants/{tenant_id}" {
        "gone"
    } else {
        "fx"
    };
    let url = path
        .replace("{tenant_id}", tenant)
        .replace("{fingerprint}", fp)
        .replace("{user_name}", "helper")
        .replace("{common_name}", "dev-1");
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut rb = s.client.request(method, s.url(&url));
    if let Some((u, p)) = auth {
        rb = rb.basic_auth(u, Some(p));
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        rb = if content.contains_key("application/json") {
            rb.json(&json!({}))
        } else if content.contains_key("multipart/form-data") {
            rb.multipart(reqwest::multipart::Form::new().text("name", "only a name"))
        } else {
            rb.body("not what you expected")
        };
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (_, doc) = s.send(Method::GET, "/openapi.json", None, None).await;
    let login = s.tenant("fx").await;
    s.tenant("gone").await;
    let root = ca("Fixture CA");
    let fp = s.trust("fx", &login, &root, true).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    s.post(
        "/user/fx/users",
        MGMT,
        &json!({"userName": "helper", "password": "helper-pass", "roles": ["ROLE_TENANT_READ"]}),
    )
    .await;
    s.post(
        "/tenant/tenants/fx/devices",
        MGMT,
        &json!({"commonName": "dev-1"}),
    )
    .await;

    let ops = operations(&doc);
    assert!(ops.len() >= 30, "{} operations", ops.len());
    for (method, path, op) in &ops {
        let documented: HashSet<String> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for auth in [None, Some(MGMT), Some((login.as_str(), TENANT_PASS))] {
            let resp = call(&s, method, path, op, auth, &fp).await;
            let status = resp.status();
            assert!(
                documented.contains(status.as_str()),
                "{method} {path} as {auth:?} answered {status}, documented {documented:?}: {}",
                resp.text().await.unwrap()
            );
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let declared = &op["responses"][status.as_str()]["content"];
            if let Some(content) = declared.as_object() {
                assert!(
                    content.keys().any(|k| ctype.starts_with(k.as_str())),
                    "{method} {path} answered {status} as {ctype:?}, documented {:?}",
                    content.keys().collect::<Vec<_>>()
                );
            }
            if !status.is_success() {
                let body: Value = resp.json().await.unwrap();
                assert!(
                    body["error"].is_string() && body["message"].is_string(),
                    "{body}"
                );
                // The document says object; `null` would violate it.
                assert!(body["info"].is_object(), "{method} {path}: {body}");
            }
        }
    }
}

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
    fn json(&mut self, depth: u32) -> Value {
        match self.next() % if depth > 3 { 5 } else { 7 } {
            0 => Value::Null,
            1 => json!(self.next() % 2 == 0),
            2 => json!(self.next() as i64),
            3 => json!(self
                .pick(&[
                    "",
                    "true",
                    "ENABLED",
                    "ÄÖÜ 漢字 🚀",
                    "\u{0}\u{202e}",
                    "-----BEGIN CERTIFICATE-----",
                    "%00%ff",
                    "../../etc/passwd"
                ])
                .to_string()),
            4 => json!("x".repeat((self.next() % 3000) as usize)),
            5 => Value::Array((0..self.next() % 4).map(|_| self.json(depth + 1)).collect()),
            _ => {
                let keys = [
                    "name",
                    "status",
                    "autoRegistrationEnabled",
                    "certInPemFormat",
                    "certificates",
                    "crls",
                    "serialNumberInHex",
                    "commonName",
                    "userName",
                    "password",
                    "roles",
                    "company",
                    "id",
                    "adminName",
                    "adminPass",
                    "settings",
                    "maxChainLength",
                    "proofOfPossessionSignedVerificationCode",
                    "junk",
                ];
                let mut m = serde_json::Map::new();
                for _ in 0..self.next() % 6 {
                    m.insert(self.pick(&keys).to_string(), self.json(depth + 1));
                }
                Value::Object(m)
            }
        }
    }
}

#[tokio::test]
async fn random_and_hostile_input_never_gets_a_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (_, doc) = s.send(Method::GET, "/openapi.json", None, None).await;
    let login = s.tenant("fx").await;
    let fp = s.trust("fx", &login, &ca("Fuzz CA"), true).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let ops = operations(&doc);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let long = "f".repeat(500);
    let params: [&str; 9] = [
        "fx",
        "management",
        "nope",
        "ÄÖÜ",
        "%25",
        "a%2Fb",
        "..",
        &fp,
        &long,
    ];
    for round in 0..6 {
        for (method, path, _) in &ops {
            if method == "delete" && path == "/tenant/tenants/{tenant_id}" {
                continue;
            }
            let mut url = path.clone();
            for p in [
                "{tenant_id}",
                "{fingerprint}",
                "{user_name}",
                "{common_name}",
            ] {
                url = url.replace(p, rng.pick::<&str>(&params));
            }
            if rng.next() % 3 == 0 {
                url.push_str(rng.pick::<&str>(&[
                    "?pageSize=0",
                    "?pageSize=abc",
                    "?currentPage=-1",
                    "?pageSize=99999",
                    "?tenant=%FF",
                ]));
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut rb = s.client.request(m, s.url(&url)).basic_auth(
                if round % 2 == 0 { MGMT.0 } else { &login },
                Some(if round % 2 == 0 { MGMT.1 } else { TENANT_PASS }),
            );
            rb = match rng.next() % 4 {
                0 => rb.json(&rng.json(0)),
                1 => rb.header("content-type", "application/json").body(
                    (0..rng.next() % 200)
                        .map(|_| rng.next() as u8)
                        .collect::<Vec<u8>>(),
                ),
                2 => rb
                    .header("content-type", "application/json")
                    .body("{\"name\": "),
                _ => rb.body(rng.json(0).to_string()),
            };
            let resp = rb.send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert!(!status.is_server_error(), "{method} {url}: {status} {text}");
            if !status.is_success() {
                let body: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{method} {url}: not JSON: {text}"));
                assert!(
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn malformed_requests_get_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let path = s.url("/tenant/tenants/t1/trusted-certificates");
    let login = login.as_str();
    let send = |rb: reqwest::RequestBuilder| async move {
        let r = rb
            .basic_auth(login, Some(TENANT_PASS))
            .send()
            .await
            .unwrap();
        let st = r.status();
        (st, r.json::<Value>().await.unwrap())
    };

    let (st, b) = send(
        s.client
            .post(&path)
            .header("content-type", "application/json")
            .body("{\"name\": "),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to parse the request body as JSON"),
        "{b}"
    );
    let (st, b) = send(
        s.client
            .post(&path)
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        b["message"],
        "Expected request with `Content-Type: application/json`"
    );
    let (st, b) = send(s.client.post(&path).json(&json!({"certInPemFormat": 42}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("invalid type: integer `42`, expected a string"),
        "{b}"
    );
    let nested = "[".repeat(10_000) + &"]".repeat(10_000);
    let (st, _) = send(
        s.client
            .post(&path)
            .header("content-type", "application/json")
            .body(nested),
    )
    .await;
    assert!(st.is_client_error(), "{st}");

    // 10 MB body.
    let big = format!(
        "{{\"certInPemFormat\": \"{}\"}}",
        "A".repeat(10 * 1024 * 1024)
    );
    let (st, b) = send(
        s.client
            .post(&path)
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .starts_with("The request body is larger than the limit"),
        "{b}"
    );

    let (st, b) = send(s.client.get(s.url("/no/such/thing"))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(b["message"], "No such resource: GET /no/such/thing");
    let r = s
        .client
        .patch(s.url("/tenant/tenants"))
        .basic_auth(MGMT.0, Some(MGMT.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers().contains_key("allow"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b["message"],
        "Method PATCH is not allowed on /tenant/tenants"
    );
    assert_eq!(b["error"], "method_not_allowed");

    let (st, b) = send(s.client.get(format!("{path}?pageSize=0"))).await;
    assert_eq!(
        (st, b["message"].as_str().unwrap()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "pageSize must be between 1 and 2000"
        )
    );
    let (st, b) = send(s.client.get(format!("{path}?pageSize=abc"))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(b["message"].as_str().unwrap().contains("pageSize"), "{b}");
    for page in ["0", "1000001", "2147483648", "-1"] {
        let (st, b) = send(s.client.get(format!("{path}?currentPage={page}"))).await;
        assert_eq!(
            (st, b["message"].as_str().unwrap()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "currentPage must be between 1 and 1000000"
            ),
            "currentPage={page}"
        );
    }

    let nul = send(
        s.client
            .post(&path)
            .json(&json!({"name": "a\u{0}b", "certInPemFormat": ca("N").cert_pem()})),
    )
    .await;
    assert_error(
        &nul,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name must not contain control or invisible formatting characters",
    );
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let mut c = admin_api::AdminConfig::new("/tmp/x");
    c.admin_password = Some("hunter2-secret".into());
    let d = format!("{c:?}");
    assert!(
        !d.contains("hunter2-secret") && d.contains("<redacted>"),
        "{d}"
    );
}

/// The schema of `name` in the document (following `$ref`s and `allOf`).
fn property<'a>(doc: &'a Value, schema: &str, name: &str) -> &'a Value {
    &doc["components"]["schemas"][schema]["properties"][name]
}

#[tokio::test]
async fn the_document_declares_what_the_handlers_enforce() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (_, doc) = s.send(Method::GET, "/openapi.json", None, None).await;

    // Error bodies: info is an object, never null.
    assert_eq!(property(&doc, "ErrorBody", "info")["type"], "object");
    assert_eq!(
        doc["components"]["schemas"]["ErrorBody"]["required"],
        json!(["error", "message", "info"])
    );
    let (st, b) = s.get("/tenant/tenants/none", MGMT).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(b["info"], json!({}), "{b}");

    // Lengths, patterns, ranges, minItems.
    let pass = property(&doc, "NewTenant", "adminPass");
    assert_eq!(
        (&pass["minLength"], &pass["maxLength"]),
        (&json!(8), &json!(256))
    );
    let id = property(&doc, "NewTenant", "id");
    assert_eq!(
        (&id["minLength"], &id["maxLength"]),
        (&json!(1), &json!(32))
    );
    assert_eq!(id["pattern"], "^[a-z0-9][a-z0-9_-]*$");
    assert_eq!(property(&doc, "NewTenant", "company")["maxLength"], 256);
    assert_eq!(property(&doc, "NewUser", "userName")["maxLength"], 64);
    assert_eq!(property(&doc, "NewUser", "roles")["minItems"], 1);
    assert_eq!(property(&doc, "BulkUpload", "certificates")["minItems"], 1);
    assert_eq!(property(&doc, "RevocationList", "crls")["minItems"], 1);
    assert_eq!(property(&doc, "NewDevice", "commonName")["maxLength"], 64);
    let chain = property(&doc, "SettingsPatch", "maxChainLength");
    assert_eq!(
        (&chain["minimum"], &chain["maximum"]),
        (&json!(2), &json!(10))
    );
    assert_eq!(
        property(&doc, "SettingsPatch", "maxDevices")["maximum"],
        100_000_000
    );
    let params = doc["paths"]["/audit"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let size = params.iter().find(|p| p["name"] == "pageSize").unwrap();
    assert_eq!(
        (&size["schema"]["minimum"], &size["schema"]["maximum"]),
        (&json!(1), &json!(2000))
    );

    // Bodies a generic client can produce.
    let crl = &doc["paths"]["/tenant/tenants/{tenant_id}/crls"]["post"]["requestBody"]["content"];
    for binary in ["application/pkix-crl", "application/octet-stream"] {
        assert_eq!(
            (
                &crl[binary]["schema"]["type"],
                &crl[binary]["schema"]["format"]
            ),
            (&json!("string"), &json!("binary")),
            "{binary}"
        );
    }
    assert_eq!(crl["application/x-pem-file"]["schema"]["type"], "string");
    assert!(crl["multipart/form-data"].is_object());
    let verify = &doc["paths"]["/tenant/trusted-certificates/verify-cert-chain"]["post"]
        ["requestBody"]["content"];
    assert_eq!(verify["text/plain"]["schema"]["type"], "string");
    let get_crl = &doc["paths"]["/tenant/trusted-certificates/settings/crl"]["get"]["responses"]
        ["200"]["content"]["application/pkix-crl"]["schema"];
    assert_eq!(
        (&get_crl["type"], &get_crl["format"]),
        (&json!("string"), &json!("binary"))
    );

    // Statuses every authenticated operation can meet, with Retry-After where it applies.
    for (method, path, op) in operations(&doc) {
        for status in ["400", "401", "429", "500", "503"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} documents {status}"
            );
        }
        assert!(
            op["responses"]["429"]["headers"]["Retry-After"].is_object(),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn unknown_query_parameters_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("fx").await;
    let cases = [
        (
            "/audit?pageSize=2&pagesize=3",
            "Unknown query parameter 'pagesize': GET /audit takes only pageSize, currentPage, tenant",
        ),
        (
            "/tenant/tenants/fx?verbose=1",
            "Unknown query parameter 'verbose': GET /tenant/tenants/{tenant_id} takes no query parameters",
        ),
        (
            "/tenant/tenants/fx/devices?page%20size=3",
            "Unknown query parameter 'page size': GET /tenant/tenants/{tenant_id}/devices takes only pageSize, currentPage",
        ),
    ];
    for (path, message) in cases {
        let got = s.get(path, MGMT).await;
        assert_error(&got, StatusCode::BAD_REQUEST, message);
    }
    // POST too, before the body is read.
    let got = s
        .post("/tenant/tenants?dryRun=true", MGMT, &json!({}))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "Unknown query parameter 'dryRun': POST /tenant/tenants takes no query parameters",
    );
    // Declared names, also percent-encoded, and an empty pair are fine.
    let (st, b) = s
        .get("/audit?page%53ize=2&&currentPage=1&tenant=fx", MGMT)
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["statistics"]["pageSize"], 2);
}

#[tokio::test]
async fn integers_may_carry_a_zero_fraction_and_names_are_limited_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("fx").await;
    // JSON Schema's integer includes 4.0.
    let (st, b) = s
        .put(
            "/tenant/tenants/fx/settings",
            MGMT,
            &json!({"maxChainLength": 4.0, "maxDevices": 10.0}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(
        (b["maxChainLength"].clone(), b["maxDevices"].clone()),
        (json!(4), json!(10))
    );
    let got = s
        .put(
            "/tenant/tenants/fx/settings",
            MGMT,
            &json!({"maxChainLength": 4.5}),
        )
        .await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Failed to deserialize the JSON body into the target type: maxChainLength: expected an integer, got 4.5 at line 1 column 22",
    );
    // maxLength counts what is sent: trailing blanks included.
    let long = format!("a{}", " ".repeat(256));
    let got = s
        .put("/tenant/tenants/fx", MGMT, &json!({"company": long}))
        .await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "company must be at most 256 characters",
    );
    let (st, b) = s
        .put("/tenant/tenants/fx", MGMT, &json!({"company": " Fx Inc "}))
        .await;
    assert_eq!(
        (st, b["company"].clone()),
        (StatusCode::OK, json!("Fx Inc"))
    );
}

#[tokio::test]
async fn a_crl_form_has_exactly_its_file_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("fx").await;
    let upload = |form: reqwest::multipart::Form| {
        let req = s
            .client
            .post(s.url("/tenant/tenants/fx/crls"))
            .basic_auth(&login, Some(TENANT_PASS))
            .multipart(form);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    // Any other field is refused by name, as the document's additionalProperties: false says.
    let form = reqwest::multipart::Form::new().text("crl", "x");
    assert_error(
        &upload(form).await,
        StatusCode::BAD_REQUEST,
        "Unknown multipart field 'crl': expected file",
    );
    // An empty file is the empty body's 422.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(Vec::new()).file_name("ca.crl"),
    );
    assert_error(
        &upload(form).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "The request body is empty: send the CRL (PEM or DER)",
    );
}
