//! The OCI distribution client against a real registry (Debian's docker-registry, distribution
//! 2.8, on 127.0.0.1): envc's layer artifacts pushed and read back, pushes repeated, absent
//! tags, corrupted storage, basic auth from an auth file, and registries that cannot be
//! reached or never answer.
#![forbid(unsafe_code)]

mod common;

use std::ffi::OsString;
use std::io::{self, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::registry::TestRegistry;
use envc_runtime::oci::registry::{
    Credentials, OCI_MANIFEST, Options, Reference, Registry, RegistryError, sha256_digest,
};

const ARTIFACT: &str = "application/vnd.envc.layer.v1";
const CONFIG: &str = "application/vnd.envc.layer.config.v1+json";
const LAYER: &str = "application/vnd.envc.layer.v1.tar+zstd";

fn options() -> Options {
    Options {
        insecure_hosts: Vec::new(),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        attempts: 3,
        backoff: Duration::from_millis(50),
        auth: Credentials::anonymous(),
    }
}

fn client(addr: &str, repo: &str, opts: Options) -> Registry {
    let r: Reference = format!("{addr}/{repo}").parse().unwrap();
    Registry::new(&r, opts).unwrap()
}

/// Bytes that do not compress away: a layer of `n` bytes.
fn layer_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opener(bytes: &[u8], opened: &mut u32) -> impl FnMut() -> io::Result<Box<dyn Read + Send>> {
    let bytes = bytes.to_vec();
    move || {
        *opened += 1;
        Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>)
    }
}

/// Pushes a layer and its config as an envc artifact manifest tagged `tag`; returns the
/// manifest bytes and digest.
fn push_artifact(reg: &Registry, tag: &str, layer: &[u8]) -> (Vec<u8>, String) {
    let config = br#"{"envc":"layer","version":1}"#;
    let mut opened = 0;
    reg.push_blob(
        &sha256_digest(config),
        config.len() as u64,
        &mut opener(config, &mut opened),
    )
    .unwrap();
    reg.push_blob(
        &sha256_digest(layer),
        layer.len() as u64,
        &mut opener(layer, &mut opened),
    )
    .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT,
        "config": {"mediaType": CONFIG, "digest": sha256_digest(config), "size": config.len()},
        "layers": [{"mediaType": LAYER, "digest": sha256_digest(layer), "size": layer.len()}],
        "annotations": {"org.opencontainers.image.title": tag},
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = reg.push_manifest(tag, OCI_MANIFEST, &bytes).unwrap();
    assert_eq!(digest, sha256_digest(&bytes));
    (bytes, digest)
}

fn read_blob(reg: &Registry, digest: &str, size: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reg.blob(digest, size, 1 << 30)
        .unwrap()
        .read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn push_pull_and_push_again() {
    let Some(server) = TestRegistry::start(None) else {
        return;
    };
    let reg = client(&server.addr, "team/envc-cache", options());
    let layer = layer_bytes(300_000, 1);
    let (manifest, digest) = push_artifact(&reg, "layer-1", &layer);

    let got = reg
        .manifest("layer-1")
        .unwrap()
        .expect("the manifest is there");
    assert_eq!(got.bytes, manifest);
    assert_eq!(got.digest, digest);
    assert_eq!(got.media_type, OCI_MANIFEST);
    let v: serde_json::Value = serde_json::from_slice(&got.bytes).unwrap();
    assert_eq!(v["artifactType"], ARTIFACT);
    assert_eq!(v["config"]["mediaType"], CONFIG);
    assert_eq!(v["layers"][0]["mediaType"], LAYER);

    let ld = sha256_digest(&layer);
    assert!(reg.has_blob(&ld).unwrap());
    assert_eq!(read_blob(&reg, &ld, layer.len() as u64).unwrap(), layer);

    // Pushing the same again: blobs are not uploaded (never opened), the manifest is the same.
    let mut opened = 0;
    reg.push_blob(&ld, layer.len() as u64, &mut opener(&layer, &mut opened))
        .unwrap();
    assert_eq!(opened, 0, "a blob the registry has is not sent again");
    assert_eq!(
        reg.push_manifest("layer-1", OCI_MANIFEST, &manifest)
            .unwrap(),
        digest
    );
    // The same blob under another tag of another repository is uploaded there.
    let other = client(&server.addr, "team/other", options());
    let mut opened = 0;
    other
        .push_blob(&ld, layer.len() as u64, &mut opener(&layer, &mut opened))
        .unwrap();
    assert_eq!(opened, 1);

    // What is absent.
    assert!(reg.manifest("nope").unwrap().is_none());
    let absent = sha256_digest(b"absent");
    assert!(!reg.has_blob(&absent).unwrap());
    let e = reg
        .blob(&absent, 6, 100)
        .err()
        .expect("an absent blob is an error");
    assert!(
        matches!(e, RegistryError::Status { status: 404, .. }) && !e.is_unreachable(),
        "{e}"
    );
    // A size that is not the blob's is refused from its Content-Length.
    let e = reg
        .blob(&ld, layer.len() as u64 + 1, 1 << 30)
        .err()
        .unwrap();
    assert!(e.to_string().contains("announces"), "{e}");
    // A blob over the caller's limit is refused before any request.
    let e = reg.blob(&ld, layer.len() as u64, 1000).err().unwrap();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");

    // A content whose digest is not the one named is refused by the registry.
    let mut opened = 0;
    let wrong = sha256_digest(b"something else");
    let e = reg
        .push_blob(&wrong, 5, &mut opener(b"hello", &mut opened))
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Status { status: 400, .. }),
        "{e}"
    );
    assert!(!reg.has_blob(&wrong).unwrap());
    // One registry client serves several threads.
    std::thread::scope(|s| {
        for i in 0..4 {
            let reg = &reg;
            s.spawn(move || {
                let layer = layer_bytes(10_000 + i, 10 + i as u64);
                push_artifact(reg, &format!("t{i}"), &layer);
                assert!(reg.manifest(&format!("t{i}")).unwrap().is_some());
            });
        }
    });
}

