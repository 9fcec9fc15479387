//! The `.deb` store against a tiny HTTP server on 127.0.0.1 (a thread of the test): downloads
//! that work, fail, lie, hang; files that rot in the store; repositories made of the same set in
//! any order.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::*;
use crate::BackendKind;

/// What the server answers for a path.
#[derive(Clone)]
enum Reply {
    /// 200 with these bytes and their length.
    Body(Vec<u8>),
    /// 200 with these bytes and no length (the end of the connection ends them).
    Unsized(Vec<u8>),
    /// This status, no body.
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
}

/// An HTTP/1.1 server of fixed replies on 127.0.0.1, stopped on drop. Unknown paths get 404.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: &[(&str, Reply)]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: BTreeMap<String, Reply> = routes
            .iter()
            .map(|(p, r)| ((*p).to_owned(), r.clone()))
            .collect();
        let routes = Arc::new(routes);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (routes, log, stop) = (routes.clone(), log2.clone(), stop2.clone());
                        conns.push(std::thread::spawn(move || serve(s, &routes, &log, &stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Server {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    routes: &BTreeMap<String, Reply>,
    log: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
    log.lock().unwrap().push(path.clone());
    let reply = routes.get(&path).cloned().unwrap_or(Reply::Status(404));
    let _ = match reply {
        Reply::Body(b) => write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            b.len()
        )
        .and_then(|()| s.write_all(&b)),
        Reply::Unsized(b) => s
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .and_then(|()| s.write_all(&b)),
        Reply::Status(code) => write!(
            s,
            "HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Reply::Hang => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }
    };
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "envc-debs-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fast() -> FetchOptions {
    FetchOptions {
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_millis(300),
        tries: 3,
        backoff: Duration::from_millis(10),
        parallel: 4,
    }
}

fn debs(tmp: &Tmp) -> DebStore {
    let store = Store::open(&tmp.0.join("store"), Some(BackendKind::Overlay)).unwrap();
    DebStore::open_with(&store, fast()).unwrap()
}

fn sha(bytes: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(bytes).into())
}

fn pkg(name: &str, version: &str, bytes: &[u8], mirror: &str) -> LockedPackage {
    LockedPackage {
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        sha256: sha(bytes),
        size: bytes.len() as u64,
        path: format!("pool/main/{name}_{version}_amd64.deb"),
        mirror: mirror.into(),
    }
}

fn url_path(p: &LockedPackage) -> String {
    format!("/{}", p.path)
}

/// The names in the store's directory that are not finished files.
fn temporaries(d: &DebStore) -> Vec<String> {
    record::entries(d.dir())
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| n.contains(".tmp."))
        .collect()
}

#[test]
fn a_download_is_verified_stored_and_then_reused() {
    let tmp = Tmp::new("ok");
    let bytes = b"the hello package, version 2.10-3".to_vec();
    let p = pkg("hello", "2.10-3", &bytes, "");
    let server = Server::start(&[(&url_path(&p), Reply::Body(bytes.clone()))]);
    let p = LockedPackage {
        mirror: server.url(),
        ..p
    };
    let d = debs(&tmp);
    let got = d.ensure(&p, &[], false).unwrap();
    assert_eq!(got.path, d.path_of(&p.sha256));
    assert_eq!(
        got.fetched_from.as_deref(),
        Some(format!("{}/{}", server.url(), p.path).as_str())
    );
    assert_eq!(got.replaced, None);
    assert_eq!(std::fs::read(&got.path).unwrap(), bytes);
    // The store is root's alone.
    let mode = std::fs::metadata(d.dir()).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    let mode = std::fs::metadata(&got.path).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    assert!(temporaries(&d).is_empty());
    // Present: hashed again, not downloaded again.
    let again = d.ensure(&p, &[], false).unwrap();
    assert_eq!((again.fetched_from, again.replaced), (None, None));
    assert_eq!(server.requests().len(), 1);
    // Offline and present: fine.
    assert!(d.ensure(&p, &[], true).is_ok());
}

#[test]
fn mirrors_are_tried_in_order_then_the_locked_one_and_a_404_names_everything() {
    let tmp = Tmp::new("404");
    let bytes = b"libfoo 1:1.2-3".to_vec();
    let empty = Server::start(&[]);
    let p = pkg("libfoo", "1:1.2-3", &bytes, "");
    let full = Server::start(&[(&url_path(&p), Reply::Body(bytes.clone()))]);
    let d = debs(&tmp);
    // Given mirrors first (a repeat is tried once, a trailing slash is the same mirror), then
    // the lock's own.
    let p = LockedPackage {
        mirror: format!("{}/", full.url()),
        ..p
    };
    let mirrors = vec![empty.url(), format!("{}/", empty.url()), full.url()];
    let got = d.ensure(&p, &mirrors, false).unwrap();
    assert_eq!(got.fetched_from, Some(format!("{}/{}", full.url(), p.path)));
    assert_eq!(empty.requests(), [url_path(&p)], "a 404 is not tried again");
    // Nowhere to be had: the error names the package, its version, architecture and sha256,
    // the store path and every URL with what went wrong.
    let lost = pkg("libbar", "2.0-1", b"libbar", &empty.url());
    let e = d.ensure(&lost, &[], false).unwrap_err();
    let text = e.to_string();
    for needle in [
        "libbar",
        "2.0-1",
        "amd64",
        &lost.sha256.to_hex(),
        &format!("{}/{}", empty.url(), lost.path),
        "HTTP 404",
        &d.path_of(&lost.sha256).display().to_string(),
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
    let FetchError::Unavailable { attempts, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].failure,
        Failure::Status {
            status: 404,
            reason: "Oops".into()
        }
    );
    assert!(!d.path_of(&lost.sha256).exists());
}

#[test]
fn other_bytes_are_refused_and_not_kept() {
    let tmp = Tmp::new("mismatch");
    let bytes = b"the real file".to_vec();
    let p = pkg("real", "1", &bytes, "");
    let mut evil = bytes.clone();
    evil[0] ^= 1;
    let server = Server::start(&[(&url_path(&p), Reply::Body(evil))]);
    let p = LockedPackage {
        mirror: server.url(),
        ..p
    };
    let d = debs(&tmp);
    let e = d.ensure(&p, &[], false).unwrap_err().to_string();
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert!(
        e.contains(
            &sha(&{
                let mut b = bytes.clone();
                b[0] ^= 1;
                b
            })
            .to_hex()
        ),
        "{e}"
    );
    assert!(!d.path_of(&p.sha256).exists());
    assert!(temporaries(&d).is_empty());
    // Not tried again: the mirror has another file, not a passing fault.
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn a_body_longer_than_the_lock_says_is_refused() {
    let tmp = Tmp::new("long");
    let bytes = b"short file".to_vec();
    let p = pkg("short", "1", &bytes, "");
    let mut long = bytes.clone();
    long.extend_from_slice(&[b'x'; 100_000]);
    let d = debs(&tmp);
    // Without a length: read until one byte too many, then refused.
    let no_length = Server::start(&[(&url_path(&p), Reply::Unsized(long.clone()))]);
    let e = d.ensure(
        &LockedPackage {
            mirror: no_length.url(),
            ..p.clone()
        },
        &[],
        false,
    );
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("more bytes came than the 10 the lock says"),
        "{e}"
    );
    // With a length that is not the locked size: refused before the body.
    let sized = Server::start(&[(&url_path(&p), Reply::Body(long))]);
    let e = d.ensure(
        &LockedPackage {
            mirror: sized.url(),
            ..p.clone()
        },
        &[],
        false,
    );
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("announces 100010 bytes, the lock says 10"),
        "{e}"
    );
    // Shorter without a length: too few bytes, a broken transfer that is tried again.
    let cut = Server::start(&[(&url_path(&p), Reply::Unsized(bytes[..4].to_vec()))]);
    let e = d.ensure(
        &LockedPackage {
            mirror: cut.url(),
            ..p.clone()
        },
        &[],
        false,
    );
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("only 4 bytes came") && e.contains("(3 tries)"),
        "{e}"
    );
    assert_eq!(cut.requests().len(), 3);
    assert!(!d.path_of(&p.sha256).exists());
    assert!(temporaries(&d).is_empty());
}

