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
use certs::issue::{CaOptions, KeyType, Profile, Subject, Validity};
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
    /// Make a new key and a PKCS#10 certificate signing request for it (on the device:
    /// the key never leaves it; send the .csr to the CA).
    Csr(CsrArgs),
    /// Sign a certificate signing request with a CA directory (the requester's key is
    /// never read): the CA's profile decides the certificate's extensions.
    SignCsr(SignCsrArgs),
    /// Record a certificate issued by a CA directory as revoked.
    Revoke(RevokeArgs),
    /// Sign a CRL listing every certificate revoked in a CA directory.
    Crl(CrlArgs),
    /// Write a PKCS#12 keystore (AES-256, HMAC-SHA256) from a certificate and key, or a
    /// truststore (certificates only) without --key.
    Bundle(BundleArgs),
    /// Convert a certificate, a key or both between PEM, DER and PKCS#12.
    Convert(ConvertArgs),
    /// Print a certificate (or chain, CRL, keystore) in readable form.
    Inspect(InspectArgs),
    /// Check a server certificate and key against the requirements.
    Check(CheckArgs),
    /// Verify a device certificate chain as the broker does.
    Verify(VerifyArgs),
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
    /// Passphrase of the parent CA's key, when encrypted (visible in `ps`; prefer
    /// --parent-passphrase-file).
    #[arg(long)]
    parent_pass: Option<String>,
    /// File whose first line is the passphrase of the parent CA's key.
    #[arg(long, value_name = "FILE", conflicts_with = "parent_pass")]
    parent_passphrase_file: Option<PathBuf>,
    /// Output directory (ca.crt, ca.key, ca-chain.pem).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing CA in the output directory.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    key_out: KeyOutArgs,
}

/// How a written private key is protected.
#[derive(Args)]
struct KeyOutArgs {
    /// Encrypt the private key written (PKCS#8, PBES2 with PBKDF2-SHA256 and
    /// AES-256-CBC, as `openssl genrsa -aes256`/`pkcs8 -v2 aes256` protect keys) with the
    /// passphrase on the first line of this file. The environment variable
    /// CERTS_KEY_PASSPHRASE does the same. Never a command-line value: it would show in
    /// `ps`.
    #[arg(long, value_name = "FILE")]
    key_passphrase_file: Option<PathBuf>,
}

#[derive(Args)]
struct CaDirArgs {
    /// The CA directory (ca.crt, ca.key).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Passphrase of the CA key, when encrypted (visible in `ps`; prefer
    /// --ca-passphrase-file or CERTS_CA_PASSPHRASE).
    #[arg(long)]
    ca_pass: Option<String>,
    /// File whose first line is the passphrase of the CA key. The environment variable
    /// CERTS_CA_PASSPHRASE does the same.
    #[arg(long, value_name = "FILE", conflicts_with = "ca_pass")]
    ca_passphrase_file: Option<PathBuf>,
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
    #[command(flatten)]
    key_out: KeyOutArgs,
}

#[derive(Args)]
struct CsrArgs {
    /// Common Name (the device's MQTT ClientId; the server's host name).
    #[arg(long)]
    cn: String,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Subject alternative names to request (DNS names or IP addresses).
    #[arg(long, num_args = 1..)]
    san: Vec<String>,
    /// Key algorithm.
    #[arg(long, value_enum, default_value = "p256")]
    key_type: KeyTypeArg,
    /// Output directory (NAME.csr, NAME.key).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    key_out: KeyOutArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ProfileArg {
    /// A device (client) certificate: the CN only, clientAuth.
    Device,
    /// A server certificate: serverAuth, subject CN/O/OU/C, host names as SANs.
    Server,
    /// An intermediate CA (CA:true, keyCertSign, cRLSign).
    Intermediate,
}

