//! The registry REST API as a model source.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header;
use url::Url;

use super::{verify_sha256, Credentials, HttpSourceOptions, ModelSource, ModelVersion};
use crate::error::{Result, ScoreError};
use lakescore_core::reference::ModelRef;
use lakescore_core::ErrorCode;

/// Resolves and fetches models over the registry's REST API (`/api/v1`), forwarding the
/// caller's `authorization` header unchanged.
#[derive(Debug, Clone)]
pub struct HttpModelSource {
    base: Url,
    client: reqwest::Client,
    options: HttpSourceOptions,
}

impl HttpModelSource {
    /// `base` is the registry's root URL (`http://127.0.0.1:8080`); `/api/v1` is appended.
    pub fn new(base: Url, options: HttpSourceOptions) -> Result<Self> {
        if base.cannot_be_a_base() {
            return Err(ScoreError::invalid(format!("registry URL {base} cannot be a base URL")));
        }
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("lakescore-scorer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ScoreError::internal(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { base, client, options })
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let mut path =
                url.path_segments_mut().map_err(|_| ScoreError::internal("registry URL cannot be a base"))?;
            path.pop_if_empty();
            path.extend(["api", "v1"]);
            path.extend(segments);
        }
        Ok(url)
    }

    fn request(&self, url: Url, creds: &Credentials) -> reqwest::RequestBuilder {
        let mut req = self.client.get(url);
        if let Some(auth) = &creds.authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        req
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| ScoreError::Unavailable(format!("model registry unreachable while {what}: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // Problem details (RFC 9457): prefer `detail`, then `title`.
        let body = resp.bytes().await.unwrap_or_default();
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("detail")
                    .and_then(|d| d.as_str())
                    .or_else(|| v.get("title").and_then(|d| d.as_str()))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).trim().to_string());
        let msg = if detail.is_empty() {
            format!("registry answered {status} while {what}")
        } else {
            format!("{what}: {detail}")
        };
        Err(ScoreError::from_code(ErrorCode::from_http(status.as_u16()), msg))
    }
}

impl HttpModelSource {
    /// Every page of a registry listing (`models`, or one model's `versions`) the caller
    /// may see, in the registry's order.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        field: &str,
        creds: &Credentials,
    ) -> Result<Vec<T>> {
        let what = format!("listing {}", segments.join("/"));
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = self.url(segments)?;
            url.query_pairs_mut().append_pair("page_size", "1000");
            if let Some(t) = &token {
                url.query_pairs_mut().append_pair("page_token", t);
            }
            let resp = self.send(self.request(url, creds), &what).await?;
            let mut page: serde_json::Value =
                resp.json().await.map_err(|e| ScoreError::Unavailable(format!("{what}: {e}")))?;
            let batch: Vec<T> = serde_json::from_value(page[field].take())
                .map_err(|e| ScoreError::Internal(format!("{what}: unexpected answer: {e}")))?;
            items.extend(batch);
            token = page["next_page_token"].as_str().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                return Ok(items);
            }
        }
    }

    /// The models the caller may read.
    pub async fn list_models(&self, creds: &Credentials) -> Result<Vec<lakescore_core::wire::Model>> {
        self.list(&["models"], "models", creds).await
    }

    /// The versions of `model` (the caller must be able to read it).
    pub async fn list_versions(&self, model: &str, creds: &Credentials) -> Result<Vec<ModelVersion>> {
        self.list(&["models", model, "versions"], "versions", creds).await
    }
}

#[async_trait]
impl ModelSource for HttpModelSource {
    async fn resolve(&self, reference: &ModelRef, creds: &Credentials) -> Result<ModelVersion> {
        let reference_str = reference.to_string();
        let url = self.url(&["resolve", &reference_str])?;
        let what = format!("resolving model {reference_str}");
        let resp = self.send(self.request(url, creds), &what).await?;
        let body = resp.bytes().await.map_err(|e| ScoreError::Unavailable(format!("{what}: {e}")))?;
        let version: ModelVersion = serde_json::from_slice(&body)
            .map_err(|e| ScoreError::Internal(format!("{what}: the registry's answer is not a version record: {e}")))?;
        if version.model != reference.name {
            return Err(ScoreError::Internal(format!("{what}: the registry answered with model {:?}", version.model)));
        }
        Ok(version)
    }

    async fn fetch(&self, version: &ModelVersion, creds: &Credentials) -> Result<Bytes> {
        let v = version.version.to_string();
        let url = self.url(&["models", &version.model, "versions", &v, "artifact"])?;
        let what = format!("fetching the artifact of {}", version.pinned_reference());
        if version.size.max(0) as u64 > self.options.max_artifact_bytes {
            return Err(ScoreError::ResourceExhausted(format!(
                "{what}: {} bytes is over the worker's limit of {} bytes",
                version.size, self.options.max_artifact_bytes
            )));
        }
        let resp = self.send(self.request(url, creds), &what).await?;
        if let Some(etag) = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()) {
            let etag = etag.trim_start_matches("W/").trim_matches('"');
            if !etag.eq_ignore_ascii_case(&version.sha256) {
                return Err(ScoreError::DataLoss(format!(
                    "{what}: ETag {etag} does not match the version's sha256 {}",
                    version.sha256
                )));
            }
        }
        let mut body = Vec::with_capacity((version.size.max(0) as u64).min(self.options.max_artifact_bytes) as usize);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ScoreError::Unavailable(format!("{what}: {e}")))?;
            if (body.len() + chunk.len()) as u64 > self.options.max_artifact_bytes {
                return Err(ScoreError::ResourceExhausted(format!(
                    "{what}: artifact over the worker's limit of {} bytes",
                    self.options.max_artifact_bytes
                )));
            }
            body.extend_from_slice(&chunk);
        }
        verify_sha256(&body, &version.sha256, &version.pinned_reference())?;
        Ok(Bytes::from(body))
    }

    fn describe(&self) -> String {
        self.base.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_api_urls() {
        let s = HttpModelSource::new(Url::parse("http://h:1/").unwrap(), Default::default()).unwrap();
        assert_eq!(s.url(&["resolve", "fraud@champion"]).unwrap().as_str(), "http://h:1/api/v1/resolve/fraud@champion");
        let s = HttpModelSource::new(Url::parse("http://h:1/prefix").unwrap(), Default::default()).unwrap();
        assert_eq!(
            s.url(&["models", "a", "versions", "3", "artifact"]).unwrap().as_str(),
            "http://h:1/prefix/api/v1/models/a/versions/3/artifact"
        );
    }
}
