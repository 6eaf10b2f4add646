//! `certs`: the operator's certificate tool. Creates CAs, device and server
//! certificates, CRLs and PKCS#12 keystores; converts and inspects files; checks a server
//! certificate against the requirements; verifies a device chain exactly as the broker
//! does. A thin layer over the `certs` library.
//!
//! Exit status: 0 success (for `check` and `verify`: the certificate is valid), 1 the
//! certificate is refused (`check`, `verify`), 2 any error (bad arguments, unreadable
//! file, wrong password). Every error is one line on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use certs::ca_dir::{self, CaDir, RevokeOutcome};
use certs::issue::{CaOptions, KeyType, Subject, Validity};
use certs::trust::{AnchorSpec, AnchorStatus, TenantPolicy, TrustStore};
use certs::{CertInfo, CertificateDer};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "certs",
    version,
    about = "Certificates for the MQTT front-end: CAs, devices, CRLs, keystores, checks",
    after_help = "Exit status: 0 success (check, verify: the certificate is valid), \
                  1 the certificate is refused (check, verify), 2 error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue a device (client) or server certificate signed by a CA directory.
    Issue(IssueArgs),
    /// Record a certificate issued by a CA directory as revoked.
    Revoke(RevokeArgs),
    /// Sign a CRL listing every certificate revoked in a CA directory.
    Crl(CrlArgs),
    /// Write a PKCS#12 keystore (AES-256, HMAC-SHA256) from a certificate and key.
    Bundle(BundleArgs),
    /// Convert between PEM and DER, or unpack a PKCS#12 keystore to PEM.
    Convert(ConvertArgs),
    /// Print a certificate (or chain, CRL, keystore) in readable form.
    Inspect(InspectArgs),
    /// Check a server certificate and key against the requirements.
    Check(CheckArgs),
    /// Verify a device certificate chain as the broker does.
    Verify(VerifyArgs),
    /// Enroll a device over EST with its one-time secret: new key, request, certificate.
    Enroll(certs::est::cli::EnrollArgs),
    /// Renew a device's certificate over EST, authenticated by the current one.
    Renew(certs::est::cli::RenewArgs),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root CA, or an intermediate with --parent-dir.
    Create(CaCreateArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyTypeArg {
    /// RSA 2048 bits.
    Rsa2048,
    /// RSA 4096 bits.
    Rsa4096,
    /// ECDSA P-256.
    P256,
}

impl From<KeyTypeArg> for KeyType {
    fn from(k: KeyTypeArg) -> KeyType {
        match k {
            KeyTypeArg::Rsa2048 => KeyType::Rsa2048,
            KeyTypeArg::Rsa4096 => KeyType::Rsa4096,
            KeyTypeArg::P256 => KeyType::P256,
        }
    }
}

#[derive(Args)]
struct SubjectArgs {
    /// Organization (O).
    #[arg(long)]
    o: Option<String>,
    /// Organizational unit (OU).
    #[arg(long)]
    ou: Option<String>,
    /// Country (C), two letters.
    #[arg(long)]
    c: Option<String>,
}

#[derive(Args)]
struct CaCreateArgs {
    /// Common Name of the CA.
    #[arg(long)]
    cn: String,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// pathLenConstraint (how many CAs may follow below this one).
    #[arg(long)]
    pathlen: Option<u8>,
    /// Key algorithm.
    #[arg(long, value_enum, default_value = "p256")]
    key_type: KeyTypeArg,
    /// Make an intermediate signed by the CA in this directory.
    #[arg(long)]
    parent_dir: Option<PathBuf>,
    /// Passphrase of the parent CA's key, when encrypted.
    #[arg(long)]
    parent_pass: Option<String>,
    /// Output directory (ca.crt, ca.key, ca-chain.pem).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing CA in the output directory.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CaDirArgs {
    /// The CA directory (ca.crt, ca.key).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Passphrase of the CA key, when encrypted.
    #[arg(long)]
    ca_pass: Option<String>,
}

#[derive(Args)]
struct IssueArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// Common Name (the device's MQTT ClientId; the server's host name).
    #[arg(long)]
    cn: String,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Key algorithm [default: p256 for a device, rsa2048 for a server].
    #[arg(long, value_enum)]
    key_type: Option<KeyTypeArg>,
    /// Issue a server certificate instead of a device certificate. It follows the
    /// server-certificate requirements `certs check` and `broker import-certificate`
    /// apply (RSA key signed with SHA256RSA, subject CN, C, OU and O, serverAuth, host
    /// names as SANs): O, OU and C default to the CA's, and a certificate that would
    /// fail them is not written (unless --skip-requirements).
    #[arg(long)]
    server: bool,
    /// Subject alternative names of a server certificate (DNS names or IP addresses;
    /// default: the CN).
    #[arg(long, num_args = 1.., requires = "server")]
    san: Vec<String>,
    /// Write a server certificate even when it fails the server-certificate
    /// requirements (e.g. an ECDSA one for your own clients); the failed rows are
    /// printed as warnings.
    #[arg(long, requires = "server")]
    skip_requirements: bool,
    /// CRL distribution point URL (repeatable).
    #[arg(long)]
    crl_url: Vec<String>,
    /// Output directory (NAME.crt, NAME.key, NAME-chain.pem).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// The certificate to revoke (PEM or DER).
    #[arg(long)]
    cert: PathBuf,
}

