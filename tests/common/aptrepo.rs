//! A "moving" apt repository for tests: packages built with `dpkg-deb --build` from a name, a
//! version and a Depends list (each installs `/usr/share/envc-test/NAME`, holding
//! `NAME VERSION`), published as a flat repository (`deb [trusted=yes] URI ./`: a `Packages`
//! index and a `Release` file at the top, the files under `pool/`), which can move on (add
//! version 2, drop version 1, publish again), served over HTTP on 127.0.0.1 by a thread of the
//! test process, with a log of the requests, and as a `file:` URI.
//!
//! Independent of the runtime's own repository code on purpose: the index is written here, the
//! hashes come from `sha256sum`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::TempDir;

/// One package file of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub depends: Vec<String>,
    /// Its path in the repository (its `Filename`, relative to the repository's URI).
    pub filename: String,
    pub size: u64,
    /// 64 hex digits.
    pub sha256: String,
    /// What it installs at `/usr/share/envc-test/NAME`.
    pub content: String,
}

/// A flat apt repository in a directory of its own.
pub struct AptRepo {
    dir: TempDir,
    debs: BTreeMap<(String, String), Deb>,
}

impl AptRepo {
    /// An empty repository (published: its index exists and is empty).
    pub fn new(name: &str) -> AptRepo {
        let dir = TempDir::new(&format!("aptrepo-{name}"));
        std::fs::create_dir_all(dir.path().join("pool")).unwrap();
        let repo = AptRepo {
            dir,
            debs: BTreeMap::new(),
        };
        repo.publish();
        repo
    }

    /// The repository's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its `file:` URI.
    pub fn file_uri(&self) -> String {
        format!("file:{}", self.dir().display())
    }

    /// The published packages, by name and version.
    pub fn debs(&self) -> Vec<Deb> {
        self.debs.values().cloned().collect()
    }

    /// The package `name` at `version`, if the repository has it.
    pub fn deb(&self, name: &str, version: &str) -> Option<Deb> {
        self.debs.get(&(name.into(), version.into())).cloned()
    }

    /// Builds `name` at `version` (architecture `all`) depending on `depends`, adds it and
    /// publishes the index again.
    pub fn add(&mut self, name: &str, version: &str, depends: &[&str]) -> Deb {
        let build = self
            .dir()
            .join(".build")
            .join(format!("{name}-{}", version.replace(':', "_")));
        let _ = std::fs::remove_dir_all(&build);
        std::fs::create_dir_all(build.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(build.join("usr/share/envc-test")).unwrap();
        let mut control = format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: envc tests <envc@localhost>\n"
        );
        if !depends.is_empty() {
            control.push_str(&format!("Depends: {}\n", depends.join(", ")));
        }
        control.push_str(&format!(
            "Description: envc test package {name}\n version {version}, built by tests/common/aptrepo.rs\n"
        ));
        std::fs::write(build.join("DEBIAN/control"), control).unwrap();
        let content = format!("{name} {version}\n");
        std::fs::write(build.join("usr/share/envc-test").join(name), &content).unwrap();
        // As Debian's pool names files: without the epoch.
        let bare = version.split_once(':').map_or(version, |(_, v)| v);
        let filename = format!("pool/{name}_{bare}_all.deb");
        let out = self.dir().join(&filename);
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&build)
            .arg(&out));
        std::fs::remove_dir_all(&build).unwrap();
        let deb = Deb {
            name: name.into(),
            version: version.into(),
            arch: "all".into(),
            depends: depends.iter().map(|d| (*d).to_owned()).collect(),
            size: std::fs::metadata(&out).unwrap().len(),
            sha256: sha256sum(&out),
            filename,
            content,
        };
        self.debs.insert((name.into(), version.into()), deb.clone());
        self.publish();
        deb
    }

    /// Drops `name` at `version` (its file too) and publishes the index again.
    pub fn remove(&mut self, name: &str, version: &str) {
        let deb = self
            .debs
            .remove(&(name.into(), version.into()))
            .unwrap_or_else(|| panic!("the repository has no {name} {version}"));
        std::fs::remove_file(self.dir().join(&deb.filename)).unwrap();
        self.publish();
    }

    /// Writes `Packages` and `Release` for the packages the repository has now.
    pub fn publish(&self) {
        let mut index = String::new();
        for deb in self.debs.values() {
            let control = run(Command::new("dpkg-deb")
                .arg("--field")
                .arg(self.dir().join(&deb.filename)));
            let control = String::from_utf8(control).unwrap();
            index.push_str(control.trim_end());
            index.push_str(&format!(
                "\nFilename: {}\nSize: {}\nSHA256: {}\n\n",
                deb.filename, deb.size, deb.sha256
            ));
        }
        let packages = self.dir().join("Packages");
        std::fs::write(&packages, &index).unwrap();
        let release = format!(
            "Origin: envc-tests\nLabel: envc-tests\nDate: Thu, 01 Jan 1970 00:00:00 UTC\nSHA256:\n {} {} Packages\n",
            sha256sum(&packages),
            index.len()
        );
        std::fs::write(self.dir().join("Release"), release).unwrap();
    }

    /// Serves the repository's directory over HTTP on 127.0.0.1 until the server is dropped.
    /// Files are read when asked for, so the repository can move while it is served.
    pub fn serve(&self) -> HttpServer {
        HttpServer::start(self.dir())
    }
}