#[test]
fn corrupted_blob_is_detected() {
    let Some(server) = TestRegistry::start(None) else {
        return;
    };
    let reg = client(&server.addr, "envc/corrupt", options());
    let layer = layer_bytes(200_000, 2);
    let ld = sha256_digest(&layer);
    push_artifact(&reg, "c", &layer);
    assert_eq!(server.corrupt_blobs(100_000), 1);
    let e = read_blob(&reg, &ld, layer.len() as u64).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("not what the digest names"), "{e}");
}

/// Standard base64 with padding (the test crate does not depend on a base64 crate).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn auth_file(dir: &std::path::Path, host: &str, user: &str, pass: &str) -> PathBuf {
    let auth = base64(format!("{user}:{pass}").as_bytes());
    let p = dir.join(format!("auth-{user}-{pass}.json"));
    std::fs::write(
        &p,
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    p
}

#[test]
fn basic_auth_from_an_auth_file() {
    let Some(server) = TestRegistry::start(Some(("envc", "s3cret"))) else {
        return;
    };
    let file = auth_file(&server.dir, &server.addr, "envc", "s3cret");
    let env = |k: &str| (k == "REGISTRY_AUTH_FILE").then(|| OsString::from(&file));
    let (creds, notes) = Credentials::from_environment_with(&server.addr, &env).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(creds.user(), Some("envc"));
    assert!(!format!("{creds:?}").contains("s3cret"));

    let reg = client(
        &server.addr,
        "team/private",
        Options {
            auth: creds,
            ..options()
        },
    );
    let layer = layer_bytes(50_000, 3);
    let (manifest, _) = push_artifact(&reg, "p", &layer);
    assert_eq!(reg.manifest("p").unwrap().unwrap().bytes, manifest);
    let ld = sha256_digest(&layer);
    assert_eq!(read_blob(&reg, &ld, layer.len() as u64).unwrap(), layer);

    // Anonymous: refused, and said so.
    let anon = client(&server.addr, "team/private", options());
    let e = anon.manifest("p").unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("none were found"), "{e}");
    assert!(!e.is_unreachable());
    // A wrong password: refused once, never asked again in a loop.
    let wrong = auth_file(&server.dir, &server.addr, "envc", "wrong");
    let env = |k: &str| (k == "REGISTRY_AUTH_FILE").then(|| OsString::from(&wrong));
    let (creds, _) = Credentials::from_environment_with(&server.addr, &env).unwrap();
    let bad = client(
        &server.addr,
        "team/private",
        Options {
            auth: creds,
            ..options()
        },
    );
    let e = bad.has_blob(&ld).unwrap_err();
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    let mut opened = 0;
    let e = bad
        .push_blob(&ld, layer.len() as u64, &mut opener(&layer, &mut opened))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert_eq!(opened, 0);
}

