//! OIDC passthrough auth against a real issuer (discovery + JWKS over HTTP, RSA-signed
//! tokens): token checks, claim-mapped roles, per-model grants, the audit log.

use crate::common;

use common::issuer::{encoding_key, keys, Issuer, AUDIENCE};
use common::{model_bytes, Db, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lakescore_registry::auth::{AuthConfig, RoleMapping};
use lakescore_registry::oidc::OidcConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

on_both_databases!(grants_give_access_to_one_model, audit_log_records_writes);

pub fn auth_config(issuer: &Issuer) -> AuthConfig {
    AuthConfig {
        oidc: Some(OidcConfig {
            issuer: issuer.url.clone(),
            audiences: vec![AUDIENCE.into()],
            clock_skew_secs: 60,
            jwks_refresh_cooldown_secs: 30,
            ..Default::default()
        }),
        claims: Default::default(),
        roles: RoleMapping {
            reader: vec!["role:LakeScore.Read".into()],
            writer: vec!["role:LakeScore.Write".into(), "scope:Models.Write".into()],
            admin: vec!["role:LakeScore.Admin".into(), "group:11111111-admins".into()],
        },
        ..Default::default()
    }
}

async fn start(db: Db) -> (Issuer, TestServer) {
    let issuer = Issuer::start().await;
    let server = TestServer::start_with_auth(db, auth_config(&issuer), |_| {}).await;
    (issuer, server)
}

fn get(s: &TestServer, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let r = reqwest::Client::new().get(s.api(path));
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

async fn status(req: reqwest::RequestBuilder) -> StatusCode {
    req.send().await.expect("send").status()
}

async fn detail(req: reqwest::RequestBuilder) -> (StatusCode, String) {
    let r = req.send().await.expect("send");
    let s = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (s, body["detail"].as_str().unwrap_or_default().to_string())
}

/// A well-formed token whose `kid` the issuer does not publish.
fn unknown_kid_token(i: &Issuer, kid: &str) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_string());
    let claims = json!({"iss": i.url, "aud": AUDIENCE, "exp": chrono::Utc::now().timestamp() + 60, "oid": "x"});
    jsonwebtoken::encode(&h, &claims, &encoding_key(0)).expect("sign")
}

fn writer(i: &Issuer, oid: &str) -> String {
    i.token(json!({"oid": oid, "roles": ["LakeScore.Write"]}))
}

