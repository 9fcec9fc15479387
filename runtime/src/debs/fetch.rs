//! Downloading one locked file from one URL: `http:`, `https:` (rustls with the system's root
//! certificates) and `file:`. Each try streams the body through [`copy_verified`] into the
//! caller's temporary file; transient failures (connection, timeout, 5xx) are tried again with
//! a growing pause, a 404 or a wrong file is not.
//!
//! Proxies come from the environment as curl reads them: `http_proxy` for `http:` URLs
//! (lowercase only: `HTTP_PROXY` can be set by a web server's CGI request), `https_proxy` or
//! `HTTPS_PROXY` for `https:`, and `no_proxy` or `NO_PROXY` (`*`, or host names and domain
//! suffixes, separated by commas) for hosts to reach directly.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Seek, Write};
use std::time::Duration;

use envc_plan::lock::LockedPackage;

use super::error::{Attempt, Failure};
use super::verify::{CopyError, Opened, copy_verified, open_regular};

/// How downloads behave. Options that never change which file ends in the store.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// How long a connection may take to be made.
    pub connect_timeout: Duration,
    /// How long the server may stay silent (before its answer or in the middle of a body).
    pub stall_timeout: Duration,
    /// How many times one URL is tried when its failures are transient.
    pub tries: u32,
    /// The pause after a first failed try, doubled after each later one.
    pub backoff: Duration,
    /// How many downloads run at once in [`super::DebStore::ensure_all`].
    pub parallel: usize,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            tries: 3,
            backoff: Duration::from_secs(1),
            parallel: 4,
        }
    }
}

/// Why a download gave no file.
#[derive(Debug)]
pub(super) enum FetchFail {
    /// The URL did not give the locked file.
    Remote(Attempt),
    /// Writing the temporary file failed.
    Local(io::Error),
}

/// An HTTP agent for one proxy setting, or why that setting is unusable.
type AgentFor = Result<ureq::Agent, String>;

/// The downloader: one agent (with its connection pool) per proxy setting.
pub(super) struct Fetcher {
    opts: FetchOptions,
    direct: ureq::Agent,
    http: Option<AgentFor>,
    https: Option<AgentFor>,
    no_proxy: Vec<String>,
}

impl Fetcher {
    /// A downloader with proxies from this process's environment.
    pub(super) fn new(opts: FetchOptions) -> Fetcher {
        Fetcher::with_env(opts, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// A downloader with proxies from `env`.
    pub(super) fn with_env(opts: FetchOptions, env: &dyn Fn(&str) -> Option<String>) -> Fetcher {
        let agent = |proxy: Option<ureq::Proxy>| {
            let mut b = ureq::AgentBuilder::new()
                .timeout_connect(opts.connect_timeout)
                .timeout_read(opts.stall_timeout)
                .timeout_write(opts.stall_timeout)
                .user_agent(concat!("envc/", env!("CARGO_PKG_VERSION")))
                .try_proxy_from_env(false);
            if let Some(p) = proxy {
                b = b.proxy(p);
            }
            b.build()
        };
        let proxied = |var: &str, value: String| -> AgentFor {
            ureq::Proxy::new(&value)
                .map(|p| agent(Some(p)))
                .map_err(|e| format!("proxy {var}={value} is unusable: {e}"))
        };
        let http = env("http_proxy").map(|v| proxied("http_proxy", v));
        let https = env("https_proxy")
            .map(|v| proxied("https_proxy", v))
            .or_else(|| env("HTTPS_PROXY").map(|v| proxied("HTTPS_PROXY", v)));
        let no_proxy = env("no_proxy")
            .or_else(|| env("NO_PROXY"))
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Fetcher {
            direct: agent(None),
            http,
            https,
            no_proxy,
            opts,
        }
    }

    pub(super) fn options(&self) -> &FetchOptions {
        &self.opts
    }

    /// Downloads `url` into `out` (emptied before each try) and checks that it is the locked
    /// file; transient failures are tried again.
    pub(super) fn fetch(
        &self,
        url: &str,
        p: &LockedPackage,
        out: &mut File,
    ) -> Result<(), FetchFail> {
        let mut tries = 0;
        let mut pause = self.opts.backoff;
        loop {
            tries += 1;
            out.set_len(0).map_err(FetchFail::Local)?;
            out.rewind().map_err(FetchFail::Local)?;
            let failure = match self.try_once(url, p, out) {
                Ok(()) => return Ok(()),
                Err(CopyError::Local(e)) => return Err(FetchFail::Local(e)),
                Err(CopyError::Source(f)) => f,
            };
            if !failure.is_transient() || tries >= self.opts.tries.max(1) {
                return Err(FetchFail::Remote(Attempt {
                    url: url.to_owned(),
                    tries,
                    failure,
                }));
            }
            std::thread::sleep(pause);
            pause = pause.saturating_mul(2);
        }
    }

    fn try_once(&self, url: &str, p: &LockedPackage, out: &mut File) -> Result<(), CopyError> {
        let fail = |f| Err(CopyError::Source(f));
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("file:") {
            return fetch_file(&url[5..], p, out);
        }
        let agent = if lower.starts_with("http://") {
            self.agent(url, self.http.as_ref())
        } else if lower.starts_with("https://") {
            self.agent(url, self.https.as_ref())
        } else {
            return fail(Failure::Unsupported {
                reason: "envc downloads from http:, https: and file: URIs".into(),
            });
        };
        let agent = match agent {
            Ok(a) => a,
            Err(reason) => return fail(Failure::Connect { reason }),
        };
        let resp = match agent.get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                return fail(Failure::Status {
                    status,
                    reason: r.status_text().to_owned(),
                });
            }
            Err(ureq::Error::Transport(t)) => return fail(self.transport(url, &t)),
        };
        if let Some(announced) = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            && announced != p.size
        {
            return fail(Failure::Length {
                announced,
                expected: p.size,
            });
        }
        let stall = self.opts.stall_timeout;
        copy_verified(
            &mut resp.into_reader(),
            Some(out as &mut dyn Write),
            p,
            &|e| {
                CopyError::Source(if is_timeout(&e) {
                    Failure::Timeout { timeout: stall }
                } else {
                    Failure::Transfer {
                        reason: e.to_string(),
                    }
                })
            },
        )
    }