#[derive(Args)]
struct SignCsrArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// The certificate signing request (PEM or DER).
    #[arg(long)]
    csr: PathBuf,
    /// What to issue; the request's own extensions are not copied. A request asking
    /// for CA:true is refused unless this is `intermediate`.
    #[arg(long, value_enum, default_value = "device")]
    profile: ProfileArg,
    /// pathLenConstraint of an intermediate.
    #[arg(long)]
    pathlen: Option<u8>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Subject alternative names of a server certificate, instead of the request's
    /// (default: the request's, else the CN).
    #[arg(long, num_args = 1..)]
    san: Vec<String>,
    /// Write a server certificate even when it fails the server-certificate
    /// requirements; the failed rows are printed as warnings.
    #[arg(long)]
    skip_requirements: bool,
    /// CRL distribution point URL (repeatable).
    #[arg(long)]
    crl_url: Vec<String>,
    /// Output directory (NAME.crt, NAME-chain.pem; NAME from the request's CN).
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
    /// The private key. Without it the keystore is a truststore: every certificate of
    /// --cert and --chain as a trusted certificate entry, no key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Passphrase of the private key, when encrypted (visible in `ps`; prefer
    /// --key-passphrase-in-file).
    #[arg(long)]
    key_pass: Option<String>,
    /// File whose first line is the passphrase of the private key.
    #[arg(long, value_name = "FILE", conflicts_with = "key_pass")]
    key_passphrase_in_file: Option<PathBuf>,
    /// Issuer certificates to include (leaf's issuer first).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Output keystore.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    password: P12PasswordArgs,
    /// Alias (friendly name) of the key entry; defaults to the certificate's CN.
    #[arg(long)]
    name: Option<String>,
}

/// The password of a PKCS#12 file written.
#[derive(Args)]
struct P12PasswordArgs {
    /// Keystore password (visible in `ps`; prefer --password-file or
    /// CERTS_P12_PASSWORD).
    #[arg(long)]
    password: Option<String>,
    /// File whose first line is the keystore password. The environment variable
    /// CERTS_P12_PASSWORD does the same.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    password_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// PEM text.
    Pem,
    /// Binary DER (a single object).
    Der,
    /// PKCS#12: a truststore for certificates alone, a key alone, or key and chain.
    P12,
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
    /// Password of a PKCS#12 keystore or encrypted key read (visible in `ps`; prefer
    /// --in-passphrase-file or CERTS_IN_PASSPHRASE).
    #[arg(long)]
    password: Option<String>,
    /// File whose first line is the password of the keystore or encrypted key read.
    /// The environment variable CERTS_IN_PASSPHRASE does the same.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    in_passphrase_file: Option<PathBuf>,
    /// Leave the private keys out (the certificates alone), as `openssl pkcs12 -nokeys`.
    #[arg(long)]
    nokeys: bool,
    /// Leave the certificates out (the key alone), as `openssl pkcs12 -nocerts`.
    #[arg(long, conflicts_with = "nokeys")]
    nocerts: bool,
    /// Password of a PKCS#12 output, --to p12 (visible in `ps`; prefer
    /// --out-password-file or CERTS_P12_PASSWORD).
    #[arg(long)]
    out_password: Option<String>,
    /// File whose first line is the password of a PKCS#12 output. The environment
    /// variable CERTS_P12_PASSWORD does the same.
    #[arg(long, value_name = "FILE", conflicts_with = "out_password")]
    out_password_file: Option<PathBuf>,
    #[command(flatten)]
    key_out: KeyOutArgs,
}

