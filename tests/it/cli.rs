//! The `lakescore` binary as a user runs it: `serve` as a real process, the `models`
//! client commands against it, `check-config`, `gc`, and graceful shutdown on SIGTERM.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{labels, models_dir, read_parquet, sha256_hex};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lakescore");

fn lakescore(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).env("LAKESCORE_URL", url).output().expect("run lakescore");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(url: &str, args: &[&str]) -> Value {
    let (ok, out, err) = lakescore(url, args);
    assert!(ok, "lakescore {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lakescore {args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn client_commands_against_a_running_server() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = common::spawn_serve(data.path(), &[]);
    let url = server.url.clone();
    let model = models_dir().join("rf.onnx");
    let model = model.to_str().expect("utf-8 path");

    let created = json_of(
        &url,
        &["models", "create", "fraud", "--description", "card fraud", "--tag", "team=risk", "-o", "json"],
    );
    assert_eq!(created["name"], "fraud");
    assert_eq!(created["tags"]["team"], "risk");

    let v1 =
        json_of(&url, &["models", "register", "fraud", model, "--alias", "champion", "--tag", "run=7", "-o", "json"]);
    let bytes = std::fs::read(model).expect("model bytes");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["sha256"], sha256_hex(&bytes));
    assert_eq!(v1["aliases"], serde_json::json!(["champion"]));
    assert_eq!(v1["tags"]["run"], "7");
    // `register` creates the model on first use.
    let other = json_of(&url, &["models", "register", "churn", model, "-o", "json"]);
    assert_eq!(other["model"], "churn");

    let resolved = json_of(&url, &["models", "resolve", "fraud@champion", "-o", "json"]);
    assert_eq!(resolved["version"], 1);
    let listed = json_of(&url, &["models", "list", "--filter", "tags.team = 'risk'", "-o", "json"]);
    assert_eq!(
        listed.as_array().map(|a| a.iter().map(|m| m["name"].clone()).collect::<Vec<_>>()),
        Some(vec!["fraud".into()])
    );
    let versions = json_of(&url, &["models", "versions", "fraud", "-o", "json"]);
    assert_eq!(versions.as_array().map(Vec::len), Some(1));

    let out = data.path().join("downloaded.onnx");
    let dl = json_of(&url, &["models", "download", "fraud@champion", "-f", out.to_str().expect("path"), "-o", "json"]);
    assert_eq!(dl["sha256"], sha256_hex(&bytes));
    assert_eq!(std::fs::read(&out).expect("downloaded"), bytes);

    let (ok, table, _) = lakescore(&url, &["models", "show", "fraud"]);
    assert!(ok);
    assert!(table.contains("alias:       champion -> 1"), "{table}");

    json_of(&url, &["models", "alias", "fraud", "prod", "1", "-o", "json"]);
    let (ok, _, _) = lakescore(&url, &["models", "alias", "fraud", "prod", "--delete"]);
    assert!(ok);

    // Errors are the server's problem detail, with a non-zero exit.
    let (ok, _, err) = lakescore(&url, &["models", "resolve", "fraud:9"]);
    assert!(!ok);
    assert!(err.contains("404") && err.contains("no version 9"), "{err}");
    let (ok, _, err) = lakescore(&url, &["models", "register", "fraud", "/nonexistent.onnx"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent.onnx"), "{err}");

    // SIGTERM drains and exits cleanly.
    let exit = server.terminate();
    assert!(exit.success(), "serve exited with {exit:?} after SIGTERM");
    let (ok, _, err) = lakescore(&url, &["models", "list"]);
    assert!(!ok && err.contains("cannot reach the registry"), "{err}");
}

#[test]
fn check_config_accepts_good_files_and_explains_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[registry]\nlisten = \"127.0.0.1:9000\"\ndatabase_url = \"postgres://u:secret@db/registry\"\nmax_upload_bytes = 1000\n")
        .expect("write");
    let out = Command::new(BIN).arg("check-config").arg("--config").arg(&good).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("max_upload_bytes = 1000"), "{printed}");
    assert!(printed.contains("[scorer]"), "{printed}");
    assert!(!printed.contains("secret"), "the database password is not printed: {printed}");

    for (text, expect) in [
        ("[registry]\nlisten = \"not an address\"\n", "invalid configuration"),
        ("[registry]\nunknown_key = 1\n", "unknown_key"),
        ("[registry]\ndatabase_url = \"mysql://x\"\n", "sqlite:// or postgres://"),
        ("[registry]\nlisten = \"0.0.0.0:8080\"\n", "without authentication"),
        ("[scorer]\nlisten = \"0.0.0.0:8815\"\n", "without authentication"),
        ("[scorer]\nunknown = 1\n", "unknown"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).expect("write");
        let out = Command::new(BIN).arg("check-config").arg("--config").arg(&bad).output().expect("run");
        assert!(!out.status.success(), "{text} should be rejected");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{text}: {err}");
    }
    let missing = Command::new(BIN).args(["check-config", "--config", "/nonexistent.toml"]).output().expect("run");
    assert!(!missing.status.success());

    // Valid but probably wrong: Entra's claim names for a Keycloak issuer, no roles mapped.
    // Accepted, with a warning for each, and the storage roots narrowed to the data directory.
    let check = |text: &str| {
        let file = dir.path().join("oidc.toml");
        std::fs::write(&file, text).expect("write");
        let out = Command::new(BIN)
            .args(["check-config", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run");
        assert!(out.status.success(), "{text}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let keycloak = "[auth.oidc]\nissuer = \"https://sso.example.com/realms/data\"\naudiences = [\"lakescore\"]\n";
    let (printed, warned) = check(keycloak);
    for expect in
        ["[auth.roles] is empty", r#"scopes = "scope""#, r#"leaves out "client_id""#, r#"identified by "sub""#]
    {
        assert!(warned.contains(expect), "missing warning {expect}: {warned}");
    }
    let datasets = format!("file://{}/datasets/", dir.path().display());
    assert!(printed.contains(&datasets), "default storage root with auth on: {printed}");
    assert!(warned.contains("storage_roots is not set"), "{warned}");
    // Mapped as the README says: no warnings.
    let mapped = format!(
        "{keycloak}[auth.claims]\nsubject = [\"sub\"]\nscopes = \"scope\"\napp_id = [\"client_id\", \"azp\"]\n\
         [auth.roles]\nreader = [\"scope:models.read\"]\n[scorer]\nstorage_roots = [\"s3://lake/\"]\n"
    );
    let (_, warned) = check(&mapped);
    assert!(!warned.contains("WARN"), "{warned}");
    // Entra ID with roles: its claim names are the defaults.
    let entra =
        "[auth.oidc]\nissuer = \"https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0\"\n\
                 audiences = [\"api://lakescore\"]\n[auth.roles]\nadmin = [\"role:LakeScore.Admin\"]\n\
                 [scorer]\nstorage_roots = [\"az://lake/\"]\n";
    let (_, warned) = check(entra);
    assert!(!warned.contains("WARN"), "{warned}");
}

#[test]
fn serve_refuses_a_public_address_without_auth() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-auth"));
}

#[test]
fn gc_finds_and_removes_only_unreferenced_artifacts() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = common::spawn_serve(data.path(), &[]);
    let model = models_dir().join("logreg.onnx");
    json_of(&server.url, &["models", "register", "kept", model.to_str().expect("path"), "-o", "json"]);
    server.terminate();

    // An artifact whose row was never committed (as after a crash between the two writes).
    let orphan_sha = "ab".repeat(32);
    let orphan = data.path().join("artifacts/sha256/ab").join(format!("{orphan_sha}.onnx"));
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("mkdir");
    std::fs::write(&orphan, b"orphan").expect("write orphan");

    let gc = |args: &[&str]| {
        let out = Command::new(BIN).arg("gc").arg("--data-dir").arg(data.path()).args(args).output().expect("run gc");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Young artifacts are left alone (they may belong to an upload in flight).
    assert_eq!(gc(&[]).trim(), "");
    assert_eq!(gc(&["--min-age-secs", "0"]).trim(), orphan_sha, "dry run lists the orphan");
    assert!(orphan.exists(), "dry run deletes nothing");
    assert_eq!(gc(&["--min-age-secs", "0", "--delete"]).trim(), orphan_sha);
    assert!(!orphan.exists());
    let kept = data.path().join("artifacts/sha256");
    let remaining: usize = std::fs::read_dir(&kept)
        .expect("dir")
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).map_or(0, |e| e.count()))
        .sum();
    assert_eq!(remaining, 1, "the referenced artifact stays");
}

#[test]
fn score_command_scores_parquet_and_csv_files() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = common::spawn_serve(data.path(), &[]);
    let (url, flight) = (server.url.clone(), format!("grpc://{}", server.flight));
    let models = models_dir();
    json_of(
        &url,
        &[
            "models",
            "register",
            "rf",
            models.join("rf.onnx").to_str().expect("path"),
            "--alias",
            "champion",
            "-o",
            "json",
        ],
    );
    let features = (0..20).map(|i| format!("f{i}")).collect::<Vec<_>>().join(",");
    let expected = labels(&read_parquet(&models.join("rf.expected.parquet")), "output_label");
    let score = |input: &Path, output: &str, compression: &str| {
        let out = Command::new(BIN)
            .args([
                "score",
                "--model",
                "rf@champion",
                "--feature-columns",
                &features,
                "--flight-url",
                &flight,
                "--batch-rows",
                "64",
            ])
            .arg("--input")
            .arg(input)
            .args(["--output", output, "--compression", compression])
            .output()
            .expect("run lakescore score");
        assert!(out.status.success(), "score failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Parquet in, Parquet out (DoExchange): same rows, labels as onnxruntime's.
    let out = data.path().join("scored.parquet");
    score(&models.join("rf.rows.parquet"), out.to_str().expect("path"), "none");
    let scored = read_parquet(&out);
    assert_eq!(scored.num_rows(), expected.len());
    assert_eq!(labels(&scored, "label"), expected);

    // CSV in (types inferred: float64, cast losslessly to the model's float32), sent and
    // answered with ZSTD-compressed Arrow bodies.
    let rows = read_parquet(&models.join("rf.rows.parquet"));
    let csv = data.path().join("rows.csv");
    let mut w = arrow::csv::Writer::new(std::fs::File::create(&csv).expect("csv"));
    w.write(&rows).expect("write csv");
    drop(w);
    let out_csv = data.path().join("scored-from-csv.parquet");
    score(&csv, out_csv.to_str().expect("path"), "zstd");
    assert_eq!(labels(&read_parquet(&out_csv), "label"), expected);

    // A storage prefix: the worker writes the Parquet and the manifest (DoPut), from LZ4 bodies.
    let prefix = format!("file://{}/lake/scores/", data.path().display());
    let summary: Value =
        serde_json::from_str(&score(&models.join("rf.rows.parquet"), &prefix, "lz4")).expect("summary json");
    assert_eq!(summary["rows"], expected.len());
    assert!(data.path().join("lake/scores/_delta_log/00000000000000000000.json").exists(), "a Delta table committed");

    // Errors name the problem, with a non-zero exit.
    let out = Command::new(BIN)
        .args(["score", "--model", "rf@nope", "--flight-url", &flight, "--output", "x.parquet", "--input"])
        .arg(models.join("rf.rows.parquet"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"), "{}", String::from_utf8_lossy(&out.stderr));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_caches_a_token_for_later_commands() {
    use common::issuer::{Issuer, CLIENT_ID, CLIENT_SECRET};
    let issuer = Issuer::start().await;
    let mut serve = tokio::task::block_in_place(|| common::spawn_serve_with_issuer(&issuer, &[]));
    let server = &mut serve.server;
    let home = tempfile::tempdir().expect("home");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("LAKESCORE_TOKEN")
            .env("LAKESCORE_URL", &server.url)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let login = |extra: &[&str]| {
        let mut args =
            vec!["login", "--issuer", &issuer.url, "--client-id", CLIENT_ID, "--scope", "api://lakescore/.default"];
        args.extend_from_slice(extra);
        tokio::task::block_in_place(|| cli(&args))
    };

    // Not logged in: the server asks for a token.
    let (ok, _, err) = tokio::task::block_in_place(|| cli(&["models", "list"]));
    assert!(!ok && err.contains("401"), "{err}");

    let (ok, _, err) = login(&["--client-secret", "wrong"]);
    assert!(!ok && err.contains("invalid_client"), "{err}");
    let (ok, _, err) = login(&["--client-secret", CLIENT_SECRET]);
    assert!(ok, "{err}");
    let cached = home.path().join(".cache/lakescore/token.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cached).expect("token cached").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the cached token is private to the user");
    }
    let read_cache = || -> Value {
        serde_json::from_slice(&std::fs::read(&cached).expect("token cached")).expect("token cache is JSON")
    };
    assert!(read_cache()["refresh"].is_null(), "client credentials come without a refresh token");
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&["models", "create", "from-app", "-o", "json"]));
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(created["created_by"], CLIENT_ID, "the cached app token was used");

    // A person signs in with the device code (pending once, then approved).
    let (ok, _, err) = login(&["--device"]);
    assert!(ok, "{err}");
    assert!(err.contains("ABCD-EFGH"), "the user code is shown: {err}");
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&["models", "create", "from-person", "-o", "json"]));
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(created["created_by"], "person-1");

    // The person's refresh token is cached; a token within a minute of expiry is renewed
    // with it (rotated, as Entra ID does) before the command runs.
    let device_cache = read_cache();
    assert_eq!(device_cache["refresh"]["refresh_token"], "rt-1", "{device_cache}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let mut expiring = device_cache.clone();
    expiring["expires_at"] = (now + 30).into();
    std::fs::write(&cached, serde_json::to_vec(&expiring).expect("json")).expect("write cache");
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&["models", "create", "from-refreshed", "-o", "json"]));
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(created["created_by"], "person-1");
    assert_eq!(issuer.refreshes(), 1);
    let renewed = read_cache();
    assert_eq!(renewed["refresh"]["refresh_token"], "rt-2", "the rotated refresh token replaces the old one");
    assert!(renewed["expires_at"].as_i64().expect("expires_at") > now + 3000, "{renewed}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cached).expect("token cached").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the renewed token is private to the user too");
    }
    // Still valid: no second refresh.
    let (ok, _, err) = tokio::task::block_in_place(|| cli(&["models", "list"]));
    assert!(ok, "{err}");
    assert_eq!(issuer.refreshes(), 1);

    // A refresh token the issuer no longer honours: the command says so and goes on without
    // a token (the server answers 401).
    let mut expired = renewed.clone();
    expired["expires_at"] = (now - 10).into();
    expired["refresh"]["refresh_token"] = "rt-1".into();
    std::fs::write(&cached, serde_json::to_vec(&expired).expect("json")).expect("write cache");
    let (ok, _, err) = tokio::task::block_in_place(|| cli(&["models", "list"]));
    assert!(!ok && err.contains("401"), "{err}");
    assert!(err.contains("could not be refreshed") && err.contains("invalid_grant"), "{err}");
    assert_eq!(issuer.refreshes(), 1);
    server.terminate();
}