    /// The agent for `url`: through the scheme's proxy unless `no_proxy` names its host.
    fn agent<'a>(
        &'a self,
        url: &str,
        proxy: Option<&'a AgentFor>,
    ) -> Result<&'a ureq::Agent, String> {
        match proxy {
            Some(agent) if !self.bypass(url) => agent.as_ref().map_err(String::clone),
            _ => Ok(&self.direct),
        }
    }

    /// Whether `no_proxy` names the host of `url`.
    fn bypass(&self, url: &str) -> bool {
        let host = host_of(url).to_ascii_lowercase();
        self.no_proxy.iter().any(|entry| {
            let entry = strip_port(entry);
            entry == "*"
                || host == entry
                || host
                    .strip_suffix(entry)
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }

    fn transport(&self, url: &str, t: &ureq::Transport) -> Failure {
        let mut reason = t.kind().to_string();
        if let Some(m) = t.message() {
            reason = format!("{reason}: {m}");
        }
        let mut timed_out = false;
        let mut source = std::error::Error::source(t);
        while let Some(s) = source {
            if s.downcast_ref::<io::Error>().is_some_and(is_timeout) {
                timed_out = true;
            }
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        if let Some(at) = t.url().map(|u| u.as_str()).filter(|u| *u != url) {
            reason = format!("{reason} (at {at})");
        }
        match t.kind() {
            ureq::ErrorKind::ConnectionFailed if timed_out => Failure::Timeout {
                timeout: self.opts.connect_timeout,
            },
            _ if timed_out => Failure::Timeout {
                timeout: self.opts.stall_timeout,
            },
            ureq::ErrorKind::Dns
            | ureq::ErrorKind::ConnectionFailed
            | ureq::ErrorKind::ProxyConnect
            | ureq::ErrorKind::ProxyUnauthorized
            | ureq::ErrorKind::InvalidProxyUrl => Failure::Connect { reason },
            ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                Failure::Unsupported { reason }
            }
            _ => Failure::Transfer { reason },
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// The host of an `http(s)://` URL, without user, port or brackets.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    strip_port(hostport)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` without the port and brackets.
fn strip_port(s: &str) -> &str {
    if let Some(v6) = s.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address has several colons: no port to strip.
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => s,
    }
}

/// The path a `file:` URI names (after `file:`): `/x`, `///x` and `//localhost/x` are `/x`.
pub(super) fn file_path(rest: &str) -> Result<&str, Failure> {
    let path = match rest.strip_prefix("//") {
        None => rest,
        Some(r) if r.starts_with('/') => r,
        Some(r) => match r.strip_prefix("localhost") {
            Some(p) if p.starts_with('/') => p,
            _ => {
                return Err(Failure::Unsupported {
                    reason: "a file: URI names a file on this host (file:/PATH or file:///PATH)"
                        .into(),
                });
            }
        },
    };
    if !path.starts_with('/') {
        return Err(Failure::Unsupported {
            reason: "a file: URI names an absolute path".into(),
        });
    }
    Ok(path)
}

/// Copies the regular file a `file:` URI names (never through a symlink at its name, never a
/// FIFO or a device). Not tried again on failure: a local file does not come back by itself.
fn fetch_file(rest: &str, p: &LockedPackage, out: &mut File) -> Result<(), CopyError> {
    let fail = |f| Err(CopyError::Source(f));
    let path = match file_path(rest) {
        Ok(path) => path,
        Err(f) => return fail(f),
    };
    let (mut file, meta) = match open_regular(std::path::Path::new(path)) {
        Ok(Opened::File(f, m)) => (f, m),
        Ok(Opened::Absent) => return fail(Failure::NoFile),
        Ok(Opened::Other(found)) => return fail(Failure::NotRegular { found }),
        Err(e) => {
            return fail(Failure::Read {
                reason: e.to_string(),
            });
        }
    };
    if meta.len() != p.size {
        return fail(Failure::Length {
            announced: meta.len(),
            expected: p.size,
        });
    }
    copy_verified(&mut file, Some(out as &mut dyn Write), p, &|e| {
        CopyError::Source(Failure::Read {
            reason: e.to_string(),
        })
    })
}

/// The URLs to try for `p`, in order, without repeats: `{mirror}/{path}` for each of `mirrors`,
/// then for the mirror the lock names when it is http or https. A lock is a file of the
/// repository it builds, as untrusted as the spec: its own `file:` mirror would make envc read a
/// host file of the lock's choosing (and say its size and sha256 when they differ). A `file:`
/// mirror comes from the spec's base or the host's apt sources.
pub(super) fn candidates(p: &LockedPackage, mirrors: &[String]) -> Vec<String> {
    let path = p.path.trim_start_matches("./");
    let mut out: Vec<String> = Vec::new();
    let own = p.mirror.trim();
    let own = (own.starts_with("http://") || own.starts_with("https://")).then_some(&p.mirror);
    for m in mirrors.iter().chain(own) {
        let m = m.trim();
        if m.is_empty() {
            continue;
        }
        let url = format!("{}/{path}", m.trim_end_matches('/'));
        if !out.contains(&url) {
            out.push(url);
        }
    }
    out
}

/// Why a lock entry's archive path is not fetched, if it is not.
pub(super) fn bad_path(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        Some("is empty")
    } else if path.starts_with('/') {
        Some("is absolute (it must be relative to its mirror)")
    } else if path.split('/').any(|c| c == "..") {
        Some("leaves its mirror (`..`)")
    } else if path.contains(['?', '#']) || path.chars().any(char::is_control) {
        Some("holds a character no archive path has (`?`, `#` or a control character)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_no_proxy() {
        assert_eq!(
            host_of("http://u:p@Mirror.example:8080/debian"),
            "Mirror.example"
        );
        assert_eq!(host_of("https://[::1]:443/x"), "::1");
        assert_eq!(host_of("http://deb.debian.org"), "deb.debian.org");
        let env = |k: &str| match k {
            "http_proxy" => Some("http://proxy.local:3128".to_owned()),
            "HTTP_PROXY" => Some("http://cgi.evil:1".to_owned()),
            "no_proxy" => Some("localhost, .internal.example,10.0.0.1:80".to_owned()),
            _ => None,
        };
        let f = Fetcher::with_env(FetchOptions::default(), &env);
        assert!(f.bypass("http://localhost/x"));
        assert!(f.bypass("http://a.internal.example/x"));
        assert!(f.bypass("http://internal.example/x"));
        assert!(!f.bypass("http://notinternal.example/x"));
        assert!(f.bypass("http://10.0.0.1:8080/x"));
        assert!(!f.bypass("http://deb.debian.org/x"));
        assert!(f.http.as_ref().is_some_and(Result::is_ok));
        // HTTP_PROXY (uppercase) is never read for http: URLs; no https proxy is set.
        assert!(f.https.is_none());
        let star = Fetcher::with_env(FetchOptions::default(), &|k| {
            (k == "NO_PROXY").then(|| "*".to_owned())
        });
        assert!(star.bypass("http://anything/x"));
    }

    #[test]
    fn file_uris() {
        assert_eq!(file_path("/srv/repo/x.deb"), Ok("/srv/repo/x.deb"));
        assert_eq!(file_path("///srv/repo/x.deb"), Ok("/srv/repo/x.deb"));
        assert_eq!(file_path("//localhost/srv/x.deb"), Ok("/srv/x.deb"));
        assert!(file_path("//otherhost/srv/x.deb").is_err());
        assert!(file_path("relative/x.deb").is_err());
    }

    #[test]
    fn bad_paths() {
        assert_eq!(bad_path("pool/main/h/hello/hello_2.10-3_amd64.deb"), None);
        assert_eq!(bad_path("./hello_2.10-3_amd64.deb"), None);
        assert!(bad_path("").is_some());
        assert!(bad_path("/etc/shadow").is_some());
        assert!(bad_path("pool/../../etc/shadow").is_some());
        assert!(bad_path("pool/x.deb?y").is_some());
    }
}
