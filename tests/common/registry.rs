//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) serving plain
//! http on a free port of 127.0.0.1, its storage in a temporary directory, optionally behind
//! htpasswd basic auth.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/docker-registry";

/// A running registry, stopped and its directory removed on drop.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The temporary directory: `config.yml`, `registry.log`, `htpasswd`, `storage/`.
    pub dir: PathBuf,
    child: Child,
}

impl TestRegistry {
    /// Starts a registry (with basic auth for `auth`'s user and password, if given). `None`,
    /// with a SKIP line on stderr, when docker-registry is not installed, unless
    /// ENVC_REQUIRE_PRIVILEGED=1, which makes that a failure.
    pub fn start(auth: Option<(&str, &str)>) -> Option<TestRegistry> {
        Self::start_with(&|dir| {
            let (user, pass) = auth?;
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            assert!(out.status.success(), "htpasswd: {out:?}");
            std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            Some(format!(
                "auth:\n  htpasswd:\n    realm: envc-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ))
        })
    }

    /// Starts a registry that wants bearer tokens from `realm` for `service`, signed by
    /// `issuer` with a certificate of `bundle` (PEM).
    pub fn start_token(
        realm: &str,
        service: &str,
        issuer: &str,
        bundle: &Path,
    ) -> Option<TestRegistry> {
        Self::start_with(&|_| {
            Some(format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    \
                 issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            ))
        })
    }

    /// Whether docker-registry is installed (a SKIP line, or a panic under
    /// ENVC_REQUIRE_PRIVILEGED=1, when it is not).
    pub fn available() -> bool {
        if !Path::new(BINARY).exists() {
            let why = format!("{BINARY} is missing (apt-get install docker-registry)");
            if std::env::var("ENVC_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
                panic!("registry test cannot run: {why}, and ENVC_REQUIRE_PRIVILEGED=1");
            }
            let _ = writeln!(std::io::stderr(), "SKIP registry test: {why}");
            return false;
        }
        true
    }

    /// Starts a registry with the `auth:` section `auth` writes (given the directory).
    fn start_with(auth: &dyn Fn(&Path) -> Option<String>) -> Option<TestRegistry> {
        if !Self::available() {
            return None;
        }
        let base = std::env::var_os("ENVC_TEST_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = base.join(format!("envc-registry-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        if let Some(section) = auth(&dir) {
            config.push_str(&section);
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let mut reg = TestRegistry { addr, dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match reg.v2_status() {
                Some(200 | 401) => return Some(reg),
                _ if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(reg.dir.join("registry.log"));
                    panic!(
                        "docker-registry on {} did not answer within 20 s: {log:?}",
                        reg.addr
                    );
                }
                _ => {}
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                let log = std::fs::read_to_string(reg.dir.join("registry.log"));
                panic!("docker-registry exited ({status}): {log:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The status of `GET /v2/`, if the registry answers.
    fn v2_status(&self) -> Option<u16> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// Flips a byte in the middle of every blob `data` file of at least `min_size` bytes;
    /// returns how many.
    pub fn corrupt_blobs(&self, min_size: u64) -> usize {
        let root = self.dir.join("storage/docker/registry/v2/blobs");
        let mut n = 0;
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() && e.file_name() == "data" {
                    let len = e.metadata().unwrap().len();
                    if len >= min_size && len > 0 {
                        let mut f = std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(e.path())
                            .unwrap();
                        let mut b = [0u8];
                        f.seek(SeekFrom::Start(len / 2)).unwrap();
                        f.read_exact(&mut b).unwrap();
                        b[0] ^= 0x55;
                        f.seek(SeekFrom::Start(len / 2)).unwrap();
                        f.write_all(&b).unwrap();
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
