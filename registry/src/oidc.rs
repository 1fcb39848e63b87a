//! OIDC access-token validation, Azure AD (Entra ID) style: discovery, a JWKS cache that
//! follows key rotation without letting unknown `kid`s hammer the issuer, signature
//! (RS256/PS256/ES256 only), issuer (including Azure's `{tenantid}` form), audience and
//! time checks with a configurable skew.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
use futures::FutureExt;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::RwLock;

use crate::error::{RegistryError, Result};

/// The only signature algorithms accepted: asymmetric, as OIDC issuers sign access tokens.
/// `none` and the HMAC family are refused whatever the token's header says.
const ACCEPTED: &[Algorithm] = &[Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// Expected `iss`. Azure multi-tenant form: `https://login.microsoftonline.com/{tenantid}/v2.0`,
    /// where `{tenantid}` must equal the token's `tid`.
    pub issuer: String,
    /// More accepted issuers, e.g. the v1 form `https://sts.windows.net/{tenantid}/`.
    pub additional_issuers: Vec<String>,
    /// Tenants accepted for `{tenantid}` issuers (required with them; `*` accepts any).
    pub allowed_tenants: Vec<String>,
    /// Accepted `aud` values (at least one).
    pub audiences: Vec<String>,
    /// Discovery document; default: the issuer (with `{tenantid}` read as `common`) +
    /// `/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    /// JWKS URL, skipping discovery.
    pub jwks_url: Option<String>,
    /// Tolerated clock difference for `exp` and `nbf`, in seconds.
    pub clock_skew_secs: u64,
    /// A token with an unknown `kid` triggers at most one JWKS fetch per this many seconds.
    pub jwks_refresh_cooldown_secs: u64,
    /// Keys older than this are refreshed (key rotation), in seconds. The refresh runs in
    /// the background: calls keep validating with the keys held meanwhile.
    pub jwks_max_age_secs: u64,
    /// Keys older than this are no longer trusted while the issuer cannot be reached
    /// (calls then get 503 until a refresh succeeds), in seconds.
    pub jwks_stale_limit_secs: u64,
    /// Timeout of discovery and JWKS requests, in seconds.
    pub http_timeout_secs: u64,
    /// The tenant whose callers are recorded by their subject alone (`oid`); callers of any
    /// other tenant are recorded as `<subject>@<tenant>` (tenant: the token's `tid`, else its
    /// `iss`), so that two tenants' users with the same `oid` are never one principal.
    /// Default: the tenant of a single-tenant issuer (the id in
    /// `login.microsoftonline.com/<tid>/v2.0`, the only entry of `allowed_tenants`, or, for
    /// any other issuer, the issuer itself); none for a `{tenantid}` issuer open to several.
    pub home_tenant: Option<String>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            additional_issuers: Vec::new(),
            allowed_tenants: Vec::new(),
            audiences: Vec::new(),
            discovery_url: None,
            jwks_url: None,
            clock_skew_secs: 60,
            jwks_refresh_cooldown_secs: 30,
            jwks_max_age_secs: 3600,
            jwks_stale_limit_secs: 86_400,
            http_timeout_secs: 10,
            home_tenant: None,
        }
    }
}

const TENANT: &str = "{tenantid}";

impl OidcConfig {
    /// See [`Self::home_tenant`](field@Self::home_tenant).
    pub fn home_tenant(&self) -> Option<String> {
        if let Some(t) = &self.home_tenant {
            return Some(t.clone());
        }
        if self.issuer.contains(TENANT) {
            return match self.allowed_tenants.as_slice() {
                [one] if one != "*" => Some(one.clone()),
                _ => None,
            };
        }
        if is_entra(&self.issuer) {
            // https://login.microsoftonline.com/<tid>/v2.0, https://sts.windows.net/<tid>/
            let url = url::Url::parse(&self.issuer).ok()?;
            return url.path_segments()?.next().filter(|t| !t.is_empty()).map(str::to_string);
        }
        Some(self.issuer.clone())
    }
}

/// Microsoft Entra ID's issuers (v2 `login.microsoftonline.com`, v1 `sts.windows.net`, the
/// national clouds, External ID `ciamlogin.com`), whose claim names are lakescore's defaults.
pub fn is_entra(issuer: &str) -> bool {
    url::Url::parse(issuer).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase)).is_some_and(|host| {
        ["login.microsoftonline.com", "sts.windows.net", "login.microsoftonline.us", "login.chinacloudapi.cn"]
            .contains(&host.as_str())
            || host.ends_with(".ciamlogin.com")
    })
}