#[test]
fn closed_port_is_unreachable_quickly() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reg = client(&format!("127.0.0.1:{port}"), "a/b", options());
    let start = Instant::now();
    let e = reg.manifest("x").unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("after 3 tries"), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn silent_registry_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accepts connections and never answers (the thread ends with the test process).
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let reg = client(
        &addr,
        "a/b",
        Options {
            read_timeout: Duration::from_secs(1),
            attempts: 2,
            backoff: Duration::from_millis(10),
            ..options()
        },
    );
    let start = Instant::now();
    let e = reg.has_blob(&sha256_digest(b"x")).unwrap_err();
    let took = start.elapsed();
    assert!(e.is_unreachable(), "{e}");
    assert!(took >= Duration::from_secs(2), "{took:?}: {e}");
    assert!(took < Duration::from_secs(6), "{took:?}: {e}");
}

/// `bytes` in base64url without padding (JWT's encoding).
fn base64url(bytes: &[u8]) -> String {
    base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The query and `Authorization` of every request a token server had.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// A token server: a key and self-signed certificate made with openssl, and a thread that
/// answers `GET /token?service=..&scope=..` with a JWT signed by that key (RS256, the
/// certificate in `x5c`), but only to requests with `basic` as their `Authorization`.
struct TokenServer {
    realm: String,
    bundle: PathBuf,
    seen: Seen,
}

impl TokenServer {
    fn start(dir: &std::path::Path, issuer: &'static str, basic: String) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=envc-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
        let der = std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success(), "{der:?}");
        let x5c = base64(&der.stdout);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let seen = Seen::default();
        let log = seen.clone();
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().flatten().enumerate() {
                let _ = serve_token(stream, n, &dir, &key, &x5c, issuer, &basic, &log);
            }
        });
        TokenServer {
            realm,
            bundle: cert,
            seen,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve_token(
    mut stream: std::net::TcpStream,
    n: usize,
    dir: &std::path::Path,
    key: &std::path::Path,
    x5c: &str,
    issuer: &str,
    basic: &str,
    log: &std::sync::Mutex<Vec<(String, Option<String>)>>,
) -> io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_owned());
        }
    }
    let query = target.split_once('?').map_or("", |(_, q)| q).to_owned();
    log.lock().unwrap().push((query.clone(), auth.clone()));
    if auth.as_deref() != Some(basic) {
        let body = r#"{"details":"bad credentials"}"#;
        return write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(percent_decode)
            .unwrap_or_default()
    };
    let (service, scope) = (param("service"), param("scope"));
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": issuer, "sub": "envc", "aud": service,
        "exp": now + 600, "nbf": now - 10, "iat": now - 10, "jti": format!("t{n}"),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let input_file = dir.join(format!("jwt-{n}"));
    std::fs::write(&input_file, &input)?;
    let sig = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input_file)
        .output()?;
    assert!(sig.status.success(), "{sig:?}");
    let token = format!("{input}.{}", base64url(&sig.stdout));
    let body = serde_json::json!({"token": token, "expires_in": 600}).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn bearer_tokens_from_a_token_server() {
    if !TestRegistry::available() {
        return;
    }
    let dir = common::TempDir::new("registry-token");
    let basic = format!("Basic {}", base64(b"envc:t0ken"));
    let tokens = TokenServer::start(dir.path(), "envc-issuer", basic.clone());
    let Some(server) =
        TestRegistry::start_token(&tokens.realm, "envc-test", "envc-issuer", &tokens.bundle)
    else {
        return;
    };
    let opts = || Options {
        auth: Credentials::basic("envc", "t0ken"),
        ..options()
    };
    let reg = client(&server.addr, "team/bearer", opts());
    let layer = layer_bytes(40_000, 4);
    let (manifest, digest) = push_artifact(&reg, "b", &layer);
    let got = reg.manifest("b").unwrap().unwrap();
    assert_eq!((got.bytes, got.digest), (manifest, digest));
    let ld = sha256_digest(&layer);
    assert_eq!(read_blob(&reg, &ld, layer.len() as u64).unwrap(), layer);
    assert!(reg.has_blob(&ld).unwrap());
    {
        // One token per scope, asked for with the credentials: the cache serves the rest.
        let seen = tokens.seen.lock().unwrap();
        let queries: Vec<&str> = seen.iter().map(|(q, _)| q.as_str()).collect();
        assert_eq!(
            queries,
            [
                "service=envc-test&scope=repository%3Ateam%2Fbearer%3Apull%2Cpush",
                "service=envc-test&scope=repository%3Ateam%2Fbearer%3Apull",
            ],
            "{}",
            server.log()
        );
        assert!(
            seen.iter()
                .all(|(_, a)| a.as_deref() == Some(basic.as_str()))
        );
    }
    // Without credentials the token server refuses: an authorization error, no loop.
    let anon = client(&server.addr, "team/bearer", options());
    let e = anon.manifest("b").unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert!(!e.is_unreachable());
    assert_eq!(tokens.seen.lock().unwrap().len(), 3);
}

