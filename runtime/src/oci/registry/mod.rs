//! The OCI distribution API client: manifests and blobs of one repository on one registry.
//!
//! - https with the system's root certificates; plain http only for loopback hosts and the
//!   hosts named insecure. Redirects are followed here (GET and HEAD, 5 hops at most), never
//!   from https to http, and `Authorization` is dropped when the host changes.
//! - Anonymous first; a 401 is answered once from its `WWW-Authenticate` challenge (`Basic`
//!   with the host's credentials, or a `Bearer` token fetched from the realm for the
//!   repository's pull or pull-and-push scope, cached per scope), and once more on a later 401
//!   (a token that expired). Never more.
//! - Connection failures, timeouts, 429 and 5xx are tried again `attempts` times with a
//!   doubling pause; a 4xx never is.
//! - Every body read is capped (errors and tokens 64 KiB, manifests 4 MiB, blobs by the caller),
//!   digests are checked as the bytes arrive ([`blob`]).
//!
//! [`reference`]: what names a repository, tags and digests. [`auth`]: credentials, auth files,
//! challenges.
#![forbid(unsafe_code)]

mod auth;
mod blob;
mod reference;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

pub use auth::Credentials;
pub use reference::Reference;

use auth::{Challenge, parse_challenges, query_escape};
use blob::Verified;
pub use blob::sha256_digest;
use reference::{check_digest, check_tag, plain_http_allowed};

/// The media type a manifest is asked for with.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The most of a manifest that is read.
pub const MANIFEST_CAP: u64 = 4 << 20;
/// The most of an error body or a token answer that is read.
const SMALL_CAP: u64 = 64 << 10;
/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 5;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("{what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{op} {url}: registry unreachable after {tries} tries: {reason}")]
    Unreachable {
        op: String,
        url: String,
        tries: u32,
        reason: String,
    },
    #[error("{op} {url}: HTTP {status}{detail}{}", tries_note(*.tries))]
    Status {
        op: String,
        url: String,
        status: u16,
        detail: String,
        tries: u32,
    },
    #[error("{op} {url}: not authorized: {reason}")]
    Unauthorized {
        op: String,
        url: String,
        reason: String,
    },
    #[error("{op} {url}: {reason}")]
    Protocol {
        op: String,
        url: String,
        reason: String,
    },
    #[error("auth file {path}: {reason}")]
    AuthFile { path: PathBuf, reason: String },
    #[error("blob {digest} is {size} bytes, over the limit of {max}")]
    TooLarge { digest: String, size: u64, max: u64 },
    #[error("{op} {digest}: reading the content to send: {source}")]
    Local {
        op: String,
        digest: String,
        #[source]
        source: io::Error,
    },
}

fn tries_note(tries: u32) -> String {
    if tries > 1 {
        format!(" (after {tries} tries)")
    } else {
        String::new()
    }
}

impl RegistryError {
    /// Whether the registry could not be reached: connection refused or reset, DNS, timeouts,
    /// and 5xx or 429 answers after all tries. Callers may carry on without the registry.
    pub fn is_unreachable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// How a [`Registry`] behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hosts (`HOST` or `HOST:PORT`) spoken to in plain http, besides loopback.
    pub insecure_hosts: Vec<String>,
    /// How long a connection may take to be made.
    pub connect_timeout: Duration,
    /// How long the registry may stay silent (before its answer or in a body).
    pub read_timeout: Duration,
    /// How many times a request is tried when its failures are transient.
    pub attempts: u32,
    /// The pause after a first failed try, doubled after each later one.
    pub backoff: Duration,
    /// The user and password for the host, if any.
    pub auth: Credentials,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            insecure_hosts: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            attempts: 3,
            backoff: Duration::from_secs(1),
            auth: Credentials::default(),
        }
    }
}

/// A manifest as the registry gave it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    /// `sha256:` of `bytes` (checked against the registry's `Docker-Content-Digest`).
    pub digest: String,
    /// The `Content-Type` the registry gave (or the manifest's own `mediaType`).
    pub media_type: String,
}

