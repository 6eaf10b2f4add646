//! `loadtest`: simulate a fleet of certificate-authenticated MQTT devices against a broker
//! on this machine. See `loadtest run --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use loadtest::{Config, KeyType, MqttVersion, Scenario};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Device-fleet load generator for mTLS MQTT brokers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect a fleet of devices, publish, measure, and report.
    Run(Box<RunArgs>),
    /// Compare two JSON reports side by side (ratio = candidate / baseline).
    Compare {
        /// Report of the reference broker.
        baseline: PathBuf,
        /// Report of the broker being compared.
        candidate: PathBuf,
        /// Column names, `BASELINE,CANDIDATE`.
        #[arg(long, default_value = "baseline,candidate")]
        names: String,
    },
    /// Markdown tables of a benchmark run: every `<test>.<broker>.<repetition>.json` of a
    /// directory, medians over repetitions, ratios product/mosquitto, product/direct and
    /// product-first/mosquitto.
    Summary {
        /// Directory with the reports.
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Steady,
    Storm,
    Revoke,
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyTypeArg {
    P256,
    Rsa2048,
}

#[derive(Clone, Copy, ValueEnum)]
enum MqttArg {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
}

#[derive(clap::Args)]
struct RunArgs {
    /// MQTT/TLS address of the broker, HOST:PORT (loopback only); several comma-separated
    /// addresses spread the devices round-robin over them.
    #[arg(long)]
    broker: String,
    /// Plain TCP, no TLS and no certificates (loopback only): to reach a broker's plain
    /// listener directly, e.g. the product's embedded rumqttd. ClientIds get the run id.
    #[arg(long, visible_alias = "no-tls", conflicts_with_all = ["ca_cert", "ca_key", "server_ca", "admin"])]
    plain: bool,
    /// With --plain: a file with the MQTT username (first line) and password (second line)
    /// sent in every CONNECT, e.g. the product's DATA_DIR/backend-credential (written with
    /// embedded.transport = "loopback").
    #[arg(long, requires = "plain")]
    credentials_file: Option<PathBuf>,
    /// Number of devices (at most 100000).
    #[arg(long)]
    devices: usize,
    /// New connections per second (steady and revoke scenarios).
    #[arg(long, default_value_t = 500.0, value_parser = parse_rate)]
    connect_rate: f64,
    /// Most connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Milliseconds between two PUBLISH of one device.
    #[arg(long, default_value_t = 100)]
    publish_interval: u64,
    /// PUBLISH packets per device.
    #[arg(long, default_value_t = 10)]
    messages: u32,
    /// Tenant to create and upload the CA to (default: a fresh one per run).
    #[arg(long)]
    tenant: Option<String>,
    /// Keep the tenant the run created (default: deleted when the run ends).
    #[arg(long)]
    keep: bool,
    /// Retries of a device turned away by the broker's admission control (closed before
    /// the TLS handshake) or timed out: exponential back-off with full jitter (a pause
    /// drawn below 250 ms, 500 ms, ... up to 4 s), as device SDKs do; counted apart in
    /// the report (0: no retry).
    #[arg(long, default_value_t = 5)]
    connect_retries: u32,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// QoS of publications and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Subscribers receiving and timing every message.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Time limit of the run in seconds (certificate generation excluded).
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Key algorithm of generated certificates.
    #[arg(long, value_enum, default_value = "p256")]
    key_type: KeyTypeArg,
    /// MQTT protocol version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    mqtt: MqttArg,
    /// Source addresses bound round-robin, e.g. 127.0.0.1-127.0.0.20 (default: 127.0.0.1-127.0.0.16).
    #[arg(long)]
    source_ips: Option<String>,
    /// Write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Arrival pattern.
    #[arg(long, value_enum, default_value = "steady")]
    scenario: ScenarioArg,
    /// Broker process id, to report its resident memory before and after.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Admin API base URL, e.g. https://127.0.0.1:8443 (loopback only).
    #[arg(long)]
    admin: Option<String>,
    /// Management user of the admin API.
    #[arg(long, default_value = "management/admin")]
    admin_user: String,
    /// Password of the management user.
    #[arg(long, env = "BROKER_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Existing CA certificate (PEM) to sign device certificates with.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Do not create a tenant nor upload the CA (the broker already trusts --ca-cert).
    #[arg(long)]
    no_upload: bool,
    /// PEM that verifies the broker's TLS certificate (MQTT and admin API); required
    /// unless --plain.
    #[arg(long, required_unless_present = "plain")]
    server_ca: Option<PathBuf>,
    /// MQTT keep-alive in seconds.
    #[arg(long, default_value_t = 60)]
    keep_alive: u64,
    /// Seconds allowed for one connection attempt (TCP, TLS, CONNACK).
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds to wait, after the last device finished publishing, for the subscribers to
    /// receive what is still on its way (undelivered messages then count as lost).
    #[arg(long, default_value_t = 3)]
    drain_timeout: u64,
    /// Once every device has connected and published, hold the idle sessions open this
    /// many seconds before reading the broker's memory (per-connection memory).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Devices publish only once the whole fleet has connected (throughput with every
    /// session open, not mixed with handshakes).
    #[arg(long)]
    sync_start: bool,
    /// Do not show the progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches("/s")
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 500 or 500/s)"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?} must be a positive rate"))
    }
}