/// Runs a command and gives its stdout; a failure panics with its stderr.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The sha256 of a file, by `sha256sum`.
pub fn sha256sum(path: &Path) -> String {
    let out = String::from_utf8(run(Command::new("sha256sum").arg(path))).unwrap();
    out.split_whitespace().next().unwrap().to_owned()
}

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// An HTTP/1.1 server of a directory's files on 127.0.0.1 (GET and HEAD; 404 for what is not a
/// regular file there; keep-alive), stopped on drop.
pub struct HttpServer {
    port: u16,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(root: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, log2, stop2) = (root.to_owned(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (root, log, stop) = (root.clone(), log2.clone(), stop2.clone());
                        conns.push(std::thread::spawn(move || {
                            connection(s, &root, &log, &stop)
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        HttpServer {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests of one connection until the client closes it, asks to, or the server
/// stops.
fn connection(s: TcpStream, root: &Path, log: &Mutex<Vec<Request>>, stop: &AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = s.try_clone().unwrap();
    let mut reader = BufReader::new(s);
    loop {
        // The request line and headers. A read that times out keeps what it got in `line`.
        let mut head: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if !line.ends_with('\n') => continue,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            }
            let done = line.trim_end().to_owned();
            line.clear();
            if done.is_empty() {
                if head.is_empty() {
                    continue;
                }
                break;
            }
            head.push(done);
        }
        let mut words = head[0].split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or_default().to_owned();
        let close = head.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            h.starts_with("connection:") && h.contains("close")
        });
        let body = file_of(root, &target);
        let status = match (&method[..], &body) {
            ("GET" | "HEAD", Some(_)) => 200,
            ("GET" | "HEAD", None) => 404,
            _ => 405,
        };
        log.lock().unwrap().push(Request {
            method: method.clone(),
            path: target,
            status,
        });
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            _ => "Method Not Allowed",
        };
        let bytes = body.unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n{}\r\n",
            if status == 200 { bytes.len() } else { 0 },
            if close { "Connection: close\r\n" } else { "" }
        );
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if status == 200 && method == "GET" && out.write_all(&bytes).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// The bytes of the regular file a request target names under `root`, if any (no `..`, no
/// symlink at the name).
fn file_of(root: &Path, target: &str) -> Option<Vec<u8>> {
    let path = target.split(['?', '#']).next()?.trim_start_matches('/');
    if path.split('/').any(|c| c == "..") {
        return None;
    }
    let full: PathBuf = root.join(path);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&full)
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}