/// What an authorization is for: pulling, or pulling and pushing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Access {
    Pull,
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// `Authorization` values by access; its `Debug` never shows them.
#[derive(Default)]
struct AuthCache(Mutex<HashMap<Access, String>>);

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "AuthCache({n} entries)")
    }
}

/// A request body.
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A fresh reader per try, and its length.
    Stream(&'a mut dyn FnMut() -> io::Result<Box<dyn Read + Send>>, u64),
}

/// One request.
struct Call<'a> {
    op: &'static str,
    /// What the error names (a digest or a tag) when the body cannot be read.
    object: &'a str,
    method: &'static str,
    url: String,
    accept: Option<&'a str>,
    content_type: Option<&'a str>,
    access: Access,
    follow: bool,
    attempts: u32,
    /// How long the whole answer (headers and body) may take, for small answers: the read
    /// timeout alone lets a registry that sends a byte at a time hold a request forever.
    deadline: Option<Duration>,
}

/// Why one try failed.
enum Fail {
    /// A transport failure; `transient` when another try may succeed.
    Transport {
        reason: String,
        transient: bool,
    },
    Fatal(RegistryError),
}

/// A client for one repository on one registry. `Send + Sync`: one client serves all threads.
#[derive(Debug)]
pub struct Registry {
    reference: Reference,
    /// `http` or `https`.
    scheme: &'static str,
    options: Options,
    agent: ureq::Agent,
    cache: AuthCache,
}