#[test]
fn a_corrupted_stored_file_is_found_before_use_and_replaced() {
    let tmp = Tmp::new("corrupt");
    let bytes = b"a file that rots on disk".to_vec();
    let p = pkg("rot", "1", &bytes, "");
    let server = Server::start(&[(&url_path(&p), Reply::Body(bytes.clone()))]);
    let p = LockedPackage {
        mirror: server.url(),
        ..p
    };
    let d = debs(&tmp);
    let path = d.ensure(&p, &[], false).unwrap().path;
    // Same size, one bit changed.
    let mut rotten = bytes.clone();
    rotten[3] ^= 0x10;
    std::fs::write(&path, &rotten).unwrap();
    let got = d.ensure(&p, &[], false).unwrap();
    let why = got.replaced.expect("the rotten file is reported");
    assert!(why.contains("sha256 mismatch"), "{why}");
    assert!(got.fetched_from.is_some());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // A truncated file, offline: removed, and the error says so.
    std::fs::write(&path, &bytes[..5]).unwrap();
    let e = d.ensure(&p, &[], true).unwrap_err().to_string();
    assert!(
        e.contains("it has 5 bytes") && e.contains("downloads are off"),
        "{e}"
    );
    assert!(!path.exists());
    // A symlink in its place (to a file with the right bytes): never used, replaced.
    let elsewhere = tmp.0.join("elsewhere");
    std::fs::write(&elsewhere, &bytes).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let got = d.ensure(&p, &[], false).unwrap();
    assert!(got.replaced.unwrap().contains("a symbolic link"));
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    assert_eq!(std::fs::read(&elsewhere).unwrap(), bytes);
}