/// One request a [`Scripted`] server had.
#[derive(Debug, Clone)]
struct Seen1 {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen1 {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Seen1, usize) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync;

/// A scripted HTTP server (not a registry): for redirects, retries and authorization
/// sequences a real registry does not make on demand. Each answer closes its connection.
struct Scripted {
    addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen1>>>,
}

impl Scripted {
    fn start(handler: Box<Handler>) -> Scripted {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let mut reader = BufReader::new(clone);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut words = line.split_whitespace();
                let method = words.next().unwrap_or("").to_owned();
                let target = words.next().unwrap_or("").to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_owned(), v.trim().to_owned()));
                    }
                }
                let req = Seen1 {
                    method,
                    target,
                    headers,
                };
                let len: u64 = req
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let _ = io::copy(&mut reader.by_ref().take(len), &mut io::sink());
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(req.clone());
                    log.len() - 1
                };
                let (status, hs, body) = handler(&req, n);
                let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                if !hs
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                {
                    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                for (k, v) in hs {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                if req.method != "HEAD" {
                    let _ = stream.write_all(&body);
                }
            }
        });
        Scripted { addr, seen }
    }

    fn seen(&self) -> Vec<Seen1> {
        self.seen.lock().unwrap().clone()
    }
}

fn h(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

#[test]
fn retries_only_what_may_pass() {
    let d = sha256_digest(b"x");
    // 503, 429, then 200: three tries.
    let s = Scripted::start(Box::new(|_, n| match n {
        0 => (503, vec![], vec![]),
        1 => (429, vec![], vec![]),
        _ => (200, vec![], vec![]),
    }));
    assert!(client(&s.addr, "a/b", options()).has_blob(&d).unwrap());
    assert_eq!(s.seen().len(), 3);
    // Always 503: unreachable after the tries.
    let s = Scripted::start(Box::new(|_, _| (503, vec![], b"busy".to_vec())));
    let e = client(&s.addr, "a/b", options()).manifest("t").unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("after 3 tries"), "{e}");
    assert_eq!(s.seen().len(), 3);
    // A 4xx is never tried again, and the registry's words are in the error.
    let s = Scripted::start(Box::new(|_, _| {
        let body = br#"{"errors":[{"code":"DENIED","message":"no way"}]}"#;
        (403, vec![], body.to_vec())
    }));
    let e = client(&s.addr, "a/b", options()).manifest("t").unwrap_err();
    assert!(!e.is_unreachable());
    assert!(e.to_string().contains("HTTP 403: DENIED: no way"), "{e}");
    assert_eq!(s.seen().len(), 1);
}

#[test]
fn redirects_drop_authorization_across_hosts() {
    let blob = b"blob content".to_vec();
    let d = sha256_digest(&blob);
    let body = blob.clone();
    let storage = Scripted::start(Box::new(move |_, _| (200, vec![], body.clone())));
    // The same port spelled `localhost`: another host to the client.
    let target = format!(
        "http://localhost:{}/store/x?sig=1",
        storage.addr.rsplit_once(':').unwrap().1
    );
    let front = Scripted::start(Box::new(move |req, _| {
        if req.header("authorization").is_none() {
            return (
                401,
                vec![h("WWW-Authenticate", r#"Basic realm="t""#)],
                vec![],
            );
        }
        if req.target.contains("/blobs/") {
            (307, vec![h("Location", "/v2/a/b/elsewhere")], vec![])
        } else {
            (302, vec![h("Location", &target)], vec![])
        }
    }));
    let reg = client(
        &front.addr,
        "a/b",
        Options {
            auth: Credentials::basic("u", "p"),
            ..options()
        },
    );
    let mut out = Vec::new();
    reg.blob(&d, blob.len() as u64, 100)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, blob);
    let seen = front.seen();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            format!("/v2/a/b/blobs/{d}").as_str(),
            &format!("/v2/a/b/blobs/{d}"),
            "/v2/a/b/elsewhere"
        ]
    );
    // The same host keeps the authorization, another host never gets it.
    assert!(seen[2].header("authorization").is_some());
    let stored = storage.seen();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].target, "/store/x?sig=1");
    assert!(stored[0].header("authorization").is_none(), "{stored:?}");

    // A redirect loop ends.
    let looping = Scripted::start(Box::new(|_, _| {
        (302, vec![h("Location", "/v2/a/b/x")], vec![])
    }));
    let e = client(&looping.addr, "a/b", options())
        .manifest("t")
        .unwrap_err();
    assert!(e.to_string().contains("more than 5 redirects"), "{e}");
    assert_eq!(looping.seen().len(), 6);
}

