//! Load: `lakescore serve` (a real process, OIDC auth against a real issuer) under 64
//! concurrent scoring streams plus registry traffic (reads, uploads) and a flood of tokens
//! with random `kid`s, for `LAKESCORE_LOAD_SECS` seconds (default 60). Every call must
//! succeed (or, for the forged tokens, be refused), every prediction must match
//! onnxruntime's, the JWKS endpoint is fetched at most once per cooldown window, and the
//! server's memory stays bounded. Prints throughput, p50/p99 latencies and peak RSS.

use crate::common;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use common::issuer::{encoding_key, Issuer, AUDIENCE};
use common::{flight_client, labels, model_bytes, models_dir, read_parquet};
use futures::TryStreamExt;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

const STREAMS: usize = 64;
const REGISTRY_CLIENTS: usize = 4;
/// The server's default JWKS refresh cooldown.
const JWKS_COOLDOWN_SECS: u64 = 30;
/// Peak RSS the server may reach under this load (measured: under 100 MiB).
const MAX_RSS_BYTES: u64 = 512 << 20;

fn load_duration() -> Duration {
    let secs = std::env::var("LAKESCORE_LOAD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}

/// Peak and current resident set size of a process, from /proc (bytes).
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[derive(Default)]
struct Latencies(Mutex<Vec<Duration>>);

impl Latencies {
    fn record(&self, d: Duration) {
        self.0.lock().expect("lock").push(d);
    }

    /// (count, p50, p99, max) in milliseconds.
    fn summary(&self) -> (usize, f64, f64, f64) {
        let mut v = self.0.lock().expect("lock").clone();
        v.sort_unstable();
        let at = |q: f64| v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)));
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        (v.len(), ms(at(0.50)), ms(at(0.99)), ms(v.last()))
    }
}

/// What went wrong, kept for the final assertion.
#[derive(Default)]
struct Errors(Mutex<Vec<String>>);

impl Errors {
    fn push(&self, what: String) {
        self.0.lock().expect("lock").push(what);
    }
}

async fn score(client: &mut FlightClient, cmd: &[u8], batches: Vec<RecordBatch>) -> Result<RecordBatch, String> {
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_vec())))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let describe = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    };
    let out: Vec<RecordBatch> =
        client.do_exchange(input).await.map_err(describe)?.try_collect().await.map_err(describe)?;
    let schema = out.first().ok_or("no batch back")?.schema();
    arrow::compute::concat_batches(&schema, &out).map_err(|e| e.to_string())
}

