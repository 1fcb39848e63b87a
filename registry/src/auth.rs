//! Who is calling and what they may do. Callers present OIDC access tokens (Azure AD
//! style); global roles come from the token's claims through a configurable mapping, and
//! per-model grants and ownership add to them. Without OIDC settings every caller is the
//! anonymous local administrator.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{RegistryError, Result};
use crate::oidc::{is_entra, OidcConfig, OidcValidator};

/// Global roles, each including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

/// Which claims carry what (Azure's names by default). A name with dots that is not itself
/// a claim is a path into nested claims: Keycloak's `realm_access.roles` or
/// `resource_access.<client>.roles`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// Subject: the first present of these (`oid` is stable across apps in Entra ID).
    pub subject: Vec<String>,
    pub roles: String,
    pub groups: String,
    /// Delegated scopes, space-separated.
    pub scopes: String,
    /// The calling application: the first present of these.
    pub app_id: Vec<String>,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            subject: vec!["oid".into(), "sub".into()],
            roles: "roles".into(),
            groups: "groups".into(),
            scopes: "scp".into(),
            app_id: vec!["azp".into(), "appid".into()],
        }
    }
}

/// Which claim values grant which global role. Entries: `role:<app role>`,
/// `group:<group object id>`, `scope:<scope>`, `app:<client id>`, or `authenticated`
/// (any valid token).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleMapping {
    pub reader: Vec<String>,
    pub writer: Vec<String>,
    pub admin: Vec<String>,
}

/// What a global role lets a caller do with models it neither owns nor holds a grant on
/// (MLflow's `default_permission`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPermission {
    /// Global readers read every model, global writers change every model: one team.
    #[default]
    Global,
    /// Only admins reach every model; readers and writers reach the models they own or
    /// were granted (writers still create models, which they then own): a shared registry.
    Granted,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// OIDC settings; absent: no authentication (local mode).
    pub oidc: Option<OidcConfig>,
    pub claims: ClaimNames,
    pub roles: RoleMapping,
    /// Whether global reader and writer roles reach every model (`global`) or only the
    /// models the caller owns or was granted (`granted`).
    pub default_permission: DefaultPermission,
}

impl AuthConfig {
    pub fn check(&self) -> Result<()> {
        if let Some(o) = &self.oidc {
            o.check()?;
        }
        for entry in self.roles.reader.iter().chain(&self.roles.writer).chain(&self.roles.admin) {
            let known = entry == "authenticated"
                || ["role:", "group:", "scope:", "app:"]
                    .iter()
                    .any(|p| entry.strip_prefix(p).is_some_and(|v| !v.is_empty()));
            if !known {
                return Err(RegistryError::BadRequest(format!(
                    "auth.roles: '{entry}' is not role:<name>, group:<id>, scope:<name>, app:<id> or authenticated"
                )));
            }
        }
        Ok(())
    }

    /// Settings that are valid but that probably do not do what was meant, for `check-config`
    /// and the start-up log: a claim mapping left at Entra ID's names for an issuer that uses
    /// others makes roles and grants silently match nothing (a 403 nobody can explain).
    pub fn warnings(&self) -> Vec<String> {
        let Some(oidc) = &self.oidc else { return Vec::new() };
        let mut warnings = Vec::new();
        let entries = || self.roles.reader.iter().chain(&self.roles.writer).chain(&self.roles.admin);
        if entries().next().is_none() {
            warnings.push(
                "[auth.roles] is empty: tokens are accepted but carry no global role, so callers reach only the \
                 models they own or were granted, and nobody may create models or administer"
                    .to_string(),
            );
        }
        if oidc.home_tenant().is_none() {
            warnings.push(
                "several tenants are allowed and no home_tenant is set: every caller is recorded as \
                 <oid>@<tid> (owners, grants, audit); owners and grants recorded before tenants were (bare oids) \
                 match nobody until home_tenant names the tenant they belong to"
                    .to_string(),
            );
        }
        if is_entra(&oidc.issuer) {
            return warnings;
        }
        let defaults = ClaimNames::default();
        if self.claims.scopes == defaults.scopes {
            warnings.push(format!(
                "issuer {} is not Entra ID, and [auth.claims] scopes is Entra's \"scp\": most issuers (Keycloak, \
                 Auth0, Okta, oidc-provider) put scopes in \"scope\"; without scopes = \"scope\" no scope:… role \
                 entry ever matches",
                oidc.issuer
            ));
        }
        if !self.claims.app_id.iter().any(|c| c == "client_id") {
            warnings.push(format!(
                "issuer {} is not Entra ID, and [auth.claims] app_id ({}) leaves out \"client_id\", where JWT access \
                 tokens (RFC 9068: Okta, Auth0, oidc-provider) name the calling client; app:… roles and grants \
                 match only the claims listed",
                oidc.issuer,
                self.claims.app_id.join(", ")
            ));
        }
        if self.claims.subject == defaults.subject {
            warnings.push(format!(
                "issuer {} is not Entra ID: callers are identified by \"sub\" (there is no \"oid\"); check that \
                 it is stable for a user across clients, or set [auth.claims] subject",
                oidc.issuer
            ));
        }
        warnings
    }
}

