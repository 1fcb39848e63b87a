//! `lakescore models …`: a small client of the registry's HTTP API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lakescore_core::retry::RetryPolicy;
use lakescore_core::wire::{AliasRecord, Model, ModelList, ModelVersion, Problem, VersionList};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Registry base URL.
    #[arg(long, env = "LAKESCORE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "LAKESCORE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Output format: human-readable table, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Create a registered model.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Tag as KEY=VALUE; repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List models, optionally filtered (e.g. "name LIKE 'fraud%' AND tags.team = 'risk'").
    List {
        #[arg(long)]
        filter: Option<String>,
    },
    /// Show one model.
    Show { name: String },
    /// List a model's versions.
    Versions { name: String },
    /// Upload an ONNX file as the model's next version (creates the model if needed).
    Register {
        name: String,
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// Tag as KEY=VALUE; repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Point this alias at the new version.
        #[arg(long)]
        alias: Option<String>,
        /// If a ready version of the model has the same sha256, use it instead of
        /// registering the same file again.
        #[arg(long)]
        reuse_existing: bool,
    },
    /// Point ALIAS at VERSION, or remove it with --delete.
    Alias {
        name: String,
        alias: String,
        version: Option<i64>,
        #[arg(long, conflicts_with = "version")]
        delete: bool,
    },
    /// Resolve a reference (name, name:7, name@alias) to its version record.
    Resolve { reference: String },
    /// Download a version's ONNX file (verified against its sha256).
    Download {
        reference: String,
        /// Output file [default: NAME-vVERSION.onnx].
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().build()?,
            base: format!("{}/api/v1", args.url.trim_end_matches('/')),
            token: args.token.clone(),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let resp = req.send().await.map_err(|e| RequestFailed {
            status: None,
            message: format!("cannot reach the registry at {}: {e}", self.base),
        })?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<Problem>(&text) {
            Ok(p) => format!("{} {}: {}", p.status, p.title, p.detail),
            Err(_) => format!("{status}: {text}"),
        };
        Err(RequestFailed { status: Some(status.as_u16()), message }.into())
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, req: RequestBuilder) -> anyhow::Result<T> {
        Ok(self.send(req).await?.json().await?)
    }

    /// Every item of a paginated listing, following `next_page_token`.
    async fn all_pages<P, T>(
        &self,
        path: &str,
        query: &[(&str, String)],
        split: impl Fn(P) -> (Vec<T>, Option<String>),
    ) -> anyhow::Result<Vec<T>>
    where
        P: serde::de::DeserializeOwned,
    {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("page_size", "1000".to_string()));
            if let Some(t) = &token {
                q.push(("page_token", t.clone()));
            }
            let (items, next) = split(self.json(self.request(Method::GET, path).query(&q)).await?);
            all.extend(items);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }
}

