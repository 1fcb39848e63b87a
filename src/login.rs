//! `lakescore login`: get an access token from the OIDC issuer (client-credentials grant,
//! or the device-code grant for people) and cache it for later commands; the client commands
//! take it through [`current_token`], which refreshes it when the issuer gave a refresh token.
//!
//! Discovery and the grants are `openidconnect`'s, over the workspace's reqwest client.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, ClientId, ClientSecret, DeviceAuthorizationResponse, DeviceAuthorizationUrl,
    DeviceCodeErrorResponseType, DiscoveryError, EndpointMaybeSet, EndpointNotSet, EndpointSet, ErrorResponse,
    ExtraDeviceAuthorizationFields, HttpClientError, IssuerUrl, JsonWebKeySet, OAuth2TokenResponse, ProviderMetadata,
    RefreshToken, RequestTokenError, Scope, TokenUrl,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// OIDC issuer, e.g. https://login.microsoftonline.com/<tenant id>/v2.0.
    #[arg(long, env = "LAKESCORE_OIDC_ISSUER")]
    pub issuer: String,
    /// The client (application) id to sign in as / with.
    #[arg(long, env = "LAKESCORE_CLIENT_ID")]
    pub client_id: String,
    /// Client secret: uses the client-credentials grant (apps, pipelines).
    #[arg(long, env = "LAKESCORE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Scope to ask for, e.g. api://lakescore/.default (add offline_access for a refresh
    /// token from Entra ID, so that later commands renew the token themselves).
    #[arg(long, env = "LAKESCORE_SCOPE")]
    pub scope: String,
    /// Sign in as a person with the device-code grant (the default without a client secret).
    #[arg(long)]
    pub device: bool,
}

/// The cached token, in `~/.cache/lakescore/token.json` (readable by the user only).
#[derive(Debug, Serialize, Deserialize)]
pub struct CachedToken {
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub issuer: String,
    /// What renewing the access token takes, when the issuer returned a refresh token.
    /// Optional so that caches written before it existed still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<CachedRefresh>,
}

/// A refresh token and what the refresh_token grant needs besides it. No client secret: it
/// is never written to disk, so only issuers that let the client refresh without one renew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedRefresh {
    pub refresh_token: String,
    /// Cached so that a refresh costs one request, not discovery and JWKS first.
    pub token_endpoint: String,
    pub client_id: String,
    /// Entra ID's v2 endpoint wants the scope again on refresh.
    pub scope: String,
}

/// The discovery document's `device_authorization_endpoint` (RFC 8628), which
/// openidconnect's core metadata leaves out. Optional: issuers without the device-code
/// grant do not name one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceEndpointMetadata {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpointMetadata {}

type IssuerMetadata = ProviderMetadata<
    DeviceEndpointMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A client built from discovery, with its token endpoint known to be set.
type DiscoveredClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet, EndpointMaybeSet>;

/// Entra ID's device-code answer carries a ready-made `message` for the user.
#[derive(Debug, Serialize, Deserialize)]
struct DeviceMessage {
    message: Option<String>,
}
impl ExtraDeviceAuthorizationFields for DeviceMessage {}

type TokenRequestError<TE> = RequestTokenError<HttpClientError<reqwest::Error>, TE>;

fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lakescore").join("token.json"))
}

