//! `gpve-server`: the gpve control plane (store, REST API, cluster singletons, and in
//! single-node mode the local node agent).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gpve_api::datadir::{DataDir, NodeConfig, hostname};
use gpve_api::server::{ServeOptions, start};
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
    /// Serve the API over HTTPS from an initialised data directory until SIGTERM or SIGINT.
    Run(RunArgs),
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
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
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
    let fp = DataDir::new(&args.data_dir)
        .init(&password, node)
        .await
        .with_context(|| format!("initialising {}", args.data_dir.display()))?;
    println!(
        "initialised {} for node {node_name}\ncertificate fingerprint (SHA-256): {fp}",
        args.data_dir.display()
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let server = start(ServeOptions {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        login_failure_delay_ms: args.login_failure_delay_ms,
    })
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
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => init(args).await,
        Command::Run(args) => run(args).await,
    }
}