#[derive(Args)]
struct CrlArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Days until nextUpdate.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Write DER instead of PEM.
    #[arg(long)]
    der: bool,
}

#[derive(Args)]
struct BundleArgs {
    /// The certificate (PEM or DER), optionally followed by its chain.
    #[arg(long)]
    cert: PathBuf,
    /// The private key.
    #[arg(long)]
    key: PathBuf,
    /// Passphrase of the private key, when encrypted.
    #[arg(long)]
    key_pass: Option<String>,
    /// Issuer certificates to include (leaf's issuer first).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Output keystore.
    #[arg(long)]
    out: PathBuf,
    /// Keystore password.
    #[arg(long)]
    password: String,
    /// Alias (friendly name) of the key entry; defaults to the certificate's CN.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// PEM text.
    Pem,
    /// Binary DER (a single object).
    Der,
}

#[derive(Args)]
struct ConvertArgs {
    /// Input: PEM, DER or PKCS#12.
    #[arg(long = "in")]
    input: PathBuf,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Output format; default: DER for PEM input, PEM otherwise.
    #[arg(long, value_enum)]
    to: Option<Format>,
    /// Password of a PKCS#12 keystore or encrypted key.
    #[arg(long)]
    password: Option<String>,
}

#[derive(Args)]
struct InspectArgs {
    /// Certificate(s), CRL or PKCS#12 file.
    file: PathBuf,
    /// Machine-readable JSON.
    #[arg(long)]
    json: bool,
    /// Password of a PKCS#12 keystore or encrypted key.
    #[arg(long)]
    password: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// Server certificate (PEM/DER, optionally followed by its chain), or a PKCS#12 file.
    #[arg(long)]
    crt: PathBuf,
    /// Private key (not needed when --crt is a PKCS#12 keystore).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Intermediate and root CA certificates.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Passphrase of the key or keystore.
    #[arg(long)]
    pass: Option<String>,
    /// Validate revocation: fetch the certificate's CRL distribution point.
    #[arg(long)]
    crl: bool,
    /// A network (CIDR, or one address) the CRL fetch may reach although it is
    /// loopback, private, link-local or otherwise refused by default (repeatable).
    #[arg(long, value_name = "CIDR")]
    egress_allow: Vec<String>,
    /// Machine-readable JSON report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// Trusted CA certificate file (repeatable; every certificate in it is an anchor).
    #[arg(long, required = true)]
    anchor: Vec<PathBuf>,
    /// Intermediate certificates the device does not send (repeatable).
    #[arg(long)]
    intermediate: Vec<PathBuf>,
    /// CRL issued by an anchor or an intermediate (repeatable).
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// Longest accepted chain, device, intermediates and anchor included (2..=10; the
    /// verifier follows at most 6 intermediates, so 8 is the longest that verifies).
    #[arg(long, default_value_t = certs::trust::DEFAULT_MAX_CHAIN_LENGTH)]
    max_chain_length: u8,
    /// Verify at this time (RFC 3339) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Print the identity as JSON.
    #[arg(long)]
    json: bool,
    /// The device certificate, optionally followed by its chain as devices send it.
    leaf: PathBuf,
}

