//! lakescore against an identity provider nobody here wrote: `oidc-provider` from npm
//! (`tests/oidc-provider/server.mjs`, installed and pointed to by `scripts/test`), issuing
//! JWT access tokens for the client-credentials grant with a resource indicator. Its
//! discovery document, keys and tokens are taken as they come: registering, scoring over
//! Flight, `lakescore login`, and the refusals of a token for another resource.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::FlightDescriptor;
use common::{labels, models_dir, read_parquet};
use futures::TryStreamExt;
use serde_json::{json, Value};

const RESOURCE: &str = "api://lakescore";

/// The provider as a child process, killed when dropped.
struct Provider {
    child: Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    /// `None` (the test is skipped) only outside `scripts/test`, which sets
    /// `LAKESCORE_TEST_OIDC_PROVIDER`; under `LAKESCORE_TEST_STRICT` a missing provider fails.
    fn start() -> Option<Self> {
        let Ok(script) = std::env::var("LAKESCORE_TEST_OIDC_PROVIDER") else {
            assert!(
                std::env::var_os("LAKESCORE_TEST_STRICT").is_none(),
                "LAKESCORE_TEST_OIDC_PROVIDER is not set: run the tests with scripts/test"
            );
            eprintln!("skipped: LAKESCORE_TEST_OIDC_PROVIDER is not set (scripts/test sets it)");
            return None;
        };
        let clients = json!([
            {"client_id": "admin-app", "client_secret": "admin-secret", "roles": ["LakeScore.Admin"]},
            {"client_id": "writer-app", "client_secret": "writer-secret", "scope": "lakescore.read lakescore.write"},
            {"client_id": "reader-app", "client_secret": "reader-secret", "scope": "lakescore.read"},
        ]);
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--port", "0", "--resource", RESOURCE, "--clients", &clients.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node with the oidc-provider harness");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read READY");
        let issuer = line.strip_prefix("READY ").unwrap_or_else(|| panic!("oidc-provider did not start: {line:?}"));
        Some(Self { issuer: issuer.trim().to_string(), child })
    }

    /// An access token from the token endpoint (client credentials, HTTP basic auth).
    async fn token(&self, client: &str, secret: &str, scope: &str, resource: &str) -> String {
        let response: Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret))
            .form(&[("grant_type", "client_credentials"), ("scope", scope), ("resource", resource)])
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token response");
        response["access_token"].as_str().unwrap_or_else(|| panic!("no access token: {response}")).to_string()
    }
}

/// The configuration the README gives for a non-Entra issuer.
fn config(issuer: &str) -> String {
    format!(
        r#"
[scorer]
intra_op_threads = 1

[auth.oidc]
issuer = "{issuer}"
audiences = ["{RESOURCE}"]

[auth.claims]
subject = ["sub"]
scopes = "scope"
app_id = ["client_id", "azp"]

[auth.roles]
reader = ["scope:lakescore.read"]
writer = ["scope:lakescore.write"]
admin = ["role:LakeScore.Admin"]
"#
    )
}

async fn exchange(flight: &str, token: &str) -> Result<Vec<RecordBatch>, tonic::Status> {
    let mut client = common::flight_client(flight, Some(token)).await;
    let cmd = json!({"model": "rf@champion", "feature_columns": (0..20).map(|i| format!("f{i}")).collect::<Vec<_>>()});
    let rows = read_parquet(&models_dir().join("rf.rows.parquet"));
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
        .build(futures::stream::iter([Ok(rows)]));
    let result = async { client.do_exchange(input).await?.try_collect::<Vec<_>>().await }.await;
    result.map_err(|e| match e {
        FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_identity_provider_s_tokens_register_score_and_sign_in() {
    let Some(idp) = Provider::start() else { return };
    let data = tempfile::tempdir().expect("tempdir");
    let config_path = data.path().join("lakescore.toml");
    std::fs::write(&config_path, config(&idp.issuer)).expect("write config");
    let server = tokio::task::block_in_place(|| {
        common::spawn_serve_env(data.path(), &["--config", config_path.to_str().expect("utf-8")], &[])
    });
    let url = server.url.clone();
    let http = reqwest::Client::new();

    // A writer app registers a model (it owns it, as its client id says) and scores with it.
    let writer = idp.token("writer-app", "writer-secret", "lakescore.read lakescore.write", RESOURCE).await;
    common::register_champion(&url, Some(&writer), "rf", "rf.onnx").await;
    let model: Value = http
        .get(format!("{url}/api/v1/models/rf"))
        .bearer_auth(&writer)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(model["created_by"], "writer-app", "{model}");
    let expected = labels(&read_parquet(&models_dir().join("rf.expected.parquet")), "output_label");
    let scored = exchange(&server.flight, &writer).await.expect("the writer scores");
    let got: Vec<i64> = scored.iter().flat_map(|b| labels(b, "label")).collect();
    assert_eq!(got, expected, "labels equal onnxruntime's");

    // A reader app (scope lakescore.read only) scores but may not register.
    let reader = idp.token("reader-app", "reader-secret", "lakescore.read", RESOURCE).await;
    exchange(&server.flight, &reader).await.expect("the reader scores");
    let status =
        http.post(format!("{url}/api/v1/models")).bearer_auth(&reader).json(&json!({"name": "nope"})).send().await;
    assert_eq!(status.expect("send").status(), 403);

    // An admin by app role sees the audit trail.
    let admin = idp.token("admin-app", "admin-secret", "lakescore.read", RESOURCE).await;
    let audit = http.get(format!("{url}/api/v1/audit")).bearer_auth(&admin).send().await.expect("send");
    assert_eq!(audit.status(), 200);

    // The same provider's token for another resource is refused on both transports.
    let elsewhere = idp.token("writer-app", "writer-secret", "lakescore.read", "api://other").await;
    let status = http.get(format!("{url}/api/v1/models")).bearer_auth(&elsewhere).send().await.expect("send");
    assert_eq!(status.status(), 401);
    let err = exchange(&server.flight, &elsewhere).await.expect_err("another resource's token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(err.message().contains("audience"), "{err}");

    // `lakescore login` discovers the provider, gets a token, and later commands use it.
    let home = tempfile::tempdir().expect("home");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lakescore"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("LAKESCORE_TOKEN")
            .env("LAKESCORE_URL", &url)
            .output()
            .expect("run lakescore");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tokio::task::block_in_place(|| {
        cli(&[
            "login",
            "--issuer",
            &idp.issuer,
            "--client-id",
            "writer-app",
            "--client-secret",
            "writer-secret",
            "--scope",
            "lakescore.read lakescore.write",
        ]);
        let created: Value =
            serde_json::from_str(&cli(&["models", "create", "from-login", "-o", "json"])).expect("json");
        assert_eq!(created["created_by"], "writer-app", "{created}");
    });
}