fn config(a: &RunArgs) -> Result<Config, loadtest::Error> {
    let source_ips = match &a.source_ips {
        Some(s) => Some(loadtest::config::parse_source_ips(s)?),
        None => None,
    };
    let login = match &a.credentials_file {
        Some(path) => Some(loadtest::Login::from_file(path)?),
        None => None,
    };
    Ok(Config {
        broker: a.broker.clone(),
        plain: a.plain,
        login,
        devices: a.devices,
        connect_rate: a.connect_rate,
        concurrency: a.concurrency,
        publish_interval: Duration::from_millis(a.publish_interval),
        messages: a.messages,
        tenant: a.tenant.clone(),
        payload: a.payload,
        qos: a.qos,
        subscribers: a.subscribers,
        duration: Duration::from_secs(a.duration),
        key_type: match a.key_type {
            KeyTypeArg::P256 => KeyType::P256,
            KeyTypeArg::Rsa2048 => KeyType::Rsa2048,
        },
        mqtt: match a.mqtt {
            MqttArg::V311 => MqttVersion::V311,
            MqttArg::V5 => MqttVersion::V5,
        },
        source_ips,
        scenario: match a.scenario {
            ScenarioArg::Steady => Scenario::Steady,
            ScenarioArg::Storm => Scenario::Storm,
            ScenarioArg::Revoke => Scenario::Revoke,
        },
        broker_pid: a.broker_pid,
        admin: a.admin.clone(),
        admin_user: a.admin_user.clone(),
        admin_password: a.admin_password.clone(),
        ca_cert: a.ca_cert.clone(),
        ca_key: a.ca_key.clone(),
        upload: !a.no_upload && !a.plain,
        server_ca: a.server_ca.clone(),
        hold: Duration::from_secs(a.hold),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        sync_start: a.sync_start,
        keep_alive: Duration::from_secs(a.keep_alive),
        connect_timeout: Duration::from_secs(a.connect_timeout),
        progress: !a.quiet,
        connect_retries: a.connect_retries,
        keep_tenant: a.keep,
    })
}

async fn run(a: RunArgs) -> Result<(), loadtest::Error> {
    let config = config(&a)?;
    config.validate()?;
    let report = loadtest::run(config).await?;
    println!("{}", report.summary_table());
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| loadtest::Error::Internal(format!("report: {e}")))?;
        std::fs::write(path, json + "\n").map_err(|source| loadtest::Error::File {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn read_report(path: &PathBuf) -> Result<loadtest::Report, loadtest::Error> {
    let text = std::fs::read_to_string(path).map_err(|source| loadtest::Error::File {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        loadtest::Error::Config(format!("{}: not a loadtest report: {e}", path.display()))
    })
}

fn compare(baseline: &PathBuf, candidate: &PathBuf, names: &str) -> Result<(), loadtest::Error> {
    let (a, b) = names.split_once(',').unwrap_or(("baseline", "candidate"));
    let text = loadtest::report::compare(&read_report(baseline)?, &read_report(candidate)?, (a, b));
    print!("{text}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(*args)),
        Command::Compare {
            baseline,
            candidate,
            names,
        } => compare(&baseline, &candidate, &names),
        Command::Summary { dir } => loadtest::summary::summarize_dir(&dir).map(|t| print!("{t}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: error: {e}");
            ExitCode::FAILURE
        }
    }
}
