//! Registry throughput: `GET /api/v1/resolve/{ref}`, listing 1,000 models and 10 MB model
//! uploads at concurrency 32, against an in-process server on SQLite (or PostgreSQL with
//! `LAKESCORE_BENCH_POSTGRES_URL`). Baselines in the same process: `GET /healthz` (the HTTP
//! floor) for resolve and listing, and writing the same bytes straight to local files for uploads.
//!
//!     cargo bench --bench registry
//!     LAKESCORE_BENCH_RESOLVES=50000 LAKESCORE_BENCH_LISTS=1000 LAKESCORE_BENCH_UPLOADS=256 cargo bench --bench registry

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lakescore_registry::{Registry, RegistryConfig};

#[path = "../tests/it/common/big_model.rs"]
mod big_model;
#[path = "../tests/it/common/issuer.rs"]
#[allow(dead_code)]
mod issuer;
use big_model::model_of_10mb;

const CONCURRENCY: usize = 32;
/// Models listed in one page: the API's largest `page_size`.
const LISTED_MODELS: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Stats {
    count: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn of(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        Self { count: latencies.len(), elapsed, p50: pct(0.50), p99: pct(0.99) }
    }
    fn per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `n` calls of `op` with `CONCURRENCY` in flight and times each.
async fn drive<F, Fut>(n: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    Stats::of(latencies, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    let resolves = env_usize("LAKESCORE_BENCH_RESOLVES", 20_000);
    let lists = env_usize("LAKESCORE_BENCH_LISTS", 200);
    let uploads = env_usize("LAKESCORE_BENCH_UPLOADS", 128);
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = RegistryConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.database_url = std::env::var("LAKESCORE_BENCH_POSTGRES_URL").ok();
    let db = if config.database_url.is_some() { "postgresql" } else { "sqlite" };
    let registry = Registry::open(config, Default::default()).await.expect("registry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(lakescore_registry::serve(registry, listener, std::future::pending()));
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().expect("client");

    http.post(format!("{base}/api/v1/models"))
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await
        .expect("create");
    let first = Arc::new(model_of_10mb(0));
    let r = http
        .post(format!("{base}/api/v1/models/bench/versions"))
        .header("content-type", "application/octet-stream")
        .body(first.to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201, "first upload");
    http.put(format!("{base}/api/v1/models/bench/aliases/champion"))
        .json(&serde_json::json!({"version": 1}))
        .send()
        .await
        .expect("alias");

    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.expect("request");
            assert!(r.status().is_success());
            r.bytes().await.expect("body");
        }
    };
    let healthz = drive(resolves, |_| get(format!("{base}/healthz"))).await;
    let resolve = drive(resolves, |_| get(format!("{base}/api/v1/resolve/bench@champion"))).await;

    // Listing: a full page of models, each with two tags (besides "bench", which sorts after them).
    drive(LISTED_MODELS, |i| {
        let req = http.post(format!("{base}/api/v1/models")).json(&serde_json::json!({
            "name": format!("a-listed-{i:04}"),
            "tags": {"team": format!("team-{}", i % 7), "stage": "prod"},
        }));
        async move {
            assert_eq!(req.send().await.expect("create").status(), 201);
        }
    })
    .await;
    let list_url = format!("{base}/api/v1/models?page_size={LISTED_MODELS}");
    let page: serde_json::Value = http.get(&list_url).send().await.expect("list").json().await.expect("json");
    assert_eq!(page["models"].as_array().map(Vec::len), Some(LISTED_MODELS), "one full page");
    let list = drive(lists, |_| get(list_url.clone())).await;
    // Baseline: the same query and handler for a page of one, so the ratio is what the
    // other 999 models cost.
    let list_one = drive(lists, |_| get(format!("{base}/api/v1/models?page_size=1"))).await;

    // Baseline for uploads: the same bytes written to local files, same concurrency.
    let raw_dir = data.path().join("raw");
    std::fs::create_dir_all(&raw_dir).expect("mkdir");
    let bodies: Vec<Arc<Vec<u8>>> = (0..uploads).map(|i| Arc::new(model_of_10mb(i as u32 + 1))).collect();
    let disk = drive(uploads, |i| {
        let (body, path) = (bodies[i].clone(), raw_dir.join(format!("{i}.bin")));
        async move {
            tokio::fs::write(&path, body.as_slice()).await.expect("write");
        }
    })
    .await;
    let upload = drive(uploads, |i| {
        let (http, body, url) = (http.clone(), bodies[i].clone(), format!("{base}/api/v1/models/bench/versions"));
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/octet-stream")
                .body(body.to_vec())
                .send()
                .await
                .expect("upload");
            assert_eq!(r.status(), 201);
        }
    })
    .await;

    // Token validation: the same resolve on a server that checks an RS256 bearer token
    // (signature, issuer, audience, times; JWKS cached) on every call.
    let idp = issuer::Issuer::start().await;
    let auth = lakescore_registry::AuthConfig {
        oidc: Some(lakescore_registry::oidc::OidcConfig {
            issuer: idp.url.clone(),
            audiences: vec![issuer::AUDIENCE.into()],
            ..Default::default()
        }),
        claims: Default::default(),
        roles: lakescore_registry::auth::RoleMapping {
            writer: vec!["role:LakeScore.Write".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let secured_dir = tempfile::tempdir().expect("temp dir");
    let secured =
        Registry::open(RegistryConfig { data_dir: secured_dir.path().to_path_buf(), ..Default::default() }, auth)
            .await
            .expect("registry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let secured_base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(lakescore_registry::serve(secured, listener, std::future::pending()));
    let token = idp.token(serde_json::json!({"roles": ["LakeScore.Write"]}));
    let authed = |req: reqwest::RequestBuilder| req.bearer_auth(&token);
    authed(http.post(format!("{secured_base}/api/v1/models")))
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await
        .expect("create");
    let r = authed(http.post(format!("{secured_base}/api/v1/models/bench/versions")))
        .header("content-type", "application/octet-stream")
        .body(first.to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201, "first upload (authenticated)");
    let resolve_authed = drive(resolves, |_| {
        let req = authed(http.get(format!("{secured_base}/api/v1/resolve/bench:1")));
        async move {
            let r = req.send().await.expect("request");
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.expect("body");
        }
    })
    .await;
    let resolve_anon = drive(resolves, |_| get(format!("{base}/api/v1/resolve/bench:1"))).await;

    let mb = first.len() as f64 / (1 << 20) as f64;
    println!(
        "lakescore registry benchmark: {db}, local artifact store, concurrency {CONCURRENCY}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<48} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "operation", "count", "per second", "p50 ms", "p99 ms", "vs base"
    );
    let row = |name: &str, s: &Stats, ratio: String| {
        println!("{:<48} {:>8} {:>12.1} {:>10} {:>10} {:>10}", name, s.count, s.per_sec(), ms(s.p50), ms(s.p99), ratio);
    };
    row("GET /healthz (baseline)", &healthz, "1.00".into());
    row("GET /api/v1/resolve/bench@champion", &resolve, format!("{:.2}", resolve.per_sec() / healthz.per_sec()));
    row("GET /api/v1/models?page_size=1 (baseline)", &list_one, "1.00".into());
    row(
        &format!("GET /api/v1/models?page_size={LISTED_MODELS}"),
        &list,
        format!("{:.3}", list.per_sec() / list_one.per_sec()),
    );
    row("GET /api/v1/resolve/bench:1 (no auth, baseline)", &resolve_anon, "1.00".into());
    row(
        "GET /api/v1/resolve/bench:1 (bearer token)",
        &resolve_authed,
        format!("{:.2}", resolve_authed.per_sec() / resolve_anon.per_sec()),
    );
    row(&format!("write {mb:.1} MB file (baseline)"), &disk, "1.00".into());
    row(&format!("POST {mb:.1} MB version"), &upload, format!("{:.2}", upload.per_sec() / disk.per_sec()));
    println!(
        "listing: {:.0} models/s in pages of {LISTED_MODELS} ({:.1} µs per model), {:.0} in pages of 1",
        list.per_sec() * LISTED_MODELS as f64,
        1e6 / (list.per_sec() * LISTED_MODELS as f64),
        list_one.per_sec()
    );
    println!("upload throughput: {:.1} MB/s (disk baseline {:.1} MB/s)", upload.per_sec() * mb, disk.per_sec() * mb);
    println!(
        "token validation adds {} ms at p50 and {} ms at p99 per resolve",
        ms(resolve_authed.p50.saturating_sub(resolve_anon.p50)),
        ms(resolve_authed.p99.saturating_sub(resolve_anon.p99))
    );
}