#[test]
fn an_expired_token_is_refreshed_once() {
    // Tokens t0, t1, ... from /token; the registry accepts t0 once, then t1 once, then none.
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let realm = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (c, a, r) = (counter.clone(), accepted.clone(), realm.clone());
    let s = Scripted::start(Box::new(move |req, _| {
        if req.target.starts_with("/token") {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = format!(r#"{{"access_token":"t{n}"}}"#);
            return (200, vec![], body.into_bytes());
        }
        let auth = req.header("authorization").unwrap_or("").to_owned();
        let mut used = a.lock().unwrap();
        if (auth == "Bearer t0" || auth == "Bearer t1") && !used.contains(&auth) {
            used.push(auth);
            return (404, vec![], vec![]);
        }
        let challenge = format!(
            r#"Bearer realm="{}",service="svc",scope="repository:a/b:pull""#,
            r.lock().unwrap()
        );
        (401, vec![h("WWW-Authenticate", &challenge)], vec![])
    }));
    *realm.lock().unwrap() = format!("http://{}/token", s.addr);
    let reg = client(&s.addr, "a/b", options());
    assert!(reg.manifest("t").unwrap().is_none()); // anonymous, 401, t0, 404
    assert!(reg.manifest("t").unwrap().is_none()); // t0 refused, t1, 404
    let e = reg.manifest("t").unwrap_err(); // t1 refused, t2 refused: the end
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let targets: Vec<String> = s.seen().iter().map(|r| r.target.clone()).collect();
    let tokens = targets.iter().filter(|t| t.starts_with("/token")).count();
    assert_eq!(tokens, 3, "{targets:?}");
    assert_eq!(targets.len(), 9, "{targets:?}");
    assert!(
        targets[1].contains("scope=repository%3Aa%2Fb%3Apull"),
        "{targets:?}"
    );
}

#[test]
fn manifests_are_capped_and_checked() {
    let big = Scripted::start(Box::new(|_, _| {
        (200, vec![h("Content-Length", "5000000")], vec![])
    }));
    let e = client(&big.addr, "a/b", options())
        .manifest("t")
        .unwrap_err();
    assert!(e.to_string().contains("over 4194304"), "{e}");
    let lying = Scripted::start(Box::new(|_, _| {
        let wrong = sha256_digest(b"other");
        (
            200,
            vec![
                h("Docker-Content-Digest", &wrong),
                h("Content-Type", OCI_MANIFEST),
            ],
            b"{}".to_vec(),
        )
    }));
    let e = client(&lying.addr, "a/b", options())
        .manifest("t")
        .unwrap_err();
    assert!(
        e.to_string().contains("the registry says the manifest is"),
        "{e}"
    );
}

#[test]
fn short_content_is_a_local_error() {
    let Some(server) = TestRegistry::start(None) else {
        return;
    };
    let reg = client(&server.addr, "envc/short", options());
    let content = layer_bytes(10_000, 5);
    let d = sha256_digest(&content);
    let mut opened = 0;
    let e = reg
        .push_blob(&d, 10_000, &mut opener(&content[..9_000], &mut opened))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Local { .. }), "{e}");
    assert!(
        e.to_string().contains("ended after 9000 of its 10000"),
        "{e}"
    );
    assert!(!e.is_unreachable());
    assert_eq!(opened, 1, "a local failure is not tried again");
    // Content longer than announced is cut at its size (and then matches its digest).
    let mut longer = content.clone();
    longer.extend_from_slice(b"trailing");
    reg.push_blob(&d, 10_000, &mut opener(&longer, &mut opened))
        .unwrap();
    assert_eq!(read_blob(&reg, &d, 10_000).unwrap(), content);
    // A reader that cannot be opened.
    let e = reg
        .push_blob(&sha256_digest(b"z"), 1, &mut || {
            Err(io::Error::new(io::ErrorKind::NotFound, "gone"))
        })
        .unwrap_err();
    assert!(matches!(e, RegistryError::Local { .. }), "{e}");
}