fn read_cache() -> Option<CachedToken> {
    let text = std::fs::read_to_string(cache_path()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// Tokens this close to expiry are treated as expired: a command started now should not
/// have its token lapse on the way.
const EXPIRY_MARGIN_SECS: i64 = 60;

/// The cached token while it is valid for at least another minute.
pub fn cached_token() -> Option<String> {
    let cached = read_cache()?;
    (cached.expires_at > chrono_now() + EXPIRY_MARGIN_SECS).then_some(cached.access_token)
}

/// The token for a client command: the cached one while it is valid for at least another
/// minute, else one renewed with the cached refresh token (and cached in turn). None when
/// nothing usable is cached; a failed refresh is said on stderr and also gives None, so the
/// command goes on as if not logged in, as it did before refresh tokens were kept.
pub async fn current_token() -> Option<String> {
    if let Some(token) = cached_token() {
        return Some(token);
    }
    let cached = read_cache()?;
    let refresh = cached.refresh?;
    match renew(&cached.issuer, &refresh).await {
        Ok(token) => Some(token),
        Err(e) => {
            eprintln!(
                "warning: the cached token expired and could not be refreshed: {e:#}; run `lakescore login` again"
            );
            None
        }
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn save(token: &CachedToken) -> anyhow::Result<PathBuf> {
    let path = cache_path().ok_or_else(|| anyhow!("no HOME or XDG_CACHE_HOME to cache the token in"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(std::path::Path::new(".")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(tmp.path(), serde_json::to_vec_pretty(token)?)?;
    tmp.persist(&path)?;
    Ok(path)
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        // openidconnect's advice: following redirects would let an answer from the issuer
        // aim this client's requests (with its credentials) anywhere (SSRF).
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// `--scope` may hold several space-separated scopes.
fn scopes(scope: &str) -> impl Iterator<Item = Scope> + '_ {
    scope.split_whitespace().map(|s| Scope::new(s.to_string()))
}

/// An error of a token-endpoint request, worded as before openidconnect: the issuer's OAuth
/// error as `code: description` after `refused`, or what kept the request from an answer.
fn token_error<TE>(err: TokenRequestError<TE>, endpoint: &str, refused: &str) -> anyhow::Error
where
    TE: ErrorResponse + Display,
{
    match err {
        RequestTokenError::ServerResponse(e) => anyhow!("{refused}: {e}"),
        RequestTokenError::Request(e) => anyhow::Error::new(e).context(format!("cannot reach {endpoint}")),
        RequestTokenError::Parse(e, _) => {
            anyhow::Error::new(e).context(format!("{endpoint} did not answer a token response"))
        }
        RequestTokenError::Other(m) => anyhow!("{endpoint}: {m}"),
    }
}

/// The cache entry for a token response, and the token's lifetime in seconds.
/// `previous_refresh_token` is the one just redeemed, if any: an issuer need not send a new
/// refresh token on refresh (RFC 6749 §6), and then the old one stays valid.
fn to_cache(
    response: &CoreTokenResponse,
    issuer: &str,
    token_endpoint: &str,
    client_id: &str,
    scope: &str,
    previous_refresh_token: Option<String>,
) -> (CachedToken, i64) {
    // Issuers that leave out expires_in are taken to give an hour, as before.
    let expires_in = response.expires_in().map_or(3600, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let refresh_token = response.refresh_token().map(|t| t.secret().clone()).or(previous_refresh_token);
    let token = CachedToken {
        access_token: response.access_token().secret().clone(),
        expires_at: chrono_now().saturating_add(expires_in),
        issuer: issuer.to_string(),
        refresh: refresh_token.map(|refresh_token| CachedRefresh {
            refresh_token,
            token_endpoint: token_endpoint.to_string(),
            client_id: client_id.to_string(),
            scope: scope.to_string(),
        }),
    };
    (token, expires_in)
}

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    let http = http_client()?;
    let issuer_url =
        IssuerUrl::new(args.issuer.clone()).with_context(|| format!("--issuer {} is not a URL", args.issuer))?;
    let discovery = format!("{}/.well-known/openid-configuration", args.issuer.trim_end_matches('/'));
    // Fetches the discovery document and the issuer's JWKS, and checks that the document
    // names this issuer (OIDC Discovery §4.3).
    let metadata = IssuerMetadata::discover_async(issuer_url, &http).await.map_err(|e| match e {
        DiscoveryError::Request(e) => anyhow::Error::new(e).context(format!("cannot reach {discovery}")),
        e => anyhow::Error::new(e).context(format!("OIDC discovery at {discovery} failed")),
    })?;
    let token_endpoint =
        metadata.token_endpoint().cloned().ok_or_else(|| anyhow!("{discovery} names no token_endpoint"))?;
    let device_endpoint = metadata.additional_metadata().device_authorization_endpoint.clone();
    let use_client_credentials = args.client_secret.is_some() && !args.device;
    // The device-code grant is a public client's: the secret goes only with client credentials.
    let secret = args.client_secret.clone().filter(|_| use_client_credentials).map(ClientSecret::new);
    let client = CoreClient::from_provider_metadata(metadata, ClientId::new(args.client_id.clone()), secret)
        .set_token_uri(token_endpoint.clone())
        // client_id and client_secret in the form body (client_secret_post), as before;
        // Entra ID takes both this and Basic.
        .set_auth_type(AuthType::RequestBody)
        // Ask for exactly --scope: no `openid` added (an ID token is of no use here).
        .disable_openid_scope();

    let response = if use_client_credentials {
        client
            .exchange_client_credentials()
            .add_scopes(scopes(&args.scope))
            .request_async(&http)
            .await
            .map_err(|e| token_error(e, token_endpoint.as_str(), "the issuer refused the client credentials"))?
    } else {
        device_code(&client, device_endpoint, &http, &args).await?
    };
    let (token, expires_in) =
        to_cache(&response, &args.issuer, token_endpoint.as_str(), &args.client_id, &args.scope, None);
    let path = save(&token)?;
    eprintln!("logged in; token cached in {} (valid for {} min)", path.display(), expires_in / 60);
    Ok(())
}

async fn device_code(
    client: &DiscoveredClient,
    device_endpoint: Option<DeviceAuthorizationUrl>,
    http: &reqwest::Client,
    args: &LoginArgs,
) -> anyhow::Result<CoreTokenResponse> {
    let device_endpoint = device_endpoint.ok_or_else(|| {
        anyhow!("the issuer offers no device-code grant; pass --client-secret for client credentials")
    })?;
    let endpoint = device_endpoint.as_str().to_string();
    let client = client.clone().set_device_authorization_url(device_endpoint);
    let start: DeviceAuthorizationResponse<DeviceMessage> = client
        .exchange_device_code()
        .add_scopes(scopes(&args.scope))
        .request_async(http)
        .await
        .map_err(|e| token_error(e, &endpoint, "the issuer refused the device-code request"))?;
    match &start.extra_fields().message {
        Some(m) => eprintln!("{m}"),
        None => eprintln!(
            "To sign in, open {} and enter the code {}",
            start.verification_uri().as_str(),
            start.user_code().secret()
        ),
    }
    // openidconnect polls at the issuer's interval, waits 5 s longer after each slow_down and
    // gives up when the device code expires; the floor of a second keeps an issuer that
    // answers interval 0 from being polled in a busy loop.
    client
        .exchange_device_access_token(&start)
        .request_async(http, |interval| tokio::time::sleep(interval.max(Duration::from_secs(1))), None)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(e) if *e.error() == DeviceCodeErrorResponseType::ExpiredToken => {
                anyhow!("the device code expired before sign-in completed")
            }
            e => token_error(e, client.token_uri().as_str(), "sign-in failed"),
        })
}

/// The refresh_token grant with the cached refresh token; caches and returns the new token.
async fn renew(issuer: &str, refresh: &CachedRefresh) -> anyhow::Result<String> {
    let http = http_client()?;
    let token_endpoint = TokenUrl::new(refresh.token_endpoint.clone())
        .with_context(|| format!("the cached token endpoint {} is not a URL", refresh.token_endpoint))?;
    let issuer_url =
        IssuerUrl::new(issuer.to_string()).with_context(|| format!("the cached issuer {issuer} is not a URL"))?;
    // No discovery, so no JWKS: nothing here verifies an ID token.
    let client: CoreClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet> =
        CoreClient::new(ClientId::new(refresh.client_id.clone()), issuer_url, JsonWebKeySet::default())
            .set_token_uri(token_endpoint)
            .set_auth_type(AuthType::RequestBody);
    let refresh_token = RefreshToken::new(refresh.refresh_token.clone());
    let response = client
        .exchange_refresh_token(&refresh_token)
        .add_scopes(scopes(&refresh.scope))
        .request_async(&http)
        .await
        .map_err(|e| token_error(e, &refresh.token_endpoint, "the issuer refused the refresh token"))?;
    let (token, _) = to_cache(
        &response,
        issuer,
        &refresh.token_endpoint,
        &refresh.client_id,
        &refresh.scope,
        Some(refresh.refresh_token.clone()),
    );
    save(&token)?;
    Ok(token.access_token)
}
