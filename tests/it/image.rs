//! The container image. `image/contents` lists what goes into it; the Dockerfile (what users
//! build) and `scripts/build-image` (what CI builds here, with buildah and debootstrap, no
//! base image pulled) must both follow it. The built image is then run the way the Helm
//! chart runs it (`scripts/run-image`: its own non-root user, read-only root file system,
//! writable only /tmp and the chart's volumes): registry, worker and `serve` answer, a model
//! registered in it scores over Flight like onnxruntime, and nothing outside the mounts can
//! be written. `scripts/test` builds the image and sets `LAKESCORE_TEST_IMAGE` when buildah
//! is installed (CI installs it); without it the run checks are skipped.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::FlightDescriptor;
use common::{labels, models_dir, read_parquet};
use futures::TryStreamExt;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `image/contents`: kind → values (the rest of each line).
fn contents() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo().join("image/contents")).expect("image/contents");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        out.entry(kind.to_string()).or_default().push(rest.to_string());
    }
    out
}

fn one(c: &BTreeMap<String, Vec<String>>, kind: &str) -> String {
    match c.get(kind).map(Vec::as_slice) {
        Some([v]) => v.clone(),
        other => panic!("image/contents should list one {kind}, has {other:?}"),
    }
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_follows_image_contents() {
    let c = contents();
    let all = dockerfile();
    let arg = |name: &str| -> Vec<String> {
        all.iter().filter_map(|i| i.strip_prefix(&format!("ARG {name}="))).map(str::to_string).collect()
    };
    let ort = one(&c, "onnxruntime");
    assert!(arg("ORT_VERSION").iter().all(|v| *v == ort) && !arg("ORT_VERSION").is_empty(), "ORT_VERSION");
    for entry in &c["wheel-sha256"] {
        let (arch, sha) = entry.split_once(' ').expect("wheel-sha256 ARCH SHA");
        assert_eq!(arg(&format!("ORT_WHEEL_SHA256_{}", arch.to_uppercase())), vec![sha.to_string()], "{arch}");
    }
    let base = one(&c, "base");
    let release = base.strip_prefix("debian ").expect("base debian RELEASE");
    assert_eq!(arg("DEBIAN_RELEASE"), vec![release.to_string()]);

    // The runtime stage.
    let start = all.iter().position(|i| i.starts_with("FROM debian:")).expect("runtime stage");
    let runtime = &all[start..];
    let get = |keyword: &str| -> Vec<String> {
        runtime.iter().filter_map(|i| i.strip_prefix(&format!("{keyword} "))).map(|s| s.trim().to_string()).collect()
    };
    let expand = |s: &str| s.replace("${ORT_VERSION}", &ort);
    assert_eq!(get("ENV").iter().map(|e| expand(e)).collect::<Vec<_>>(), c["env"]);
    assert_eq!(get("WORKDIR"), vec![one(&c, "workdir")]);
    assert_eq!(get("USER"), vec![one(&c, "user")]);
    assert_eq!(get("ENTRYPOINT"), vec![json!([one(&c, "entrypoint")]).to_string().replace(',', ", ")]);
    assert_eq!(get("CMD"), vec![json!([one(&c, "cmd")]).to_string()]);
    let exposed: BTreeSet<String> =
        get("EXPOSE").iter().flat_map(|e| e.split_whitespace()).map(str::to_string).collect();
    assert_eq!(exposed, c["expose"].iter().cloned().collect());
    let labels: BTreeSet<String> = get("LABEL")
        .iter()
        .flat_map(|l| l.split("\" ").map(|kv| kv.trim().replace('"', "")).collect::<Vec<_>>())
        .filter(|kv| !kv.is_empty())
        .collect();
    assert_eq!(labels, c["label"].iter().cloned().collect());

    // Packages, account, directories and files.
    let run = get("RUN").join(" ");
    let installed: BTreeSet<&str> = run
        .split("--no-install-recommends ")
        .nth(1)
        .expect("apt-get install in the runtime stage")
        .split("&&")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(installed, c["package"].iter().map(String::as_str).collect());
    let account = one(&c, "account");
    let [name, uid, home, shell] = account.split(' ').collect::<Vec<_>>()[..] else { panic!("account {account}") };
    assert!(run.contains(&format!("groupadd --system --gid {uid} {name}")), "{run}");
    assert!(
        run.contains(&format!("useradd --system --uid {uid} --gid {uid} --home-dir {home}"))
            && run.contains(&format!("--shell {shell} {name}")),
        "{run}"
    );
    for dir in &c["dir"] {
        let [path, mode, owner] = dir.split(' ').collect::<Vec<_>>()[..] else { panic!("dir {dir}") };
        let (o, g) = owner.split_once(':').expect("uid:gid");
        assert!(run.contains(&format!("install -d -o {o} -g {g} -m {mode} {path}")), "dir {path}: {run}");
    }
    let copies: Vec<String> =
        get("COPY").iter().filter_map(|c| c.split_whitespace().last().map(str::to_string)).collect();
    let text = all.join("\n");
    for file in &c["file"] {
        let path = file.split(' ').next().expect("path");
        let copied = copies.iter().any(|dest| {
            dest == path
                || (dest.ends_with('/')
                    && path.starts_with(dest.as_str())
                    && text.contains(&expand(&path[path.rfind('/').unwrap_or(0) + 1..]).replace(&ort, "")))
        });
        assert!(copied, "{path} is in image/contents but no COPY of the Dockerfile puts it there ({copies:?})");
    }
}

// --------------------------------------------------------------------------- the built image

/// The image `scripts/test` built, or `None` (skipped) without buildah.
fn built_image() -> Option<String> {
    match std::env::var("LAKESCORE_TEST_IMAGE") {
        Ok(image) if !image.is_empty() => Some(image),
        _ => {
            eprintln!(
                "skipped: LAKESCORE_TEST_IMAGE is not set (scripts/test builds the image when buildah is installed)"
            );
            None
        }
    }
}

fn buildah(args: &[&str]) -> String {
    let mut cmd = Command::new("buildah");
    cmd.args(["--storage-driver", "vfs"]);
    if let Ok(root) = std::env::var("LAKESCORE_BUILDAH_ROOT") {
        cmd.args(["--root", &root, "--runroot", &format!("{root}/run")]);
    }
    let out = cmd.args(args).output().expect("run buildah");
    assert!(out.status.success(), "buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One `scripts/run-image` process; SIGTERM to the server and a wait when dropped.
struct Running {
    child: Child,
    pidfile: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(image: &str, volumes: &[(&Path, &str)], env: &[(&str, String)], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let mut cmd = Command::new(repo().join("scripts/run-image"));
        cmd.arg(image).arg("--pidfile").arg(&pidfile);
        for (host, path) in volumes {
            cmd.arg("--volume").arg(format!("{}:{path}", host.display()));
        }
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        let child = cmd.arg("--").args(args).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("run-image");
        Self { child, pidfile, _dir: dir }
    }

    /// SIGTERM to the server; its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let _ = self.child.wait();
    }
}

async fn wait_ok(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} did not answer 200");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_flight(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the worker did not listen at {addr}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A directory the image's user (65532) may write, for the chart's data volume.
fn volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let _ = Command::new("chown").args(["65532:65532"]).arg(dir.path()).status();
    dir
}

#[test]
fn the_built_image_holds_what_image_contents_lists_and_nothing_more() {
    let Some(image) = built_image() else { return };
    let c = contents();
    let inspected: Value = serde_json::from_str(&buildah(&["inspect", "--type", "image", &image])).expect("json");
    let config = &inspected["OCIv1"]["config"];
    assert_eq!(config["User"], one(&c, "user"));
    assert_eq!(config["WorkingDir"], one(&c, "workdir"));
    assert_eq!(config["Entrypoint"], json!([one(&c, "entrypoint")]));
    assert_eq!(config["Cmd"], json!([one(&c, "cmd")]));
    for env in &c["env"] {
        assert!(config["Env"].as_array().expect("Env").iter().any(|e| e == env), "{env}: {config}");
    }
    for port in &c["expose"] {
        assert!(config["ExposedPorts"].get(format!("{port}/tcp")).is_some(), "{port}: {config}");
    }
    for label in &c["label"] {
        let (k, v) = label.split_once('=').expect("k=v");
        assert_eq!(config["Labels"][k], v, "{label}");
    }

    let ctr = buildah(&["from", "--quiet", &image]);
    let root = PathBuf::from(buildah(&["mount", &ctr]));
    let check = std::panic::catch_unwind(|| {
        use std::os::unix::fs::MetadataExt;
        for entry in c["file"].iter().chain(&c["dir"]) {
            let [path, mode, owner] = entry.split(' ').collect::<Vec<_>>()[..] else { panic!("{entry}") };
            let meta =
                std::fs::metadata(root.join(path.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(format!("{:04o}", meta.mode() & 0o7777), mode, "{path}");
            assert_eq!(format!("{}:{}", meta.uid(), meta.gid()), owner, "{path}");
        }
        // Small: no compilers, no Python, no package caches or indexes.
        for absent in ["usr/bin/gcc", "usr/bin/cc", "usr/bin/python3", "usr/bin/cargo"] {
            assert!(!root.join(absent).exists(), "{absent} is in the image");
        }
        let debs = std::fs::read_dir(root.join("var/cache/apt/archives"))
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "deb")).count())
            .unwrap_or(0);
        assert_eq!(debs, 0, "package cache left in the image");
        let lists = std::fs::read_dir(root.join("var/lib/apt/lists")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(lists, 0, "apt indexes left in the image");
        // Stripped of debug info (what the release profile's line tables add: about 4.5x).
        let binary = root.join("usr/local/bin/lakescore");
        let sections = Command::new("readelf").args(["-S", "--wide"]).arg(&binary).output().expect("run readelf");
        assert!(sections.status.success(), "readelf: {}", String::from_utf8_lossy(&sections.stderr));
        let sections = String::from_utf8_lossy(&sections.stdout);
        assert!(sections.contains(".text"), "{sections}");
        for dwarf in [".debug_info", ".debug_line", ".debug_str", ".debug_abbrev"] {
            assert!(!sections.contains(dwarf), "the image's binary keeps {dwarf}: {sections}");
        }
        // The image's budget for it: 208 MB with Flight SQL (DataFusion), 75 MB before.
        let size = std::fs::metadata(&binary).expect("binary").len();
        assert!(size < 250 << 20, "the binary is {size} bytes");
    });
    buildah(&["rm", &ctr]);
    if let Err(panic) = check {
        std::panic::resume_unwind(panic);
    }
    let size = buildah(&["images", "--format", "{{.Size}}", &image]);
    eprintln!("image {image}: {size}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_the_chart_runs_it() {
    let Some(image) = built_image() else { return };
    let image = image.as_str();

    // The registry, as its Deployment: data volume at /var/lib/lakescore, /tmp, read-only root.
    let data = volume();
    let http_port = free_port();
    let registry_url = format!("http://127.0.0.1:{http_port}");
    let registry = tokio::task::block_in_place(|| {
        Running::start(
            image,
            &[(data.path(), "/var/lib/lakescore")],
            &[("LAKESCORE_LISTEN", format!("127.0.0.1:{http_port}"))],
            &["registry"],
        )
    });
    wait_ok(&format!("{registry_url}/healthz")).await;
    wait_ok(&format!("{registry_url}/readyz")).await;
    common::register_champion(&registry_url, None, "rf", "rf.onnx").await;

    // The worker, as its Deployment: no data volume, only /tmp.
    let flight_port = free_port();
    let flight = format!("127.0.0.1:{flight_port}");
    let worker = tokio::task::block_in_place(|| {
        Running::start(
            image,
            &[],
            &[
                ("LAKESCORE_FLIGHT_LISTEN", flight.clone()),
                ("LAKESCORE_REGISTRY_URL", format!("grpc://127.0.0.1:{http_port}")),
                ("LAKESCORE_INTRA_OP_THREADS", "1".into()),
            ],
            &["scorer"],
        )
    });
    wait_flight(&flight).await;
    let mut client = common::flight_client(&flight, None).await;
    let cmd = json!({"model": "rf@champion", "feature_columns": (0..20).map(|i| format!("f{i}")).collect::<Vec<_>>()});
    let rows = read_parquet(&models_dir().join("rf.rows.parquet"));
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
        .build(futures::stream::iter([Ok(rows)]));
    let scored: Vec<_> = client.do_exchange(input).await.expect("exchange").try_collect().await.expect("scored");
    let got: Vec<i64> = scored.iter().flat_map(|b| labels(b, "label")).collect();
    let want = labels(&read_parquet(&models_dir().join("rf.expected.parquet")), "output_label");
    assert_eq!(got, want, "labels from the image's ONNX Runtime equal onnxruntime's in Python");

    // Both drain and exit 0 on SIGTERM, as on a rollout.
    assert!(tokio::task::block_in_place(|| worker.stop()).success(), "the worker exits 0 on SIGTERM");
    assert!(tokio::task::block_in_place(|| registry.stop()).success(), "the registry exits 0 on SIGTERM");

    // `serve` (the image's default command) on its data volume.
    let data = volume();
    let (p1, p2) = (free_port(), free_port());
    let serve = tokio::task::block_in_place(|| {
        Running::start(
            image,
            &[(data.path(), "/var/lib/lakescore")],
            &[("LAKESCORE_LISTEN", format!("127.0.0.1:{p1}")), ("LAKESCORE_FLIGHT_LISTEN", format!("127.0.0.1:{p2}"))],
            &[],
        )
    });
    wait_ok(&format!("http://127.0.0.1:{p1}/readyz")).await;
    wait_flight(&format!("127.0.0.1:{p2}")).await;
    assert!(data.path().join("lakescore-data").is_dir(), "serve keeps its data on the volume");
    assert!(tokio::task::block_in_place(|| serve.stop()).success());

    // Nothing outside the mounts is writable: a data directory anywhere else is refused.
    let out = Command::new(repo().join("scripts/run-image"))
        .args([image, "--env", "LAKESCORE_LISTEN=127.0.0.1:0", "--", "registry", "--data-dir", "/opt/elsewhere"])
        .output()
        .expect("run-image");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}