fn random_kid_token(issuer: &Issuer, n: u64) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(format!("flood-{n}-{}", uuid::Uuid::new_v4()));
    let claims = json!({"iss": issuer.url, "aud": AUDIENCE, "exp": chrono::Utc::now().timestamp() + 600,
        "oid": "attacker", "roles": ["LakeScore.Admin"]});
    jsonwebtoken::encode(&h, &claims, &encoding_key(0)).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_streams_with_registry_traffic_and_a_kid_flood() {
    let duration = load_duration();
    let issuer = Issuer::start().await;
    let s = Arc::new(tokio::task::block_in_place(|| common::spawn_serve_with_issuer(&issuer, &[])));
    let pid = s.server.child.id();
    let http = reqwest::Client::new();
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    let api = |path: &str| format!("{}/api/v1{path}", s.server.url);
    common::register_champion(&s.server.url, Some(&owner), "rf", "rf.onnx").await;
    common::register_champion(&s.server.url, Some(&owner), "churn", "linreg.onnx").await;

    // Rows and onnxruntime's labels for them (tests/models/generate.py).
    let rows = read_parquet(&models_dir().join("rf.rows.parquet"));
    let want = labels(&read_parquet(&models_dir().join("rf.expected.parquet")), "output_label");
    let cmd = json!({"model": "rf@champion", "feature_columns": (0..20).map(|i| format!("f{i}")).collect::<Vec<_>>()})
        .to_string()
        .into_bytes();

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let scoring = Arc::new(Latencies::default());
    let registry = Arc::new(Latencies::default());
    let rows_scored = Arc::new(AtomicU64::new(0));
    let uploads = Arc::new(AtomicU64::new(0));
    let forged = Arc::new(AtomicU64::new(0));
    let fetches_before = issuer.jwks_fetches();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();

    for stream in 0..STREAMS {
        let (s, stop, errors, scoring, rows_scored) =
            (s.clone(), stop.clone(), errors.clone(), scoring.clone(), rows_scored.clone());
        let (rows, want, cmd) = (rows.clone(), want.clone(), cmd.clone());
        let token = issuer.token(json!({"oid": format!("scorer-{stream}"), "roles": ["LakeScore.Read"]}));
        tasks.spawn(async move {
            let mut client = flight_client(&s.server.flight, Some(&token)).await;
            let mut call = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Each call a different window of rows, in a few batches.
                let offset = (stream * 7 + call * 13) % 100;
                let n = 100;
                let batches = vec![rows.slice(offset, 40), rows.slice(offset + 40, n - 40)];
                let t = Instant::now();
                match score(&mut client, &cmd, batches).await {
                    Ok(out) if labels(&out, "label") == want[offset..offset + n] => {
                        scoring.record(t.elapsed());
                        rows_scored.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Ok(_) => errors.push(format!("stream {stream}: labels differ from onnxruntime's")),
                    Err(e) => errors.push(format!("stream {stream}: {e}")),
                }
                call += 1;
            }
        });
    }

    for client in 0..REGISTRY_CLIENTS {
        let (s, stop, errors, registry, uploads) =
            (s.clone(), stop.clone(), errors.clone(), registry.clone(), uploads.clone());
        let token = owner.clone();
        let linreg = model_bytes("linreg.onnx");
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            let api = |path: &str| format!("{}/api/v1{path}", s.server.url);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let (what, req) = match i % 10 {
                    // One call in ten registers a version, the rest read.
                    9 => (
                        "upload",
                        http.post(api("/models/churn/versions"))
                            .header("content-type", "application/octet-stream")
                            .body(linreg.clone()),
                    ),
                    n if n % 3 == 0 => ("list", http.get(api("/models?page_size=10"))),
                    n if n % 3 == 1 => ("resolve", http.get(api("/resolve/rf@champion"))),
                    _ => ("versions", http.get(api("/models/churn/versions?page_size=5"))),
                };
                match req.bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => {
                        registry.record(t.elapsed());
                        if what == "upload" {
                            uploads.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => errors.push(format!("registry client {client}: {what}: {}", r.status())),
                    Err(e) => errors.push(format!("registry client {client}: {what}: {e}")),
                }
                i += 1;
            }
        });
    }

    // Forged tokens with random kids, on both the REST API and Flight, all the while.
    {
        let (s, stop, errors, forged) = (s.clone(), stop.clone(), errors.clone(), forged.clone());
        let tokens: Vec<String> = (0..200).map(|n| random_kid_token(&issuer, n)).collect();
        let cmd = cmd.clone();
        let rows = rows.slice(0, 10);
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let token = &tokens[n % tokens.len()];
                let r = http.get(format!("{}/api/v1/models", s.server.url)).bearer_auth(token).send().await;
                if !matches!(&r, Ok(r) if r.status() == 401) {
                    errors.push(format!("forged token on REST: {:?}", r.map(|r| r.status())));
                }
                let mut client = flight_client(&s.server.flight, Some(token)).await;
                match score(&mut client, &cmd, vec![rows.clone()]).await {
                    Err(e) if e.starts_with("Unauthenticated") => {}
                    other => errors.push(format!("forged token on Flight: {:?}", other.map(|b| b.num_rows()))),
                }
                forged.fetch_add(2, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    // Sample the server's memory while the load runs.
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((started.elapsed().as_secs(), rss(pid).1));
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done.expect("load task panicked");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (peak, _) = rss(pid);
    let fetches = issuer.jwks_fetches() - fetches_before;

    let (n_score, p50_score, p99_score, max_score) = scoring.summary();
    let (n_reg, p50_reg, p99_reg, max_reg) = registry.summary();
    // The report goes straight to the process's stderr (fd 2), past the test harness's
    // output capture, so that every run, CI's included, shows it.
    let report = format!(
        "load: {elapsed:.0} s, {STREAMS} scoring streams: {n_score} calls, {:.0} rows/s, p50 {p50_score:.1} ms, \
         p99 {p99_score:.1} ms, max {max_score:.1} ms",
        rows_scored.load(Ordering::Relaxed) as f64 / elapsed
    ) + &format!(
        "\nload: {REGISTRY_CLIENTS} registry clients: {n_reg} calls ({} uploads), p50 {p50_reg:.1} ms, p99 {p99_reg:.1} ms, \
         max {max_reg:.1} ms",
        uploads.load(Ordering::Relaxed)
    ) + &format!(
        "\nload: {} forged-token calls refused, {fetches} JWKS fetches; server peak RSS {:.0} MiB; RSS samples (s, MiB): {:?}",
        forged.load(Ordering::Relaxed),
        peak as f64 / 1048576.0,
        samples.iter().step_by(10).map(|(t, b)| (*t, b >> 20)).collect::<Vec<_>>()
    );
    {
        use std::os::fd::AsFd as _;
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd2) => {
                let _ = writeln!(std::fs::File::from(fd2), "{report}");
            }
            Err(_) => eprintln!("{report}"),
        }
    }

    let errors = errors.0.lock().expect("lock").clone();
    assert!(errors.is_empty(), "{} errors under load, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert!(n_score >= STREAMS, "every stream scored at least once ({n_score} calls)");
    assert!(uploads.load(Ordering::Relaxed) > 0, "versions were registered under load");
    assert!(forged.load(Ordering::Relaxed) > 0, "the flood ran");
    let windows = duration.as_secs().div_ceil(JWKS_COOLDOWN_SECS) as usize + 1;
    assert!(
        fetches <= windows,
        "{fetches} JWKS fetches in {elapsed:.0} s: more than one per {JWKS_COOLDOWN_SECS} s window"
    );
    assert!(peak > 0, "peak RSS read from /proc");
    assert!(peak <= MAX_RSS_BYTES, "server peak RSS {} MiB over {} MiB", peak >> 20, MAX_RSS_BYTES >> 20);
    // Bounded, not creeping: the last third of the run holds no more than the middle third
    // plus a margin (allocator arenas settle after warm-up).
    let third = samples.len() / 3;
    if third > 0 {
        let middle = samples[third..2 * third].iter().map(|s| s.1).max().unwrap_or(0);
        let last = samples[2 * third..].iter().map(|s| s.1).max().unwrap_or(0);
        assert!(
            last <= middle + middle / 2 + (64 << 20),
            "RSS kept growing under steady load: {} MiB in the middle third, {} MiB in the last",
            middle >> 20,
            last >> 20
        );
    }

    // Every upload that succeeded is there, numbered without gaps.
    let mut numbers: Vec<i64> = Vec::new();
    let mut page_token = String::new();
    loop {
        let mut query = vec![("page_size", "1000")];
        if !page_token.is_empty() {
            query.push(("page_token", page_token.as_str()));
        }
        let page: Value = http
            .get(api("/models/churn/versions"))
            .query(&query)
            .bearer_auth(&owner)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        numbers.extend(page["versions"].as_array().expect("versions").iter().filter_map(|v| v["version"].as_i64()));
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => page_token = t.to_string(),
            _ => break,
        }
    }
    let expected = 1 + uploads.load(Ordering::Relaxed) as i64;
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=expected).collect::<Vec<_>>(), "versions 1..={expected}");
}