/// The principal behind a request.
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    /// `oid`/`sub`, qualified by the tenant when that is not the home tenant
    /// (`<oid>@<tid>`); recorded as `created_by`, owner and audit actor.
    pub subject: String,
    /// The token's tenant (`tid`, else `iss`); `None` for the anonymous local user.
    pub tenant: Option<String>,
    /// The tenant is not the home tenant: names carry `@<tenant>`.
    pub foreign: bool,
    pub app_id: Option<String>,
    pub app_roles: Vec<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    /// The issuer left the groups out because the caller is in too many (Entra's group
    /// overage: `_claim_names.groups` or `hasgroups`), so `groups` is not the whole truth.
    pub groups_overage: bool,
    /// Highest global role, if any.
    pub role: Option<Role>,
    /// The bearer token as presented, for passing on; never logged.
    pub token: Option<String>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("app_id", &self.app_id)
            .field("role", &self.role)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Caller {
    /// The local user of an unauthenticated server: may do everything.
    pub fn anonymous() -> Self {
        Self {
            subject: "anonymous".into(),
            tenant: None,
            foreign: false,
            app_id: None,
            app_roles: Vec::new(),
            groups: Vec::new(),
            scopes: Vec::new(),
            groups_overage: false,
            role: Some(Role::Admin),
            token: None,
        }
    }

    /// The caller a validated token describes. Identity is (tenant, subject): the subject,
    /// groups and client id of a tenant other than `home_tenant` carry `@<tenant>`, so they
    /// match only grants and role entries written for that tenant. App roles and scopes are
    /// the token's own, evaluated per token.
    pub fn from_claims(
        claims: &Map<String, Value>,
        names: &ClaimNames,
        mapping: &RoleMapping,
        home_tenant: Option<&str>,
        token: &str,
    ) -> Result<Self> {
        let first =
            |keys: &[String]| keys.iter().find_map(|k| claim(claims, k).and_then(Value::as_str)).map(str::to_string);
        let list = |key: &str| -> Vec<String> {
            match claim(claims, key) {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
                _ => Vec::new(),
            }
        };
        let subject = first(&names.subject).ok_or_else(|| {
            RegistryError::Unauthorized(format!("token has no subject claim ({})", names.subject.join(", ")))
        })?;
        let tenant = ["tid", "iss"].iter().find_map(|k| claims.get(*k).and_then(Value::as_str)).map(str::to_string);
        let foreign = tenant.as_deref().is_some_and(|t| Some(t) != home_tenant);
        let qualify = |value: String| match (&tenant, foreign) {
            (Some(t), true) => format!("{value}@{t}"),
            _ => value,
        };
        let mut caller = Self {
            subject: qualify(subject),
            app_id: first(&names.app_id).map(qualify),
            app_roles: list(&names.roles),
            groups: list(&names.groups).into_iter().map(qualify).collect(),
            scopes: list(&names.scopes),
            groups_overage: claims.get("_claim_names").and_then(|n| n.get(&names.groups)).is_some()
                || claims.get("hasgroups").and_then(Value::as_bool) == Some(true),
            role: None,
            token: Some(token.to_string()),
            tenant,
            foreign,
        };
        let matches = |entries: &[String]| entries.iter().any(|e| caller.has(e));
        caller.role = if matches(&mapping.admin) {
            Some(Role::Admin)
        } else if matches(&mapping.writer) {
            Some(Role::Writer)
        } else if matches(&mapping.reader) {
            Some(Role::Reader)
        } else {
            None
        };
        Ok(caller)
    }

    /// Whether a mapping entry (`role:x`, `group:x`, `scope:x`, `app:x`, `authenticated`) applies.
    fn has(&self, entry: &str) -> bool {
        if entry == "authenticated" {
            return true;
        }
        match entry.split_once(':') {
            Some(("role", v)) => self.app_roles.iter().any(|r| r == v),
            Some(("group", v)) => self.groups.iter().any(|g| g == v),
            Some(("scope", v)) => self.scopes.iter().any(|s| s == v),
            Some(("app", v)) => self.app_id.as_deref() == Some(v),
            _ => false,
        }
    }

    /// The principal names per-model grants can name: `user:<subject>`, `group:<id>`,
    /// `role:<app role>`, `app:<client id>`.
    pub fn principals(&self) -> Vec<String> {
        let mut p: BTreeSet<String> = BTreeSet::new();
        p.insert(format!("user:{}", self.subject));
        p.extend(self.groups.iter().map(|g| format!("group:{g}")));
        // An app role is assigned in each tenant by that tenant's admins: a grant to
        // `role:X` means the home tenant's X, and another tenant's X is `role:X@<tenant>`.
        p.extend(self.app_roles.iter().map(|r| match (&self.tenant, self.foreign) {
            (Some(t), true) => format!("role:{r}@{t}"),
            _ => format!("role:{r}"),
        }));
        p.extend(self.app_id.iter().map(|a| format!("app:{a}")));
        p.into_iter().collect()
    }

    pub fn at_least(&self, role: Role) -> bool {
        self.role.is_some_and(|r| r >= role)
    }

    pub fn require(&self, role: Role, what: &str) -> Result<()> {
        if self.at_least(role) {
            Ok(())
        } else {
            Err(self.forbidden(format!("{what} needs the {role:?} role; {} does not have it", self.subject)))
        }
    }

    /// A 403 for this caller. When the token left the groups out (group overage), the
    /// refusal may be due to that rather than to a missing grant: the message says so and
    /// what to configure, and the refusal is logged.
    pub fn forbidden(&self, msg: String) -> RegistryError {
        if !self.groups_overage {
            return RegistryError::Forbidden(msg);
        }
        tracing::info!(subject = %self.subject, "refused a caller whose token omits its groups (group overage)");
        RegistryError::Forbidden(format!("{msg}. Note: {GROUP_OVERAGE_NOTE}"))
    }

    /// What a listing made with this token should say: in group overage, models granted
    /// to the caller's groups are not listed.
    pub fn listing_warnings(&self) -> Vec<String> {
        if self.groups_overage {
            vec![format!("models granted to your groups are not listed: {GROUP_OVERAGE_NOTE}")]
        } else {
            Vec::new()
        }
    }
}