#[test]
fn registrations_survive_sigkill_and_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = common::spawn_serve(data.path(), &[]);
    let files = ["logreg.onnx", "rf.onnx", "gbr.onnx", "mlp.onnx", "linreg.onnx"];
    let mut registered = Vec::new();
    for (i, file) in files.iter().cycle().take(12).enumerate() {
        let name = format!("m{}", i % 3);
        let v = json_of(
            &server.url,
            &["models", "register", &name, models_dir().join(file).to_str().expect("path"), "-o", "json"],
        );
        registered.push((
            name,
            v["version"].as_i64().expect("version"),
            v["sha256"].as_str().expect("sha").to_string(),
        ));
    }
    // No graceful shutdown: the process is killed outright.
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();

    let mut restarted = common::spawn_serve(data.path(), &[]);
    for (name, version, sha) in &registered {
        let v = json_of(&restarted.url, &["models", "resolve", &format!("{name}:{version}"), "-o", "json"]);
        assert_eq!(v["sha256"].as_str(), Some(sha.as_str()), "{name}:{version} survived");
        let out = data.path().join(format!("{name}-{version}.onnx"));
        json_of(
            &restarted.url,
            &["models", "download", &format!("{name}:{version}"), "-f", out.to_str().expect("path"), "-o", "json"],
        );
    }
    restarted.terminate();
}