#[derive(Args)]
struct InspectArgs {
    /// Certificate(s), CRL or PKCS#12 file.
    file: PathBuf,
    /// Machine-readable JSON.
    #[arg(long)]
    json: bool,
    /// Password of a PKCS#12 keystore or encrypted key (visible in `ps`; prefer
    /// --in-passphrase-file or CERTS_IN_PASSPHRASE).
    #[arg(long)]
    password: Option<String>,
    /// File whose first line is the password of the keystore or encrypted key.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    in_passphrase_file: Option<PathBuf>,
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
    /// Passphrase of the key or keystore (visible in `ps`; prefer --pass-file or
    /// CERTS_IN_PASSPHRASE).
    #[arg(long)]
    pass: Option<String>,
    /// File whose first line is the passphrase of the key or keystore.
    #[arg(long, value_name = "FILE", conflicts_with = "pass")]
    pass_file: Option<PathBuf>,
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
        Command::Csr(a) => csr(a),
        Command::SignCsr(a) => sign_csr(a),
        Command::Revoke(a) => revoke(a),
        Command::Crl(a) => crl(a),
        Command::Bundle(a) => bundle(a),
        Command::Convert(a) => convert(a),
        Command::Inspect(a) => inspect(a),
        Command::Check(a) => check(a),
        Command::Verify(a) => verify(a),
    }
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

/// A secret given as a plain argument, as the first line of a file, or in an
/// environment variable (in that order); `None` when none is given. An empty secret is
/// refused.
fn secret(plain: Option<&str>, file: Option<&Path>, env: &str) -> Result<Option<String>, Failure> {
    let value = match (plain, file) {
        (Some(p), _) => p.to_string(),
        (None, Some(f)) => ca_dir::read_secret_line(f)?,
        (None, None) => match std::env::var(env) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        },
    };
    if value.is_empty() {
        let from = if plain.is_some() { "the argument" } else { env };
        return Err(Failure(format!("{from}: the passphrase is empty")));
    }
    Ok(Some(value))
}

fn key_out_passphrase(a: &KeyOutArgs) -> Result<Option<String>, Failure> {
    secret(
        None,
        a.key_passphrase_file.as_deref(),
        "CERTS_KEY_PASSPHRASE",
    )
}

fn p12_password(plain: Option<&str>, file: Option<&Path>) -> Result<String, Failure> {
    secret(plain, file, "CERTS_P12_PASSWORD")?.ok_or_else(|| {
        Failure("a PKCS#12 output needs a password: a password file, CERTS_P12_PASSWORD or a password argument".into())
    })
}

fn open_ca(a: &CaDirArgs) -> Result<CaDir, Failure> {
    let pass = secret(
        a.ca_pass.as_deref(),
        a.ca_passphrase_file.as_deref(),
        "CERTS_CA_PASSPHRASE",
    )?;
    Ok(CaDir::open(&a.ca_dir, pass.as_deref())?)
}

fn ca_create(a: CaCreateArgs) -> Result<Outcome, Failure> {
    let parent_pass = secret(
        a.parent_pass.as_deref(),
        a.parent_passphrase_file.as_deref(),
        "CERTS_CA_PASSPHRASE",
    )?;
    let parent = a
        .parent_dir
        .as_deref()
        .map(|d| CaDir::open(d, parent_pass.as_deref()))
        .transpose()?;
    let key_pass = key_out_passphrase(&a.key_out)?;
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
        key_pass.as_deref(),
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
    let key_pass = key_out_passphrase(&a.key_out)?;
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
        server_requirements(
            &ca,
            issued.cert_der.as_ref(),
            Some(&issued.key_pem()),
            a.skip_requirements,
        )?;
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
    let files = ca.write_issued(&a.out, &a.cn, &issued, a.force, key_pass.as_deref())?;
    ca.record_issued(
        issued.cert_der.as_ref(),
        if a.server { "server" } else { "device" },
        false,
    )?;
    let info = CertInfo::parse(issued.cert_der.as_ref())?;
    out!("issued {} (serial {})", info.subject, info.serial_hex);
    for p in [&files.cert, &files.key, &files.chain] {
        out!("  {}", p.display());
    }
    Ok(Outcome::Ok)
}