impl OidcConfig {
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(RegistryError::BadRequest(format!("auth.oidc: {m}")));
        if self.issuer.is_empty() {
            return bad("issuer is required");
        }
        if self.audiences.is_empty() {
            return bad("audiences needs at least one value");
        }
        let templated = std::iter::once(&self.issuer).chain(&self.additional_issuers).any(|i| i.contains(TENANT));
        if templated && self.allowed_tenants.is_empty() {
            return bad("allowed_tenants is required with a {tenantid} issuer (use [\"*\"] to accept any tenant)");
        }
        Ok(())
    }

    fn discovery(&self) -> String {
        self.discovery_url.clone().unwrap_or_else(|| {
            format!("{}/.well-known/openid-configuration", self.issuer.replace(TENANT, "common").trim_end_matches('/'))
        })
    }

    /// Whether `iss` is one of the configured issuers, reading `{tenantid}` as the token's
    /// tenant, which must be allowed.
    fn issuer_matches(&self, iss: &str, tid: Option<&str>) -> bool {
        std::iter::once(&self.issuer).chain(&self.additional_issuers).any(|pattern| {
            if !pattern.contains(TENANT) {
                return pattern == iss;
            }
            let Some(tid) = tid else { return false };
            let tenant_ok = self.allowed_tenants.iter().any(|t| t == "*" || t.eq_ignore_ascii_case(tid));
            tenant_ok && pattern.replace(TENANT, tid) == iss
        })
    }
}

/// Tokens already verified, by their sha256, until they expire (at most `VERIFIED_TTL`):
/// a client sends the same token on every call, and the signature check is the costly part.
struct VerifiedTokens {
    entries: HashMap<[u8; 32], (Instant, Map<String, Value>)>,
}

const VERIFIED_TTL: Duration = Duration::from_secs(60);
const VERIFIED_MAX: usize = 10_000;

struct KeyCache {
    keys: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    fetched_at: Option<Instant>,
}

/// One JWKS fetch that every caller needing it shares (single flight); its error is the
/// 503 message.
type SharedRefresh = Shared<BoxFuture<'static, std::result::Result<(), String>>>;

/// When the keys were last asked for, and the fetch in progress, if any.
#[derive(Default)]
struct Refresher {
    last_attempt: Option<Instant>,
    in_flight: Option<SharedRefresh>,
}

/// Validates bearer tokens against one issuer.
///
/// Validation never waits on the issuer while usable keys are held: keys past
/// `jwks_max_age_secs` are refreshed in the background and used meanwhile. Only a token
/// whose `kid` is not held (or keys past `jwks_stale_limit_secs`, or none at all) waits,
/// for one fetch shared by every such caller and bounded by `http_timeout_secs`.
pub struct OidcValidator {
    config: OidcConfig,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    refresher: std::sync::Mutex<Refresher>,
    verified: std::sync::Mutex<VerifiedTokens>,
}

/// An OIDC failure as the caller should see it.
fn unauthorized(msg: impl Into<String>) -> RegistryError {
    RegistryError::Unauthorized(msg.into())
}