impl Registry {
    /// A client for `reference`'s repository. Nothing is sent yet.
    pub fn new(reference: &Reference, options: Options) -> Result<Registry, RegistryError> {
        // The fields are public: check them again.
        let reference: Reference =
            format!("{}/{}", reference.host, reference.repository).parse()?;
        let scheme = if plain_http_allowed(&reference.host, &options.insecure_hosts) {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(options.connect_timeout)
            .timeout_read(options.read_timeout)
            .timeout_write(options.read_timeout)
            .redirects(0)
            .user_agent(concat!("envc/", env!("CARGO_PKG_VERSION")))
            .try_proxy_from_env(false)
            .build();
        Ok(Registry {
            reference,
            scheme,
            options,
            agent,
            cache: AuthCache::default(),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}://{}/v2/{}/{tail}",
            self.scheme, self.reference.host, self.reference.repository
        )
    }

    fn call<'a>(
        &self,
        op: &'static str,
        object: &'a str,
        method: &'static str,
        tail: &str,
    ) -> Call<'a> {
        Call {
            op,
            object,
            method,
            url: self.url(tail),
            accept: None,
            content_type: None,
            access: Access::Pull,
            follow: matches!(method, "GET" | "HEAD"),
            attempts: self.options.attempts.max(1),
            deadline: None,
        }
    }

    /// The manifest tagged `tag`, or `None` when there is none.
    pub fn manifest(&self, tag: &str) -> Result<Option<Manifest>, RegistryError> {
        check_tag(tag)?;
        let mut call = self.call("get manifest", tag, "GET", &format!("manifests/{tag}"));
        call.accept = Some(OCI_MANIFEST);
        call.deadline = Some(self.small_deadline());
        let resp = self.send(&call, &mut Body::Empty)?;
        let url = resp.get_url().to_owned();
        match resp.status() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(status_error(&call, resp, 1)),
        }
        let announced = resp
            .header("Docker-Content-Digest")
            .map(|d| d.trim().to_owned());
        let content_type = resp
            .header("Content-Type")
            .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|t| !t.is_empty());
        let bytes = read_capped(&call, resp, MANIFEST_CAP, "manifest")?;
        let digest = sha256_digest(&bytes);
        if let Some(announced) = announced
            && announced.starts_with("sha256:")
            && announced != digest
        {
            return Err(protocol(
                &call,
                &url,
                format!("the registry says the manifest is {announced}, its bytes are {digest}"),
            ));
        }
        let media_type = content_type.unwrap_or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
                .unwrap_or_default()
        });
        Ok(Some(Manifest {
            bytes,
            digest,
            media_type,
        }))
    }

    /// Whether the repository has the blob `digest`.
    pub fn has_blob(&self, digest: &str) -> Result<bool, RegistryError> {
        self.has_blob_for(digest, Access::Pull)
    }

    fn has_blob_for(&self, digest: &str, access: Access) -> Result<bool, RegistryError> {
        check_digest(digest)?;
        let mut call = self.call("check blob", digest, "HEAD", &format!("blobs/{digest}"));
        call.access = access;
        let resp = self.send(&call, &mut Body::Empty)?;
        match resp.status() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error(&call, resp, 1)),
        }
    }

    /// The blob `digest` of `size` bytes as a reader that fails (`InvalidData`) if the body is
    /// longer or shorter than `size` or its sha256 differs, at the latest on the read that
    /// reaches its end. A `size` over `max` is refused before any request.
    pub fn blob(
        &self,
        digest: &str,
        size: u64,
        max: u64,
    ) -> Result<Box<dyn Read + Send>, RegistryError> {
        check_digest(digest)?;
        if size > max {
            return Err(RegistryError::TooLarge {
                digest: digest.to_owned(),
                size,
                max,
            });
        }
        let mut call = self.call("get blob", digest, "GET", &format!("blobs/{digest}"));
        if size <= MANIFEST_CAP {
            call.deadline = Some(self.small_deadline());
        }
        let resp = self.send(&call, &mut Body::Empty)?;
        if resp.status() != 200 {
            return Err(status_error(&call, resp, 1));
        }
        let url = resp.get_url().to_owned();
        if let Some(announced) = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            && announced != size
        {
            return Err(protocol(
                &call,
                &url,
                format!("the registry announces {announced} bytes, the blob has {size}"),
            ));
        }
        Ok(Box::new(Verified::new(
            resp.into_reader(),
            digest,
            size,
            &url,
        )))
    }

    /// Uploads the blob `digest` of `size` bytes unless the repository has it: a POST that
    /// opens an upload, then one PUT of the whole content to the `Location` it gives. `open`
    /// gives a fresh reader for each try.
    pub fn push_blob(
        &self,
        digest: &str,
        size: u64,
        open: &mut dyn FnMut() -> io::Result<Box<dyn Read + Send>>,
    ) -> Result<(), RegistryError> {
        check_digest(digest)?;
        if self.has_blob_for(digest, Access::Push)? {
            return Ok(());
        }
        let attempts = self.options.attempts.max(1);
        let mut pause = self.options.backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.upload_once(digest, size, open) {
                Err(e) if e.is_unreachable() && tries < attempts => {
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                }
                other => return other,
            }
        }
    }

    /// One upload: POST, then PUT (each tried once: a failed upload starts again from the
    /// POST).
    fn upload_once(
        &self,
        digest: &str,
        size: u64,
        open: &mut dyn FnMut() -> io::Result<Box<dyn Read + Send>>,
    ) -> Result<(), RegistryError> {
        let mut post = self.call("start blob upload", digest, "POST", "blobs/uploads/");
        post.access = Access::Push;
        post.attempts = 1;
        let resp = self.send(&post, &mut Body::Bytes(b""))?;
        if resp.status() != 202 {
            return Err(status_error(&post, resp, 1));
        }
        let base = resp.get_url().to_owned();
        let Some(location) = resp.header("Location").map(str::to_owned) else {
            return Err(protocol(
                &post,
                &base,
                "the registry gave no Location for the upload".into(),
            ));
        };
        let target = resolve(&base, &location).map_err(|r| protocol(&post, &base, r))?;
        self.check_hop(&base, &target)
            .map_err(|r| protocol(&post, &base, r))?;
        let sep = if target.contains('?') { '&' } else { '?' };
        let mut put = self.call("upload blob", digest, "PUT", "");
        put.url = format!("{target}{sep}digest={}", query_escape(digest));
        put.content_type = Some("application/octet-stream");
        put.access = Access::Push;
        put.attempts = 1;
        let same_host = host_of(&target) == host_of(&base);
        let resp = if same_host {
            self.send(&put, &mut Body::Stream(open, size))?
        } else {
            // Credentials stay with the registry's host.
            self.retrying(&put, &mut || {
                self.once(&put, &mut Body::Stream(open, size), None)
            })?
        };
        if !(200..300).contains(&resp.status()) {
            return Err(status_error(&put, resp, 1));
        }
        if let Some(d) = resp.header("Docker-Content-Digest")
            && d.trim().starts_with("sha256:")
            && d.trim() != digest
        {
            let url = resp.get_url().to_owned();
            return Err(protocol(
                &put,
                &url,
                format!("the registry stored the blob as {}", d.trim()),
            ));
        }
        Ok(())
    }

    /// Puts `bytes` (of `media_type`) as the manifest tagged `tag`; returns its digest.
    pub fn push_manifest(
        &self,
        tag: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        check_tag(tag)?;
        let digest = sha256_digest(bytes);
        let mut call = self.call("put manifest", tag, "PUT", &format!("manifests/{tag}"));
        if bytes.len() as u64 > MANIFEST_CAP {
            return Err(protocol(
                &call,
                &call.url.clone(),
                format!("the manifest is {} bytes, over {MANIFEST_CAP}", bytes.len()),
            ));
        }
        if media_type.is_empty() || media_type.chars().any(|c| c.is_control() || c == ',') {
            return Err(RegistryError::Invalid {
                what: "media type",
                value: media_type.to_owned(),
                reason: "a media type is TYPE/SUBTYPE without control characters",
            });
        }
        call.content_type = Some(media_type);
        call.access = Access::Push;
        let resp = self.send(&call, &mut Body::Bytes(bytes))?;
        if !(200..300).contains(&resp.status()) {
            return Err(status_error(&call, resp, 1));
        }
        if let Some(d) = resp.header("Docker-Content-Digest")
            && d.trim().starts_with("sha256:")
            && d.trim() != digest
        {
            let url = resp.get_url().to_owned();
            return Err(protocol(
                &call,
                &url,
                format!(
                    "the registry stored the manifest as {}, its bytes are {digest}",
                    d.trim()
                ),
            ));
        }
        Ok(digest)
    }

    /// Sends `call`, answering a 401 with a new authorization once (a cached one that was
    /// refused, a token that expired, is replaced once; one just obtained is not) and trying
    /// transient failures again. Any other answer is returned.
    fn send(&self, call: &Call, body: &mut Body) -> Result<ureq::Response, RegistryError> {
        let mut fetched = false;
        loop {
            let auth = self.cached(call.access);
            let resp = self.retrying(call, &mut || self.once(call, body, auth.as_deref()))?;
            if resp.status() != 401 {
                return Ok(resp);
            }
            let url = resp.get_url().to_owned();
            if host_of(&url) != host_of(&call.url) {
                // A redirect target (a CDN, blob storage) is never given the registry's
                // credentials, nor told where to send them (a Bearer realm of its choosing).
                let detail = error_detail(resp);
                return Err(RegistryError::Unauthorized {
                    op: call.op.to_owned(),
                    url,
                    reason: format!(
                        "the registry redirected to another host, which asks for credentials; \
                         the credentials for {} are not sent there{detail}",
                        self.reference.host
                    ),
                });
            }
            let challenges: Vec<Challenge> = resp
                .all("WWW-Authenticate")
                .into_iter()
                .flat_map(parse_challenges)
                .collect();
            let detail = error_detail(resp);
            if let Some(a) = &auth {
                self.forget(call.access, a);
            }
            let unauthorized = |reason: String| RegistryError::Unauthorized {
                op: call.op.to_owned(),
                url: url.clone(),
                reason,
            };
            let refused = || unauthorized(format!("the registry refused the credentials{detail}"));
            if fetched {
                return Err(refused());
            }
            let header = self.authorize(call, &challenges).map_err(|e| match e {
                Fail::Fatal(e) => e,
                Fail::Transport { reason, .. } => unauthorized(reason),
            })?;
            let Some(header) = header else {
                return Err(unauthorized(format!(
                    "the registry asks for credentials and none were found for {} \
                     (auth files: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, \
                     ~/.docker/config.json){detail}",
                    self.reference.host
                )));
            };
            if auth.as_deref() == Some(header.as_str()) {
                return Err(refused());
            }
            self.remember(call.access, header);
            fetched = true;
        }
    }

    /// How long a small answer (a manifest, a config, a token) may take in all: twice the read
    /// timeout.
    fn small_deadline(&self) -> Duration {
        self.options.read_timeout.saturating_mul(2)
    }

    fn cached(&self, access: Access) -> Option<String> {
        let cache = self.cache.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&access).cloned()
    }

    fn remember(&self, access: Access, header: String) {
        let mut cache = self.cache.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(access, header);
    }

    /// Forgets `refused` (unless another thread has replaced it already).
    fn forget(&self, access: Access, refused: &str) {
        let mut cache = self.cache.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.get(&access).is_some_and(|a| a == refused) {
            cache.remove(&access);
        }
    }

    /// The `Authorization` value that answers `challenges`, `None` when the registry wants a
    /// user and password and there are none.
    fn authorize(&self, call: &Call, challenges: &[Challenge]) -> Result<Option<String>, Fail> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.token(call, bearer).map(Some);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return Ok(self.options.auth.basic_header());
        }
        let offered: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Err(Fail::Fatal(RegistryError::Unauthorized {
            op: call.op.to_owned(),
            url: call.url.clone(),
            reason: if offered.is_empty() {
                "the registry answered 401 without a WWW-Authenticate challenge".into()
            } else {
                format!(
                    "the registry offers only {} authentication, envc speaks Basic and Bearer",
                    offered.join(", ")
                )
            },
        }))
    }

    /// A bearer token from the challenge's realm for the repository at `call`'s access.
    fn token(&self, call: &Call, challenge: &Challenge) -> Result<String, Fail> {
        let fatal = |url: &str, reason: String| {
            Fail::Fatal(RegistryError::Unauthorized {
                op: format!("{} (token)", call.op),
                url: url.to_owned(),
                reason,
            })
        };
        let Some(realm) = challenge.param("realm").filter(|r| !r.is_empty()) else {
            return Err(fatal(
                &call.url,
                "the Bearer challenge names no realm".into(),
            ));
        };
        let scheme = realm.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("https") => {}
            Some("http") if plain_http_allowed(&host_of(realm), &self.options.insecure_hosts) => {}
            _ => {
                return Err(fatal(
                    realm,
                    "the token realm is not an https URL (nor http on a loopback or insecure host)"
                        .into(),
                ));
            }
        }
        let mut url = realm.to_owned();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(service) = challenge.param("service") {
            url.push_str(&format!("{sep}service={}", query_escape(service)));
            sep = '&';
        }
        let scope = format!(
            "repository:{}:{}",
            self.reference.repository,
            call.access.actions()
        );
        url.push_str(&format!("{sep}scope={}", query_escape(&scope)));
        let get = Call {
            op: "get token",
            object: call.object,
            method: "GET",
            url,
            accept: Some("application/json"),
            content_type: None,
            access: call.access,
            follow: true,
            attempts: self.options.attempts.max(1),
            deadline: Some(self.small_deadline()),
        };
        let basic = self.options.auth.basic_header();
        let resp = self
            .retrying(&get, &mut || {
                self.once(&get, &mut Body::Empty, basic.as_deref())
            })
            .map_err(Fail::Fatal)?;
        let at = resp.get_url().to_owned();
        if resp.status() != 200 {
            let status = resp.status();
            let detail = error_detail(resp);
            return Err(fatal(
                &at,
                format!("the token server answered HTTP {status}{detail}"),
            ));
        }
        let bytes = read_capped(&get, resp, SMALL_CAP, "token answer").map_err(Fail::Fatal)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| fatal(&at, format!("the token answer is not JSON: {e}")))?;
        let token = ["token", "access_token"]
            .iter()
            .find_map(|k| v.get(k)?.as_str().filter(|t| !t.is_empty()));
        match token {
            Some(t) if !t.chars().any(|c| c.is_control() || c == ' ') => Ok(format!("Bearer {t}")),
            Some(_) => Err(fatal(
                &at,
                "the token holds spaces or control characters".into(),
            )),
            None => Err(fatal(&at, "the token answer has no token".into())),
        }
    }

    /// `attempt` tried until it gives an answer other than 429 or 5xx, a failure that is not
    /// transient, or `call.attempts` tries were made; with a doubling pause between tries.
    fn retrying(
        &self,
        call: &Call,
        attempt: &mut dyn FnMut() -> Result<ureq::Response, Fail>,
    ) -> Result<ureq::Response, RegistryError> {
        let mut pause = self.options.backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            let last = tries >= call.attempts;
            match attempt() {
                Ok(resp) if (resp.status() == 429 || resp.status() >= 500) && !last => {}
                Ok(resp) if resp.status() == 429 || resp.status() >= 500 => {
                    return Err(status_error(call, resp, tries));
                }
                Ok(resp) => return Ok(resp),
                Err(Fail::Fatal(e)) => return Err(e),
                Err(Fail::Transport { reason, transient }) if !transient || last => {
                    let (op, url) = (call.op.to_owned(), call.url.clone());
                    return Err(if transient {
                        RegistryError::Unreachable {
                            op,
                            url,
                            tries,
                            reason,
                        }
                    } else {
                        RegistryError::Protocol { op, url, reason }
                    });
                }
                Err(Fail::Transport { .. }) => {}
            }
            std::thread::sleep(pause);
            pause = pause.saturating_mul(2);
        }
    }

    /// One try of `call` with `auth`, following redirects for GET and HEAD.
    fn once(
        &self,
        call: &Call,
        body: &mut Body,
        auth: Option<&str>,
    ) -> Result<ureq::Response, Fail> {
        let mut url = call.url.clone();
        let mut auth = auth;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.request(call.method, &url);
            if let Some(d) = call.deadline {
                req = req.timeout(d);
            }
            if let Some(a) = call.accept {
                req = req.set("Accept", a);
            }
            if let Some(t) = call.content_type {
                req = req.set("Content-Type", t);
            }
            if let Some(a) = auth {
                req = req.set("Authorization", a);
            }
            let local = std::sync::Arc::new(Mutex::new(None));
            let result = match body {
                Body::Empty => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::Stream(open, size) => {
                    let reader = open().map_err(|source| {
                        Fail::Fatal(RegistryError::Local {
                            op: call.op.to_owned(),
                            digest: call.object.to_owned(),
                            source,
                        })
                    })?;
                    let exact = Exact {
                        inner: reader,
                        left: *size,
                        size: *size,
                        failed: local.clone(),
                    };
                    req.set("Content-Length", &size.to_string()).send(exact)
                }
            };
            let local = local.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(source) = local {
                return Err(Fail::Fatal(RegistryError::Local {
                    op: call.op.to_owned(),
                    digest: call.object.to_owned(),
                    source,
                }));
            }
            let resp = match result {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => return Err(transport(&url, &t)),
            };
            if !call.follow || !matches!(resp.status(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let Some(location) = resp.header("Location") else {
                return Ok(resp);
            };
            let next = resolve(&url, location).map_err(|r| Fail::Fatal(protocol(call, &url, r)))?;
            self.check_hop(&url, &next)
                .map_err(|r| Fail::Fatal(protocol(call, &url, r)))?;
            if host_of(&next) != host_of(&url) {
                auth = None;
            }
            url = next;
        }
        Err(Fail::Fatal(protocol(
            call,
            &url,
            format!("more than {MAX_REDIRECTS} redirects"),
        )))
    }

    /// Refuses a move from `from` to `to` that leaves https, or reaches plain http on a host
    /// that is not loopback nor insecure.
    fn check_hop(&self, from: &str, to: &str) -> Result<(), String> {
        let https = |u: &str| {
            u.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        };
        let http = |u: &str| {
            u.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        };
        if https(to) {
            return Ok(());
        }
        if !http(to) {
            return Err(format!(
                "refusing to follow the registry to {to}: not an http(s) URL"
            ));
        }
        if https(from) {
            return Err(format!(
                "refusing to follow the registry from https to plain http ({to})"
            ));
        }
        if !plain_http_allowed(&host_of(to), &self.options.insecure_hosts) {
            return Err(format!(
                "refusing plain http to {to}: not a loopback host nor in the insecure hosts"
            ));
        }
        Ok(())
    }
}