/// Checks a freshly issued server certificate with its CA's chain against the
/// requirements `certs check` applies: an error naming every failed row (with how to fix
/// it), or warnings with `skip`. Without `key` (a signed request: the key is elsewhere)
/// the private-key rows are not judged.
fn server_requirements(
    ca: &CaDir,
    cert_der: &[u8],
    key: Option<&str>,
    skip: bool,
) -> Result<(), Failure> {
    let chain = ca_dir::chain_pem(ca.chain());
    let crt = certs::pem::to_pem("CERTIFICATE", cert_der);
    let report = certs::requirements::check(&certs::requirements::Input {
        crt: crt.as_bytes(),
        key: key.unwrap_or_default().as_bytes(),
        chain: Some(chain.as_bytes()),
        passphrase: None,
        crl_check: false,
        now: certs::now_unix(),
    });
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.required && !r.passed)
        .filter(|r| {
            key.is_some()
                || (r.name != certs::requirements::rows::KEY_READABLE
                    && r.name != certs::requirements::rows::KEY_MATCHES)
        })
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

/// Refuses to overwrite any of `paths` unless `force`.
fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), Failure> {
    match paths.iter().find(|p| !force && p.exists()) {
        Some(p) => Err(Failure(
            ca_dir::CaDirError::Exists(p.to_path_buf()).to_string(),
        )),
        None => Ok(()),
    }
}

fn csr(a: CsrArgs) -> Result<Outcome, Failure> {
    let key_pass = key_out_passphrase(&a.key_out)?;
    let name = ca_dir::file_stem(&a.cn);
    let csr_path = a.out.join(format!("{name}.csr"));
    let key_path = a.out.join(format!("{name}.key"));
    refuse_existing(&[&csr_path, &key_path], a.force)?;
    let (csr_der, key) =
        certs::csr::create(&subject(&a.cn, &a.subject), &a.san, a.key_type.into())?;
    let key_pem = certs::pem::private_key_pem(&key.into(), key_pass.as_deref())?;
    std::fs::create_dir_all(&a.out).map_err(|e| Failure(format!("{}: {e}", a.out.display())))?;
    ca_dir::write_file(&key_path, key_pem.as_bytes(), true, true)?;
    ca_dir::write_file(
        &csr_path,
        certs::pem::to_pem("CERTIFICATE REQUEST", &csr_der).as_bytes(),
        false,
        true,
    )?;
    out!("wrote a signing request for CN={} and its key", a.cn);
    out!("  {}", csr_path.display());
    out!(
        "  {}{}",
        key_path.display(),
        if key_pass.is_some() {
            " (encrypted)"
        } else {
            ""
        }
    );
    Ok(Outcome::Ok)
}