/// Why a token in group overage is refused or sees less.
const GROUP_OVERAGE_NOTE: &str = "the token carries no groups claim because the caller is in too many groups \
     (group overage), so grants and roles given to groups cannot apply; use app roles, or have the app \
     registration emit only the groups assigned to the application";

/// A claim by name or, when no claim has that name and it has dots, by path into nested
/// objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |value, part| value.get(part))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| RegistryError::Internal("request reached a handler without authentication".into()))
    }
}

/// Authentication as the API's middleware: with OIDC, a valid bearer token is required.
#[derive(Clone)]
pub struct Authenticator {
    validator: Option<Arc<OidcValidator>>,
    config: Arc<AuthConfig>,
    home_tenant: Option<Arc<str>>,
    refusals: Arc<RefusalLog>,
}

/// Refused calls are logged at info, with the reason and the caller's address (never the
/// token), at most [`RefusalLog::BURST`] lines per [`RefusalLog::WINDOW`]: a client
/// hammering with a bad token must not flood the log. What is held back is counted and
/// reported on the next line that is written.
#[derive(Debug)]
struct RefusalLog {
    state: Mutex<RefusalWindow>,
}

#[derive(Debug)]
struct RefusalWindow {
    started: Instant,
    logged: u32,
    held_back: u64,
}

