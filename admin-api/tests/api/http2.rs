//! HTTP/2 (prior knowledge, as the broker's TLS listener negotiates with ALPN): a body
//! over the limit is answered 413 with the JSON error, as over HTTP/1.1, not with a bare
//! stream reset. Uses the `curl` CLI (nghttp2) as the client.

use crate::common::*;

/// Serves `admin`'s router as the broker's admin listener does (hyper-util's automatic
/// HTTP/1.1 / HTTP/2 connection builder), over plain TCP; returns the base URL.
async fn serve_like_the_broker(admin: &admin_api::Admin) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = admin.router();
    tokio::spawn(async move {
        while let Ok((sock, peer)) = listener.accept().await {
            let router = router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(sock);
                let svc = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(io, svc)
                .await;
            });
        }
    });
    base
}

/// POSTs `body_len` bytes of JSON with curl over HTTP/2 (or HTTP/1.1); returns curl's
/// exit code, the status and the body.
async fn curl_post(base: &str, http2: bool, body_len: usize) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    let body = format!("{{\"certInPemFormat\": \"{}\"}}", "A".repeat(body_len));
    std::fs::write(&file, body).unwrap();
    let out = tokio::process::Command::new("curl")
        .arg(if http2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        })
        .args(["-sSv", "-o", "-", "-w", "\n%{http_code}", "-u"])
        .arg(format!("{}:{}", MGMT.0, MGMT.1))
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "{base}/tenant/tenants/management/trusted-certificates"
        ))
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        out.status.code().unwrap_or(-1),
        code.to_string(),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_body_is_413_over_http2_as_over_http1() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_body_bytes = 4 * 1024;
    let s = start_with(cfg).await;
    let base = serve_like_the_broker(&s.admin).await;
    for http2 in [true, false] {
        // Past the limit, and past HTTP/2's initial 64 KiB stream window.
        // A few times each: without the drain, curl's upload and the server's reset
        // race, and curl loses the 413 most of the time, not every time.
        for len in [
            8 * 1024,
            512 * 1024,
            512 * 1024,
            512 * 1024,
            512 * 1024,
            512 * 1024,
        ] {
            let (rc, code, out) = curl_post(&base, http2, len).await;
            assert_eq!(code, "413", "http2 {http2}, {len} bytes: curl {rc}: {out}");
            assert!(
                out.starts_with(
                    r#"{"error":"payload_too_large","message":"The request body is larger than the limit"#
                ),
                "http2 {http2}, {len} bytes: {out}"
            );
        }
    }
}