/// The content to send, exactly `size` bytes of it: a reader that gives more is cut at `size`,
/// one that ends before fails, and the failure is kept in `failed` (a local error, never the
/// registry's).
struct Exact {
    inner: Box<dyn Read + Send>,
    left: u64,
    size: u64,
    failed: std::sync::Arc<Mutex<Option<io::Error>>>,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let result = match self.inner.read(&mut buf[..want]) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the content ended after {} of its {} bytes",
                    self.size - self.left,
                    self.size
                ),
            )),
            other => other,
        };
        match result {
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(copy)
            }
        }
    }
}

/// The `HOST[:PORT]` of an absolute URL, in lower case. The authority ends where the URL parser
/// that ureq uses (WHATWG) ends it for http and https: at `/`, `\`, `?` or `#`. A host told
/// differently here than there would carry `Authorization` to a host it was not meant for
/// (`http://evil\@registry/` connects to `evil`).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(AUTHORITY_END).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hostport.to_ascii_lowercase()
}

/// What ends the authority of an http(s) URL for the WHATWG URL parser.
const AUTHORITY_END: [char; 4] = ['/', '\\', '?', '#'];

/// `location` (absolute, scheme-relative, absolute-path or relative) against `base`.
fn resolve(base: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    if location.is_empty() || location.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "the registry gave an unusable Location {location:?}"
        ));
    }
    if location.contains("://") && !location.starts_with('/') {
        return Ok(location.to_owned());
    }
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| format!("{base} is not an absolute URL"))?;
    if let Some(r) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{r}"));
    }
    let authority = rest.split(AUTHORITY_END).next().unwrap_or_default();
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let path = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    Ok(format!("{scheme}://{authority}{dir}/{location}"))
}