impl RefusalLog {
    const WINDOW: Duration = Duration::from_secs(10);
    const BURST: u32 = 20;

    fn new() -> Self {
        Self { state: Mutex::new(RefusalWindow { started: Instant::now(), logged: 0, held_back: 0 }) }
    }

    fn record(&self, transport: &str, peer: Option<SocketAddr>, error: &RegistryError) {
        let Ok(mut w) = self.state.lock() else { return };
        if w.started.elapsed() >= Self::WINDOW {
            w.started = Instant::now();
            w.logged = 0;
        }
        if w.logged >= Self::BURST {
            w.held_back += 1;
            return;
        }
        w.logged += 1;
        let held_back = std::mem::take(&mut w.held_back);
        drop(w);
        let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into());
        tracing::info!(
            transport,
            peer = %peer,
            code = ?error.code(),
            reason = %error,
            refusals_not_logged = held_back,
            "refused an unauthenticated call"
        );
    }
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Result<Self> {
        config.check()?;
        let validator = config.oidc.clone().map(OidcValidator::new).transpose()?.map(Arc::new);
        let home_tenant = config.oidc.as_ref().and_then(OidcConfig::home_tenant).map(Arc::from);
        Ok(Self { validator, config: Arc::new(config), home_tenant, refusals: Arc::new(RefusalLog::new()) })
    }

    pub fn enabled(&self) -> bool {
        self.validator.is_some()
    }

    /// Whether a principal without `@<tenant>` matches nobody: tokens are checked and
    /// several tenants are allowed with no home tenant, so every caller's principals carry
    /// their tenant (see [`Caller::from_claims`]).
    pub fn principals_need_a_tenant(&self) -> bool {
        self.validator.is_some() && self.home_tenant.is_none()
    }

    pub fn default_permission(&self) -> DefaultPermission {
        self.config.default_permission
    }

    pub async fn warm(&self) {
        if let Some(v) = &self.validator {
            v.warm().await;
        }
    }

    /// Readiness: without usable signing keys every authenticated call would get 503, so
    /// the server is not ready to take traffic.
    pub async fn check_ready(&self) -> Result<()> {
        match &self.validator {
            Some(v) if !v.has_keys().await => {
                v.refresh_in_background();
                Err(RegistryError::Unavailable(
                    "no signing keys from the OIDC issuer yet: tokens cannot be validated".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The caller behind an `Authorization` header value (None: header absent).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller> {
        let Some(validator) = &self.validator else { return Ok(Caller::anonymous()) };
        let header = authorization.ok_or_else(|| RegistryError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Unauthorized("the Authorization header is not 'Bearer <token>'".into()))?;
        let claims = validator.validate(token).await?;
        Caller::from_claims(&claims, &self.config.claims, &self.config.roles, self.home_tenant.as_deref(), token)
    }

    /// [`Self::authenticate`] for a call arriving over `transport` (`rest`, `flight`) from
    /// `peer`: a refusal is logged (rate limited, without the token).
    pub async fn authenticate_call(
        &self,
        transport: &'static str,
        peer: Option<SocketAddr>,
        authorization: Option<&str>,
    ) -> Result<Caller> {
        let result = self.authenticate(authorization).await;
        if let Err(e) = &result {
            self.refusals.record(transport, peer, e);
        }
        result
    }
}

/// Authenticates an HTTP request arriving over `transport`: the [`Caller`] goes into the
/// request's extensions, where handlers take it from.
pub async fn authenticate_request(auth: &Authenticator, transport: &'static str, req: &mut Request) -> Result<()> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let caller = auth.authenticate_call(transport, peer, header).await?;
    req.extensions_mut().insert(caller);
    Ok(())
}

pub async fn middleware(State(auth): State<Authenticator>, mut req: Request, next: Next) -> Response {
    match authenticate_request(&auth, "rest", &mut req).await {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let unauthorized = matches!(e, RegistryError::Unauthorized(_));
            let mut resp = e.into_response();
            if unauthorized {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}
