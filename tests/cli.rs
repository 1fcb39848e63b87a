//! The `lakescore` binary as a user runs it: `serve` as a real process, the `models`
//! client commands against it, `check-config`, `gc`, and graceful shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{models_dir, sha256_hex};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lakescore");

struct Server {
    child: Child,
    url: String,
}

/// Starts `lakescore serve` on a free port and waits for its "listening" log line.
fn start_server(data_dir: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("LAKESCORE_DATABASE_URL")
        .env_remove("LAKESCORE_STORAGE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lakescore serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("server exited before listening").expect("read stderr");
        let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
        if entry["fields"]["message"] == "registry listening" {
            break format!("http://{}", entry["fields"]["addr"].as_str().expect("addr"));
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

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
    let mut server = start_server(data.path(), &[]);
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
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = server.child.wait().expect("wait");
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_upload_bytes = 1000"));

    for (text, expect) in [
        ("[registry]\nlisten = \"not an address\"\n", "invalid configuration"),
        ("[registry]\nunknown_key = 1\n", "unknown_key"),
        ("[registry]\ndatabase_url = \"mysql://x\"\n", "sqlite:// or postgres://"),
        ("[registry]\nlisten = \"0.0.0.0:8080\"\n", "without authentication"),
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
    let mut server = start_server(data.path(), &[]);
    let model = models_dir().join("logreg.onnx");
    json_of(&server.url, &["models", "register", "kept", model.to_str().expect("path"), "-o", "json"]);
    let _ = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
    let _ = server.child.wait();

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