async fn create_model(s: &TestServer, token: &str, name: &str) {
    let r = reqwest::Client::new()
        .post(s.api("/models"))
        .bearer_auth(token)
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_checked_strictly() {
    let (i, s) = start(Db::Sqlite).await;
    let reader = i.token(json!({"roles": ["LakeScore.Read"]}));

    let r = get(&s, "/models", None).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    assert_eq!(status(get(&s, "/models", Some(&reader))).await, StatusCode::OK);
    // Health, readiness and the API description stay public (probes, tooling).
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = reqwest::get(format!("{}{path}", s.base)).await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(reqwest::get(s.api("/openapi.json")).await.expect("send").status(), StatusCode::OK);

    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "not-a-jwt".into(), "malformed"),
        ("expired beyond the skew", i.token(json!({"exp": now - 61, "roles": ["LakeScore.Read"]})), "expired"),
        ("not yet valid", i.token(json!({"nbf": now + 120, "roles": ["LakeScore.Read"]})), "not valid yet"),
        ("wrong audience", i.token(json!({"aud": "api://other", "roles": ["LakeScore.Read"]})), "audience"),
        ("wrong issuer", i.token(json!({"iss": "https://evil.example", "roles": ["LakeScore.Read"]})), "issuer"),
        ("no exp", i.token(json!({"exp": null, "roles": ["LakeScore.Read"]})), "exp"),
    ];
    for (what, token, expect) in &cases {
        let (st, d) = detail(get(&s, "/models", Some(token))).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{what}");
        assert!(d.contains(expect), "{what}: {d}");
    }
    // Inside the skew: still accepted.
    let lenient = i.token(json!({"exp": now - 30, "roles": ["LakeScore.Read"]}));
    assert_eq!(status(get(&s, "/models", Some(&lenient))).await, StatusCode::OK);

    // alg=none and an HS256 token keyed with the issuer's public key are refused.
    let claims = json!({"iss": i.url, "aud": AUDIENCE, "exp": now + 600, "oid": "x", "roles": ["LakeScore.Admin"]});
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": "key-1"})), b64(&claims));
    let (st, _) = detail(get(&s, "/models", Some(&none))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "alg none");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("key-1".into());
    let forged =
        jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(keys()[0].public_pem.as_bytes())).expect("sign");
    let (st, d) = detail(get(&s, "/models", Some(&forged))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "HS256 with the public key");
    assert!(d.contains("not accepted"), "{d}");
    // A valid token whose payload was altered after signing.
    let valid = i.token(json!({"roles": ["LakeScore.Read"]}));
    let parts: Vec<&str> = valid.split('.').collect();
    let forged_claims = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).expect("payload");
        let mut claims: Value = serde_json::from_slice(&raw).expect("claims");
        claims["roles"] = json!(["LakeScore.Admin"]);
        b64(&claims)
    };
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let (st, d) = detail(get(&s, "/models", Some(&tampered))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "tampered payload");
    assert!(d.contains("signature"), "{d}");
    // A token signed by a key the issuer does not publish.
    let stray = i.token_with(1, json!({"roles": ["LakeScore.Admin"]}));
    let (st, d) = detail(get(&s, "/models", Some(&stray))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(d.contains("unknown key"), "{d}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_come_from_claims() {
    let (i, s) = start(Db::Sqlite).await;
    let reader = i.token(json!({"roles": ["LakeScore.Read"]}));
    let scoped = i.token(json!({"oid": "user-2", "scp": "openid Models.Write"}));
    let nobody = i.token(json!({"oid": "user-3"}));
    let group_admin = i.token(json!({"oid": "user-4", "groups": ["11111111-admins"]}));

    let post =
        |t: &str, name: &str| reqwest::Client::new().post(s.api("/models")).bearer_auth(t).json(&json!({"name": name}));
    let (st, d) = detail(post(&reader, "m1")).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(d.contains("Writer"), "{d}");
    assert_eq!(status(post(&nobody, "m1")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(post(&scoped, "m1")).await, StatusCode::CREATED, "a delegated scope maps to writer");
    let m: Value = get(&s, "/models/m1", Some(&reader)).send().await.expect("send").json().await.expect("json");
    assert_eq!(m["created_by"], "user-2", "created_by is the token's oid");
    assert_eq!(status(get(&s, "/models/m1", Some(&nobody))).await, StatusCode::FORBIDDEN);
    // Deleting needs the owner or an admin; a group maps to admin.
    let del = |t: &str| reqwest::Client::new().delete(s.api("/models/m1")).bearer_auth(t);
    assert_eq!(status(del(&reader)).await, StatusCode::FORBIDDEN);
    assert_eq!(status(del(&group_admin)).await, StatusCode::NO_CONTENT);
    s.stop().await;
}

async fn grants_give_access_to_one_model(db: Db) {
    let (i, s) = start(db).await;
    let owner = writer(&i, "owner-1");
    let other_writer = writer(&i, "writer-2");
    let alice = i.token(json!({"oid": "alice"}));
    let team = i.token(json!({"oid": "bob", "groups": ["team-risk"]}));
    create_model(&s, &owner, "fraud").await;
    create_model(&s, &owner, "churn").await;
    assert_eq!(s.upload("fraud", model_bytes("logreg.onnx"), Some(&owner)).await.status(), StatusCode::CREATED);

    // No global role, no grant: nothing visible, nothing readable.
    let list: Value = get(&s, "/models", Some(&alice)).send().await.expect("send").json().await.expect("json");
    assert_eq!(list["models"], json!([]));
    assert_eq!(status(get(&s, "/resolve/fraud", Some(&alice))).await, StatusCode::FORBIDDEN);
    assert_eq!(status(get(&s, "/resolve/nope", Some(&alice))).await, StatusCode::NOT_FOUND);

    // Only the owner (or an admin) manages grants; a global writer is not enough.
    let grant = |t: &str, principal: &str, perm: &str| {
        reqwest::Client::new()
            .put(s.api("/models/fraud/grants"))
            .bearer_auth(t)
            .json(&json!({"principal": principal, "permission": perm}))
    };
    assert_eq!(status(grant(&other_writer, "user:alice", "read")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(grant(&owner, "alice", "read")).await, StatusCode::BAD_REQUEST);
    assert_eq!(status(grant(&owner, "user:alice", "read")).await, StatusCode::OK);
    assert_eq!(status(grant(&owner, "group:team-risk", "write")).await, StatusCode::OK);

    assert_eq!(status(get(&s, "/resolve/fraud", Some(&alice))).await, StatusCode::OK);
    let list: Value = get(&s, "/models", Some(&alice)).send().await.expect("send").json().await.expect("json");
    let names: Vec<&str> =
        list["models"].as_array().expect("models").iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["fraud"], "only the granted model is listed");
    assert_eq!(status(get(&s, "/models/churn", Some(&alice))).await, StatusCode::FORBIDDEN, "a grant covers one model");
    assert_eq!(
        s.upload("fraud", model_bytes("logreg.onnx"), Some(&alice)).await.status(),
        StatusCode::FORBIDDEN,
        "read does not allow writing"
    );
    assert_eq!(
        s.upload("fraud", model_bytes("logreg.onnx"), Some(&team)).await.status(),
        StatusCode::CREATED,
        "a group's write grant does"
    );
    let artifact = get(&s, "/models/fraud/versions/1/artifact", Some(&alice)).send().await.expect("send");
    assert_eq!(artifact.status(), StatusCode::OK);

    let grants: Value =
        get(&s, "/models/fraud/grants", Some(&owner)).send().await.expect("send").json().await.expect("json");
    assert_eq!(grants.as_array().map(Vec::len), Some(2));
    assert_eq!(grants[0]["granted_by"], "owner-1");
    let revoke = reqwest::Client::new()
        .delete(s.api("/models/fraud/grants"))
        .bearer_auth(&owner)
        .query(&[("principal", "user:alice")]);
    assert_eq!(status(revoke).await, StatusCode::NO_CONTENT);
    assert_eq!(status(get(&s, "/resolve/fraud", Some(&alice))).await, StatusCode::FORBIDDEN, "revoked at once");
    s.stop().await;
}

async fn audit_log_records_writes(db: Db) {
    let (i, s) = start(db).await;
    let owner = writer(&i, "owner-1");
    let admin = i.token(json!({"oid": "admin-1", "roles": ["LakeScore.Admin"]}));
    create_model(&s, &owner, "fraud").await;
    assert_eq!(s.upload("fraud", model_bytes("logreg.onnx"), Some(&owner)).await.status(), StatusCode::CREATED);
    let r = reqwest::Client::new()
        .put(s.api("/models/fraud/aliases/champion"))
        .bearer_auth(&owner)
        .json(&json!({"version": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(status(get(&s, "/audit", Some(&owner))).await, StatusCode::FORBIDDEN, "admins only");
    let audit: Value =
        get(&s, "/audit?model=fraud", Some(&admin)).send().await.expect("send").json().await.expect("json");
    let entries = audit["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["alias.set", "version.create", "model.create"], "newest first");
    assert!(entries.iter().all(|e| e["principal"] == "owner-1"));
    assert_eq!(entries[0]["detail"], json!({"alias": "champion", "version": 1}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_refresh_is_rate_limited_and_survives_issuer_outage() {
    let (i, s) = start(Db::Sqlite).await;
    let reader = i.token(json!({"roles": ["LakeScore.Read"]}));
    assert_eq!(status(get(&s, "/models", Some(&reader))).await, StatusCode::OK);
    let baseline = i.jwks_fetches();
    assert!(baseline >= 1);

    // A flood of tokens with unknown kids: at most one refresh in the cooldown window.
    for n in 0..25 {
        let t = unknown_kid_token(&i, &format!("random-{n}"));
        assert_eq!(status(get(&s, "/models", Some(&t))).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(get(&s, "/models", Some(&reader))).await, StatusCode::OK, "valid traffic keeps working");
    }
    assert!(i.jwks_fetches() <= baseline + 1, "{} fetches after the flood (baseline {baseline})", i.jwks_fetches());

    // Issuer down with a warm cache: known keys keep validating, also tokens never seen
    // before (not answered from the verified-token cache).
    i.set_down(true);
    assert_eq!(status(get(&s, "/models", Some(&reader))).await, StatusCode::OK);
    let fresh = i.token(json!({"oid": "someone-new", "roles": ["LakeScore.Read"]}));
    assert_eq!(status(get(&s, "/models", Some(&fresh))).await, StatusCode::OK, "a new token, cached keys");
    s.stop().await;

    // Issuer down with a cold cache: 503, never fail-open.
    let cold = TestServer::start_with_auth(Db::Sqlite, auth_config(&i), |_| {}).await;
    let (st, d) = detail(get(&cold, "/models", Some(&reader))).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{d}");
    i.set_down(false);
    cold.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signing_key_rotation_is_followed() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    if let Some(o) = config.oidc.as_mut() {
        o.jwks_refresh_cooldown_secs = 1;
    }
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let old = i.token_with(0, json!({"roles": ["LakeScore.Read"]}));
    assert_eq!(status(get(&s, "/models", Some(&old))).await, StatusCode::OK);
    // The issuer rolls over to a new key: tokens signed with it validate once the
    // cooldown since the last fetch has passed (one refresh on the unknown kid).
    i.publish(&[0, 1]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let new = i.token_with(1, json!({"roles": ["LakeScore.Read"]}));
    assert_eq!(status(get(&s, "/models", Some(&new))).await, StatusCode::OK, "new key picked up");
    assert_eq!(status(get(&s, "/models", Some(&old))).await, StatusCode::OK, "old key still published");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_multi_tenant_issuers() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    if let Some(o) = config.oidc.as_mut() {
        o.issuer = format!("{}/{{tenantid}}/v2.0", i.url);
        o.additional_issuers = vec![format!("{}/sts/{{tenantid}}/", i.url)];
        o.allowed_tenants = vec!["tenant-a".into()];
        o.discovery_url = Some(format!("{}/.well-known/openid-configuration", i.url));
    }
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let v2 =
        i.token(json!({"iss": format!("{}/tenant-a/v2.0", i.url), "tid": "tenant-a", "roles": ["LakeScore.Read"]}));
    let v1 =
        i.token(json!({"iss": format!("{}/sts/tenant-a/", i.url), "tid": "tenant-a", "roles": ["LakeScore.Read"]}));
    let other =
        i.token(json!({"iss": format!("{}/tenant-b/v2.0", i.url), "tid": "tenant-b", "roles": ["LakeScore.Read"]}));
    let mismatch =
        i.token(json!({"iss": format!("{}/tenant-a/v2.0", i.url), "tid": "tenant-b", "roles": ["LakeScore.Read"]}));
    assert_eq!(status(get(&s, "/models", Some(&v2))).await, StatusCode::OK);
    assert_eq!(status(get(&s, "/models", Some(&v1))).await, StatusCode::OK);
    assert_eq!(status(get(&s, "/models", Some(&other))).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(get(&s, "/models", Some(&mismatch))).await, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_times_at_the_skew_boundary() {
    // 60 s of skew: a token that expired (or starts) up to a minute ago (ahead) is taken,
    // one a few seconds past that is not. A margin of 3 s keeps the test off the clock edge.
    let (i, s) = start(Db::Sqlite).await;
    let now = chrono::Utc::now().timestamp();
    let read = |claims: Value| {
        let mut c = claims;
        c["roles"] = json!(["LakeScore.Read"]);
        i.token(c)
    };
    let cases = [
        ("expired 57 s ago", read(json!({"exp": now - 57})), StatusCode::OK, ""),
        ("expired 63 s ago", read(json!({"exp": now - 63})), StatusCode::UNAUTHORIZED, "expired"),
        ("valid from 57 s ahead", read(json!({"nbf": now + 57})), StatusCode::OK, ""),
        ("valid from 63 s ahead", read(json!({"nbf": now + 63})), StatusCode::UNAUTHORIZED, "not valid yet"),
    ];
    for (what, token, want, detail_has) in cases {
        let (st, d) = detail(get(&s, "/models", Some(&token))).await;
        assert_eq!(st, want, "{what}: {d}");
        assert!(d.contains(detail_has), "{what}: {d}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_kid_costs_exactly_one_jwks_refresh() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    if let Some(o) = config.oidc.as_mut() {
        o.jwks_refresh_cooldown_secs = 1;
    }
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let reader = i.token(json!({"roles": ["LakeScore.Read"]}));
    assert_eq!(status(get(&s, "/models", Some(&reader))).await, StatusCode::OK);
    // Past the cooldown of the start-up fetch: the next unknown kid may refresh once.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = i.jwks_fetches();
    let unpublished = i.token_with(1, json!({"roles": ["LakeScore.Read"]}));
    let (st, d) = detail(get(&s, "/models", Some(&unpublished))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{d}");
    assert!(d.contains("unknown key 'key-2'"), "{d}");
    assert_eq!(i.jwks_fetches(), before + 1, "exactly one refresh for the unknown kid");
    // Within the cooldown, the same and other unknown kids cost nothing more.
    for _ in 0..5 {
        assert_eq!(status(get(&s, "/models", Some(&unpublished))).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(i.jwks_fetches(), before + 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_tokens_and_scopes_without_a_role_are_forbidden() {
    let (i, s) = start(Db::Sqlite).await;
    let owner = writer(&i, "owner-1");
    create_model(&s, &owner, "fraud").await;
    // An app-only (client-credentials) token of another application: valid, but none of
    // lakescore's app roles. And a user's delegated token with a scope lakescore does not map.
    let app = i.token(json!({"oid": "sp-42", "azp": "other-app", "idtyp": "app", "roles": ["Other.Role"]}));
    let scoped = i.token(json!({"oid": "user-7", "scp": "User.Read openid profile"}));
    for (who, token) in [("app-only token", &app), ("scope without a role", &scoped)] {
        let (st, d) =
            detail(reqwest::Client::new().post(s.api("/models")).bearer_auth(token).json(&json!({"name": "mine"})))
                .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{who} creates a model: {d}");
        assert_eq!(status(get(&s, "/resolve/fraud", Some(token))).await, StatusCode::FORBIDDEN, "{who} resolves");
        assert_eq!(
            s.upload("fraud", model_bytes("logreg.onnx"), Some(token)).await.status(),
            StatusCode::FORBIDDEN,
            "{who} uploads"
        );
    }
    // Nothing was created by the refused calls.
    let models: Value = get(&s, "/models", Some(&owner)).send().await.expect("send").json().await.expect("json");
    assert_eq!(models["models"].as_array().map(Vec::len), Some(1));
    s.stop().await;
}

/// Calls, each with a token never seen before (so none is answered from the
/// verified-token cache), `n` at once; every status and the slowest latency.
async fn concurrent_calls(i: &Issuer, s: &TestServer, n: usize) -> (Vec<StatusCode>, std::time::Duration) {
    let calls = (0..n).map(|k| {
        let token =
            i.token(json!({"oid": format!("caller-{k}-{}", rand::random::<u64>()), "roles": ["LakeScore.Read"]}));
        let req = get(s, "/models", Some(&token));
        async move {
            let started = std::time::Instant::now();
            (status(req).await, started.elapsed())
        }
    });
    let results = futures::future::join_all(calls).await;
    let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
    (results.into_iter().map(|r| r.0).collect(), slowest)
}

/// Validation never waits on the issuer while keys are held: past their maximum age they
/// are refreshed in the background, and an issuer that accepts connections but answers
/// late (or never) costs the callers nothing. An unknown `kid` waits for one fetch that
/// all such callers share, bounded by the issuer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_hung_issuer_never_stalls_calls_with_held_keys() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    if let Some(o) = config.oidc.as_mut() {
        o.jwks_max_age_secs = 1;
        o.jwks_refresh_cooldown_secs = 1;
        o.http_timeout_secs = 3;
    }
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let (statuses, _) = concurrent_calls(&i, &s, 1).await;
    assert_eq!(statuses, [StatusCode::OK], "keys fetched");

    for (what, delay) in [("slow", 1_500), ("hung", 3_600_000)] {
        i.set_delay(std::time::Duration::from_millis(delay));
        // The held keys pass their maximum age: the next calls start a refresh that the
        // issuer answers late or never, and must not wait for it.
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        for n in [1, 64] {
            let fetches = i.jwks_fetches();
            let (statuses, slowest) = concurrent_calls(&i, &s, n).await;
            assert!(statuses.iter().all(|st| *st == StatusCode::OK), "{what} issuer, {n} callers: {statuses:?}");
            // Waiting on the issuer would take its delay (1.5 s) or timeout (3 s); the bound
            // is far above the real figure (printed) so that a busy machine cannot fail it.
            eprintln!("{what} issuer, {n} concurrent callers: slowest {slowest:?}");
            assert!(slowest < std::time::Duration::from_millis(1_000), "{what} issuer, {n} callers: {slowest:?}");
            assert!(i.jwks_fetches() <= fetches + 1, "one background refresh at most, not one per call");
        }
    }

    // Unknown kids while the issuer hangs: one fetch shared by all, bounded by the timeout
    // (3 s), not one after the other (8 × 3 s).
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let started = std::time::Instant::now();
    let unknown = (0..8).map(|n| {
        let req = get(&s, "/models", Some(&unknown_kid_token(&i, &format!("rotated-{n}"))));
        async move { status(req).await }
    });
    let statuses = futures::future::join_all(unknown).await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|st| *st == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(took < std::time::Duration::from_secs(6), "8 unknown kids took {took:?}: the fetch was not shared");
    i.set_delay(std::time::Duration::ZERO);
    s.stop().await;
}

/// With the issuer hung at start-up the server serves at once and says it is not ready
/// (503 with Retry-After, like every call that needs keys), and becomes ready by itself
/// once the issuer answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_does_not_wait_for_a_hung_issuer_and_readiness_follows_the_keys() {
    let i = Issuer::start().await;
    i.set_delay(std::time::Duration::from_secs(3600));
    let mut config = auth_config(&i);
    if let Some(o) = config.oidc.as_mut() {
        o.jwks_refresh_cooldown_secs = 1;
        o.http_timeout_secs = 2;
    }
    let started = std::time::Instant::now();
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let r = reqwest::get(format!("{}/healthz", s.base)).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "start-up waited for the issuer");

    let r = reqwest::get(format!("{}/readyz", s.base)).await.expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "no keys: not ready");
    assert!(r.headers().get("retry-after").is_some(), "503 says when to retry");
    let reader = i.token(json!({"roles": ["LakeScore.Read"]}));
    let r = get(&s, "/models", Some(&reader)).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_some(), "503 says when to retry");

    i.set_delay(std::time::Duration::ZERO);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = reqwest::get(format!("{}/readyz", s.base)).await.expect("send");
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never became ready after the issuer came back");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(status(get(&s, "/models", Some(&reader))).await, StatusCode::OK);
    s.stop().await;
}

/// Keycloak puts roles in nested claims: a dotted claim name is a path into them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_role_claims_are_read_by_path() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    config.claims.roles = "realm_access.roles".into();
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let post = |token: &str, name: &str| {
        reqwest::Client::new().post(s.api("/models")).bearer_auth(token).json(&json!({"name": name}))
    };
    let nested = i.token(json!({"oid": "kc-1", "realm_access": {"roles": ["LakeScore.Write"]}}));
    assert_eq!(status(post(&nested, "from-keycloak")).await, StatusCode::CREATED);
    // The top-level claim is not what this configuration reads.
    let top_level = i.token(json!({"oid": "kc-2", "roles": ["LakeScore.Write"]}));
    assert_eq!(status(post(&top_level, "not-mapped")).await, StatusCode::FORBIDDEN);
    s.stop().await;
}

/// Entra sends `_claim_names` / `hasgroups` instead of `groups` for a user in too many
/// groups: the refusal says so and what to configure, instead of a bare "may not".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_overage_is_reported_in_the_refusal() {
    let (i, s) = start(Db::Sqlite).await;
    let overage = [
        json!({"oid": "many-groups", "_claim_names": {"groups": "src1"},
               "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/t/users/u/getMemberObjects"}}}),
        json!({"oid": "many-groups-implicit", "hasgroups": true}),
    ];
    for claims in overage {
        let token = i.token(claims);
        let (st, d) = detail(get(&s, "/audit", Some(&token))).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{d}");
        assert!(d.contains("group overage") && d.contains("app roles"), "{d}");
        // A listing (which shows only owned and granted models) says it too.
        let list: Value = get(&s, "/models", Some(&token)).send().await.expect("send").json().await.expect("json");
        let warning = list["warnings"][0].as_str().unwrap_or_default();
        assert!(
            warning.contains("granted to your groups are not listed") && warning.contains("group overage"),
            "{list}"
        );
    }
    let plain = i.token(json!({"oid": "few-groups", "groups": ["g1"]}));
    let (st, d) = detail(get(&s, "/audit", Some(&plain))).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{d}");
    assert!(!d.contains("overage"), "{d}");
    let list: Value = get(&s, "/models", Some(&plain)).send().await.expect("send").json().await.expect("json");
    assert!(list.get("warnings").is_none(), "{list}");
    s.stop().await;
}

/// With `default_permission = "granted"`, global readers and writers reach only the models
/// they own or were granted; admins still reach every model.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_permission_granted_needs_a_grant_even_for_global_roles() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    config.default_permission = lakescore_registry::auth::DefaultPermission::Granted;
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let owner = writer(&i, "owner-1");
    let other_writer = writer(&i, "writer-2");
    let reader = i.token(json!({"oid": "reader-1", "roles": ["LakeScore.Read"]}));
    let admin = i.token(json!({"oid": "admin-1", "roles": ["LakeScore.Admin"]}));
    create_model(&s, &owner, "shared").await;

    assert_eq!(status(get(&s, "/models/shared", Some(&owner))).await, StatusCode::OK, "the owner");
    assert_eq!(status(get(&s, "/models/shared", Some(&admin))).await, StatusCode::OK, "an admin");
    assert_eq!(status(get(&s, "/models/shared", Some(&reader))).await, StatusCode::FORBIDDEN, "a global reader");
    let listed: Value = get(&s, "/models", Some(&reader)).send().await.expect("send").json().await.expect("json");
    assert_eq!(listed["models"].as_array().map(Vec::len), Some(0), "nothing listed without a grant: {listed}");
    let patch = reqwest::Client::new()
        .patch(s.api("/models/shared"))
        .bearer_auth(&other_writer)
        .json(&json!({"description": "not mine"}));
    assert_eq!(status(patch).await, StatusCode::FORBIDDEN, "a global writer");

    let grant = reqwest::Client::new()
        .put(s.api("/models/shared/grants"))
        .bearer_auth(&owner)
        .json(&json!({"principal": "user:reader-1", "permission": "read"}));
    assert_eq!(status(grant).await, StatusCode::OK);
    assert_eq!(status(get(&s, "/models/shared", Some(&reader))).await, StatusCode::OK, "granted");
    let listed: Value = get(&s, "/models", Some(&reader)).send().await.expect("send").json().await.expect("json");
    assert_eq!(listed["models"][0]["name"], "shared");
    s.stop().await;
}

/// Identity is (tenant, subject): with a multi-tenant issuer, a user of tenant B whose token
/// carries the same `oid` as a user of tenant A is someone else: not the owner of A's
/// models, not the grantee of A's grants, and told apart in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_never_share_an_identity() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    if let Some(o) = config.oidc.as_mut() {
        o.issuer = format!("{}/{{tenantid}}/v2.0", i.url);
        o.allowed_tenants = vec!["tenant-a".into(), "tenant-b".into()];
        o.discovery_url = Some(format!("{}/.well-known/openid-configuration", i.url));
    }
    // Ownership and grants decide, not a global role.
    config.default_permission = lakescore_registry::auth::DefaultPermission::Granted;
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let in_tenant = |tenant: &str, claims: Value| {
        let mut claims = claims;
        claims["iss"] = json!(format!("{}/{tenant}/v2.0", i.url));
        claims["tid"] = json!(tenant);
        i.token(claims)
    };
    let alice_a = in_tenant("tenant-a", json!({"oid": "same-oid", "roles": ["LakeScore.Write"]}));
    let alice_b = in_tenant("tenant-b", json!({"oid": "same-oid", "roles": ["LakeScore.Write"]}));
    let admin_a = in_tenant("tenant-a", json!({"oid": "admin", "roles": ["LakeScore.Admin"]}));
    let http = reqwest::Client::new();

    create_model(&s, &alice_a, "fraud").await;
    let model: Value = get(&s, "/models/fraud", Some(&alice_a)).send().await.expect("send").json().await.expect("json");
    assert_eq!(model["created_by"], "same-oid@tenant-a", "{model}");

    // Tenant B's same-oid user is not the owner.
    assert_eq!(status(get(&s, "/models/fraud", Some(&alice_b))).await, StatusCode::FORBIDDEN);
    let list: Value = get(&s, "/models", Some(&alice_b)).send().await.expect("send").json().await.expect("json");
    assert_eq!(list["models"], json!([]), "{list}");
    let patch = http.patch(s.api("/models/fraud")).bearer_auth(&alice_b).json(&json!({"description": "mine"}));
    assert_eq!(status(patch).await, StatusCode::FORBIDDEN);
    let grant = |token: &str, principal: &str| {
        http.put(s.api("/models/fraud/grants"))
            .bearer_auth(token)
            .json(&json!({"principal": principal, "permission": "read"}))
    };
    assert_eq!(status(grant(&alice_b, "user:same-oid@tenant-b")).await, StatusCode::FORBIDDEN);
    // A grant to the bare oid would match nobody (no home tenant here: every caller carries
    // its tenant): refused, naming the qualified form.
    let bare = grant(&alice_a, "user:same-oid").send().await.expect("send");
    assert_eq!(bare.status(), StatusCode::BAD_REQUEST);
    let problem: Value = bare.json().await.expect("problem");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("would match nobody") && detail.contains("'user:same-oid@tenant-a'"), "{problem}");
    let grants: Value =
        get(&s, "/models/fraud/grants", Some(&alice_a)).send().await.expect("send").json().await.expect("json");
    assert_eq!(grants, json!([]), "nothing stored");
    assert_eq!(status(get(&s, "/models/fraud", Some(&alice_b))).await, StatusCode::FORBIDDEN);
    // The owner grants tenant B's user by the qualified name: now B reads.
    assert_eq!(status(grant(&alice_a, "user:same-oid@tenant-b")).await, StatusCode::OK);
    assert_eq!(status(get(&s, "/models/fraud", Some(&alice_b))).await, StatusCode::OK);

    // B creates a model of its own: the audit log tells the two apart.
    create_model(&s, &alice_b, "churn").await;
    let audit: Value = get(&s, "/audit", Some(&admin_a)).send().await.expect("send").json().await.expect("json");
    let creators: Vec<(String, String)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "model.create")
        .map(|e| (e["model"].as_str().unwrap_or("").into(), e["principal"].as_str().unwrap_or("").into()))
        .collect();
    assert!(creators.contains(&("fraud".into(), "same-oid@tenant-a".into())), "{audit}");
    assert!(creators.contains(&("churn".into(), "same-oid@tenant-b".into())), "{audit}");
    s.stop().await;
}

/// A single-tenant deployment records callers of its tenant by their subject alone, as it
/// always did, so rows written before tenants were recorded keep their meaning.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_home_tenant_keeps_bare_subjects() {
    let i = Issuer::start().await;
    let mut config = auth_config(&i);
    if let Some(o) = config.oidc.as_mut() {
        o.issuer = format!("{}/{{tenantid}}/v2.0", i.url);
        o.allowed_tenants = vec!["tenant-a".into()];
        o.discovery_url = Some(format!("{}/.well-known/openid-configuration", i.url));
    }
    let s = TestServer::start_with_auth(Db::Sqlite, config, |_| {}).await;
    let token = i.token(json!({"iss": format!("{}/tenant-a/v2.0", i.url), "tid": "tenant-a", "oid": "user-1",
        "roles": ["LakeScore.Write"]}));
    create_model(&s, &token, "fraud").await;
    let model: Value = get(&s, "/models/fraud", Some(&token)).send().await.expect("send").json().await.expect("json");
    assert_eq!(model["created_by"], "user-1");
    s.stop().await;
}
