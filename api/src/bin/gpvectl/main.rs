//! `gpvectl`: kubectl-like command line for a gpve (Proxmox VE compatible) server.

mod access;
mod actors;
mod apply;
mod config;
mod console;
mod ha;
mod network;
mod node;
mod output;
mod prompt;
mod storage;
mod tenant;
mod vc;
mod vm;
mod watch;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gpve_api::client::watch::WatchKind;
use gpve_api::client::{
    self, ApiToken, Auth, Client, ClientError, Fingerprint, ResourceType, TaskEntry, TaskFilter,
    Trust,
};
use serde::Serialize;

use config::Config;
use output::{Format, Table};

const EXAMPLES: &str = "\
Examples:
  # Log in; the first time, pin the certificate fingerprint that `gpve-server init`
  # printed (or `gpvectl fingerprint --cert DATA_DIR/cert.pem` shows on the server).
  gpvectl login --server https://pve1:8006 --user root@pam --fingerprint AB:CD:...:EF

  # Log in from a script, password on stdin
  echo \"$PW\" | gpvectl login --server pve1 --user root@pam --password-stdin --fingerprint AB:...

  # Use an API token instead of a password
  gpvectl login --server pve1 --token 'root@pam!ci=8d1c...' --fingerprint AB:...

  # Look around
  gpvectl get nodes
  gpvectl get tasks --node pve1 --limit 20
  gpvectl get resources --type vm -o json
  gpvectl version -o yaml

  # Declare VMs in a file and make them so (again: 'unchanged')
  gpvectl apply -f vms.yaml

Trust: gpvectl never trusts a server silently. It verifies the server against the
SHA-256 certificate fingerprint pinned at login (like Proxmox and ssh), or against a
CA bundle (--ca-file). A server whose certificate changes is refused and both
fingerprints are shown. --insecure-accept-fingerprint pins whatever the server presents
(trust on first use); use it only on a network you trust.

Config: ~/.config/gpve/config.yaml (mode 0600), or --config FILE / $GPVE_CONFIG.";

