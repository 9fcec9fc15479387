//! Locked `.deb` files end to end: packages built and served by a test repository that moves
//! on, fetched into a store by sha256, laid out as a local repository, and that repository
//! taken by the host's own apt-get (no network) and by mmdebstrap. Only the mmdebstrap case
//! needs root.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::aptrepo::{AptRepo, Deb};
use common::{TempDir, privileged};
use envc_plan::lock::LockedPackage;
use envc_runtime::debs::{DebStore, FetchError};
use envc_runtime::{BackendKind, Store};

/// The lock entry of a package of the test repository.
fn locked(d: &Deb, mirror: &str) -> LockedPackage {
    LockedPackage {
        name: d.name.clone(),
        version: d.version.clone(),
        arch: d.arch.clone(),
        sha256: d.sha256.parse().unwrap(),
        size: d.size,
        path: d.filename.clone(),
        mirror: mirror.to_owned(),
    }
}

/// The host's apt-get with a configuration of its own: one sources line, no host configuration,
/// lists, cache and (empty) dpkg status in a directory of its own, no proxy.
struct Apt {
    dir: TempDir,
}

impl Apt {
    fn new(name: &str, source: &str) -> Apt {
        let dir = TempDir::new(&format!("apt-{name}"));
        let d = dir.path();
        for sub in [
            "empty",
            "lists/partial",
            "archives/partial",
            "cache",
            "state",
            "log",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("status"), "").unwrap();
        std::fs::write(d.join("sources.list"), format!("{source}\n")).unwrap();
        let t = d.display();
        std::fs::write(
            d.join("apt.conf"),
            format!(
                "Dir::Etc::Parts \"{t}/empty\";\n\
                 Dir::Etc::SourceList \"{t}/sources.list\";\n\
                 Dir::Etc::SourceParts \"{t}/empty\";\n\
                 Dir::Etc::Preferences \"{t}/preferences\";\n\
                 Dir::Etc::PreferencesParts \"{t}/empty\";\n\
                 Dir::Etc::TrustedParts \"{t}/empty\";\n\
                 Dir::State \"{t}/state\";\n\
                 Dir::State::Lists \"{t}/lists\";\n\
                 Dir::State::Status \"{t}/status\";\n\
                 Dir::Cache \"{t}/cache\";\n\
                 Dir::Cache::Archives \"{t}/archives\";\n\
                 Dir::Log \"{t}/log\";\n\
                 Debug::NoLocking \"true\";\n\
                 APT::Sandbox::User \"root\";\n\
                 Acquire::Languages \"none\";\n\
                 Acquire::Retries \"0\";\n\
                 Acquire::http::Proxy \"DIRECT\";\n"
            ),
        )
        .unwrap();
        Apt { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("apt-get")
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .env("APT_CONFIG", self.dir.path().join("apt.conf"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apt-get {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `apt-get update`; its stderr must be empty (no warning, no error).
    fn update(&self) -> String {
        let out = self.run(&["update"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "apt-get update warned:\n{stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The `Inst` lines of a simulated installation: `name version`.
    fn simulate(&self, pkgs: &[&str]) -> Vec<String> {
        let mut args = vec!["install", "--simulate", "-y"];
        args.extend_from_slice(pkgs);
        let out = self.run(&args);
        let mut inst: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("Inst "))
            .map(|l| {
                // `name (version origin [arch])`
                let (name, rest) = l.split_once(" (").unwrap();
                format!("{name} {}", rest.split_whitespace().next().unwrap())
            })
            .collect();
        inst.sort();
        inst
    }
}

fn store(t: &TempDir, name: &str) -> DebStore {
    let store = Store::open(&t.path().join(name), Some(BackendKind::Overlay)).unwrap();
    DebStore::open(&store).unwrap()
}

#[test]
fn the_test_repository_is_one_apt_takes_over_http_and_it_moves() {
    let mut repo = AptRepo::new("moves");
    repo.add("envc-a", "1.0-1", &[]);
    repo.add("envc-b", "1:1.0-1", &["envc-a (>= 1.0)"]);
    let server = repo.serve();
    let apt = Apt::new("http", &format!("deb [trusted=yes] {} ./", server.url()));
    apt.update();
    assert_eq!(
        apt.simulate(&["envc-b"]),
        ["envc-a 1.0-1", "envc-b 1:1.0-1"]
    );
    // The repository moves to version 2 and drops 1.
    repo.add("envc-a", "2.0-1", &[]);
    repo.remove("envc-a", "1.0-1");
    apt.update();
    assert_eq!(
        apt.simulate(&["envc-b"]),
        ["envc-a 2.0-1", "envc-b 1:1.0-1"]
    );
    let log = server.requests();
    assert!(
        log.iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/Release") && r.status == 200),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|r| r.path.ends_with("/InRelease") && r.status == 404),
        "{log:?}"
    );
    // apt asked for the files of the flat repository (`./`) by their paths, as logged.
    assert!(log.iter().any(|r| r.path == "/./Packages"), "{log:?}");
    // Through file: too.
    let apt = Apt::new("file", &format!("deb [trusted=yes] {} ./", repo.file_uri()));
    apt.update();
    assert_eq!(apt.simulate(&["envc-a"]), ["envc-a 2.0-1"]);
}

#[test]
fn locked_files_are_fetched_by_hash_and_become_a_repository_apt_installs_from_offline() {
    let t = TempDir::new("debs-e2e");
    let mut repo = AptRepo::new("e2e");
    let a1 = repo.add("envc-a", "1.0-1", &[]);
    let b1 = repo.add("envc-b", "1:1.0-1", &["envc-a (= 1.0-1)"]);
    let server = repo.serve();
    let lock = vec![locked(&a1, &server.url()), locked(&b1, &server.url())];
    let debs = store(&t, "store");
    let mut progress = Vec::new();
    let files = debs
        .ensure_all(&lock, &[], false, &mut |p| {
            progress.push((p.done, p.total, p.package.name.clone(), p.result.is_ok()));
        })
        .unwrap();
    assert_eq!(progress.len(), 2);
    assert!(progress.iter().all(|p| p.1 == 2 && p.3), "{progress:?}");
    for (f, d) in files.iter().zip([&a1, &b1]) {
        assert_eq!(common::aptrepo::sha256sum(&f.path), d.sha256);
        assert_eq!(
            f.fetched_from,
            Some(format!("{}/{}", server.url(), d.filename))
        );
    }
    // The repository moves on: version 1 of envc-a is gone from it.
    repo.add("envc-a", "2.0-1", &[]);
    repo.remove("envc-a", "1.0-1");
    // A store without the file cannot have it, and says so: never version 2 instead.
    let fresh = store(&t, "fresh");
    let e = fresh.ensure(&lock[0], &[], false).unwrap_err();
    assert!(matches!(e, FetchError::Unavailable { .. }), "{e:?}");
    let text = e.to_string();
    for needle in [
        "envc-a 1.0-1 (all)",
        a1.sha256.as_str(),
        "HTTP 404",
        &format!("{}/{}", server.url(), a1.filename),
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
    // The store that has it needs no network: the server goes away, everything is offline.
    drop(server);
    let files = debs.ensure_all(&lock, &[], true, &mut |_| {}).unwrap();
    assert!(files.iter().all(|f| f.fetched_from.is_none()));
    let local = t.path().join("repo");
    std::fs::create_dir(&local).unwrap();
    debs.make_repo(&lock, &local).unwrap();
    assert!(local.join("envc-b_1%3a1.0-1_all.deb").is_file());
    let apt = Apt::new(
        "local",
        &format!("deb [trusted=yes] file:{} ./", local.display()),
    );
    apt.update();
    assert_eq!(
        apt.simulate(&["envc-b"]),
        ["envc-a 1.0-1", "envc-b 1:1.0-1"]
    );
    // apt's own check of the files against the index: a download-only install verifies each
    // file's size and SHA256 and takes it from the repository.
    apt.run(&["install", "--download-only", "-y", "envc-b"]);
    // Nothing but the locked versions is there to install.
    let out = Command::new("apt-cache")
        .args(["madison", "envc-a"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("APT_CONFIG", apt.dir.path().join("apt.conf"))
        .output()
        .unwrap();
    let madison = String::from_utf8_lossy(&out.stdout);
    assert_eq!(madison.lines().count(), 1, "{madison}");
    assert!(madison.contains("1.0-1"), "{madison}");
}

#[test]
fn mmdebstrap_takes_the_repository_as_its_mirror() {
    if !privileged("mmdebstrap_takes_the_repository_as_its_mirror") {
        return;
    }
    assert!(
        Path::new("/usr/bin/mmdebstrap").exists(),
        "mmdebstrap is missing (apt-get install mmdebstrap)"
    );
    let t = TempDir::new("debs-mmdebstrap");
    let mut repo = AptRepo::new("mmdebstrap");
    let a = repo.add("envc-a", "1.0-1", &[]);
    let b = repo.add("envc-b", "1:1.0-1", &["envc-a"]);
    let lock = vec![locked(&a, &repo.file_uri()), locked(&b, &repo.file_uri())];
    let debs = store(&t, "store");
    // A file: mirror is read when it is given (a spec's base or the host's sources), never
    // because the lock names it.
    debs.ensure_all(&lock, &[repo.file_uri()], false, &mut |_| {})
        .unwrap();
    let local = t.path().join("repo");
    std::fs::create_dir(&local).unwrap();
    debs.make_repo(&lock, &local).unwrap();
    // mmdebstrap's apt runs outside the root it makes: copy: (not file:) brings the files in.
    let target = t.path().join("target");
    let out = Command::new("mmdebstrap")
        .args([
            "--mode=root",
            "--variant=extract",
            "--include=envc-b",
            "--quiet",
        ])
        .arg("unstable")
        .arg(&target)
        .arg(format!("deb [trusted=yes] copy:{} ./", local.display()))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mmdebstrap: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for d in [&a, &b] {
        assert_eq!(
            std::fs::read_to_string(target.join("usr/share/envc-test").join(&d.name)).unwrap(),
            d.content
        );
    }
}

/// An `openssl s_server -WWW` serving a directory over HTTPS on 127.0.0.1, with a certificate
/// for 127.0.0.1 signed by a CA of its own (`ca.pem`); stopped on drop.
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path, www: &Path) -> TlsServer {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is missing (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let subj = |cn: &str| format!("/CN={cn}");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &subj("envc test CA"),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            &subj("127.0.0.1"),
        ]);
        std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(dir.join("srv.pem"))
            .arg("-key")
            .arg(dir.join("srv.key"))
            .current_dir(www)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = TlsServer { child, port };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "openssl s_server did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set in the child process of the HTTPS test: the lock entry (JSON) to fetch there.
const HTTPS_CHILD: &str = "ENVC_TEST_HTTPS_LOCKED";

#[test]
fn https_is_verified_against_the_system_roots() {
    // The child: SSL_CERT_FILE names the test's CA, as an administrator adds a root to the
    // system's store; the download works.
    if let Ok(json) = std::env::var(HTTPS_CHILD) {
        let p: LockedPackage = serde_json::from_str(&json).unwrap();
        let store = Store::open(
            Path::new(&std::env::var("ENVC_TEST_HTTPS_STORE").unwrap()),
            Some(BackendKind::Overlay),
        )
        .unwrap();
        let debs = DebStore::open(&store).unwrap();
        let got = debs.ensure(&p, &[], false).unwrap();
        assert!(got.fetched_from.unwrap().starts_with("https://"));
        return;
    }
    let t = TempDir::new("debs-https");
    let mut repo = AptRepo::new("https");
    let a = repo.add("envc-a", "1.0-1", &[]);
    let tls = TlsServer::start(t.path(), repo.dir());
    let p = locked(&a, &format!("https://127.0.0.1:{}", tls.port));
    // This process has the system's roots only: the test's CA is not among them.
    let debs = store(&t, "store");
    let e = debs.ensure(&p, &[], false).unwrap_err().to_string();
    assert!(
        e.contains("cannot connect") && e.contains("UnknownIssuer"),
        "{e}"
    );
    assert!(!debs.path_of(&p.sha256).exists());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "https_is_verified_against_the_system_roots",
            "--exact",
            "--nocapture",
        ])
        .env(HTTPS_CHILD, serde_json::to_string(&p).unwrap())
        .env("ENVC_TEST_HTTPS_STORE", t.path().join("store"))
        .env("SSL_CERT_FILE", t.path().join("ca.pem"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        common::aptrepo::sha256sum(&debs.path_of(&p.sha256)),
        a.sha256
    );
}
