//! Writes the seed corpora under `fuzz/corpus/<target>/` from generated certificates,
//! keys, CRLs and MQTT packets: `cargo run --manifest-path fuzz/Cargo.toml --bin gen_seeds`.

use std::path::Path;

use certs::issue::{self, CaOptions, KeyType, Subject, Validity};

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), data).expect("seed");
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let ca = issue::ca(
        &Subject::cn("Seed CA"),
        Validity::days(30),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("ca");
    let dev = issue::device(
        "seed-device",
        Validity::days(30),
        KeyType::P256,
        &ca.issuer().expect("issuer"),
        &["http://127.0.0.1/crl".into()],
    )
    .expect("device");
    let pem_dir = root.join("pem_read");
    write(&pem_dir, "ca.pem", ca.cert_pem().as_bytes());
    write(&pem_dir, "ca.der", ca.cert_der.as_ref());
    write(
        &pem_dir,
        "chain.pem",
        format!(
            "Bag Attributes\n    friendlyName: x\n{}{}",
            dev.cert_pem(),
            ca.cert_pem()
        )
        .as_bytes(),
    );
    write(&pem_dir, "key.pem", dev.key_pem().as_bytes());
    write(
        &pem_dir,
        "key-legacy.pem",
        certs::pem::encrypt_legacy_pem("EC PRIVATE KEY", dev.key_der.secret_pkcs8_der(), "secret")
            .as_bytes(),
    );
    let p12 = certs::pem::write_pkcs12(
        &dev.private_key(),
        &[dev.cert_der.clone(), ca.cert_der.clone()],
        "secret",
        "seed",
    )
    .expect("p12");
    write(&pem_dir, "bundle.p12", &p12);

    let crl_dir = root.join("crl_parse");
    let crl = issue::crl(
        &ca.issuer().expect("issuer"),
        &[issue::Revocation {
            serial_hex: "0a1b".into(),
            revoked_at: time_now(),
        }],
        1,
        7,
    )
    .expect("crl");
    write(&crl_dir, "crl.der", &crl);
    write(
        &crl_dir,
        "crl.pem",
        certs::pem::to_pem("X509 CRL", &crl).as_bytes(),
    );

    let mq = root.join("mqtt_rewrite");
    let connect4 = packet(
        0x10,
        &[
            s("MQTT"),
            vec![4, 0xC6, 0, 60],
            s("dev"),
            s("will/t"),
            s("bye"),
            s("u"),
            s("p"),
        ]
        .concat(),
    );
    let connect5 = packet(
        0x10,
        &[s("MQTT"), vec![5, 0x02, 0, 60, 3, 0x22, 0, 10], s("dev")].concat(),
    );
    let pub4 = packet(0x32, &[s("a/b"), vec![0, 1], b"payload".to_vec()].concat());
    let pub5 = packet(
        0x30,
        &[s("a/b"), vec![3, 0x23, 0, 1], b"p".to_vec()].concat(),
    );
    let pub5_alias = packet(0x30, &[s(""), vec![3, 0x23, 0, 1], b"p".to_vec()].concat());
    let sub4 = packet(
        0x82,
        &[vec![0, 1], s("x/#"), vec![1], s("$share/g/y/+"), vec![0]].concat(),
    );
    let sub5 = packet(0x82, &[vec![0, 1, 2, 0x0B, 5], s("x/#"), vec![1]].concat());
    let unsub = packet(0xA2, &[vec![0, 2], s("x/#")].concat());
    write(
        &mq,
        "v4",
        &[
            vec![0],
            connect4,
            pub4.clone(),
            sub4.clone(),
            unsub.clone(),
            vec![0xC0, 0],
        ]
        .concat(),
    );
    write(
        &mq,
        "v5",
        &[vec![1], connect5, pub5, pub5_alias, sub5, unsub].concat(),
    );
    write(&mq, "v4-pub", &[vec![0], pub4, sub4].concat());
    admin_json(&root.join("admin_json"), &ca, &crl);
    println!("seed corpora written to {}", root.display());
}

/// Seeds of the admin API target: the endpoint byte (see `fuzz_targets/admin_json.rs`)
/// followed by a body each endpoint accepts, in the forms clients send.
fn admin_json(dir: &Path, ca: &issue::Issued, crl: &[u8]) {
    use serde_json::json;
    let pem = ca.cert_pem();
    let other = issue::ca(
        &Subject::cn("Seed CA 2"),
        Validity::days(30),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("ca");
    let der_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(ca.cert_der.as_ref())
    };
    let upload = json!({"status": "ENABLED", "name": "seed-ca", "autoRegistrationEnabled": "true", "certInPemFormat": pem});
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("cert-upload", 0, upload.to_string().into_bytes()),
        // PEM pasted with literal "\n" sequences, as shell one-liners send it.
        ("cert-upload-escaped", 0, json!({"certInPemFormat": pem.replace('\n', "\\n"), "autoRegistrationEnabled": true}).to_string().into_bytes()),
        ("cert-upload-b64", 0, json!({"status": "DISABLED", "certInPemFormat": der_b64}).to_string().into_bytes()),
        ("cert-bulk", 1, json!({"certificates": [upload, {"name": "two", "certInPemFormat": other.cert_pem()}]}).to_string().into_bytes()),
        ("cert-update", 2, json!({"name": "renamed", "status": "DISABLED", "autoRegistrationEnabled": "false"}).to_string().into_bytes()),
        ("tenant-create", 3, json!({"id": "seed-t", "company": "Seed Corp", "domain": "example.com", "adminName": "admin", "adminPass": "seed-pass-1",
            "settings": {"maxChainLength": 3, "crlOfflineEnabled": true, "crlOnlineEnabled": false, "clientIdPolicy": "override"}}).to_string().into_bytes()),
        ("tenant-create-noid", 3, json!({"company": "Seed Corp", "adminName": "a@b.c", "adminPass": "seed-pass-1"}).to_string().into_bytes()),
        ("tenant-update", 4, json!({"company": "New Name", "domain": "example.org", "settings": {"maxChainLength": 4, "clientIdPolicy": "strict"}}).to_string().into_bytes()),
        ("tenant-settings", 5, json!({"maxChainLength": 3, "crlOfflineEnabled": true, "crlOnlineEnabled": true, "clientIdPolicy": "strict"}).to_string().into_bytes()),
        ("crl-serials", 6, json!({"crls": [{"serialNumberInHex": "0a1b", "revocationDate": "2024-01-01"},
            {"serialNumberInHex": "01:02:ff", "revocationDate": "2024-01-01T00:00:00Z"}, {"serialNumberInHex": "7f"}]}).to_string().into_bytes()),
        ("crl-upload-der", 7, crl.to_vec()),
        ("crl-upload-pem", 7, certs::pem::to_pem("X509 CRL", crl).into_bytes()),
    ];
    for (name, op, body) in seeds {
        write(dir, name, &[vec![op], body].concat());
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
