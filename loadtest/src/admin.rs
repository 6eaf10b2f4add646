//! The product's admin API, as far as a load test needs it: create a tenant, upload its CA,
//! and enable or disable that CA.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use crate::config::is_loopback;
use crate::error::chain;
use crate::Error;

/// A client of the admin API pinned to a loopback address.
#[derive(Clone)]
pub(crate) struct Admin {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

/// Checks that the admin URL points at loopback and returns the address to pin it to.
pub(crate) fn resolve_admin_url(url: &str) -> Result<(Url, SocketAddr), Error> {
    let parsed =
        Url::parse(url).map_err(|e| Error::Config(format!("--admin {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "--admin {url:?} must be an http:// or https:// URL"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::Config(format!("--admin {url:?} has no host")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| Error::Config(format!("--admin {url:?} has no port")))?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::Resolve {
                what: "--admin",
                value: url.to_string(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(Error::NotLoopback {
            what: "--admin",
            value: url.to_string(),
            addr: bad.ip(),
        });
    }
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| Error::Resolve {
            what: "--admin",
            value: url.to_string(),
            reason: "no address".into(),
        })?;
    Ok((parsed, addr))
}

impl Admin {
    /// A client for `url`, verifying HTTPS with `tls`; never follows redirects (they could
    /// leave loopback) and always connects to the loopback address resolved here.
    pub(crate) fn new(
        url: &str,
        user: &str,
        password: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Admin, Error> {
        let (parsed, addr) = resolve_admin_url(url)?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .no_proxy();
        if let Some(host) = parsed.host_str() {
            if host.parse::<IpAddr>().is_err() {
                builder = builder.resolve(host, addr);
            }
        }
        let http = builder.build().map_err(|e| Error::AdminUnreachable {
            url: url.to_string(),
            reason: chain(&e),
        })?;
        Ok(Admin {
            http,
            base: url.trim_end_matches('/').to_string(),
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        user: &str,
        password: &str,
        body: Value,
        expect: &[StatusCode],
    ) -> Result<Value, Error> {
        let url = format!("{}{}", self.base, path);
        let method_name: &'static str = match method {
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::GET => "GET",
            Method::DELETE => "DELETE",
            _ => "request",
        };
        let resp = self
            .http
            .request(method, &url)
            .basic_auth(user, Some(password))
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::AdminUnreachable {
                url: url.clone(),
                reason: chain(&e),
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Error::AdminUnreachable {
            url: url.clone(),
            reason: chain(&e),
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if expect.contains(&status) {
            return Ok(value);
        }
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                let t = text.trim();
                if t.is_empty() {
                    status.canonical_reason().unwrap_or("no body").to_string()
                } else {
                    t.chars().take(300).collect()
                }
            });
        Err(Error::AdminRejected {
            method: method_name,
            url,
            status: status.as_u16(),
            message,
        })
    }

    /// Creates `tenant` with an `admin` user whose password is `tenant_password`.
    pub(crate) async fn create_tenant(
        &self,
        tenant: &str,
        tenant_password: &str,
    ) -> Result<(), Error> {
        let body = json!({
            "id": tenant,
            "company": tenant,
            "adminName": "admin",
            "adminPass": tenant_password,
        });
        match self
            .call(
                Method::POST,
                "/tenant/tenants",
                &self.user,
                &self.password,
                body,
                &[StatusCode::CREATED, StatusCode::OK],
            )
            .await
        {
            Err(Error::AdminRejected { status: 409, url, method, message }) => {
                Err(Error::AdminRejected {
                    method,
                    url,
                    status: 409,
                    message: format!(
                        "{message} (tenant {tenant:?} already exists; its admin password is unknown to loadtest: pick another --tenant or omit it for a fresh one)"
                    ),
                })
            }
            other => other.map(|_| ()),
        }
    }

    /// Uploads `pem` as an enabled, auto-registering trusted CA of `tenant`; returns its
    /// fingerprint.
    pub(crate) async fn upload_ca(
        &self,
        tenant: &str,
        tenant_password: &str,
        pem: &str,
    ) -> Result<String, Error> {
        let body = json!({
            "status": "ENABLED",
            "name": "loadtest-ca",
            "autoRegistrationEnabled": "true",
            "certInPemFormat": pem,
        });
        let v = self
            .call(
                Method::POST,
                &format!("/tenant/tenants/{tenant}/trusted-certificates"),
                &format!("{tenant}/admin"),
                tenant_password,
                body,
                &[StatusCode::CREATED, StatusCode::OK],
            )
            .await?;
        v.get("fingerprint")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| Error::AdminRejected {
                method: "POST",
                url: format!("{}/tenant/tenants/{tenant}/trusted-certificates", self.base),
                status: 201,
                message: format!("answer has no \"fingerprint\": {v}"),
            })
    }

    /// Imports `cert_pem` with its key as `tenant`'s EST certificate authority (the
    /// product's `POST .../certificate-authority`); returns its fingerprint.
    pub(crate) async fn import_ca(
        &self,
        tenant: &str,
        tenant_password: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<String, Error> {
        let body = json!({
            "name": "loadtest-ca",
            "autoRegistrationEnabled": true,
            "certificatePem": cert_pem,
            "privateKeyPem": key_pem,
        });
        let path = format!("/tenant/tenants/{tenant}/certificate-authority");
        let v = self
            .call(
                Method::POST,
                &path,
                &format!("{tenant}/admin"),
                tenant_password,
                body,
                &[StatusCode::CREATED],
            )
            .await?;
        v.get("fingerprint")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| Error::AdminRejected {
                method: "POST",
                url: format!("{}{path}", self.base),
                status: 201,
                message: format!("answer has no \"fingerprint\": {v}"),
            })
    }

    /// Deletes `tenant` (as the management user) with everything it owns.
    pub(crate) async fn delete_tenant(&self, tenant: &str) -> Result<(), Error> {
        self.call(
            Method::DELETE,
            &format!("/tenant/tenants/{tenant}"),
            &self.user,
            &self.password,
            Value::Null,
            &[StatusCode::OK, StatusCode::NO_CONTENT],
        )
        .await
        .map(|_| ())
    }

    /// Sets the status (`ENABLED` / `DISABLED`) of the trusted CA `fingerprint` of `tenant`.
    pub(crate) async fn set_ca_status(
        &self,
        tenant: &str,
        tenant_password: &str,
        fingerprint: &str,
        status: &str,
    ) -> Result<(), Error> {
        self.call(
            Method::PUT,
            &format!("/tenant/tenants/{tenant}/trusted-certificates/{fingerprint}"),
            &format!("{tenant}/admin"),
            tenant_password,
            json!({ "status": status }),
            &[StatusCode::OK, StatusCode::NO_CONTENT],
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_url_must_be_loopback() {
        let (_, a) = resolve_admin_url("https://127.0.0.1:8443").expect("ok");
        assert_eq!(a, "127.0.0.1:8443".parse().expect("addr"));
        let (_, a) = resolve_admin_url("https://[::1]:8443/").expect("ok");
        assert_eq!(a, "[::1]:8443".parse().expect("addr"));
        let (_, a) = resolve_admin_url("http://localhost").expect("ok");
        assert_eq!(a.port(), 80);
        assert!(a.ip().is_loopback());
        for bad in [
            "https://10.1.1.1:8443",
            "https://192.168.0.2",
            "http://[2001:db8::2]:80",
        ] {
            assert!(
                matches!(
                    resolve_admin_url(bad),
                    Err(Error::NotLoopback {
                        what: "--admin",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            resolve_admin_url("ftp://127.0.0.1"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            resolve_admin_url("127.0.0.1:8443"),
            Err(Error::Config(_))
        ));
    }
}
