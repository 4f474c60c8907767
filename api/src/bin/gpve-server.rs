//! `gpve-server`: the gpve control plane (store, REST API, cluster singletons, and in
//! single-node mode the local node agent).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gpve_api::datadir::{DataDir, NodeConfig, hostname};
use gpve_api::server::{ServeOptions, start_with_cluster};
use tokio::signal::unix::{SignalKind, signal};

/// gpve control-plane server: a Proxmox VE compatible API over actors.
#[derive(Debug, Parser)]
#[command(name = "gpve-server", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: store, self-signed TLS certificate, ticket-signing secret
    /// and the administrator `root@pam`. Refuses an already initialised directory.
    Init(InitArgs),
    /// Serve the API over HTTPS (and the cluster's gRPC services) from an initialised data
    /// directory until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Bootstrap tokens that let `gpve-agent join` add a node to this cluster.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new join token: `gpve1.<CA sha256>.<id>.<secret>`. The agent pins the
    /// cluster CA by the fingerprint, so it needs no other trust setup. Only a hash of the
    /// secret is kept. Works while the server runs.
    Create(TokenCreateArgs),
}

#[derive(Debug, Args)]
struct TokenCreateArgs {
    /// Data directory of the server.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// How long the token stays valid: a number with s, m, h or d (e.g. 30m, 1h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl_s)]
    ttl: i64,
    /// Let the token join any number of nodes until it expires (default: one node).
    #[arg(long)]
    reusable: bool,
    /// A note kept with the token.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
}

/// Seconds in `30s`, `15m`, `1h`, `7d`.
fn parse_ttl_s(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30m, 1h or 7d"))?;
    let factor = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit '{unit}' (use s, m, h or d)")),
    };
    match n.checked_mul(factor) {
        Some(ttl) if ttl > 0 && ttl <= 365 * 86_400 => Ok(ttl),
        _ => Err(format!("'{s}' must be between 1s and 365d")),
    }
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Data directory to create (mode 0700).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Password of `root@pam` (prefer --root-password-file: command lines are visible to
    /// other users).
    #[arg(
        long,
        value_name = "PW",
        env = "GPVE_ROOT_PASSWORD",
        hide_env_values = true
    )]
    root_password: Option<String>,
    /// File whose first line is the password of `root@pam`.
    #[arg(long, value_name = "FILE", conflicts_with = "root_password")]
    root_password_file: Option<PathBuf>,
    /// Name of this node (default: the host name).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Name of the cluster, reported at login.
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Data directory made by `gpve-server init`.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address and port to serve HTTPS on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8006")]
    listen: SocketAddr,
    /// Log format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Delay before answering a failed login, in milliseconds (slows password guessing).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    login_failure_delay_ms: u64,
    /// Export the tracing spans with OpenTelemetry (OTLP over HTTP/protobuf) to this URL,
    /// e.g. `http://127.0.0.1:4318/v1/traces`. Off when not given. The batch exporter
    /// honours the standard `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_*` variables.
    #[arg(long, value_name = "URL", env = "GPVE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Address and port of the gRPC services agents use (join, node sessions).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8007")]
    grpc_listen: SocketAddr,
    /// `host:port` joined agents dial afterwards (default: the address they joined by).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Address and port of the node sessions (ractor_cluster over mutual TLS; the actor
    /// console reaches agents through them). Default: the gRPC address with port 8008 (an ephemeral port when gRPC's is 0).
    #[arg(long, value_name = "ADDR:PORT")]
    session_listen: Option<SocketAddr>,
}

/// The OTLP span exporter behind the `tracing` layer; `None` when export is off.
fn otlp_provider(
    endpoint: Option<&str>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("gpve-server")
        .build();
    // The batch processor exports from its own thread, so a slow collector never holds
    // up a request; spans beyond its queue (OTEL_BSP_MAX_QUEUE_SIZE) are dropped.
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// stderr logging (human or JSON) and, when `otlp` is given, span export.
fn init_logging(format: LogFormat, otlp: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let otel = otlp.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("gpve-server")));
    // Colours only on a terminal: a log file or journald would keep the escape codes.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Human => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
}

async fn init(args: InitArgs) -> anyhow::Result<()> {
    let password = match (&args.root_password, &args.root_password_file) {
        (Some(pw), None) => pw.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        _ => bail!("give the root password with --root-password or --root-password-file"),
    };
    let node = NodeConfig {
        node_name: args.node_name.unwrap_or_else(hostname),
        cluster_name: args.cluster_name,
    };
    let node_name = node.node_name.clone();
    let cluster_name = node.cluster_name.clone().unwrap_or_else(|| "gpve".into());
    let fp = DataDir::new(&args.data_dir)
        .init(&password, node)
        .await
        .with_context(|| format!("initialising {}", args.data_dir.display()))?;
    let ca = gpve_api::cluster::files::ClusterFiles::new(&args.data_dir)
        .ensure_ca(&cluster_name)
        .context("creating the cluster CA")?;
    println!(
        "initialised {} for node {node_name}\ncertificate fingerprint (SHA-256): {fp}\ncluster CA fingerprint (SHA-256): {}",
        args.data_dir.display(),
        ca.fingerprint()
    );
    Ok(())
}

fn token_create(args: TokenCreateArgs) -> anyhow::Result<()> {
    let (node_cfg, _) = DataDir::new(&args.data_dir)
        .load()
        .with_context(|| format!("reading {}", args.data_dir.display()))?;
    let (token, record) = gpve_api::cluster::create_token(
        &args.data_dir,
        node_cfg.cluster_name.as_deref(),
        args.ttl,
        args.reusable,
        args.description,
    )
    .context("creating the token")?;
    println!("{token}");
    eprintln!(
        "token {} valid for {} s ({}); join a node with:\n  gpve-agent join --server https://{}:8006 --token <token> --data-dir DIR",
        record.id,
        args.ttl,
        if record.reusable {
            "reusable"
        } else {
            "single use"
        },
        node_cfg.node_name
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let otlp = otlp_provider(args.otlp_endpoint.as_deref())?;
    init_logging(args.log_format, otlp.as_ref());
    if let Some(endpoint) = &args.otlp_endpoint {
        tracing::info!(endpoint = %endpoint, "exporting spans over OTLP");
    }
    let server = start_with_cluster(
        ServeOptions {
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            login_failure_delay_ms: args.login_failure_delay_ms,
        },
        Some(args.grpc_listen),
        args.advertise,
        args.session_listen,
    )
    .await
    .with_context(|| format!("starting from {}", args.data_dir.display()))?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        _ = server.wait_exit() => {
            bail!("the root supervisor exited: a component kept failing (see the log above)");
        }
    }
    server.shutdown().await;
    if let Some(provider) = otlp {
        // Flushes the spans still queued; the blocking HTTP client must not run (or be
        // dropped) on a runtime thread.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("gpve-server: flushing the OTLP exporter failed: {e}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => init(args).await,
        Command::Run(args) => run(args).await,
        Command::Token(TokenCommand::Create(args)) => token_create(args),
    }
}
