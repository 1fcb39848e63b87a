//! A real OIDC issuer for tests: discovery document and JWKS served over HTTP on port 0,
//! RSA keys generated per run, tokens signed with them. It counts JWKS fetches and can be
//! taken down or have its keys rotated. Its token endpoint serves the client-credentials,
//! device-code and refresh-token grants (refresh tokens rotate on use, as Entra ID's do).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};

/// The signing key for `keys()[i]`.
pub fn encoding_key(i: usize) -> EncodingKey {
    EncodingKey::from_rsa_der(&keys()[i].private_der)
}
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

pub struct SigningKey {
    pub kid: String,
    pub private_der: Vec<u8>,
    pub public_pem: String,
    pub jwk: Value,
}

fn generate(kid: &str) -> SigningKey {
    let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key");
    let public = key.to_public_key();
    SigningKey {
        kid: kid.to_string(),
        private_der: key.to_pkcs1_der().expect("der").as_bytes().to_vec(),
        public_pem: public.to_pkcs1_pem(LineEnding::LF).expect("pem"),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
    }
}

/// Two keys per test process (RSA generation is slow in debug builds).
pub fn keys() -> &'static [SigningKey; 2] {
    static KEYS: OnceLock<[SigningKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [generate("key-1"), generate("key-2")])
}

struct IssuerState {
    issuer: Mutex<String>,
    /// Indexes into `keys()` currently published.
    published: Mutex<Vec<usize>>,
    down: AtomicBool,
    /// Milliseconds discovery and JWKS take to answer (a slow or hung issuer).
    delay_ms: std::sync::atomic::AtomicU64,
    jwks_fetches: AtomicUsize,
    device_polls: AtomicUsize,
    /// Refresh tokens issued and not yet redeemed.
    refresh_tokens: Mutex<Vec<String>>,
    refresh_tokens_issued: AtomicUsize,
    refreshes: AtomicUsize,
}

/// The confidential client the test issuer knows (client-credentials grant).
pub const CLIENT_ID: &str = "cli-app";
pub const CLIENT_SECRET: &str = "s3cret";

pub struct Issuer {
    pub url: String,
    state: Arc<IssuerState>,
}

pub const AUDIENCE: &str = "api://lakescore-test";

impl Issuer {
    pub async fn start() -> Self {
        let state = Arc::new(IssuerState {
            issuer: Mutex::new(String::new()),
            published: Mutex::new(vec![0]),
            down: AtomicBool::new(false),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
            jwks_fetches: AtomicUsize::new(0),
            device_polls: AtomicUsize::new(0),
            refresh_tokens: Mutex::new(Vec::new()),
            refresh_tokens_issued: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", axum::routing::post(token_endpoint))
            .route("/devicecode", axum::routing::post(device_endpoint))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        *state.issuer.lock().expect("lock") = url.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Refresh-token grants answered with a new token.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Discovery and JWKS requests are accepted, then answered only after `delay` (an hour:
    /// an issuer that hangs).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Publish these keys (indexes into `keys()`).
    pub fn publish(&self, which: &[usize]) {
        *self.state.published.lock().expect("lock") = which.to_vec();
    }

    /// A token signed by key 0 with standard claims plus `extra`.
    pub fn token(&self, extra: Value) -> String {
        self.token_with(0, extra)
    }

    pub fn token_with(&self, key: usize, extra: Value) -> String {
        sign(&self.url, key, extra)
    }
}

fn sign(issuer: &str, key: usize, extra: Value) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": issuer, "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + 600,
        "sub": "subject-1", "oid": "user-1",
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    let k = &keys()[key];
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&header, &claims, &encoding_key(key)).expect("sign")
}

async fn answer_late(s: &IssuerState) {
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
}

async fn discovery(State(s): State<Arc<IssuerState>>) -> Response {
    answer_late(&s).await;
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = s.issuer.lock().expect("lock").clone();
    // The members OIDC Discovery requires (openidconnect's `lakescore login` rejects a
    // document without them), though this issuer has no authorization endpoint behind them.
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "jwks_uri": format!("{issuer}/jwks"),
        "token_endpoint": format!("{issuer}/token"),
        "device_authorization_endpoint": format!("{issuer}/devicecode"),
    }))
    .into_response()
}

type Form = axum::Form<std::collections::HashMap<String, String>>;

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": format!("test issuer: {error}")}))).into_response()
}

/// Client credentials for `CLIENT_ID`/`CLIENT_SECRET` (a writer app, no refresh token: RFC
/// 6749 §4.4.3), the device-code grant for device code `dc-1`, which is pending on the first
/// poll and then signed in with a refresh token, and the refresh-token grant for `CLIENT_ID`
/// with an unredeemed refresh token (answered with a new one).
async fn token_endpoint(State(s): State<Arc<IssuerState>>, axum::Form(form): Form) -> Response {
    let issuer = s.issuer.lock().expect("lock").clone();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    match field("grant_type") {
        "client_credentials" if field("client_id") == CLIENT_ID && field("client_secret") == CLIENT_SECRET => {
            let t = sign(&issuer, 0, json!({"oid": CLIENT_ID, "azp": CLIENT_ID, "roles": ["LakeScore.Write"]}));
            Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": 3599})).into_response()
        }
        "client_credentials" => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
        "urn:ietf:params:oauth:grant-type:device_code" if field("device_code") == "dc-1" => {
            if s.device_polls.fetch_add(1, Ordering::SeqCst) == 0 {
                return oauth_error(StatusCode::BAD_REQUEST, "authorization_pending");
            }
            person_token(&s, &issuer)
        }
        "refresh_token" if field("client_id") == CLIENT_ID => {
            let redeemed = {
                let mut live = s.refresh_tokens.lock().expect("lock");
                let before = live.len();
                live.retain(|t| t != field("refresh_token"));
                live.len() < before
            };
            if !redeemed {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            s.refreshes.fetch_add(1, Ordering::SeqCst);
            person_token(&s, &issuer)
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

/// A signed-in person's token with a fresh refresh token.
fn person_token(s: &IssuerState, issuer: &str) -> Response {
    let t = sign(issuer, 0, json!({"oid": "person-1", "roles": ["LakeScore.Write"]}));
    let refresh_token = format!("rt-{}", s.refresh_tokens_issued.fetch_add(1, Ordering::SeqCst) + 1);
    s.refresh_tokens.lock().expect("lock").push(refresh_token.clone());
    Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": 3599, "refresh_token": refresh_token}))
        .into_response()
}

async fn device_endpoint(State(s): State<Arc<IssuerState>>, axum::Form(_form): Form) -> Response {
    let issuer = s.issuer.lock().expect("lock").clone();
    Json(json!({
        "device_code": "dc-1", "user_code": "ABCD-EFGH", "verification_uri": format!("{issuer}/device"),
        "expires_in": 60, "interval": 1,
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<IssuerState>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    answer_late(&s).await;
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let published = s.published.lock().expect("lock").clone();
    let keys: Vec<Value> = published.iter().map(|i| keys()[*i].jwk.clone()).collect();
    Json(json!({"keys": keys})).into_response()
}