fn protocol(call: &Call, url: &str, reason: String) -> RegistryError {
    RegistryError::Protocol {
        op: call.op.to_owned(),
        url: url.to_owned(),
        reason,
    }
}

/// The error for an answer with an unexpected status, with the registry's own words.
fn status_error(call: &Call, resp: ureq::Response, tries: u32) -> RegistryError {
    let url = resp.get_url().to_owned();
    let status = resp.status();
    let detail = error_detail(resp);
    RegistryError::Status {
        op: call.op.to_owned(),
        url,
        status,
        detail,
        tries,
    }
}

/// `: CODE: message; ...` from a distribution error body (or its first line), read up to
/// 64 KiB; empty when there is nothing to say.
fn error_detail(resp: ureq::Response) -> String {
    let status_text = resp.status_text().to_owned();
    let mut buf = Vec::new();
    let _ = resp.into_reader().take(SMALL_CAP).read_to_end(&mut buf);
    let errors = serde_json::from_slice::<serde_json::Value>(&buf)
        .ok()
        .and_then(|v| {
            let list = v.get("errors")?.as_array()?.clone();
            let parts: Vec<String> = list
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                    let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                    format!("{code}: {msg}")
                })
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        });
    let text = errors.unwrap_or_else(|| {
        let s = String::from_utf8_lossy(&buf);
        let line = s
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let line: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
        if line.is_empty() { status_text } else { line }
    });
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// The body of `resp`, at most `cap` bytes.
fn read_capped(
    call: &Call,
    resp: ureq::Response,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let url = resp.get_url().to_owned();
    if let Some(n) = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        && n > cap
    {
        return Err(protocol(
            call,
            &url,
            format!("the {what} is {n} bytes, over {cap}"),
        ));
    }
    let mut buf = Vec::new();
    resp.into_reader()
        .take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            let reason = format!("reading the {what}: {e}");
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                RegistryError::Unreachable {
                    op: call.op.to_owned(),
                    url: url.clone(),
                    tries: 1,
                    reason,
                }
            } else {
                protocol(call, &url, reason)
            }
        })?;
    if buf.len() as u64 > cap {
        return Err(protocol(
            call,
            &url,
            format!("the {what} is over {cap} bytes"),
        ));
    }
    Ok(buf)
}

