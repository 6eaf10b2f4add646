//! The web console end to end, in a real headless Chromium driven over WebDriver
//! (chromedriver) against the real broker: log in, upload a CA from a PEM file, see a
//! device (rumqttc over mTLS) connect on the devices page, disable the CA and see the
//! session end, ask the console why the device is now refused, find the refusal on the
//! recent-refusals page, and log out. Screenshots are kept under
//! `target/console-screenshots/`.
//!
//! Chromium and chromedriver are required (Debian: `apt-get install chromium
//! chromium-driver`, which `.ci/run` does): without them this test fails, it does not
//! skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const TENANT_PW: &str = "acme-pw-1";

/// Everything this test binary logged (the console's secrets must not be in it).
fn logs() -> &'static Mutex<Vec<u8>> {
    captured_logs("debug,rumqttd=off,hyper=off,h2=off,rustls=off,hyper_util=off")
}

/// chromedriver on a loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Starts chromedriver on a free loopback port and waits until it answers.
async fn start_driver() -> Driver {
    let Some(driver) = find_program(&["chromedriver"]) else {
        panic!("chromedriver not found in PATH: the console test needs Chromium and its WebDriver (Debian: apt-get install -y chromium chromium-driver; .ci/run installs them)");
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d
}

/// A headless Chromium session. The broker's self-signed certificate is accepted for
/// this browser session only (`acceptInsecureCerts`).
async fn browser(driver: &Driver) -> Client {
    let Some(chromium) = find_program(&["chromium", "chromium-browser", "google-chrome"]) else {
        panic!("Chromium not found in PATH: the console test needs it (Debian: apt-get install -y chromium chromium-driver; .ci/run installs them)");
    };
    let mut args = vec![
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--no-first-run",
    ];
    if rustix::process::geteuid().is_root() {
        args.push("--no-sandbox");
    }
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {"binary": chromium, "args": args},
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session from chromedriver")
}

/// Where screenshots go: `<target>/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

/// Waits until the elements matching `css` hold one whose text satisfies `ok`; on
/// timeout, keeps a screenshot and fails naming what it saw.
async fn wait_text(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        seen.clear();
        if let Ok(els) = c.find_all(Locator::Css(css)).await {
            for e in els {
                if let Ok(t) = e.text().await {
                    if ok(&t) {
                        return t;
                    }
                    seen.push(t);
                }
            }
        }
        if Instant::now() > deadline {
            screenshot(c, &format!("failed-{}", what.replace(' ', "-"))).await;
            let message = c
                .find(Locator::Id("message"))
                .await
                .ok()
                .map(|m| async move { m.text().await.unwrap_or_default() });
            let message = match message {
                Some(f) => f.await,
                None => String::new(),
            };
            panic!("waiting for {what} in {css}: saw {seen:?}; status line {message:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_runs_the_console_in_a_real_browser() {
    logs();
    let started = Instant::now();
    let env = start().await;
    env.tenant("acme").await;
    let driver = start_driver().await;
    let c = browser(&driver).await;
    let result = scenario(&env, &c).await;
    let _ = c.close().await;
    drop(driver);
    let secrets = result;
    // No console secret reached the log: not the session token, not the CSRF token,
    // not the password typed into the form.
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(text.contains("console login"), "the login is logged");
    for (what, secret) in [
        ("session token", &secrets.token),
        ("CSRF token", &secrets.csrf),
        ("password", &TENANT_PW.to_string()),
    ] {
        assert!(!text.contains(secret.as_str()), "the {what} is in the log");
    }
    println!("console browser test: {:?}", started.elapsed());
}

struct Secrets {
    token: String,
    csrf: String,
}

async fn scenario(env: &Env, c: &Client) -> Secrets {
    let base = format!("https://127.0.0.1:{}", env.broker().admin_addr.port());
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Acme Devices CA");
    let ca_file = dir.path().join("acme-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let dev = device("sensor-1", &ca);

    // Log in.
    c.goto(&format!("{base}/console/")).await.unwrap();
    wait_text(c, "#login-view h2", "login form", |t| t == "Log in").await;
    screenshot(c, "01-login").await;
    type_into(c, "#login-tenant", "acme").await;
    type_into(c, "#login-user", "admin").await;
    type_into(c, "#login-password", "not the password").await;
    click(c, "#login-submit").await;
    wait_text(c, "#message", "refused login", |t| {
        t == "Invalid credentials"
    })
    .await;
    c.find(Locator::Css("#login-password"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    type_into(c, "#login-password", TENANT_PW).await;
    click(c, "#login-submit").await;
    wait_text(c, "#who-name", "logged-in user", |t| t == "acme/admin").await;
    wait_text(c, "#page h2", "certificates page", |t| {
        t == "Trusted certificates"
    })
    .await;

    // The session cookie is HttpOnly (the page's script cannot read it), Secure and
    // SameSite=Strict.
    let cookies = c.get_all_cookies().await.unwrap();
    let cookie = cookies
        .iter()
        .find(|k| k.name() == admin_api::console::session::COOKIE_NAME)
        .expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict")
    );
    let token = cookie.value().to_string();
    let visible = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(visible, json!(""), "the script sees no cookie");
    let csrf = c
        .execute("return state.csrf", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 43);

    // Upload the CA from a PEM file.
    type_into(c, "#upload-file", ca_file.to_str().unwrap()).await;
    type_into(c, "#upload-name", "Acme CA").await;
    click(c, "#upload-submit").await;
    wait_text(c, "#message", "upload confirmation", |t| {
        t == "Certificate uploaded."
    })
    .await;
    let row = wait_text(c, "tr[data-fingerprint]", "uploaded certificate", |t| {
        t.contains("Acme CA") && t.contains("ENABLED") && t.contains("CN=Acme Devices CA")
    })
    .await;
    assert!(row.contains("1 (to its root)"), "{row}");
    screenshot(c, "02-certificate-uploaded").await;

    // A device registered under a name crafted to run script in the console.
    let crafted = "<img src=x onerror=window.pwned=1>";
    let (st, b) = env
        .as_tenant(
            "acme",
            reqwest::Method::POST,
            "/tenant/tenants/acme/devices",
            Some(json!({"commonName": crafted})),
        )
        .await;
    assert_eq!(st, 201, "{b}");

    // A device connects over mTLS; the devices page shows it connected.
    let tls = device_tls(&env.server_ca, &dev, &[]);
    let (_client, el) = connect_v5(v5_options("sensor-1", env.mqtt_port(), tls.clone()))
        .await
        .expect("the device connects once its CA is trusted");
    let ended = watch_v5(el);
    c.goto(&format!("{base}/console/#devices")).await.unwrap();
    wait_text(
        c,
        "tr[data-cn=\"sensor-1\"] td.connected",
        "device connected",
        |t| t == "connected",
    )
    .await;
    let row = wait_text(c, "tr[data-cn=\"sensor-1\"]", "device row", |t| {
        t.contains("REGISTERED")
    })
    .await;
    assert!(row.contains("from 127.0.0.1"), "{row}");
    // The crafted name is shown as text and ran nothing.
    wait_text(c, "#devices-table td.mono", "crafted name", |t| {
        t == crafted
    })
    .await;
    let injected = c
        .execute(
            "return [document.querySelectorAll('#page img').length, typeof window.pwned]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        json!([0, "undefined"]),
        "markup from a device name ran"
    );
    screenshot(c, "03-device-connected").await;

    // The CA is disabled from its page: the broker ends the device's session and the
    // devices page shows it disconnected.
    c.goto(&format!("{base}/console/#certificates"))
        .await
        .unwrap();
    wait_text(
        c,
        "tr[data-fingerprint] button.toggle-status",
        "Disable button",
        |t| t == "Disable",
    )
    .await;
    click(c, "tr[data-fingerprint] button.toggle-status").await;
    wait_text(
        c,
        "tr[data-fingerprint] td.status",
        "disabled status",
        |t| t == "DISABLED",
    )
    .await;
    let reason = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the session ends once the CA is disabled")
        .unwrap();
    assert_eq!(
        reason,
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NotAuthorized),
        "MQTT 5 is told why"
    );
    c.goto(&format!("{base}/console/#devices")).await.unwrap();
    wait_text(
        c,
        "tr[data-cn=\"sensor-1\"] td.connected",
        "device disconnected",
        |t| t == "disconnected",
    )
    .await;
    screenshot(c, "04-device-disconnected").await;

    // It tries again and is refused at the handshake: the refusals page shows it.
    assert!(
        connect_v5(v5_options("sensor-1", env.mqtt_port(), tls))
            .await
            .is_err(),
        "refused with its CA disabled"
    );
    c.goto(&format!("{base}/console/#refusals")).await.unwrap();
    let refusal = wait_text(c, "#refusals-holder tr", "refusal row", |t| {
        t.contains("CN=sensor-1")
    })
    .await;
    assert!(refusal.contains("127.0.0.1"), "{refusal}");
    screenshot(c, "05-refusals").await;

    // Expiring certificates: the CA (valid 30 days) is in the 30-day window, with its
    // days left; not in a 7-day one.
    c.goto(&format!("{base}/console/#expiring")).await.unwrap();
    let row = wait_text(c, "#page table tbody tr", "expiring row", |t| {
        t.contains("Acme Devices CA")
    })
    .await;
    assert!(row.contains("trusted certificate"), "{row}");
    assert!(row.contains("29 days") || row.contains("30 days"), "{row}");
    c.find(Locator::Css("#expiring-days option[value='7']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "#page", "empty 7-day window", |t| {
        t.contains("Nothing expires within 7 days.")
    })
    .await;

    // "Why is this device refused?" with the device's certificate pasted.
    c.goto(&format!("{base}/console/#why")).await.unwrap();
    type_into(c, "#why-chain", &dev.cert_pem()).await;
    click(c, "#why-submit").await;
    wait_text(c, "#why-verdict", "verdict", |t| t == "Refused").await;
    let reason = wait_text(c, "#why-reason", "reason", |t| !t.is_empty()).await;
    // The same reason the broker logged and the refusals page shows.
    let api = env.refusals("acme").await;
    let latest = &api[0];
    assert_eq!(latest["subject"], "CN=sensor-1", "{api:?}");
    assert!(
        refusal.contains(latest["reason"].as_str().unwrap()),
        "{refusal} / {api:?}"
    );
    assert!(reason.to_lowercase().contains("disabled"), "{reason}");
    screenshot(c, "06-why-refused").await;

    // Log out: the login form again, and the old cookie is dead.
    click(c, "#logout").await;
    wait_text(c, "#login-view h2", "login form after logout", |t| {
        t == "Log in"
    })
    .await;
    let resp = env
        .http
        .get(format!("{}/tenant/tenants/acme", env.base))
        .header(
            "cookie",
            format!("{}={token}", admin_api::console::session::COOKIE_NAME),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the session ended at logout");
    screenshot(c, "07-logged-out").await;

    // The management admin sees the tenants and their limits, and opens one.
    env.settings_as_management("acme", json!({"maxDevices": 25, "maxAnchors": 3}))
        .await;
    for field in ["#login-tenant", "#login-user"] {
        c.find(Locator::Css(field))
            .await
            .unwrap()
            .clear()
            .await
            .unwrap();
    }
    type_into(c, "#login-tenant", "management").await;
    type_into(c, "#login-user", "admin").await;
    type_into(c, "#login-password", ADMIN_PW).await;
    click(c, "#login-submit").await;
    wait_text(c, "#who-name", "management user", |t| {
        t == "management/admin"
    })
    .await;
    let row = wait_text(c, "tr[data-tenant=\"acme\"]", "tenant row", |t| {
        t.contains("acme")
    })
    .await;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.windows(2).any(|w| w == ["25", "3"]),
        "maxDevices 25 and maxAnchors 3 shown: {row}"
    );
    screenshot(c, "08-tenants").await;
    click(c, "tr[data-tenant=\"acme\"] button").await;
    wait_text(
        c,
        "tr[data-fingerprint]",
        "acme's certificate as management",
        |t| t.contains("Acme CA") && t.contains("DISABLED"),
    )
    .await;
    screenshot(c, "09-management-opens-acme").await;
    Secrets { token, csrf }
}