#[test]
fn sigkill_between_artifact_and_row_leaves_only_what_gc_removes() {
    let data = tempfile::tempdir().expect("tempdir");
    // The failpoint holds the upload after its artifact is stored, before its row commits.
    let mut server = common::spawn_serve_env(data.path(), &[], &[("LAKESCORE_FAILPOINTS", "upload.after_artifact")]);
    json_of(&server.url, &["models", "create", "m", "-o", "json"]);
    let model = models_dir().join("rf.onnx");
    let sha = sha256_hex(&std::fs::read(&model).expect("model"));
    let url = server.url.clone();
    let upload =
        std::thread::spawn(move || lakescore(&url, &["models", "register", "m", model.to_str().expect("path")]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !server.log_lines().iter().any(|l| l.contains("failpoint reached")) {
        assert!(std::time::Instant::now() < deadline, "the upload never reached the failpoint");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let artifact = data.path().join(format!("artifacts/sha256/{}/{sha}.onnx", &sha[..2]));
    assert!(artifact.is_file(), "the artifact was written before the crash");
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let (ok, _, err) = upload.join().expect("upload thread");
    assert!(!ok, "the client sees the upload fail: {err}");

    // After a restart: no version row (so none that points at a missing file), and the
    // artifact is the one thing gc finds.
    let mut restarted = common::spawn_serve(data.path(), &[]);
    let versions = json_of(&restarted.url, &["models", "versions", "m", "-o", "json"]);
    assert_eq!(versions, serde_json::json!([]), "no row was committed");
    let (ok, _, err) = lakescore(&restarted.url, &["models", "resolve", "m"]);
    assert!(!ok && err.contains("404"), "{err}");
    restarted.terminate();
    let gc = |args: &[&str]| {
        let out = Command::new(BIN).arg("gc").arg("--data-dir").arg(data.path()).args(args).output().expect("gc");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(gc(&["--min-age-secs", "0"]), sha, "dry run finds the orphan");
    assert!(artifact.is_file(), "a dry run deletes nothing");
    assert_eq!(gc(&["--min-age-secs", "0", "--delete"]), sha);
    assert!(!artifact.exists(), "gc --delete removed it");
    assert_eq!(gc(&["--min-age-secs", "0"]), "", "nothing left to collect");
}
