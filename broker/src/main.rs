//! `broker`: parse the command line and the config, then call `broker::run`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// MQTT front-end: devices authenticate with an X.509 client certificate only.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// TOML config file (see `broker print-config`).
    #[arg(long, global = true, env = "BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (SQLite store, admin password file, server.crt). One broker
    /// per data directory (`broker.lock`).
    #[arg(long, global = true, env = "BROKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT mTLS listen address.
    #[arg(long, global = true, env = "BROKER_MQTT_LISTEN")]
    mqtt_listen: Option<std::net::SocketAddr>,
    /// Admin HTTPS listen address.
    #[arg(long, global = true, env = "BROKER_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
    /// Prometheus metrics listen address (plain HTTP).
    #[arg(long, global = true, env = "BROKER_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Backend: `embedded`, `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    #[arg(long)]
    backend: Option<String>,
    /// CA file verifying an `mqtts://` backend.
    #[arg(long)]
    backend_ca: Option<PathBuf>,
    /// A PostgreSQL database shared by several nodes,
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (default: SQLite in the data directory).
    #[arg(long, global = true, env = "BROKER_STORE_URL", hide_env_values = true)]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the default configuration with comments.
    PrintConfig,
    /// Exit 0 when the broker of this configuration is ready for clients: MQTT accepts
    /// connections, the admin API answers, and DATA_DIR/server.crt holds the served
    /// certificate. Otherwise exit 1 with the reason.
    Health {
        /// Keep trying for up to this many seconds (for scripts that just started it).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Import the server certificate (same validation as PUT /system/ssl-certificate).
    /// Chain certificates missing from --chain are fetched from the caIssuers URLs of
    /// the certificates' Authority Information Access, through the `egress` policy.
    ImportCertificate(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Certificate (PEM or DER), or a PKCS#12 keystore holding certificate and key.
    #[arg(long)]
    crt: PathBuf,
    /// Private key (PEM/DER, possibly encrypted); not needed with a PKCS#12 --crt.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Chain up to the root CA (PEM).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Passphrase of the key or keystore (visible in `ps`; prefer --pass-file).
    #[arg(long)]
    pass: Option<String>,
    /// File whose first line is the passphrase of the key or keystore.
    #[arg(long, value_name = "FILE", conflicts_with = "pass")]
    pass_file: Option<PathBuf>,
    /// Skip the requirements check (the key must still match the certificate).
    #[arg(long)]
    no_validation: bool,
    /// Fetch the certificate's CRL distribution point (through the `egress` policy) and
    /// refuse a revoked certificate or an unreachable CRL.
    #[arg(long)]
    crl_check: bool,
    /// Store the key encrypted with the passphrase on the first line of this file; every
    /// start then needs it in BROKER_SERVER_KEY_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
}

/// The first line of a secret file.
fn secret_file(path: &std::path::Path) -> Result<String, String> {
    certs::ca_dir::read_secret_line(path).map_err(|e| e.to_string())
}

/// `broker import-certificate`.
async fn import_certificate(
    a: ImportArgs,
    config: &broker::Config,
    password: Option<String>,
) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| e.to_string())?;
    let passphrase = match (&a.pass, &a.pass_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(secret_file(f)?),
        (None, None) => None,
    };
    let new_passphrase = a
        .new_passphrase_file
        .as_deref()
        .map(secret_file)
        .transpose()?;
    let admin = admin_api::Admin::open(admin_api::AdminConfig {
        admin_password: password,
        store_url: config.store.url.clone(),
        crl_egress: config.egress.policy().map_err(|e| e.to_string())?,
        server_key_passphrase: std::env::var("BROKER_SERVER_KEY_PASSPHRASE")
            .ok()
            .filter(|p| !p.is_empty()),
        ..admin_api::AdminConfig::new(config.data_dir.clone())
    })
    .await
    .map_err(|e| e.to_string())?;
    let encrypted = new_passphrase.is_some();
    let info = admin
        .import_server_certificate(admin_api::ImportRequest {
            name: a
                .crt
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "server".into()),
            crt: read(&a.crt)?,
            key: a.key.as_ref().map(read).transpose()?.unwrap_or_default(),
            chain: a.chain.as_ref().map(read).transpose()?,
            passphrase,
            validation: !a.no_validation,
            crl_check: a.crl_check,
            new_passphrase,
        })
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "imported server certificate {} (subject {}, valid until {}); a running broker switches to it within seconds",
        info.fingerprint_sha1,
        info.subject,
        info.not_after_rfc3339()
    );
    if encrypted {
        println!("the key is stored encrypted: start the broker with BROKER_SERVER_KEY_PASSPHRASE set to the new passphrase");
    }
    Ok(())
}

fn load_config(args: &RunArgs) -> Result<broker::Config, String> {
    let mut c = match &args.config {
        Some(p) => broker::Config::from_file(p).map_err(|e| e.to_string())?,
        None => broker::Config::default(),
    };
    if let Some(v) = &args.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = args.mqtt_listen {
        c.mqtt_listen = v;
    }
    if let Some(v) = args.admin_listen {
        c.admin_listen = v;
    }
    if let Some(v) = args.metrics_listen {
        c.metrics_listen = v;
    }
    if let Some(v) = &args.backend {
        c.backend = v.clone();
    }
    if let Some(v) = &args.backend_ca {
        c.backend_ca = Some(v.clone());
    }
    if let Some(v) = args.store.as_ref().filter(|v| !v.is_empty()) {
        c.store.url = Some(v.clone());
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs `command` (the broker itself when there is none) with the loaded `config`.
async fn real_main(command: Option<Command>, config: broker::Config) -> Result<(), String> {
    let password = std::env::var("BROKER_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    match command {
        // Printed before the configuration is loaded (see `main`).
        Some(Command::PrintConfig) => Ok(()),
        Some(Command::Health { wait }) => {
            let ready = broker::health::wait(&config, std::time::Duration::from_secs(wait))
                .await
                .map_err(|e| format!("not ready: {e}"))?;
            println!(
                "ready: MQTT on {}, admin API on https://{}; clients' CA file: {}",
                ready.mqtt,
                ready.admin,
                ready.server_crt.display()
            );
            Ok(())
        }
        Some(Command::ImportCertificate(a)) => import_certificate(a, &config, password).await,
        None => broker::run(config, password, shutdown_signal())
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Applies `limits.malloc_arenas` (glibc's `M_ARENA_MAX`) before the runtimes start their
/// threads, unless `MALLOC_ARENA_MAX` is set (glibc has then applied it already) or the
/// setting is 0.
#[allow(unsafe_code)]
fn limit_malloc_arenas(arenas: usize) {
    if arenas == 0 || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tunable of glibc's allocator; called before any
        // thread of this process allocates concurrently.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            tracing::warn!(
                arenas,
                "could not limit glibc's malloc arenas (limits.malloc_arenas)"
            );
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", broker::config::DEFAULT_CONFIG_TOML);
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = match load_config(&cli.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    limit_malloc_arenas(config.limits.malloc_arenas);
    // The sessions' runtime: the devices' packets run on its workers (see
    // `limits.session_threads`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.session_threads())
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(real_main(cli.command, config)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
