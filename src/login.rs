//! `lakescore login`: get an access token from the OIDC issuer (client-credentials grant,
//! or the device-code grant for people) and cache it for later commands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// Scope to ask for, e.g. api://lakescore/.default.
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
}

fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lakescore").join("token.json"))
}

/// The cached token while it is valid for at least another minute.
pub fn cached_token() -> Option<String> {
    let text = std::fs::read_to_string(cache_path()?).ok()?;
    let cached: CachedToken = serde_json::from_str(&text).ok()?;
    (cached.expires_at > chrono_now() + 60).then_some(cached.access_token)
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

async fn post_form(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> anyhow::Result<(bool, Value)> {
    let resp = http.post(url).form(form).send().await.with_context(|| format!("cannot reach {url}"))?;
    let ok = resp.status().is_success();
    let body: Value = resp.json().await.with_context(|| format!("{url} did not answer JSON"))?;
    Ok((ok, body))
}

fn oauth_error(body: &Value) -> String {
    let code = body["error"].as_str().unwrap_or("error");
    match body["error_description"].as_str() {
        Some(d) => format!("{code}: {d}"),
        None => code.to_string(),
    }
}

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let discovery = format!("{}/.well-known/openid-configuration", args.issuer.trim_end_matches('/'));
    let doc: Value = http
        .get(&discovery)
        .send()
        .await
        .with_context(|| format!("cannot reach {discovery}"))?
        .error_for_status()?
        .json()
        .await?;
    let token_endpoint =
        doc["token_endpoint"].as_str().ok_or_else(|| anyhow!("{discovery} names no token_endpoint"))?.to_string();

    let body = match (&args.client_secret, args.device) {
        (Some(secret), false) => {
            let (ok, body) = post_form(
                &http,
                &token_endpoint,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &args.client_id),
                    ("client_secret", secret),
                    ("scope", &args.scope),
                ],
            )
            .await?;
            if !ok {
                bail!("the issuer refused the client credentials: {}", oauth_error(&body));
            }
            body
        }
        _ => device_code(&http, &doc, &token_endpoint, &args).await?,
    };
    let access_token =
        body["access_token"].as_str().ok_or_else(|| anyhow!("the issuer's answer has no access_token"))?;
    let expires_in = body["expires_in"].as_i64().or_else(|| body["expires_in"].as_str()?.parse().ok()).unwrap_or(3600);
    let path = save(&CachedToken {
        access_token: access_token.to_string(),
        expires_at: chrono_now() + expires_in,
        issuer: args.issuer.clone(),
    })?;
    eprintln!("logged in; token cached in {} (valid for {} min)", path.display(), expires_in / 60);
    Ok(())
}

async fn device_code(
    http: &reqwest::Client,
    doc: &Value,
    token_endpoint: &str,
    args: &LoginArgs,
) -> anyhow::Result<Value> {
    let endpoint = doc["device_authorization_endpoint"].as_str().ok_or_else(|| {
        anyhow!("the issuer offers no device-code grant; pass --client-secret for client credentials")
    })?;
    let (ok, start) = post_form(http, endpoint, &[("client_id", &args.client_id), ("scope", &args.scope)]).await?;
    if !ok {
        bail!("the issuer refused the device-code request: {}", oauth_error(&start));
    }
    let device_code = start["device_code"].as_str().ok_or_else(|| anyhow!("no device_code in the issuer's answer"))?;
    match start["message"].as_str() {
        Some(m) => eprintln!("{m}"),
        None => eprintln!(
            "To sign in, open {} and enter the code {}",
            start["verification_uri"].as_str().unwrap_or("the verification page"),
            start["user_code"].as_str().unwrap_or("?")
        ),
    }
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(start["expires_in"].as_u64().unwrap_or(900));
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if std::time::Instant::now() > deadline {
            bail!("the device code expired before sign-in completed");
        }
        let (ok, body) = post_form(
            http,
            token_endpoint,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", &args.client_id),
                ("device_code", device_code),
            ],
        )
        .await?;
        if ok {
            return Ok(body);
        }
        match body["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            _ => bail!("sign-in failed: {}", oauth_error(&body)),
        }
    }
}