/// Prints a line to stdout; a closed pipe (`certs inspect x | head`) is not an error.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Prints a line to stderr, ignoring a closed stream.
macro_rules! err {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// An error for a person: one line.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

/// What a command concluded.
enum Outcome {
    Ok,
    /// The certificate was judged and refused (exit 1).
    Refused,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(1),
        Err(Failure(msg)) => {
            err!("certs: {}", one_line(&msg));
            ExitCode::from(2)
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run(cmd: Command) -> Result<Outcome, Failure> {
    match cmd {
        Command::Ca(CaCommand::Create(a)) => ca_create(a),
        Command::Issue(a) => issue(a),
        Command::Revoke(a) => revoke(a),
        Command::Crl(a) => crl(a),
        Command::Bundle(a) => bundle(a),
        Command::Convert(a) => convert(a),
        Command::Inspect(a) => inspect(a),
        Command::Check(a) => check(a),
        Command::Verify(a) => verify(a),
        Command::Enroll(a) => est_done(certs::est::cli::enroll(a)),
        Command::Renew(a) => est_done(certs::est::cli::renew(a)),
    }
}

fn est_done(r: Result<String, certs::est::ClientError>) -> Result<Outcome, Failure> {
    println!("{}", r?);
    Ok(Outcome::Ok)
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    Ok(ca_dir::read_file(path)?)
}

/// Certificates in a file, with the file named in the error.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    certs::pem::read_certificates(&read(path)?)
        .map_err(|e| Failure(format!("{}: {e}", path.display())))
}

fn subject(cn: &str, s: &SubjectArgs) -> Subject {
    Subject {
        cn: cn.to_string(),
        o: s.o.clone(),
        ou: s.ou.clone(),
        c: s.c.clone(),
    }
}

fn open_ca(a: &CaDirArgs) -> Result<CaDir, Failure> {
    Ok(CaDir::open(&a.ca_dir, a.ca_pass.as_deref())?)
}

fn ca_create(a: CaCreateArgs) -> Result<Outcome, Failure> {
    let parent = a
        .parent_dir
        .as_deref()
        .map(|d| CaDir::open(d, a.parent_pass.as_deref()))
        .transpose()?;
    let opts = CaOptions {
        path_len: a.pathlen,
        ..CaOptions::default()
    };
    let ca = CaDir::create(
        &a.out,
        &subject(&a.cn, &a.subject),
        Validity::days(i64::from(a.days)),
        a.key_type.into(),
        &opts,
        parent.as_ref(),
        a.force,
    )?;
    let info = CertInfo::parse(ca.certificate().as_ref())?;
    out!(
        "created {} CA {} in {}",
        if parent.is_some() {
            "intermediate"
        } else {
            "root"
        },
        info.subject,
        a.out.display()
    );
    out!(
        "  serial {}, valid until {}",
        info.serial_hex,
        info.not_after_rfc3339()
    );
    Ok(Outcome::Ok)
}

fn issue(a: IssueArgs) -> Result<Outcome, Failure> {
    let ca = open_ca(&a.ca)?;
    let validity = Validity::days(i64::from(a.days));
    let issued = if a.server {
        let sans = if a.san.is_empty() {
            vec![a.cn.clone()]
        } else {
            a.san.clone()
        };
        // O, OU and C come from the CA unless given: the requirements want all four.
        let ca_info = CertInfo::parse(ca.certificate().as_ref())?;
        let inherit = |given: &Option<String>, short: &str| {
            given
                .clone()
                .or_else(|| ca_info.subject_attribute(short).map(str::to_string))
        };
        let subject = Subject {
            cn: a.cn.clone(),
            o: inherit(&a.subject.o, "O"),
            ou: inherit(&a.subject.ou, "OU"),
            c: inherit(&a.subject.c, "C"),
        };
        let issued = ca.issue_server(
            &subject,
            &sans,
            validity,
            a.key_type.map_or(KeyType::Rsa2048, KeyType::from),
            &a.crl_url,
        )?;
        server_requirements(&ca, &issued, a.skip_requirements)?;
        issued
    } else {
        if a.subject.o.is_some() || a.subject.ou.is_some() || a.subject.c.is_some() {
            return Err(Failure(
                "--o, --ou and --c apply to server certificates (--server); device certificates carry only a CN".into(),
            ));
        }
        ca.issue_device(
            &a.cn,
            validity,
            a.key_type.map_or(KeyType::P256, KeyType::from),
            &a.crl_url,
        )?
    };
    let files = ca.write_issued(&a.out, &a.cn, &issued, a.force)?;
    let info = CertInfo::parse(issued.cert_der.as_ref())?;
    out!("issued {} (serial {})", info.subject, info.serial_hex);
    for p in [&files.cert, &files.key, &files.chain] {
        out!("  {}", p.display());
    }
    Ok(Outcome::Ok)
}

/// Checks a freshly issued server certificate with its CA's chain against the
/// requirements `certs check` applies: an error naming every failed row (with how to fix
/// it), or warnings with `skip`.
fn server_requirements(
    ca: &CaDir,
    issued: &certs::issue::Issued,
    skip: bool,
) -> Result<(), Failure> {
    let chain = ca_dir::chain_pem(ca.chain());
    let crt = issued.cert_pem();
    let key = issued.key_pem();
    let report = certs::requirements::check(&certs::requirements::Input {
        crt: crt.as_bytes(),
        key: key.as_bytes(),
        chain: Some(chain.as_bytes()),
        passphrase: None,
        crl_check: false,
        now: certs::now_unix(),
    });
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.required && !r.passed)
        .map(|r| {
            let mut line = r.reason.clone().unwrap_or_else(|| r.name.clone());
            if r.name == certs::requirements::rows::SIGNATURE {
                line.push_str(
                    " (the signature is the CA's: create an RSA CA for servers, `certs ca create --key-type rsa2048 --o ORG --ou UNIT --c CC`)",
                );
            } else if r.name == certs::requirements::rows::SUBJECT {
                line.push_str(" (give --o, --ou and --c, or create the CA with them)");
            }
            line
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    if skip {
        for f in &failed {
            err!("certs: warning: server-certificate requirement not met: {f}");
        }
        return Ok(());
    }
    Err(Failure(format!(
        "not written: the server certificate would fail `certs check` and `broker import-certificate`: {} [--skip-requirements writes it anyway]",
        failed.join("; ")
    )))
}

fn revoke(a: RevokeArgs) -> Result<Outcome, Failure> {
    let ca = open_ca(&a.ca)?;
    let cert = read_certs(&a.cert)?
        .into_iter()
        .next()
        .ok_or_else(|| Failure(format!("{}: no certificate", a.cert.display())))?;
    match ca.revoke(cert.as_ref(), certs::now_unix())? {
        RevokeOutcome::Revoked(r) => out!("revoked serial {} ({})", r.serial, r.subject),
        RevokeOutcome::AlreadyRevoked(r) => {
            out!("serial {} ({}) was already revoked", r.serial, r.subject)
        }
    }
    out!("run `certs crl` to publish a new CRL");
    Ok(Outcome::Ok)
}

fn crl(a: CrlArgs) -> Result<Outcome, Failure> {
    let ca = open_ca(&a.ca)?;
    let der = ca.crl(i64::from(a.days))?;
    let bytes = if a.der {
        der.clone()
    } else {
        certs::pem::to_pem("X509 CRL", &der).into_bytes()
    };
    ca_dir::write_file(&a.out, &bytes, false, true)?;
    let parsed = certs::revocation::Crl::parse(&der)?;
    out!(
        "wrote CRL with {} revoked certificate(s) to {}",
        parsed.revoked.len(),
        a.out.display()
    );
    Ok(Outcome::Ok)
}

fn bundle(a: BundleArgs) -> Result<Outcome, Failure> {
    let mut chain = read_certs(&a.cert)?;
    if let Some(c) = &a.chain {
        for cert in read_certs(c)? {
            if !chain.contains(&cert) {
                chain.push(cert);
            }
        }
    }
    let key = certs::pem::read_private_key(&read(&a.key)?, a.key_pass.as_deref())
        .map_err(|e| Failure(format!("{}: {e}", a.key.display())))?;
    let leaf = chain
        .first()
        .ok_or_else(|| Failure("no certificate".into()))?;
    if !certs::keys::key_matches_certificate(&key, leaf.as_ref()) {
        return Err(Failure(format!(
            "{} is not the private key of {}",
            a.key.display(),
            a.cert.display()
        )));
    }
    let info = CertInfo::parse(leaf.as_ref())?;
    let alias = a
        .name
        .clone()
        .or(info.common_name.clone())
        .unwrap_or_else(|| "certificate".into());
    let p12 = certs::pem::write_pkcs12(&key, &chain, &a.password, &alias)?;
    ca_dir::write_file(&a.out, &p12, true, true)?;
    out!(
        "wrote {} ({} certificate(s), key alias {alias})",
        a.out.display(),
        chain.len()
    );
    Ok(Outcome::Ok)
}

fn convert(a: ConvertArgs) -> Result<Outcome, Failure> {
    let input = read(&a.input)?;
    let decoded = certs::pem::decode_any(&input, a.password.as_deref())
        .map_err(|e| Failure(format!("{}: {e}", a.input.display())))?;
    let to = a.to.unwrap_or(if certs::pem::is_pem(&input) {
        Format::Der
    } else {
        Format::Pem
    });
    let out = match to {
        Format::Pem => decoded.to_pem().into_bytes(),
        Format::Der => decoded
            .single_der()
            .ok_or_else(|| {
                Failure(format!(
                    "{} holds {} objects ({} certificate(s), {} key(s), {} CRL(s)); DER holds one: use --to pem",
                    a.input.display(),
                    decoded.len(),
                    decoded.certificates.len(),
                    decoded.keys.len(),
                    decoded.crls.len()
                ))
            })?
            .to_vec(),
    };
    ca_dir::write_file(&a.out, &out, !decoded.keys.is_empty(), true)?;
    out!(
        "wrote {} ({} certificate(s), {} key(s), {} CRL(s))",
        a.out.display(),
        decoded.certificates.len(),
        decoded.keys.len(),
        decoded.crls.len()
    );
    Ok(Outcome::Ok)
}

fn inspect(a: InspectArgs) -> Result<Outcome, Failure> {
    let input = read(&a.file)?;
    let decoded = certs::pem::decode_any(&input, a.password.as_deref())
        .map_err(|e| Failure(format!("{}: {e}", a.file.display())))?;
    let infos = decoded
        .certificates
        .iter()
        .map(|c| CertInfo::parse(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let crls = decoded
        .crls
        .iter()
        .map(|c| certs::revocation::Crl::parse(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<String> = decoded
        .keys
        .iter()
        .map(|k| {
            certs::keys::key_algorithm(k)
                .map_or_else(|| "unsupported algorithm".to_string(), |a| a.to_string())
        })
        .collect();
    if a.json {
        let json = if infos.len() == 1 && crls.is_empty() && keys.is_empty() {
            serde_json::to_value(&infos[0])?
        } else if crls.is_empty() && keys.is_empty() {
            serde_json::to_value(&infos)?
        } else {
            serde_json::json!({
                "certificates": infos,
                "crls": crls.iter().map(|c| serde_json::json!({
                    "issuer": c.issuer,
                    "thisUpdate": c.this_update,
                    "nextUpdate": c.next_update,
                    "revoked": c.revoked,
                })).collect::<Vec<_>>(),
                "privateKeys": keys,
            })
        };
        out!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(Outcome::Ok);
    }
    let mut parts: Vec<String> = keys.iter().map(|k| format!("Private key: {k}\n")).collect();
    parts.extend(infos.iter().map(CertInfo::to_text));
    parts.extend(crls.iter().map(|c| c.to_text()));
    out!("{}", parts.join("\n").trim_end());
    Ok(Outcome::Ok)
}

fn check(a: CheckArgs) -> Result<Outcome, Failure> {
    let crt = read(&a.crt)?;
    let key = a.key.as_deref().map(read).transpose()?.unwrap_or_default();
    let chain = a.chain.as_deref().map(read).transpose()?;
    let input = certs::requirements::Input {
        crt: &crt,
        key: &key,
        chain: chain.as_deref(),
        passphrase: a.pass.as_deref(),
        crl_check: a.crl,
        now: certs::now_unix(),
    };
    let report = if a.crl {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let allow = certs::egress::EgressPolicy::parse_allow(&a.egress_allow)?;
        let fetcher = certs::revocation::CrlFetcher::with_policy(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(3600),
            certs::egress::EgressPolicy::allowing(allow),
        );
        rt.block_on(certs::requirements::check_with_crl_fetch(&input, &fetcher))
    } else {
        certs::requirements::check(&input)
    };
    if a.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for row in &report.rows {
            let status = match (row.passed, row.required) {
                (true, _) => "PASS",
                (false, true) => "FAIL",
                (false, false) => "INFO",
            };
            match &row.reason {
                Some(r) => out!("{status}  {}: {r}", row.name),
                None => out!("{status}  {}", row.name),
            }
        }
    }
    match report.first_failure() {
        None => {
            if !a.json {
                out!("certificate meets every requirement");
            }
            Ok(Outcome::Ok)
        }
        Some(row) => {
            err!(
                "certs: requirement not met: {}",
                one_line(row.reason.as_deref().unwrap_or(&row.name))
            );
            Ok(Outcome::Refused)
        }
    }
}

const TENANT: &str = "cli";

fn verify(a: VerifyArgs) -> Result<Outcome, Failure> {
    if !(2..=certs::trust::MAX_MAX_CHAIN_LENGTH).contains(&a.max_chain_length) {
        return Err(Failure(format!(
            "--max-chain-length must be between 2 and {}",
            certs::trust::MAX_MAX_CHAIN_LENGTH
        )));
    }
    let now = match &a.at {
        None => certs::UnixTime::now(),
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| Failure(format!("--at {s}: not an RFC 3339 time: {e}")))?;
            let secs = u64::try_from(t.unix_timestamp())
                .map_err(|_| Failure(format!("--at {s}: before 1970")))?;
            certs::UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
        }
    };
    let mut builder = TrustStore::builder();
    builder.tenant(
        TENANT,
        TenantPolicy {
            max_chain_length: a.max_chain_length,
            ..TenantPolicy::default()
        },
    );
    for path in &a.anchor {
        for cert in read_certs(path)? {
            builder
                .anchor(AnchorSpec {
                    tenant: TENANT.into(),
                    status: AnchorStatus::Enabled,
                    auto_registration: false,
                    cert_der: cert.as_ref().to_vec(),
                })
                .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
        }
    }
    let mut chain = read_certs(&a.leaf)?;
    for path in &a.intermediate {
        for cert in read_certs(path)? {
            if !chain.contains(&cert) {
                chain.push(cert);
            }
        }
    }
    for path in &a.crl {
        let crl = certs::revocation::Crl::parse(&read(path)?)
            .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
        builder
            .crl_from_intermediate(TENANT, crl, &chain[1..])
            .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    }
    let store = builder.build();
    match store.verify_device(&chain, now) {
        Ok(id) => {
            if a.json {
                out!("{}", serde_json::to_string_pretty(&id)?);
            } else {
                out!("valid: {}", id.subject);
                out!("  common name:        {}", id.common_name);
                out!("  serial:             {}", id.serial_hex);
                out!("  fingerprint (SHA-1): {}", id.fingerprint);
                out!("  anchor (SHA-1):     {}", id.anchor_fingerprint);
                out!("  chain length:       {}", id.chain_length);
                out!(
                    "  not after:          {}",
                    certs::info::rfc3339(id.not_after)
                );
            }
            Ok(Outcome::Ok)
        }
        Err(e) => {
            err!(
                "certs: invalid: {} [{}]",
                one_line(&e.to_string()),
                e.label()
            );
            Ok(Outcome::Refused)
        }
    }
}