fn sign_csr(a: SignCsrArgs) -> Result<Outcome, Failure> {
    let request = certs::csr::parse(&read(&a.csr)?)
        .map_err(|e| Failure(format!("{}: {e}", a.csr.display())))?;
    let ca = open_ca(&a.ca)?;
    let ca_info = CertInfo::parse(ca.certificate().as_ref())?;
    let requested = request.subject_fields();
    let (profile, subject, sans) = match a.profile {
        ProfileArg::Device => (
            Profile::Device,
            Subject::cn(&request.common_name),
            Vec::new(),
        ),
        ProfileArg::Server => {
            // As `issue --server`: O, OU and C from the CA when the request has none.
            let inherit = |given: Option<String>, short: &str| {
                given.or_else(|| ca_info.subject_attribute(short).map(str::to_string))
            };
            let subject = Subject {
                cn: requested.cn.clone(),
                o: inherit(requested.o.clone(), "O"),
                ou: inherit(requested.ou.clone(), "OU"),
                c: inherit(requested.c.clone(), "C"),
            };
            let sans = if !a.san.is_empty() {
                a.san.clone()
            } else if !request.sans.is_empty() {
                request.sans.clone()
            } else {
                vec![request.common_name.clone()]
            };
            (Profile::Server, subject, sans)
        }
        ProfileArg::Intermediate => (
            Profile::Intermediate {
                path_len: a.pathlen,
            },
            requested,
            Vec::new(),
        ),
    };
    if a.pathlen.is_some() && a.profile != ProfileArg::Intermediate {
        return Err(Failure(
            "--pathlen applies to --profile intermediate".into(),
        ));
    }
    if !a.san.is_empty() && a.profile != ProfileArg::Server {
        return Err(Failure("--san applies to --profile server".into()));
    }
    let name = ca_dir::file_stem(&request.common_name);
    let cert_path = a.out.join(format!("{name}.crt"));
    let chain_path = a.out.join(format!("{name}-chain.pem"));
    refuse_existing(&[&cert_path, &chain_path], a.force)?;
    let validity = Validity::days(i64::from(a.days));
    let cert = ca
        .sign_csr(&request, &profile, &subject, &sans, validity, &a.crl_url)
        .map_err(|e| match e {
            ca_dir::CaDirError::Csr(c) => Failure(format!("{}: {c}", a.csr.display())),
            other => Failure(other.to_string()),
        })?;
    if profile == Profile::Server {
        server_requirements(&ca, cert.as_ref(), None, a.skip_requirements)?;
    }
    let mut chain = vec![cert.clone()];
    chain.extend(ca.chain().iter().cloned());
    std::fs::create_dir_all(&a.out).map_err(|e| Failure(format!("{}: {e}", a.out.display())))?;
    ca_dir::write_file(
        &cert_path,
        certs::pem::to_pem("CERTIFICATE", cert.as_ref()).as_bytes(),
        false,
        true,
    )?;
    ca_dir::write_file(
        &chain_path,
        ca_dir::chain_pem(&chain).as_bytes(),
        false,
        true,
    )?;
    let kind = match a.profile {
        ProfileArg::Device => "device",
        ProfileArg::Server => "server",
        ProfileArg::Intermediate => "intermediate",
    };
    ca.record_issued(cert.as_ref(), kind, true)?;
    let info = CertInfo::parse(cert.as_ref())?;
    out!(
        "signed the request of {} as {} certificate (serial {}, key {})",
        info.subject,
        if kind == "intermediate" {
            "an intermediate CA"
        } else if kind == "server" {
            "a server"
        } else {
            "a device"
        },
        info.serial_hex,
        request.key
    );
    for p in [&cert_path, &chain_path] {
        out!("  {}", p.display());
    }
    Ok(Outcome::Ok)
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
    let password = p12_password(
        a.password.password.as_deref(),
        a.password.password_file.as_deref(),
    )?;
    let Some(key_path) = &a.key else {
        let p12 = certs::pem::write_truststore_pkcs12(&chain, &password)?;
        ca_dir::write_file(&a.out, &p12, false, true)?;
        out!(
            "wrote truststore {} ({} trusted certificate(s), no key)",
            a.out.display(),
            chain.len()
        );
        return Ok(Outcome::Ok);
    };
    let key_pass = secret(
        a.key_pass.as_deref(),
        a.key_passphrase_in_file.as_deref(),
        "CERTS_IN_PASSPHRASE",
    )?;
    let key = certs::pem::read_private_key(&read(key_path)?, key_pass.as_deref())
        .map_err(|e| Failure(format!("{}: {e}", key_path.display())))?;
    let leaf = chain
        .first()
        .ok_or_else(|| Failure("no certificate".into()))?;
    if !certs::keys::key_matches_certificate(&key, leaf.as_ref()) {
        return Err(Failure(format!(
            "{} is not the private key of {}",
            key_path.display(),
            a.cert.display()
        )));
    }
    let info = CertInfo::parse(leaf.as_ref())?;
    let alias = a
        .name
        .clone()
        .or(info.common_name.clone())
        .unwrap_or_else(|| "certificate".into());
    let p12 = certs::pem::write_pkcs12(&key, &chain, &password, &alias)?;
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
    let in_pass = secret(
        a.password.as_deref(),
        a.in_passphrase_file.as_deref(),
        "CERTS_IN_PASSPHRASE",
    )?;
    let mut decoded = certs::pem::decode_any(&input, in_pass.as_deref())
        .map_err(|e| Failure(format!("{}: {e}", a.input.display())))?;
    if a.nokeys {
        decoded.keys.clear();
    }
    if a.nocerts {
        decoded.certificates.clear();
        decoded.crls.clear();
    }
    if decoded.is_empty() {
        return Err(Failure(format!(
            "{}: nothing left to write (--nokeys/--nocerts removed everything)",
            a.input.display()
        )));
    }
    let to = a.to.unwrap_or(if certs::pem::is_pem(&input) {
        Format::Der
    } else {
        Format::Pem
    });
    let key_pass = key_out_passphrase(&a.key_out)?;
    if key_pass.is_some() && (decoded.keys.is_empty() || to == Format::P12) {
        return Err(Failure(
            "--key-passphrase-file (CERTS_KEY_PASSPHRASE) encrypts a key written as PEM or DER; a PKCS#12 output is protected by its password".into(),
        ));
    }
    let out = match to {
        Format::Pem => decoded.to_pem_protected(key_pass.as_deref())?.into_bytes(),
        Format::Der => {
            let der = decoded.single_der().ok_or_else(|| {
                Failure(format!(
                    "{} holds {} objects ({} certificate(s), {} key(s), {} CRL(s)); DER holds one: use --to pem, --nokeys or --nocerts",
                    a.input.display(),
                    decoded.len(),
                    decoded.certificates.len(),
                    decoded.keys.len(),
                    decoded.crls.len()
                ))
            })?;
            match (&key_pass, decoded.keys.first()) {
                (Some(pw), Some(k)) => {
                    certs::pem::encrypt_pkcs8_der(&certs::keys::to_pkcs8(k)?, pw)?
                }
                _ => der.to_vec(),
            }
        }
        Format::P12 => {
            if !decoded.crls.is_empty() {
                return Err(Failure(format!(
                    "{}: a CRL cannot go into a PKCS#12 file",
                    a.input.display()
                )));
            }
            let password = p12_password(a.out_password.as_deref(), a.out_password_file.as_deref())?;
            match (decoded.keys.as_slice(), decoded.certificates.as_slice()) {
                ([], certificates) => certs::pem::write_truststore_pkcs12(certificates, &password)?,
                ([key], []) => certs::pem::write_key_pkcs12(key, &password, "key")?,
                ([key], [leaf, ..]) => {
                    if !certs::keys::key_matches_certificate(key, leaf.as_ref()) {
                        return Err(Failure(format!(
                            "{}: the private key is not the first certificate's (use --nokeys or --nocerts)",
                            a.input.display()
                        )));
                    }
                    let alias = CertInfo::parse(leaf.as_ref())?
                        .common_name
                        .unwrap_or_else(|| "certificate".into());
                    certs::pem::write_pkcs12(key, &decoded.certificates, &password, &alias)?
                }
                (keys, _) => {
                    return Err(Failure(format!(
                        "{} holds {} private keys; a PKCS#12 file holds one",
                        a.input.display(),
                        keys.len()
                    )))
                }
            }
        }
    };
    ca_dir::write_file(
        &a.out,
        &out,
        !decoded.keys.is_empty() || key_pass.is_some(),
        true,
    )?;
    out!(
        "wrote {} ({} certificate(s), {} key(s){}, {} CRL(s))",
        a.out.display(),
        decoded.certificates.len(),
        decoded.keys.len(),
        if key_pass.is_some() {
            ", encrypted"
        } else {
            ""
        },
        decoded.crls.len()
    );
    Ok(Outcome::Ok)
}

fn inspect(a: InspectArgs) -> Result<Outcome, Failure> {
    let input = read(&a.file)?;
    let password = secret(
        a.password.as_deref(),
        a.in_passphrase_file.as_deref(),
        "CERTS_IN_PASSPHRASE",
    )?;
    let decoded = certs::pem::decode_any(&input, password.as_deref())
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
    let pass = secret(
        a.pass.as_deref(),
        a.pass_file.as_deref(),
        "CERTS_IN_PASSPHRASE",
    )?;
    let input = certs::requirements::Input {
        crt: &crt,
        key: &key,
        chain: chain.as_deref(),
        passphrase: pass.as_deref(),
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