impl OidcValidator {
    pub fn new(config: OidcConfig) -> Result<Self> {
        config.check()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.http_timeout_secs))
            .build()
            .map_err(|e| RegistryError::Internal(format!("http client: {e}")))?;
        Ok(Self {
            config,
            http,
            cache: RwLock::new(KeyCache { keys: HashMap::new(), fetched_at: None }),
            refresher: std::sync::Mutex::new(Refresher::default()),
            verified: std::sync::Mutex::new(VerifiedTokens { entries: HashMap::new() }),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Fetches the keys ahead of the first request; failures are logged, not fatal (the
    /// issuer may come back before the first token does).
    pub async fn warm(self: &Arc<Self>) {
        if let Some(fetch) = self.start_refresh(true) {
            if let Err(e) = fetch.await {
                tracing::warn!(error = %e, "could not fetch the issuer's signing keys yet");
            }
        }
    }

    /// Starts a refresh unless one ran within the cooldown, without waiting for it: how a
    /// server without keys (its start-up fetch failed) recovers while nobody calls it.
    pub fn refresh_in_background(self: &Arc<Self>) {
        let _ = self.start_refresh(false);
    }

    /// Whether signing keys are held that may still be used (for readiness).
    pub async fn has_keys(&self) -> bool {
        let cache = self.cache.read().await;
        !cache.keys.is_empty() && cache.fetched_at.is_some_and(|t| t.elapsed() < self.stale_limit())
    }

    /// Validates `token` and returns its claims.
    pub async fn validate(self: &Arc<Self>, token: &str) -> Result<Map<String, Value>> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.verified.lock() {
            if let Some((until, claims)) = cache.entries.get(&digest) {
                if Instant::now() < *until {
                    return Ok(claims.clone());
                }
            }
        }
        let claims = self.verify(token).await?;
        // Cache until the token expires (exp, checked with no skew here), at most a minute.
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let left = exp - jsonwebtoken::get_current_timestamp() as i64;
        if left > 0 {
            if let Ok(mut cache) = self.verified.lock() {
                let now = Instant::now();
                if cache.entries.len() >= VERIFIED_MAX {
                    cache.entries.retain(|_, (until, _)| *until > now);
                    if cache.entries.len() >= VERIFIED_MAX {
                        cache.entries.clear();
                    }
                }
                let ttl = VERIFIED_TTL.min(Duration::from_secs(left as u64));
                cache.entries.insert(digest, (now + ttl, claims.clone()));
            }
        }
        Ok(claims)
    }

    /// The full check: signature, algorithm, issuer, audience, times.
    async fn verify(self: &Arc<Self>, token: &str) -> Result<Map<String, Value>> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| unauthorized(format!("malformed token: {e}")))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(unauthorized(format!(
                "token algorithm {:?} is not accepted (RS256, PS256, ES256 are)",
                header.alg
            )));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = self.key_for(&kid).await?;
        if let Some(alg) = key.1 {
            if alg != header.alg {
                return Err(unauthorized(format!("key '{kid}' is for {alg:?}, the token says {:?}", header.alg)));
            }
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.clock_skew_secs;
        validation.validate_nbf = true;
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.0, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            unauthorized(match e.kind() {
                K::ExpiredSignature => "token expired".to_string(),
                K::ImmatureSignature => "token not valid yet (nbf)".to_string(),
                K::InvalidAudience => format!("token audience is not one of {:?}", self.config.audiences),
                K::InvalidSignature => "token signature does not verify".to_string(),
                K::InvalidAlgorithm => "token algorithm does not fit its key".to_string(),
                _ => format!("invalid token: {e}"),
            })
        })?;
        let claims = data.claims;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
        let tid = claims.get("tid").and_then(Value::as_str);
        if !self.config.issuer_matches(iss, tid) {
            return Err(unauthorized(format!("token issuer '{iss}' is not accepted")));
        }
        Ok(claims)
    }

    /// The key for `kid`. A held key is answered at once, stale or not (a stale one starts
    /// a background refresh); an unknown `kid`, or no usable keys, waits for one shared
    /// refresh (rate limited by the cooldown). With the issuer unreachable, held keys keep
    /// working up to `jwks_stale_limit_secs`; with none, the caller gets 503.
    async fn key_for(self: &Arc<Self>, kid: &str) -> Result<(DecodingKey, Option<Algorithm>)> {
        {
            let cache = self.cache.read().await;
            let age = cache.fetched_at.map(|t| t.elapsed());
            let held = lookup(&cache.keys, kid).filter(|_| age.is_some_and(|a| a < self.stale_limit()));
            if let (Some(key), Some(age)) = (held, age) {
                if age >= Duration::from_secs(self.config.jwks_max_age_secs) {
                    // Refreshed behind the caller's back; this call does not wait for it.
                    let _ = self.start_refresh(false);
                }
                return Ok(key);
            }
        }
        // Within the cooldown of the last attempt nothing is fetched again, whatever this
        // caller lacks: a down issuer is asked once per cooldown, not once per call.
        let refreshed = match self.start_refresh(false) {
            Some(fetch) => fetch.await.map_err(RegistryError::Unavailable),
            None => Ok(()),
        };
        let cache = self.cache.read().await;
        let fresh_enough = cache.fetched_at.is_some_and(|t| t.elapsed() < self.stale_limit());
        match (lookup(&cache.keys, kid).filter(|_| fresh_enough), refreshed) {
            (Some(k), _) => Ok(k),
            (None, Err(e)) if cache.keys.is_empty() || !fresh_enough => Err(e),
            // No keys at all (the last fetch failed, and the next one waits for the
            // cooldown): the issuer is unavailable, never "anything goes".
            (None, Ok(())) if cache.keys.is_empty() || !fresh_enough => Err(RegistryError::Unavailable(
                "cannot validate tokens: no signing keys could be fetched from the issuer yet".into(),
            )),
            (None, _) => Err(unauthorized(format!("token signed with unknown key '{kid}'"))),
        }
    }

    fn stale_limit(&self) -> Duration {
        Duration::from_secs(self.config.jwks_stale_limit_secs.max(self.config.jwks_max_age_secs))
    }

    /// The JWKS fetch to wait for: the one in progress, else a new one unless one was
    /// tried within the cooldown (and not `force`d), in which case there is none. The
    /// fetch runs as its own task, so it completes (and fills the cache) even when every
    /// caller waiting for it has gone away.
    fn start_refresh(self: &Arc<Self>, force: bool) -> Option<SharedRefresh> {
        let mut refresher = self.refresher.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(fetch) = refresher.in_flight.as_ref().filter(|f| f.peek().is_none()) {
            return Some(fetch.clone());
        }
        let cooldown = Duration::from_secs(self.config.jwks_refresh_cooldown_secs);
        if !force && refresher.last_attempt.is_some_and(|t| t.elapsed() < cooldown) {
            return None;
        }
        refresher.last_attempt = Some(Instant::now());
        let this = Arc::clone(self);
        let fetch: SharedRefresh = async move {
            let keys = this.fetch_keys().await.map_err(|e| e.to_string())?;
            tracing::info!(keys = keys.len(), "fetched the issuer's signing keys");
            let mut cache = this.cache.write().await;
            cache.keys = keys;
            cache.fetched_at = Some(Instant::now());
            Ok(())
        }
        .boxed()
        .shared();
        refresher.in_flight = Some(fetch.clone());
        tokio::spawn(fetch.clone());
        Some(fetch)
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, (DecodingKey, Option<Algorithm>)>> {
        let down = |what: &str, e: &dyn std::fmt::Display| {
            RegistryError::Unavailable(format!("cannot validate tokens: {what} failed: {e}"))
        };
        let jwks_url = match &self.config.jwks_url {
            Some(u) => u.clone(),
            None => {
                let url = self.config.discovery();
                let doc: Value = self.get_json(&url).await.map_err(|e| down("OIDC discovery", &e))?;
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| down("OIDC discovery", &format!("{url} has no jwks_uri")))?
            }
        };
        let jwks: Value = self.get_json(&jwks_url).await.map_err(|e| down("JWKS fetch", &e))?;
        let mut keys = HashMap::new();
        // Keys are read one by one: a key of a type we do not use must not hide the others.
        for raw in jwks.get("keys").and_then(Value::as_array).into_iter().flatten() {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else { continue };
            if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
            let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
            keys.insert(jwk.common.key_id.clone().unwrap_or_default(), (key, alg));
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> std::result::Result<Value, String> {
        let resp = self.http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        resp.json().await.map_err(|e| format!("{url}: {e}"))
    }
}

/// A token without `kid` is accepted when the issuer has exactly one key.
fn lookup(
    keys: &HashMap<String, (DecodingKey, Option<Algorithm>)>,
    kid: &str,
) -> Option<(DecodingKey, Option<Algorithm>)> {
    keys.get(kid)
        .cloned()
        .or_else(|| (kid.is_empty() && keys.len() == 1).then(|| keys.values().next().cloned()).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_tenant_of_each_kind_of_issuer() {
        let with = |issuer: &str, allowed: &[&str], home: Option<&str>| OidcConfig {
            issuer: issuer.into(),
            allowed_tenants: allowed.iter().map(|t| t.to_string()).collect(),
            home_tenant: home.map(str::to_string),
            ..Default::default()
        };
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let single = format!("https://login.microsoftonline.com/{tid}/v2.0");
        assert_eq!(with(&single, &[], None).home_tenant().as_deref(), Some(tid));
        let v1 = format!("https://sts.windows.net/{tid}/");
        assert_eq!(with(&v1, &[], None).home_tenant().as_deref(), Some(tid));
        let multi = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert_eq!(with(multi, &["t1"], None).home_tenant().as_deref(), Some("t1"));
        assert_eq!(with(multi, &["t1", "t2"], None).home_tenant(), None);
        assert_eq!(with(multi, &["*"], None).home_tenant(), None);
        assert_eq!(with(multi, &["t1", "t2"], Some("t2")).home_tenant().as_deref(), Some("t2"));
        let keycloak = "https://sso.example.com/realms/data";
        assert_eq!(with(keycloak, &[], None).home_tenant().as_deref(), Some(keycloak));
    }

    #[test]
    fn azure_multi_tenant_issuers() {
        let c = OidcConfig {
            issuer: "https://login.microsoftonline.com/{tenantid}/v2.0".into(),
            additional_issuers: vec!["https://sts.windows.net/{tenantid}/".into()],
            allowed_tenants: vec!["t1".into()],
            audiences: vec!["api://x".into()],
            ..Default::default()
        };
        assert!(c.issuer_matches("https://login.microsoftonline.com/t1/v2.0", Some("t1")));
        assert!(c.issuer_matches("https://sts.windows.net/t1/", Some("t1")));
        assert!(!c.issuer_matches("https://login.microsoftonline.com/t2/v2.0", Some("t2")), "tenant not allowed");
        assert!(!c.issuer_matches("https://login.microsoftonline.com/t1/v2.0", Some("t2")), "tid must match iss");
        assert!(!c.issuer_matches("https://login.microsoftonline.com/t1/v2.0", None));
        assert_eq!(c.discovery(), "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration");
        assert!(OidcConfig { allowed_tenants: vec![], ..c }.check().is_err());
    }
}
