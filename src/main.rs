//! `lakescore`: the model registry, the scoring worker and their command-line client: the
//! binary composes `lakescore-registry` and `lakescore-scorer` (itself the engine, lake,
//! Flight and SQL crates) and adds the CLI; no logic of theirs lives here.

mod client;
mod config;
mod login;
mod ops;
mod score;
mod sql;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use lakescore_registry::Registry;

use crate::client::{ClientArgs, ModelsCommand};
use crate::config::ServerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "lakescore",
    version,
    about = "Versioned ONNX model registry and batch-scoring server",
    long_about = "\
lakescore keeps versioned ONNX models (immutable versions identified by sha256, aliases such as \
fraud@champion, tags, signatures read from the ONNX file) and serves them over HTTP.

Start everything on embedded defaults (SQLite and files under ./lakescore-data):
    lakescore serve
Then register and inspect models:
    lakescore models register fraud model.onnx --alias champion
    lakescore models resolve fraud@champion

Every flag can also be set through the LAKESCORE_* environment variable named in its help."
)]
struct Cli {
    /// Log format: human-readable text or JSON lines.
    #[arg(long, env = "LAKESCORE_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry and a scoring worker in one process, on embedded defaults (the
    /// quickest way to start).
    Serve(ServerArgs),
    /// Run the registry alone (for production deployments).
    Registry(ServerArgs),
    /// Run a scoring worker (Arrow Flight) alone, resolving models from --registry-url.
    Scorer(ServerArgs),
    /// Validate the configuration (file, flags, environment) and print it; exits non-zero when it is wrong.
    CheckConfig(ServerArgs),
    /// Find artifacts that no version references (left by crashes); dry run unless --delete.
    Gc {
        #[command(flatten)]
        server: ServerArgs,
        /// Delete what is found.
        #[arg(long)]
        delete: bool,
        /// Only consider artifacts older than this many seconds (younger ones may belong to
        /// an upload in progress).
        #[arg(long, default_value_t = 3600)]
        min_age_secs: u64,
    },
    /// Get an access token from the OIDC issuer and cache it for the client commands.
    Login(login::LoginArgs),
    /// Score a Parquet or CSV file with a registered model through a scoring worker (Flight).
    Score(score::ScoreArgs),
    /// Run SQL on a scoring worker (Flight SQL): tables over Parquet/CSV/NDJSON in storage,
    /// predict('model@alias', columns…) to score, COPY (…) TO '<prefix>' to write results.
    Sql(sql::SqlArgs),
    /// Manage registered models through the registry's HTTP API.
    Models {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKESCORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(&args, true, true).await,
        Command::Registry(args) => serve(&args, true, false).await,
        Command::Scorer(args) => serve(&args, false, true).await,
        Command::CheckConfig(args) => {
            let settings = args.settle()?;
            settings.check_auth_posture(&[settings.registry.listen, settings.scorer.listen])?;
            // Printed for people and logs: no passwords, keys or secrets.
            let mut registry = settings.registry.clone();
            registry.database_url = registry.database_url.as_deref().map(lakescore_registry::db::redact_url);
            redact_secrets(registry.storage_options.iter_mut());
            let mut scorer = settings.scorer.clone();
            redact_secrets(scorer.storage_options.iter_mut());
            #[derive(serde::Serialize)]
            struct Effective<'a> {
                shutdown_grace_secs: u64,
                registry: &'a lakescore_registry::RegistryConfig,
                scorer: &'a lakescore_scorer::ScorerConfig,
                auth: &'a lakescore_registry::AuthConfig,
            }
            let effective = Effective {
                shutdown_grace_secs: settings.shutdown_grace.as_secs(),
                registry: &registry,
                scorer: &scorer,
                auth: &settings.auth,
            };
            println!("{}", toml::to_string_pretty(&effective)?);
            eprintln!("configuration OK");
            Ok(())
        }
        Command::Gc { server, delete, min_age_secs } => {
            let settings = server.settle()?;
            let registry = Registry::open(settings.registry, settings.auth).await?;
            let orphans = registry.gc(Duration::from_secs(min_age_secs), !delete).await?;
            for sha in &orphans {
                println!("{sha}");
            }
            eprintln!(
                "{} unreferenced artifact(s) {}",
                orphans.len(),
                if delete { "deleted" } else { "found (dry run; pass --delete to remove them)" }
            );
            Ok(())
        }
        Command::Models { mut client, command } => {
            // Without --token / LAKESCORE_TOKEN, the token `lakescore login` cached (refreshed
            // when it is about to expire and a refresh token is cached).
            if client.token.is_none() {
                client.token = login::current_token().await;
            }
            client::run(&client, command).await
        }
        Command::Score(mut args) => {
            if args.token.is_none() {
                args.token = login::current_token().await;
            }
            score::run(args).await
        }
        Command::Sql(mut args) => {
            if args.token.is_none() {
                args.token = login::current_token().await;
            }
            sql::run(args).await
        }
        Command::Login(args) => login::run(args).await,
    }
}