pub async fn run(args: &ClientArgs, cmd: ModelsCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    let out = args.output;
    match cmd {
        ModelsCommand::Create { name, description, tags } => {
            let tags: BTreeMap<_, _> = tags.into_iter().collect();
            let m: Model = c
                .json(
                    c.request(Method::POST, "/models")
                        .json(&json!({"name": name, "description": description, "tags": tags})),
                )
                .await?;
            print_model(out, &m)
        }
        ModelsCommand::List { filter } => {
            let query: Vec<(&str, String)> = filter.iter().map(|f| ("filter", f.clone())).collect();
            let warned = std::cell::Cell::new(false);
            let all: Vec<Model> = c
                .all_pages("/models", &query, |p: ModelList| {
                    // What the server says about the listing (group overage), once, on stderr.
                    if !warned.replace(true) {
                        for warning in &p.warnings {
                            eprintln!("warning: {warning}");
                        }
                    }
                    (p.models, p.next_page_token)
                })
                .await?;
            match out {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&all)?),
                OutputFormat::Table => {
                    println!("{:<32} {:>7} {:<24} DESCRIPTION", "NAME", "LATEST", "ALIASES");
                    for m in &all {
                        let aliases: Vec<String> = m.aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
                        println!(
                            "{:<32} {:>7} {:<24} {}",
                            m.name,
                            m.latest_version.map_or("-".into(), |v| v.to_string()),
                            aliases.join(","),
                            m.description
                        );
                    }
                }
            }
            Ok(())
        }
        ModelsCommand::Show { name } => {
            let m: Model = c.json(c.request(Method::GET, &format!("/models/{name}"))).await?;
            print_model(out, &m)
        }
        ModelsCommand::Versions { name } => {
            let path = format!("/models/{name}/versions");
            let all: Vec<ModelVersion> =
                c.all_pages(&path, &[], |p: VersionList| (p.versions, p.next_page_token)).await?;
            match out {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&all)?),
                OutputFormat::Table => {
                    println!(
                        "{:>7} {:<9} {:>12} {:<16} {:<24} CREATED",
                        "VERSION", "STATUS", "SIZE", "SHA256", "ALIASES"
                    );
                    for v in &all {
                        println!(
                            "{:>7} {:<9} {:>12} {:<16} {:<24} {}",
                            v.version,
                            format!("{:?}", v.status).to_lowercase(),
                            v.size,
                            &v.sha256[..16.min(v.sha256.len())],
                            v.aliases.join(","),
                            v.created_at
                        );
                    }
                }
            }
            Ok(())
        }
        ModelsCommand::Register { name, file, description, tags, alias, reuse_existing } => {
            // Create the model on first registration, as MLflow's register_model does.
            let exists = c.http.execute(c.request(Method::GET, &format!("/models/{name}")).build()?).await?;
            if exists.status() == StatusCode::NOT_FOUND {
                c.send(c.request(Method::POST, "/models").json(&json!({"name": name}))).await?;
            }
            let tags: BTreeMap<_, _> = tags.into_iter().collect();
            let metadata = json!({"description": description, "tags": tags});
            let v = upload(&c, &name, &file, &metadata, reuse_existing, out).await?;
            if let Some(alias) = alias {
                c.send(
                    c.request(Method::PUT, &format!("/models/{name}/aliases/{alias}"))
                        .json(&json!({"version": v.version})),
                )
                .await?;
            }
            let v: ModelVersion =
                c.json(c.request(Method::GET, &format!("/models/{name}/versions/{}", v.version))).await?;
            print_version(out, &v)
        }
        ModelsCommand::Alias { name, alias, version, delete } => {
            if delete {
                c.send(c.request(Method::DELETE, &format!("/models/{name}/aliases/{alias}"))).await?;
                if matches!(out, OutputFormat::Json) {
                    println!("{}", json!({"model": name, "alias": alias, "deleted": true}));
                } else {
                    println!("removed {name}@{alias}");
                }
                return Ok(());
            }
            let version = version.ok_or_else(|| anyhow!("give a VERSION to point the alias at, or --delete"))?;
            let rec: AliasRecord = c
                .json(
                    c.request(Method::PUT, &format!("/models/{name}/aliases/{alias}"))
                        .json(&json!({"version": version})),
                )
                .await?;
            match out {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rec)?),
                OutputFormat::Table => println!("{}@{} -> version {}", rec.model, rec.alias, rec.version),
            }
            Ok(())
        }
        ModelsCommand::Resolve { reference } => {
            let v: ModelVersion = c.json(c.request(Method::GET, &format!("/resolve/{reference}"))).await?;
            print_version(out, &v)
        }
        ModelsCommand::Download { reference, file } => {
            let v: ModelVersion = c.json(c.request(Method::GET, &format!("/resolve/{reference}"))).await?;
            let path = file.unwrap_or_else(|| PathBuf::from(format!("{}-v{}.onnx", v.model, v.version)));
            download(&c, &v, &path, out).await?;
            match out {
                OutputFormat::Json => {
                    println!("{}", json!({"model": v.model, "version": v.version, "sha256": v.sha256, "file": path}))
                }
                OutputFormat::Table => {
                    println!("saved {}:{} to {} (sha256 {})", v.model, v.version, path.display(), v.sha256)
                }
            }
            Ok(())
        }
    }
}

