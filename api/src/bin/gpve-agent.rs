//! `gpve-agent`: a compute node of a gpve cluster.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gpve_api::agent::{AgentDir, JoinOptions, NodeRunOptions, SessionTiming, join, start_node};
use gpve_transport::grpc::{DEFAULT_GRPC_PORT, GrpcTransport};
use tokio::signal::unix::{SignalKind, signal};

/// gpve compute node: joins a gpve-server with a bootstrap token, then runs the node's VMs,
/// storage and network against the server's store over a mutual-TLS session (heartbeats
/// every second renew the node's lease) and serves the API calls the server forwards.
#[derive(Debug, Parser)]
#[command(
    name = "gpve-agent",
    version,
    about,
    after_help = "Example:\n  \
        # on the server\n  \
        gpve-server token create --data-dir /var/lib/gpve\n  \
        # on the new node\n  \
        gpve-agent join --server https://SERVER:8006 --token gpve1.… --data-dir /var/lib/gpve-agent\n  \
        gpve-agent run --data-dir /var/lib/gpve-agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a cluster: create this node's key, exchange the token and a CSR for a
    /// certificate signed by the cluster CA, and store them in the data directory. The
    /// server is trusted only if it presents the CA whose fingerprint the token carries.
    Join(JoinArgs),
    /// Run the node from a joined data directory until SIGTERM or SIGINT. Reconnects by
    /// itself after any outage of the server or the network.
    Run(RunArgs),
    /// Guard this node's HA VMs while the agent cannot (started by `run`): kill them when
    /// the agent stops renewing its lease deadline in DIR/fence/pet.json.
    Watchdog {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The server's API URL (https://HOST:8006); the join goes to HOST's gRPC port.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The server's gRPC port (gpve-server run --grpc-listen).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_GRPC_PORT)]
    grpc_port: u16,
    /// Bootstrap token from `gpve-server token create` (or the GPVE_TOKEN variable).
    #[arg(long, value_name = "TOKEN", env = "GPVE_TOKEN", hide_env_values = true)]
    token: String,
    /// Where to keep this node's identity (created, mode 0700).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Name of this node in the cluster (default: the host name).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Where `run` serves the API calls the server forwards to this node (HOST:PORT,
    /// mutual TLS; only the server may connect). Saved in the data directory.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Data directory made by `gpve-agent join`.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Milliseconds between heartbeats.
    #[arg(long, value_name = "MS", default_value_t = gpve_api::cluster::HEARTBEAT_INTERVAL_MS)]
    heartbeat_interval_ms: u64,
    /// Longest wait between two reconnection attempts, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    reconnect_max_ms: u64,
    /// Log format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Where to serve the API calls the server forwards (default: `join --listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// HOST:PORT the server should dial for this node's API (default: the bound address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise_api: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `host:port` of the gRPC service from the API URL.
fn grpc_endpoint(server: &str, grpc_port: u16) -> anyhow::Result<String> {
    let with_scheme = if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .with_context(|| format!("--server {server} is not a URL like https://HOST:8006"))?;
    // IPv6 hosts keep their brackets here, as `host:port` needs them.
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        bail!("--server {server} names no host");
    };
    Ok(format!("{host}:{grpc_port}"))
}

async fn run_join(args: JoinArgs) -> anyhow::Result<()> {
    let endpoint = grpc_endpoint(&args.server, args.grpc_port)?;
    let node_name = args.node_name.unwrap_or_else(gpve_api::datadir::hostname);
    let config = join(
        &GrpcTransport::default(),
        JoinOptions {
            data_dir: args.data_dir.clone(),
            endpoint: endpoint.clone(),
            token: args.token,
            node_name,
        },
    )
    .await
    .with_context(|| format!("joining through {endpoint}"))?;
    if let Some(listen) = args.listen {
        AgentDir::new(&args.data_dir)
            .save_api_listen(&listen.to_string())
            .context("saving --listen")?;
    }
    println!(
        "joined as node {} (server {}); start it with:\n  gpve-agent run --data-dir {}",
        config.node_name,
        config.server_endpoint,
        args.data_dir.display()
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let timing = SessionTiming {
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        reconnect_max_ms: args.reconnect_max_ms,
        ..SessionTiming::default()
    };
    let agent = start_node(
        &args.data_dir,
        NodeRunOptions {
            timing,
            api_listen: args.listen,
            api_advertise: args.advertise_api,
        },
    )
    .await
    .with_context(|| format!("starting from {}", args.data_dir.display()))?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        _ = agent.wait_exit() => {
            bail!("the root supervisor exited: a component kept failing (see the log above)");
        }
    }
    agent.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Join(args) => run_join(args).await,
        Command::Run(args) => run(args).await,
        Command::Watchdog { data_dir } => Ok(gpve_api::agent::fence::run_watchdog(&data_dir)?),
    }
}