/// Runs the registry, the scoring worker, or both, until Ctrl-C / SIGTERM; then both drain.
async fn serve(args: &ServerArgs, with_registry: bool, with_scorer: bool) -> anyhow::Result<()> {
    let mut settings = args.settle()?;
    let mut listen = Vec::new();
    if with_registry {
        listen.push(settings.registry.listen);
    }
    if with_scorer {
        listen.push(settings.scorer.listen);
    }
    settings.check_auth_posture(&listen)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    // One token validator per process: in `serve` the worker shares the registry's (one
    // JWKS cache, one verified-token cache).
    let mut authenticator = None;
    let mut worker: Option<std::sync::Arc<lakescore_scorer::Scorer>> = None;
    if with_registry {
        let listen = settings.registry.listen;
        let registry = Registry::open(settings.registry.clone(), settings.auth.clone()).await?;
        authenticator = Some(registry.authenticator().clone());
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        if with_scorer && settings.scorer.model_source.is_empty() {
            // The worker in the same process reads models from this registry, over its
            // gRPC service (multiplexed on the HTTP port).
            let port = listener.local_addr()?.port();
            settings.scorer.model_source = format!("grpc://127.0.0.1:{port}");
        }
        let shutdown = shutdown();
        tasks.spawn(
            async move { lakescore_registry::serve(registry, listener, shutdown).await.context("registry failed") },
        );
    }
    if with_scorer {
        if settings.scorer.model_source.is_empty() {
            anyhow::bail!("the scoring worker needs --registry-url (LAKESCORE_REGISTRY_URL)");
        }
        let listen = settings.scorer.listen;
        let config = settings.scorer.clone();
        let scorer = tokio::task::spawn_blocking(move || lakescore_scorer::Scorer::from_config(config))
            .await?
            .map_err(|e| anyhow::anyhow!("cannot start the scoring worker: {e}"))?;
        let scorer = std::sync::Arc::new(scorer);
        worker = Some(scorer.clone());
        let mut service =
            lakescore_scorer::service(scorer).map_err(|e| anyhow::anyhow!("cannot start the scoring worker: {e}"))?;
        let authenticator = match authenticator {
            // The registry warms its keys when it starts serving.
            Some(shared) => shared,
            None => {
                // Keys are fetched beside serving: a hung issuer must not hold up start-up.
                let own = lakescore_registry::auth::Authenticator::new(settings.auth.clone())?;
                let warming = own.clone();
                tokio::spawn(async move { warming.warm().await });
                own
            }
        };
        if authenticator.enabled() {
            service = service.with_token_validator(std::sync::Arc::new(FlightTokens(authenticator)));
        }
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let health = lakescore_scorer::WorkerHealth::new().await;
        if let Some(addr) = settings.metrics_listen {
            let ops = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            tasks.spawn(ops::serve(ops, health.clone(), shutdown()));
        }
        let shutdown = shutdown();
        tasks.spawn(async move {
            lakescore_scorer::serve_service(service, listener, shutdown, health)
                .await
                .map_err(|e| anyhow::anyhow!("scoring worker failed: {e}"))
        });
    }
    // Stop on a signal, or when either server fails (then the other one drains too).
    let first = tokio::select! {
        _ = shutdown_signal() => None,
        done = tasks.join_next() => done,
    };
    let _ = stop.send(true);
    let mut result = match first {
        Some(done) => done.context("server task panicked")?,
        None => Ok(()),
    };
    // Drain: in-flight requests and streams finish within the grace period. Past it,
    // scoring jobs are cancelled (they remove their partial output and answer UNAVAILABLE),
    // and whatever is still open a few seconds later is cut off.
    let grace = settings.shutdown_grace;
    let cancel_at = tokio::time::Instant::now() + grace;
    let abort_at = cancel_at + Duration::from_secs(5);
    let (mut cancelled, mut aborted) = (false, false);
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(r)) => {
                    if result.is_ok() {
                        result = r;
                    }
                }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => return Err(anyhow::anyhow!("server task panicked: {e}")),
                None => break,
            },
            _ = tokio::time::sleep_until(cancel_at), if !cancelled => {
                cancelled = true;
                tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace period over: cancelling in-flight scoring jobs");
                if let Some(scorer) = &worker {
                    scorer.cancel_streams();
                }
            }
            _ = tokio::time::sleep_until(abort_at), if cancelled && !aborted => {
                aborted = true;
                tracing::warn!("requests still open after the grace period: closing them");
                tasks.abort_all();
            }
        }
    }
    tracing::info!("stopped");
    result
}

/// The worker checks every Flight caller's token with the registry's OIDC settings.
struct FlightTokens(lakescore_registry::auth::Authenticator);

#[async_trait::async_trait]
impl lakescore_scorer::TokenValidator for FlightTokens {
    async fn validate(
        &self,
        authorization: Option<&str>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(), lakescore_scorer::ScoreError> {
        match self.0.authenticate_call("flight", peer, authorization).await {
            Ok(_) => Ok(()),
            Err(e) => Err(lakescore_scorer::ScoreError::from_code(e.code(), e.to_string())),
        }
    }
}

/// Replaces the values of credential-like options (keys, secrets, tokens, passwords).
fn redact_secrets<'a>(options: impl Iterator<Item = (&'a String, &'a mut String)>) {
    for (key, value) in options {
        let k = key.to_ascii_lowercase();
        if ["key", "secret", "token", "password", "sas"].iter().any(|s| k.contains(s)) {
            *value = "***".to_string();
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends), starting a graceful shutdown.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}