#[test]
fn a_lock_entry_with_the_wrong_size_never_removes_the_right_file() {
    let tmp = Tmp::new("locksize");
    let bytes = b"the right file, which other locks use".to_vec();
    let p = pkg("right", "1", &bytes, "");
    let server = Server::start(&[(&url_path(&p), Reply::Body(bytes.clone()))]);
    let p = LockedPackage {
        mirror: server.url(),
        ..p
    };
    let d = debs(&tmp);
    let path = d.ensure(&p, &[], false).unwrap().path;
    // Another lock names the same sha256 with another size (a hand edit, or another package's
    // sha256 copied into its entry): the lock is wrong, the stored file is not.
    let wrong = LockedPackage {
        size: p.size + 1,
        ..p.clone()
    };
    let e = d.ensure(&wrong, &[], false).unwrap_err();
    assert!(
        matches!(e, FetchError::LockSize { actual, .. } if actual == p.size),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&p.sha256.to_hex()) && text.contains("size is wrong"),
        "{text}"
    );
    let repo = tmp.0.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let e = d
        .make_repo(std::slice::from_ref(&wrong), &repo)
        .unwrap_err();
    assert!(matches!(e, RepoError::LockSize { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file stays");
    assert_eq!(
        server.requests().len(),
        1,
        "nothing is downloaded for the wrong entry"
    );
    assert!(d.ensure(&p, &[], true).is_ok());
    // A file of another size that is not the file its name says is still replaced.
    std::fs::write(&path, &bytes[..5]).unwrap();
    let got = d.ensure(&p, &[], false).unwrap();
    assert!(got.replaced.unwrap().contains("it has 5 bytes"));
}

#[test]
fn offline_without_the_file_is_a_clear_error_and_downloads_nothing() {
    let tmp = Tmp::new("offline");
    let bytes = b"never downloaded".to_vec();
    let p = pkg("absent", "3.1", &bytes, "");
    let server = Server::start(&[(&url_path(&p), Reply::Body(bytes))]);
    let p = LockedPackage {
        mirror: server.url(),
        ..p
    };
    let d = debs(&tmp);
    let e = d.ensure(&p, &[], true).unwrap_err();
    assert!(matches!(e, FetchError::Offline { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("absent 3.1 (amd64)")
            && text.contains(&p.sha256.to_hex())
            && text.contains(&d.path_of(&p.sha256).display().to_string())
            && text.contains("downloads are off"),
        "{text}"
    );
    assert!(server.requests().is_empty());
}

#[test]
fn a_file_mirror_is_read_directly_and_only_as_a_regular_file() {
    let tmp = Tmp::new("file");
    let bytes = b"from a local mirror".to_vec();
    let repo = tmp.0.join("repo");
    let local = format!("file:{}", repo.display());
    let p = pkg("local", "1.0", &bytes, &local);
    let file = repo.join(&p.path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let d = debs(&tmp);
    // The lock's own file: mirror is never read (a lock would choose a host file).
    let e = d.ensure(&p, &[], false).unwrap_err().to_string();
    assert!(!e.contains(&local), "{e}");
    let mirrors = std::slice::from_ref(&local);
    let got = d.ensure(&p, mirrors, false).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), bytes);
    // file:///PATH too.
    std::fs::remove_file(&got.path).unwrap();
    let triple = format!("file://{}", repo.display());
    let got = d.ensure(&p, std::slice::from_ref(&triple), false).unwrap();
    assert_eq!(got.fetched_from, Some(format!("{triple}/{}", p.path)));
    // A symlink at the file's name is not followed; a missing file is named.
    std::fs::remove_file(&got.path).unwrap();
    let real = tmp.0.join("real.deb");
    std::fs::rename(&file, &real).unwrap();
    std::os::unix::fs::symlink(&real, &file).unwrap();
    let e = d.ensure(&p, mirrors, false).unwrap_err().to_string();
    assert!(
        e.contains("not a regular file: it is a symbolic link"),
        "{e}"
    );
    std::fs::remove_file(&file).unwrap();
    let e = d.ensure(&p, mirrors, false).unwrap_err().to_string();
    assert!(e.contains("no such file"), "{e}");
    // An unsupported scheme says so.
    let e = d
        .ensure(&p, &["ftp://example.org/debian".into()], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported URI"), "{e}");
}

#[test]
fn a_server_that_never_answers_times_out_and_a_503_is_tried_again() {
    let tmp = Tmp::new("timeout");
    let bytes = b"slow".to_vec();
    let p = pkg("slow", "1", &bytes, "");
    let server = Server::start(&[(&url_path(&p), Reply::Hang)]);
    let d = debs(&tmp);
    let start = Instant::now();
    let e = d
        .ensure(
            &LockedPackage {
                mirror: server.url(),
                ..p.clone()
            },
            &[],
            false,
        )
        .unwrap_err();
    let FetchError::Unavailable { attempts, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        attempts[0].failure,
        Failure::Timeout {
            timeout: Duration::from_millis(300)
        },
        "{e}"
    );
    assert_eq!(attempts[0].tries, 3);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains("no answer for 0.3 s"), "{e}");
    let busy = Server::start(&[(&url_path(&p), Reply::Status(503))]);
    let e = d
        .ensure(
            &LockedPackage {
                mirror: busy.url(),
                ..p.clone()
            },
            &[],
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 503") && e.contains("(3 tries)"), "{e}");
    assert_eq!(busy.requests().len(), 3);
    // Nothing listens: a connection failure, named as such.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = d
        .ensure(
            &LockedPackage {
                mirror: format!("http://127.0.0.1:{port}"),
                ..p
            },
            &[],
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot connect") && e.to_lowercase().contains("refused"),
        "{e}"
    );
}

#[test]
fn many_at_once_keep_their_order_and_every_failure_is_named() {
    let tmp = Tmp::new("all");
    let files: Vec<Vec<u8>> = (0..9)
        .map(|i| format!("package {i}").into_bytes())
        .collect();
    let pkgs: Vec<LockedPackage> = files
        .iter()
        .enumerate()
        .map(|(i, b)| pkg(&format!("p{i}"), "1", b, ""))
        .collect();
    let routes: Vec<(String, Reply)> = pkgs
        .iter()
        .zip(&files)
        .map(|(p, b)| (url_path(p), Reply::Body(b.clone())))
        .collect();
    let routes: Vec<(&str, Reply)> = routes
        .iter()
        .map(|(p, r)| (p.as_str(), r.clone()))
        .collect();
    let server = Server::start(&routes);
    let mut pkgs: Vec<LockedPackage> = pkgs
        .into_iter()
        .map(|p| LockedPackage {
            mirror: server.url(),
            ..p
        })
        .collect();
    // A package listed twice is fetched once.
    pkgs.push(pkgs[2].clone());
    let d = debs(&tmp);
    let mut seen = Vec::new();
    let got = d
        .ensure_all(&pkgs, &[], false, &mut |pr| {
            assert!(pr.result.is_ok());
            seen.push((pr.done, pr.total, pr.package.name.clone()));
        })
        .unwrap();
    assert_eq!(got.len(), 10);
    for (p, e) in pkgs.iter().zip(&got) {
        assert_eq!(e.path, d.path_of(&p.sha256));
    }
    assert_eq!(seen.len(), 9);
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert_eq!(server.requests().len(), 9);
    // Two that cannot be had: both named, the others still fetched.
    let lost: Vec<LockedPackage> = ["x", "y"]
        .iter()
        .map(|n| pkg(n, "9", n.as_bytes(), &server.url()))
        .collect();
    let extra = pkg("z", "1", b"z", &server.url());
    let z_route = url_path(&extra);
    drop(server);
    let server = Server::start(&[(&z_route, Reply::Body(b"z".to_vec()))]);
    let fix = |p: &LockedPackage| LockedPackage {
        mirror: server.url(),
        ..p.clone()
    };
    let set = vec![fix(&lost[0]), fix(&extra), fix(&lost[1])];
    let e = d.ensure_all(&set, &[], false, &mut |_| {}).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("2 of 3 packages could not be had"),
        "{text}"
    );
    assert!(
        text.contains("x 9 (amd64)") && text.contains("y 9 (amd64)"),
        "{text}"
    );
    assert!(d.path_of(&extra.sha256).exists());
}

#[test]
fn import_takes_exactly_the_locked_file() {
    let tmp = Tmp::new("import");
    let bytes = b"left by apt in a throwaway root".to_vec();
    let p = pkg("imported", "1", &bytes, "http://127.0.0.1:9");
    let d = debs(&tmp);
    let wrong = tmp.0.join("wrong.deb");
    let mut other = bytes.clone();
    other[0] ^= 1;
    std::fs::write(&wrong, &other).unwrap();
    assert!(!d.import(&p, &wrong).unwrap());
    assert!(!d.import(&p, &tmp.0.join("none.deb")).unwrap());
    let link = tmp.0.join("link.deb");
    let right = tmp.0.join("right.deb");
    std::fs::write(&right, &bytes).unwrap();
    std::os::unix::fs::symlink(&right, &link).unwrap();
    assert!(!d.import(&p, &link).unwrap(), "a symlink is not followed");
    assert!(!d.path_of(&p.sha256).exists());
    assert!(d.import(&p, &right).unwrap());
    // A copy, not a link to the caller's file.
    let stored = d.path_of(&p.sha256);
    assert_ne!(
        std::fs::metadata(&stored).unwrap().ino(),
        std::fs::metadata(&right).unwrap().ino()
    );
    assert_eq!(d.ensure(&p, &[], true).unwrap().path, stored);
    assert!(temporaries(&d).is_empty());
}

#[test]
fn leftover_temporaries_of_dead_writers_are_removed_on_open() {
    let tmp = Tmp::new("leftover");
    let d = debs(&tmp);
    let dead = d
        .dir()
        .join(format!("{}.tmp.{}.0", "ab".repeat(32), u32::MAX - 1));
    std::fs::write(&dead, "half a download").unwrap();
    let store = Store::open(&tmp.0.join("store"), None).unwrap();
    DebStore::open(&store).unwrap();
    assert!(!dead.exists());
    // `gc` removes them too, without a locked command opening the store: a download killed
    // halfway does not wait for the next fetch. A live writer's (locked) stays. An apply does
    // not list the package store (it would cost every apply).
    std::fs::write(&dead, "half a download").unwrap();
    let live = d.temporary(&Sha256([0xcd; 32])).unwrap();
    crate::maintain::clean_leftovers(&store);
    assert!(dead.exists());
    let warnings = crate::maintain::gc_leftovers(&store).unwrap();
    assert!(!dead.exists(), "{warnings:?}");
    assert!(live.path.exists());
}

/// Builds a real .deb with dpkg-deb.
fn build_deb(dir: &Path, name: &str, version: &str, arch: &str) -> Vec<u8> {
    let root = dir.join(format!("build-{name}-{}", version.replace(':', "_")));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/envc")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: envc <envc@localhost>\nDescription: test package {name}\n a longer description\n .\n over lines\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join(format!("usr/share/envc/{name}")), version).unwrap();
    let out = root.with_extension("deb");
    let st = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

#[test]
fn a_repository_is_the_same_bytes_for_the_same_set_in_any_order() {
    if crate::tools::find("dpkg-deb").is_err() {
        eprintln!("SKIP a_repository_is_the_same_bytes_for_the_same_set_in_any_order: no dpkg-deb");
        return;
    }
    let tmp = Tmp::new("repo");
    let d = debs(&tmp);
    let mut pkgs = Vec::new();
    for (name, version, arch) in [
        ("zeta", "1:2.0-1", "amd64"),
        ("alpha", "1.0", "all"),
        ("mid", "3~rc1", "amd64"),
    ] {
        let bytes = build_deb(&tmp.0, name, version, arch);
        let p = LockedPackage {
            arch: arch.into(),
            ..pkg(name, version, &bytes, "http://127.0.0.1:9")
        };
        let f = tmp.0.join(format!("{name}.deb"));
        std::fs::write(&f, &bytes).unwrap();
        assert!(d.import(&p, &f).unwrap());
        pkgs.push(p);
    }
    let one = tmp.0.join("one");
    let two = tmp.0.join("two");
    std::fs::create_dir(&one).unwrap();
    std::fs::create_dir(&two).unwrap();
    d.make_repo(&pkgs, &one).unwrap();
    let mut shuffled = vec![
        pkgs[1].clone(),
        pkgs[2].clone(),
        pkgs[0].clone(),
        pkgs[1].clone(),
    ];
    d.make_repo(&shuffled, &two).unwrap();
    let index = std::fs::read(one.join("Packages")).unwrap();
    assert_eq!(index, std::fs::read(two.join("Packages")).unwrap());
    assert_eq!(
        std::fs::read(one.join("Release")).unwrap(),
        std::fs::read(two.join("Release")).unwrap()
    );
    let text = String::from_utf8(index.clone()).unwrap();
    let stanzas: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(stanzas.len(), 3, "{text}");
    assert!(stanzas[0].starts_with("Package: alpha\n"), "{text}");
    assert!(stanzas[2].starts_with("Package: zeta\n"), "{text}");
    assert!(
        stanzas[2].contains(&format!(
            "\nFilename: ./zeta_1%3a2.0-1_amd64.deb\nSize: {}\nSHA256: {}\n",
            pkgs[0].size,
            pkgs[0].sha256.to_hex()
        )),
        "{text}"
    );
    assert!(
        text.contains(" a longer description\n .\n over lines\n"),
        "{text}"
    );
    assert!(!text.contains("MD5"), "{text}");
    let release = std::fs::read_to_string(one.join("Release")).unwrap();
    assert!(
        release.contains(&format!(
            "SHA256:\n {} {} Packages\n",
            sha(&index).to_hex(),
            index.len()
        )),
        "{release}"
    );
    // Hard links to the store; the control fields cached beside each file.
    let linked = one.join("zeta_1%3a2.0-1_amd64.deb");
    assert_eq!(
        std::fs::metadata(&linked).unwrap().ino(),
        std::fs::metadata(d.path_of(&pkgs[0].sha256)).unwrap().ino()
    );
    let cache = control_path(&d.path_of(&pkgs[0].sha256));
    assert!(cache.is_file());
    // A cache that rotted (cut short, even at a line, not UTF-8) is derived data: read again
    // from the file.
    let good = std::fs::read(&cache).unwrap();
    let cut = good.iter().position(|&b| b == b'\n').unwrap() + 1;
    for rotten in [&good[..cut], &good[..good.len() / 3], &b"\xff\xfe"[..], b""] {
        std::fs::write(&cache, rotten).unwrap();
        let again = tmp.0.join("again");
        std::fs::create_dir_all(&again).unwrap();
        d.make_repo(&pkgs, &again).unwrap();
        assert_eq!(std::fs::read(again.join("Packages")).unwrap(), index);
        assert_eq!(std::fs::read(&cache).unwrap(), good);
    }
    // The same package and version with another file: refused.
    shuffled.push(LockedPackage {
        sha256: Sha256([7; 32]),
        ..pkgs[2].clone()
    });
    let e = d.make_repo(&shuffled, &two).unwrap_err().to_string();
    assert!(
        e.contains("mid 3~rc1 (amd64) is locked with two different files"),
        "{e}"
    );
    // A lock entry whose file says another version: refused, naming both.
    let liar = LockedPackage {
        version: "9.9".into(),
        ..pkgs[1].clone()
    };
    let e = d.make_repo(&[liar], &two).unwrap_err().to_string();
    assert!(e.contains("say version `1.0`, the lock says `9.9`"), "{e}");
    // A file that is not in the store: named, with what to do.
    let absent = pkg("absent", "1", b"absent", "http://127.0.0.1:9");
    let e = d.make_repo(&[absent], &two).unwrap_err().to_string();
    assert!(
        e.contains("absent 1 (amd64)") && e.contains("fetch it first"),
        "{e}"
    );
}

#[test]
fn control_fields_must_be_one_stanza_of_the_locked_package() {
    let p = LockedPackage {
        arch: "all".into(),
        ..pkg("a", "1", b"a", "")
    };
    let ok = "Package: a\nVersion: 1\nArchitecture: all\nDescription: x\n y\n";
    assert_eq!(
        repo::check_control(ok, &p).unwrap(),
        "Package: a\nVersion: 1\nArchitecture: all\nDescription: x\n y"
    );
    // Index fields in a control file are dropped (with their continuation lines).
    let with_index = "Package: a\nVersion: 1\nMD5sum: 00\n 11\nArchitecture: all\n";
    assert_eq!(
        repo::check_control(with_index, &p).unwrap(),
        "Package: a\nVersion: 1\nArchitecture: all"
    );
    for (bad, why) in [
        (
            "Package: a\n\nVersion: 1\nArchitecture: all\n",
            "blank line",
        ),
        ("Package: b\nVersion: 1\nArchitecture: all\n", "package `b`"),
        ("Package: a\nArchitecture: all\n", "no version"),
        (
            "Package: a\nVersion: 1\nArchitecture: all\nVersion: 2\n",
            "twice",
        ),
        (" x\nPackage: a\n", "continuation"),
        ("Package: a\njunk\n", "not a field"),
    ] {
        let e = repo::check_control(bad, &p).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn file_names_are_apts() {
    let mut p = pkg("libc6", "2.36-9+deb12u4", b"x", "");
    assert_eq!(deb_file_name(&p), "libc6_2.36-9+deb12u4_amd64.deb");
    p.version = "1:2.0~rc1".into();
    assert_eq!(deb_file_name(&p), "libc6_1%3a2.0~rc1_amd64.deb");
    // Never a path: a hostile entry that got this far stays one name in the repository.
    p.name = "../../../../var/tmp/x".into();
    p.arch = "all/y".into();
    let name = deb_file_name(&p);
    assert!(!name.contains('/'), "{name}");
    assert_eq!(std::path::Path::new(&name).components().count(), 1);
}

#[test]
fn http_proxy_is_used_unless_no_proxy_names_the_host() {
    let tmp = Tmp::new("proxy");
    let bytes = b"through the proxy".to_vec();
    // A host that does not resolve: only a proxy can reach it.
    let p = pkg("proxied", "1", &bytes, "http://mirror.invalid/debian");
    let target = format!("{}/{}", p.mirror, p.path);
    let proxy = Server::start(&[(&target, Reply::Body(bytes.clone()))]);
    let opened = debs(&tmp);
    let env = |k: &str| match k {
        "http_proxy" => Some(proxy.url()),
        "no_proxy" => Some("127.0.0.1,direct.invalid".to_owned()),
        _ => None,
    };
    let d = DebStore {
        dir: opened.dir.clone(),
        fetcher: Fetcher::with_env(fast(), &env),
    };
    let got = d.ensure(&p, &[], false).unwrap();
    assert_eq!(got.fetched_from, Some(target.clone()));
    // The proxy got the absolute URL.
    assert_eq!(proxy.requests(), [target]);
    // no_proxy: reached directly (and so not at all).
    let direct = LockedPackage {
        mirror: "http://direct.invalid/debian".into(),
        ..pkg("direct", "1", b"direct", "")
    };
    let e = d.ensure(&direct, &[], false).unwrap_err().to_string();
    assert!(e.contains("cannot connect"), "{e}");
    assert_eq!(proxy.requests().len(), 1);
}