fn progress(len: u64, out: OutputFormat, what: &str) -> ProgressBar {
    // Progress goes to stderr and only for humans; JSON output stays clean.
    if matches!(out, OutputFormat::Json) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A registry request that failed: unreachable (`status` None) or answered with an error.
#[derive(Debug)]
struct RequestFailed {
    status: Option<u16>,
    message: String,
}

impl std::fmt::Display for RequestFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestFailed {}

impl RequestFailed {
    /// Worth sending again: the registry was unreachable, or answered 503 / 504.
    fn is_transient(e: &anyhow::Error) -> bool {
        e.downcast_ref::<RequestFailed>()
            .is_some_and(|f| f.status.is_none_or(|s| lakescore_core::ErrorCode::from_http(s).is_transient()))
    }
}

/// Uploads a version, retrying a failed attempt (the registry unreachable, 503) up to
/// twice ([`RetryPolicy::UPLOAD`]) with the same `Idempotency-Key`: if the first attempt was registered but its
/// answer lost, the retry gets that version back instead of registering a second one.
async fn upload(
    c: &Client,
    name: &str,
    file: &Path,
    metadata: &Value,
    reuse_existing: bool,
    out: OutputFormat,
) -> anyhow::Result<ModelVersion> {
    let key = uuid::Uuid::new_v4().to_string();
    RetryPolicy::UPLOAD
        .retry("upload failed; sending it again with the same Idempotency-Key", RequestFailed::is_transient, || {
            upload_once(c, name, file, metadata, &key, reuse_existing, out)
        })
        .await
}

async fn upload_once(
    c: &Client,
    name: &str,
    file: &Path,
    metadata: &Value,
    idempotency_key: &str,
    reuse_existing: bool,
    out: OutputFormat,
) -> anyhow::Result<ModelVersion> {
    let f = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
    let len = f.metadata().await?.len();
    let pb = progress(len, out, "uploading");
    let bar = pb.clone();
    let stream = tokio_util::io::ReaderStream::new(f).inspect(move |chunk| {
        if let Ok(c) = chunk {
            bar.inc(c.len() as u64);
        }
    });
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
        .file_name(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .mime_str("application/octet-stream")?;
    let form = reqwest::multipart::Form::new().text("metadata", metadata.to_string()).part("artifact", part);
    let request = c
        .request(Method::POST, &format!("/models/{name}/versions"))
        .query(&[("reuse_existing", reuse_existing)])
        .header("idempotency-key", idempotency_key)
        .multipart(form);
    let result = c.json(request).await;
    pb.finish_and_clear();
    result
}

async fn download(c: &Client, v: &ModelVersion, path: &Path, out: OutputFormat) -> anyhow::Result<()> {
    let resp = c.send(c.request(Method::GET, &format!("/models/{}/versions/{}/artifact", v.model, v.version))).await?;
    let pb = progress(v.size as u64, out, "downloading");
    // Write beside the target and rename once verified, so a failed download leaves nothing.
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut f = tokio::fs::File::from_std(tmp.reopen()?);
    let mut hasher = Sha256::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        f.write_all(&chunk).await?;
        pb.inc(chunk.len() as u64);
    }
    f.flush().await?;
    pb.finish_and_clear();
    let got = hex::encode(hasher.finalize());
    if got != v.sha256 {
        bail!("downloaded bytes have sha256 {got}, expected {}; nothing was saved", v.sha256);
    }
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_model(out: OutputFormat, m: &Model) -> anyhow::Result<()> {
    match out {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(m)?),
        OutputFormat::Table => {
            println!("name:        {}", m.name);
            println!("description: {}", m.description);
            println!("latest:      {}", m.latest_version.map_or("-".into(), |v| v.to_string()));
            println!("created:     {} by {}", m.created_at, m.created_by);
            for (k, v) in &m.tags {
                println!("tag:         {k}={v}");
            }
            for (a, v) in &m.aliases {
                println!("alias:       {a} -> {v}");
            }
        }
    }
    Ok(())
}

fn print_version(out: OutputFormat, v: &ModelVersion) -> anyhow::Result<()> {
    match out {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(v)?),
        OutputFormat::Table => {
            println!("model:    {}:{}", v.model, v.version);
            println!("status:   {}", format!("{:?}", v.status).to_lowercase());
            println!("sha256:   {}", v.sha256);
            println!("size:     {} bytes", v.size);
            println!("created:  {} by {}", v.created_at, v.created_by);
            if !v.aliases.is_empty() {
                println!("aliases:  {}", v.aliases.join(", "));
            }
            let s = &v.signature;
            println!(
                "producer: {} {} (ir {}, opsets {})",
                s.producer_name,
                s.producer_version,
                s.ir_version,
                s.opset_imports
                    .iter()
                    .map(|o| format!("{}:{}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (kind, list) in [("input", &s.inputs), ("output", &s.outputs)] {
                for i in list.iter() {
                    println!("{kind}:   {:<24} {:<40} {}", i.name, i.value_type, serde_json::to_string(&i.shape)?);
                }
            }
        }
    }
    Ok(())
}