/// Command line client for gpve, the Proxmox VE compatible actor-based hypervisor
/// manager.
#[derive(Debug, Parser)]
#[command(name = "gpvectl", version, after_help = EXAMPLES)]
struct Cli {
    /// Config file holding the server, its pinned fingerprint and the session.
    #[arg(long, global = true, env = "GPVE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in to a server and store the session in the config file.
    #[command(after_help = "Examples:
  gpvectl login --server https://pve1:8006 --user root@pam --fingerprint AB:CD:...
  gpvectl login --server pve1 --user root@pam --ca-file /etc/gpve/ca.pem
  printf '%s\\n' \"$PW\" | gpvectl login --server pve1 --user root@pam --password-stdin
  gpvectl login --server pve1 --token 'root@pam!ci=SECRET' --fingerprint AB:CD:...

Without --fingerprint or --ca-file, the fingerprint pinned by an earlier login to the
same server is used; if there is none, gpvectl shows what the server presents and stops.")]
    Login(LoginArgs),
    /// Forget the session (the server and its pinned fingerprint stay).
    Logout,
    /// Show client and server versions.
    Version,
    /// List resources.
    #[command(after_help = "Examples:
  gpvectl get nodes
  gpvectl get tasks --node pve1 --limit 10 --errors
  gpvectl get resources --type storage -o yaml
  gpvectl get users -o json")]
    Get {
        #[command(subcommand)]
        what: GetCommand,
    },
    /// Inspect the supervision trees: every actor with its state, mailbox and restarts.
    Actors {
        #[command(subcommand)]
        what: actors::ActorsCommand,
    },
    /// Storages: list, get, create, delete.
    Storage {
        #[command(subcommand)]
        what: storage::StorageCommand,
    },
    /// Volumes: list, create, delete, snapshot.
    Volume {
        #[command(subcommand)]
        what: storage::VolumeCommand,
    },
    /// HA resources: add, remove, status.
    Ha {
        #[command(subcommand)]
        what: ha::HaCommand,
    },
    /// Cluster nodes: list (with liveness), cordon, uncordon, drain.
    Node {
        #[command(subcommand)]
        what: node::NodeCommand,
    },
    /// Bridges of a node: list, create, delete, apply, revert.
    Network {
        #[command(subcommand)]
        what: network::NetworkCommand,
    },
    /// Firewall: rules list|add|delete (cluster or --vm), enable, disable.
    Firewall {
        #[command(subcommand)]
        what: network::FirewallCommand,
    },
    /// Create or update VMs from gpve.io/v1 VirtualMachine manifests (YAML or JSON).
    #[command(after_help = apply::EXAMPLES)]
    Apply(apply::ApplyArgs),
    /// Virtual Kubernetes clusters: create, list, get, scale, upgrade, kubeconfig, delete.
    Vc {
        #[command(subcommand)]
        what: vc::VcCommand,
    },
    /// Virtual machines: list, get, create, start, stop, shutdown, delete, snapshot, clone, resize, move-disk, migrate.
    Vm {
        #[command(subcommand)]
        what: vm::VmCommand,
    },
    /// Users: list, create, delete (see `gpvectl acl --help` for how access works).
    #[command(after_help = access::ACCESS_HELP)]
    User {
        #[command(subcommand)]
        what: access::UserCommand,
    },
    /// Groups of users: list, create, delete.
    #[command(after_help = access::ACCESS_HELP)]
    Group {
        #[command(subcommand)]
        what: access::GroupCommand,
    },
    /// Roles (sets of privileges): list, create, delete.
    #[command(after_help = access::ACCESS_HELP)]
    Role {
        #[command(subcommand)]
        what: access::RoleCommand,
    },
    /// Access control: grant or remove a role on a path for a user, group or token.
    #[command(after_help = access::ACCESS_HELP)]
    Acl {
        #[command(subcommand)]
        what: access::AclCommand,
    },
    /// The tamper-evident audit log: list records, verify the hash chain.
    #[command(after_help = access::ACCESS_HELP)]
    Audit {
        #[command(subcommand)]
        what: access::AuditCommand,
    },
    /// Tenants: list, get, create, delete, bind a user, own a namespace.
    #[command(after_help = tenant::TENANCY_HELP)]
    Tenant {
        #[command(subcommand)]
        what: tenant::TenantCommand,
    },
    /// Quotas of a tenant: get, set (requests, limits, overcommit per resource).
    #[command(after_help = tenant::TENANCY_HELP)]
    Quota {
        #[command(subcommand)]
        what: tenant::QuotaCommand,
    },
    /// Live terminal view of the supervision trees and their events (q quits).
    #[command(
        after_help = "Keys: q quit, arrows/j/k select, m/r/s sort by mailbox, msgs/s or
restarts (again: tree order), / filter by path, kind or state, Esc clear the filter."
    )]
    Console(console::ConsoleArgs),
    /// Print the SHA-256 fingerprint of a certificate file or of what a server presents.
    #[command(after_help = "Examples:
  # On the server: the value clients should pin
  gpvectl fingerprint --cert /var/lib/gpve/cert.pem
  # From a client: what the server presents (compare it before trusting it)
  gpvectl fingerprint --server https://pve1:8006")]
    Fingerprint {
        /// PEM certificate file.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "server",
            required_unless_present = "server"
        )]
        cert: Option<PathBuf>,
        /// Server to connect to (no request is sent).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// Server URL: https://HOST[:PORT] (port 8006 if omitted). Defaults to the server of
    /// the current config.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// User to log in as, USER@REALM (e.g. root@pam).
    #[arg(
        long,
        short = 'u',
        value_name = "USER@REALM",
        required_unless_present = "token"
    )]
    user: Option<String>,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long, conflicts_with = "token")]
    password_stdin: bool,
    /// Authenticate with an API token USER@REALM!TOKENID=SECRET instead of a password.
    #[arg(long, value_name = "TOKEN", conflicts_with = "user")]
    token: Option<String>,
    /// Pin this SHA-256 certificate fingerprint (AB:CD:... as `gpve-server init` printed it).
    #[arg(long, value_name = "SHA256", conflicts_with_all = ["ca_file", "insecure_accept_fingerprint"])]
    fingerprint: Option<String>,
    /// Verify the server certificate against this PEM CA bundle instead of a fingerprint.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "insecure_accept_fingerprint"
    )]
    ca_file: Option<PathBuf>,
    /// Pin whatever fingerprint the server presents now (trust on first use). The
    /// fingerprint is printed; later logins refuse a different one.
    #[arg(long)]
    insecure_accept_fingerprint: bool,
}