/// A transport failure as a [`Fail`]: connection, DNS, I/O (resets, timeouts) are transient.
fn transport(url: &str, t: &ureq::Transport) -> Fail {
    let mut reason = t.kind().to_string();
    if let Some(m) = t.message() {
        reason = format!("{reason}: {m}");
    }
    let mut source = std::error::Error::source(t);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    if let Some(at) = t.url().map(|u| u.as_str()).filter(|u| *u != url) {
        reason = format!("{reason} (at {at})");
    }
    let transient = matches!(
        t.kind(),
        ureq::ErrorKind::Dns
            | ureq::ErrorKind::ConnectionFailed
            | ureq::ErrorKind::Io
            | ureq::ErrorKind::BadStatus
            | ureq::ErrorKind::ProxyConnect
    );
    Fail::Transport { reason, transient }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn registry_is_send_and_sync() {
        assert_send_sync::<Registry>();
    }

    #[test]
    fn locations_and_hops() {
        let base = "http://127.0.0.1:5000/v2/a/blobs/uploads/";
        assert_eq!(
            resolve(base, "/v2/a/blobs/uploads/u1?_state=x").unwrap(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x"
        );
        assert_eq!(
            resolve(base, "https://other.example/up?x=1").unwrap(),
            "https://other.example/up?x=1"
        );
        assert_eq!(
            resolve(base, "//cdn.example/b").unwrap(),
            "http://cdn.example/b"
        );
        assert_eq!(
            resolve("http://h/v2/a/blobs/x?y=/z", "u2").unwrap(),
            "http://h/v2/a/blobs/u2"
        );
        assert!(resolve(base, "").is_err());
        assert!(resolve(base, "/a\nb").is_err());
        assert_eq!(
            host_of("https://User@Reg.Example:5000/x?y"),
            "reg.example:5000"
        );
        // What ureq connects to, not what follows the '@'.
        assert_eq!(host_of("http://127.0.0.1:9\\@reg.example/x"), "127.0.0.1:9");
        assert_eq!(
            host_of(&resolve("http://evil\\@h/v2/a/b", "c").unwrap()),
            "evil"
        );

        let r = Registry::new(
            &"reg.example/a".parse().unwrap(),
            Options {
                insecure_hosts: vec!["lan.example".into()],
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(r.scheme, "https");
        assert!(r.check_hop("https://a/x", "https://b/y").is_ok());
        assert!(r.check_hop("https://a/x", "http://127.0.0.1/y").is_err());
        assert!(r.check_hop("http://a/x", "http://lan.example:80/y").is_ok());
        assert!(r.check_hop("http://a/x", "http://wan.example/y").is_err());
        assert!(r.check_hop("http://a/x", "ftp://a/y").is_err());
        let local =
            Registry::new(&"localhost:5000/a".parse().unwrap(), Options::default()).unwrap();
        assert_eq!(local.scheme, "http");
        assert!(!format!("{local:?}").contains("Basic"));
    }

    #[test]
    fn refusals_before_any_request() {
        // Nothing listens on port 9 of this reserved address; these fail before connecting.
        let r = Registry::new(&"localhost:9/a".parse().unwrap(), Options::default()).unwrap();
        let hex = "ab".repeat(32);
        assert!(matches!(
            r.has_blob("sha256:AB"),
            Err(RegistryError::Invalid { .. })
        ));
        assert!(matches!(
            r.manifest("../x"),
            Err(RegistryError::Invalid { .. })
        ));
        assert!(matches!(
            r.blob(&format!("sha256:{hex}"), 11, 10),
            Err(RegistryError::TooLarge { .. })
        ));
        let bad = Reference {
            host: "localhost:9".into(),
            repository: "A".into(),
        };
        assert!(Registry::new(&bad, Options::default()).is_err());
    }
}