#[derive(Debug, Subcommand)]
enum GetCommand {
    /// Cluster nodes with status, CPU, memory and uptime.
    Nodes,
    /// Recent tasks (newest first), of one node or of all nodes.
    Tasks(TasksArgs),
    /// Cluster resources: VMs, nodes, storage.
    Resources {
        /// Only this kind of resource.
        #[arg(long = "type", value_enum)]
        resource_type: Option<ResourceKind>,
    },
    /// Users.
    Users,
}

#[derive(Debug, Args)]
struct TasksArgs {
    /// Only this node (default: every node).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// At most this many tasks per node.
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: u64,
    /// Only failed tasks.
    #[arg(long)]
    errors: bool,
    /// Only tasks of this VM.
    #[arg(long, value_name = "VMID")]
    vmid: Option<u32>,
    /// Only tasks of this type (e.g. qmstart).
    #[arg(long = "type", value_name = "TYPE")]
    task_type: Option<String>,
    /// After the list, print each task start and end as it happens, until Ctrl-C.
    #[arg(short = 'w', long)]
    watch: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ResourceKind {
    Vm,
    Node,
    Storage,
    Sdn,
}

impl From<ResourceKind> for ResourceType {
    fn from(k: ResourceKind) -> Self {
        match k {
            ResourceKind::Vm => Self::Vm,
            ResourceKind::Node => Self::Node,
            ResourceKind::Storage => Self::Storage,
            ResourceKind::Sdn => Self::Sdn,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = match &cli.config {
        Some(p) => p.clone(),
        None => config::default_path()?,
    };
    match cli.command {
        Command::Login(args) => login(&config_path, args).await,
        Command::Logout => logout(&config_path),
        Command::Fingerprint { cert, server } => fingerprint(cert, server).await,
        Command::Version => version(&config_path, cli.output).await,
        Command::Get { what } => {
            let session = Session::open(&config_path).await?;
            let result = get(&session, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Storage { what } => {
            let session = Session::open(&config_path).await?;
            let result = storage::run_storage(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Apply(args) => {
            let session = Session::open(&config_path).await?;
            let result = apply::run(&session.client, args, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Vc { what } => {
            let session = Session::open(&config_path).await?;
            let result = vc::run(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Vm { what } => {
            let session = Session::open(&config_path).await?;
            let result = vm::run(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Volume { what } => {
            let session = Session::open(&config_path).await?;
            let result = storage::run_volume(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Ha { what } => {
            let session = Session::open(&config_path).await?;
            let result = ha::run(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Node { what } => {
            let session = Session::open(&config_path).await?;
            let result = node::run(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Network { what } => {
            let session = Session::open(&config_path).await?;
            let result = network::run_network(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Firewall { what } => {
            let session = Session::open(&config_path).await?;
            let result = network::run_firewall(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Actors { what } => {
            let session = Session::open(&config_path).await?;
            let result = actors::run(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::User { what } => {
            let session = Session::open(&config_path).await?;
            let result = access::run_user(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Group { what } => {
            let session = Session::open(&config_path).await?;
            let result = access::run_group(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Role { what } => {
            let session = Session::open(&config_path).await?;
            let result = access::run_role(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Acl { what } => {
            let session = Session::open(&config_path).await?;
            let result = access::run_acl(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Audit { what } => {
            let session = Session::open(&config_path).await?;
            let result = access::run_audit(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Tenant { what } => {
            let session = Session::open(&config_path).await?;
            let result = tenant::run_tenant(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Quota { what } => {
            let session = Session::open(&config_path).await?;
            let result = tenant::run_quota(&session.client, what, cli.output).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
        Command::Console(args) => {
            let session = Session::open(&config_path).await?;
            let result = console::run(session.client.clone(), args).await;
            session.persist_renewed_ticket().await?;
            result.map_err(|e| session.explain(e))
        }
    }
}

/// Turns client errors into messages that say what to do.
fn explain(err: ClientError, via_token: bool) -> anyhow::Error {
    match &err {
        ClientError::Api { status: 401, .. } if via_token => {
            anyhow!(
                "the server rejected the API token (401): run `gpvectl login --token ...` with a valid token"
            )
        }
        ClientError::Api { status: 401, .. } => {
            anyhow!("login expired or was revoked (401): run `gpvectl login` again")
        }
        ClientError::Api { status: 403, .. } => {
            anyhow!("{err}\n(your user lacks the privilege for this; ask an administrator)")
        }
        _ => anyhow::Error::new(err),
    }
}

struct Session {
    client: Client,
    config: Config,
    config_path: PathBuf,
}

impl Session {
    async fn open(config_path: &Path) -> anyhow::Result<Self> {
        let not_logged_in = || {
            anyhow!(
                "not logged in (no session in {}): run `gpvectl login --server https://HOST:8006 --user root@pam --fingerprint ...` first",
                config_path.display()
            )
        };
        let config = config::load(config_path)?.ok_or_else(not_logged_in)?;
        let mut builder = Client::builder(&config.server).trust(trust_of(&config)?);
        match (&config.token, &config.ticket) {
            (Some(token), _) => builder = builder.token(ApiToken::parse(token)?),
            (None, Some(ticket)) => builder = builder.ticket(ticket.clone()),
            (None, None) => return Err(not_logged_in()),
        }
        Ok(Self {
            client: builder.build()?,
            config,
            config_path: config_path.to_owned(),
        })
    }

    fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        match err.downcast::<ClientError>() {
            Ok(e) => explain(e, self.config.token.is_some()),
            Err(other) => other,
        }
    }

    /// The client renews old tickets transparently; keep the fresh one.
    async fn persist_renewed_ticket(&self) -> anyhow::Result<()> {
        if let Some(Auth::Ticket(t)) = self.client.auth().await
            && self.config.ticket.as_ref() != Some(&t)
        {
            let mut config = self.config.clone();
            config.ticket = Some(t);
            config::save(&self.config_path, &config)?;
        }
        Ok(())
    }
}

fn trust_of(config: &Config) -> anyhow::Result<Trust> {
    match (&config.fingerprint, &config.ca_file) {
        (Some(fp), _) => Ok(Trust::Fingerprint(Fingerprint::parse(fp)?)),
        (None, Some(ca)) => Ok(Trust::CaFile(ca.clone())),
        (None, None) => bail!(
            "the config names no way to trust {}: log in again with --fingerprint or --ca-file",
            config.server
        ),
    }
}

async fn login(config_path: &Path, args: LoginArgs) -> anyhow::Result<()> {
    let previous = config::load(config_path)?;
    let server_input = match (&args.server, &previous) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => p.server.clone(),
        (None, None) => bail!("--server is required for the first login"),
    };
    let server = client::normalize_server_url(&server_input)?.to_string();
    let same_server = previous.as_ref().filter(|p| p.server == server);

    let mut config = Config {
        server: server.clone(),
        ..Config::default()
    };
    if let Some(fp) = &args.fingerprint {
        config.fingerprint = Some(Fingerprint::parse(fp)?.to_string());
    } else if let Some(ca) = &args.ca_file {
        let ca = std::fs::canonicalize(ca)
            .with_context(|| format!("cannot open CA file {}", ca.display()))?;
        config.ca_file = Some(ca);
    } else if args.insecure_accept_fingerprint {
        let presented = client::probe_fingerprint(&server).await?;
        eprintln!(
            "warning: trusting the certificate {server} presents without verification:\n  SHA-256 fingerprint {presented}"
        );
        config.fingerprint = Some(presented.to_string());
    } else if let Some(prev) = same_server
        && (prev.fingerprint.is_some() || prev.ca_file.is_some())
    {
        config.fingerprint = prev.fingerprint.clone();
        config.ca_file = prev.ca_file.clone();
    } else {
        let presented = client::probe_fingerprint(&server).await?;
        bail!(
            "the server at {server} is not trusted yet; it presents the certificate with SHA-256 fingerprint\n  {presented}\nCompare it with the fingerprint `gpve-server init` printed (or `gpvectl fingerprint --cert DATA_DIR/cert.pem` on the server), then run again with --fingerprint {presented}"
        );
    }
    let builder = Client::builder(&server).trust(trust_of(&config)?);

    if let Some(token_text) = &args.token {
        let token = ApiToken::parse(token_text)?;
        let client = builder.token(token.clone()).build()?;
        // Any authenticated call proves the token; /version needs no privilege.
        client
            .version()
            .await
            .map_err(|e| explain_login(e, &server, token.userid()))?;
        config.user = Some(token.userid().to_owned());
        config.token = Some(token_text.trim().to_owned());
        config::save(config_path, &config)?;
        eprintln!(
            "logged in to {server} with API token {} (config {})",
            token.full_tokenid,
            config_path.display()
        );
        return Ok(());
    }

    let user = args
        .user
        .clone()
        .ok_or_else(|| anyhow!("--user USER@REALM (or --token) is required"))?;
    let client = builder.build()?;
    // Check the pinned fingerprint before asking for the password, so a mismatch never
    // costs a secret.
    if let Some(expected) = &config.fingerprint {
        let expected = Fingerprint::parse(expected)?;
        let presented = client::probe_fingerprint(&server).await?;
        if presented != expected {
            return Err(ClientError::FingerprintMismatch {
                url: server,
                expected,
                presented,
            }
            .into());
        }
    }
    let password = if args.password_stdin {
        prompt::read_password_stdin()?
    } else {
        prompt::prompt_password(&format!("Password for {user} at {server}: "))?
    };
    let ticket = client
        .login(&user, &password)
        .await
        .map_err(|e| explain_login(e, &server, &user))?;
    config.user = Some(ticket.username.clone());
    config.ticket = Some(ticket);
    config::save(config_path, &config)?;
    eprintln!(
        "logged in to {server} as {user} (config {})",
        config_path.display()
    );
    Ok(())
}

fn explain_login(err: ClientError, server: &str, user: &str) -> anyhow::Error {
    if err.is_unauthorized() {
        anyhow!("login failed: {server} rejected the credentials of {user} (401)")
    } else {
        anyhow::Error::new(err)
    }
}

fn logout(config_path: &Path) -> anyhow::Result<()> {
    let Some(mut config) = config::load(config_path)? else {
        eprintln!("not logged in");
        return Ok(());
    };
    config.ticket = None;
    config.token = None;
    config::save(config_path, &config)?;
    eprintln!("logged out of {}", config.server);
    Ok(())
}

async fn fingerprint(cert: Option<PathBuf>, server: Option<String>) -> anyhow::Result<()> {
    let fp = match (cert, server) {
        (Some(path), _) => Fingerprint::of_pem_file(&path)?,
        (None, Some(server)) => client::probe_fingerprint(&server).await?,
        (None, None) => bail!("give --cert FILE or --server URL"),
    };
    println!("{fp}");
    Ok(())
}

#[derive(Serialize)]
struct Versions {
    client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<client::VersionInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_url: Option<String>,
}

async fn version(config_path: &Path, format: Format) -> anyhow::Result<()> {
    let client_version = env!("CARGO_PKG_VERSION").to_owned();
    let has_session =
        config::load(config_path)?.is_some_and(|c| c.ticket.is_some() || c.token.is_some());
    let mut versions = Versions {
        client: client_version,
        server: None,
        server_url: None,
    };
    if has_session {
        let session = Session::open(config_path).await?;
        let server = session.client.version().await;
        session.persist_renewed_ticket().await?;
        versions.server = Some(server.map_err(|e| session.explain(e.into()))?);
        versions.server_url = Some(session.config.server.clone());
    }
    output::print(format, &versions, "versions", || {
        let mut rows = vec![vec![
            "client".into(),
            versions.client.clone(),
            output::dash(),
        ]];
        match &versions.server {
            Some(s) => rows.push(vec![
                "server".into(),
                s.version.clone(),
                versions.server_url.clone().unwrap_or_else(output::dash),
            ]),
            None => rows.push(vec![
                "server".into(),
                "(not logged in)".into(),
                output::dash(),
            ]),
        }
        Table {
            headers: vec!["COMPONENT", "VERSION", "SERVER"],
            rows,
        }
    })
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn get(session: &Session, what: GetCommand, format: Format) -> anyhow::Result<()> {
    let client = &session.client;
    match what {
        GetCommand::Nodes => {
            let nodes = client.nodes().await?;
            output::print(format, &nodes, "nodes", || Table {
                headers: vec!["NAME", "STATUS", "CPU", "CPUS", "MEMORY", "UPTIME"],
                rows: nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.node.clone(),
                            n.status.clone(),
                            output::percent(n.cpu),
                            n.maxcpu.map_or_else(output::dash, |c| c.to_string()),
                            output::used_of(n.mem, n.maxmem),
                            output::duration(n.uptime),
                        ]
                    })
                    .collect(),
            })
        }
        GetCommand::Tasks(args) => {
            let watching = match args.watch {
                true => Some(watch::open(client, WatchKind::Task, args.node.as_deref()).await?),
                false => None,
            };
            let filter = TaskFilter {
                limit: Some(args.limit),
                errors: args.errors.then_some(true),
                vmid: args.vmid,
                typefilter: args.task_type.clone(),
                ..TaskFilter::default()
            };
            let nodes = match &args.node {
                Some(n) => vec![n.clone()],
                None => client.nodes().await?.into_iter().map(|n| n.node).collect(),
            };
            let mut tasks: Vec<TaskEntry> = Vec::new();
            for node in &nodes {
                tasks.extend(client.tasks(node, &filter).await?);
            }
            tasks.sort_by_key(|t| std::cmp::Reverse(t.starttime));
            let now = now_unix_s();
            output::print(format, &tasks, "tasks", || Table {
                headers: vec!["NODE", "TYPE", "ID", "USER", "STATUS", "AGE", "UPID"],
                rows: tasks
                    .iter()
                    .map(|t| {
                        let status = match (&t.status, t.endtime) {
                            (Some(s), _) => s.clone(),
                            (None, None) => "running".into(),
                            (None, Some(_)) => output::dash(),
                        };
                        vec![
                            t.node.clone(),
                            t.task_type.clone(),
                            output::opt(Some(&t.id)),
                            t.user.clone(),
                            status,
                            output::duration(t.starttime.map(|s| now.saturating_sub(s))),
                            t.upid.clone(),
                        ]
                    })
                    .collect(),
            })?;
            match watching {
                Some(stream) => watch::follow(stream, format).await,
                None => Ok(()),
            }
        }
        GetCommand::Resources { resource_type } => {
            let resources = client
                .cluster_resources(resource_type.map(Into::into))
                .await?;
            output::print(format, &resources, "resources", || Table {
                headers: vec![
                    "ID", "TYPE", "NODE", "STATUS", "NAME", "CPU", "MEMORY", "DISK",
                ],
                rows: resources
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.resource_type.clone(),
                            output::opt(r.node.as_deref()),
                            output::opt(r.status.as_deref()),
                            output::opt(r.name.as_deref().or(r.storage.as_deref())),
                            output::percent(r.cpu),
                            output::used_of(r.mem, r.maxmem),
                            output::used_of(r.disk, r.maxdisk),
                        ]
                    })
                    .collect(),
            })
        }
        GetCommand::Users => {
            let users = client.users().await?;
            output::print(format, &users, "users", || Table {
                headers: vec!["USERID", "ENABLED", "EMAIL", "COMMENT"],
                rows: users
                    .iter()
                    .map(|u| {
                        vec![
                            u.userid.clone(),
                            u.enable
                                .map_or("yes", |e| if e { "yes" } else { "no" })
                                .into(),
                            output::opt(u.email.as_deref()),
                            output::opt(u.comment.as_deref()),
                        ]
                    })
                    .collect(),
            })
        }
    }
}
