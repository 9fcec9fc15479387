//! One runner for every external tool (tar, mmdebstrap, btrfs, ...): absolute path, argv (never a
//! shell string), an explicit environment, and errors that carry program, args, status and the
//! tail of stderr.
//!
//! Every tool runs contained: through the envc binary (`envc __envc-contain`, see
//! [`crate::sandbox`]) in mount and PID namespaces of its own that die with envc, so a tool's
//! mounts are never visible on the host and a `kill -9` of envc leaves no tool running. The
//! binary is named once per process ([`set_helper`]; `envc` does it in `main`) or per tool
//! ([`Tool::via`]). Only LVM's device-mapper and loop-device changes opt out
//! ([`Tool::uninterruptible`]). A library user that names no binary runs tools directly.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, PipeReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use crate::sandbox::protocol::check_report;
use crate::sandbox::{
    CONTAIN_ARG, EXPOSED_ROOT, NO_NETWORK_OPT, NOSYNC_OPT, PARENT_OPT, REPO_OPT, REPORT_FD_ARG,
    ROOT_OPT, SandboxError, SandboxOp,
};
use crate::sys;

/// Where tools are looked up, in order. The caller's PATH is not trusted.
const TOOL_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The envc binary every tool of this process runs contained through, once named.
static HELPER: OnceLock<PathBuf> = OnceLock::new();

/// Names the envc binary that contains this process's tools and removes discarded trees in the
/// background (`std::env::current_exe()` in `envc`). The first call wins.
pub fn set_helper(envc: PathBuf) {
    let _ = HELPER.set(envc);
}

/// The envc binary named by [`set_helper`].
pub fn helper() -> Option<&'static Path> {
    HELPER.get().map(PathBuf::as_path)
}

/// How many lines of output an error keeps.
pub const TAIL_LINES: usize = 20;

/// A failure to run an external tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error("`{program}` is not installed (looked in {})", TOOL_DIRS.join(", "))]
    NotFound {
        /// The program's name.
        program: String,
    },
    /// The program could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program's containment could not be set up (namespaces, the envc binary), or the
    /// program could not be executed inside it.
    #[error("cannot run {} contained: {source}", program.display())]
    Contain {
        /// The program.
        program: PathBuf,
        /// What failed.
        #[source]
        source: Box<SandboxError>,
    },
    /// The program ran and failed.
    #[error("{} failed ({status}): {}{}", render_cmd(program, args), if tail.is_empty() { "" } else { "\n" }, tail.join("\n"))]
    Failed {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<OsString>,
        /// How it ended.
        status: ExitStatus,
        /// The last lines of its output.
        tail: Vec<String>,
    },
}

fn render_cmd(program: &Path, args: &[OsString]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Finds `name` in the fixed tool directories.
pub fn find(name: &str) -> Result<PathBuf, ToolError> {
    TOOL_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ToolError::NotFound {
            program: name.to_owned(),
        })
}

/// An external command to run.
pub struct Tool {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    via: Option<PathBuf>,
    nosync: bool,
    no_network: bool,
    uninterruptible: bool,
    /// The argument (by index) that names the directory the tool works on ([`Tool::root_arg`]).
    root: Option<usize>,
    /// A directory of packages the tool reads ([`Tool::repo`]).
    repo: Option<PathBuf>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_cmd(&self.program, &self.args))
    }
}

impl Tool {
    /// A tool found by name in the fixed directories.
    pub fn new(name: &str) -> Result<Tool, ToolError> {
        Ok(Tool::at(find(name)?))
    }

    /// A tool at an absolute path.
    pub fn at(program: PathBuf) -> Tool {
        Tool {
            program,
            args: Vec::new(),
            env: Vec::new(),
            via: None,
            nosync: false,
            no_network: false,
            uninterruptible: false,
            root: None,
            repo: None,
        }
    }

    /// Runs the tool contained through `envc` (the envc binary) instead of the one named by
    /// [`set_helper`].
    pub fn via(mut self, envc: &Path) -> Tool {
        self.via = Some(envc.to_owned());
        self
    }

    /// Runs the tool (and everything it starts) with sync calls suppressed by the seccomp filter
    /// of `sync=seccomp` steps. Only when contained: a tool run directly is not filtered.
    pub fn nosync(mut self, on: bool) -> Tool {
        self.nosync = on;
        self
    }

    /// Runs the tool (contained) in a network namespace of its own: no network at all.
    pub fn no_network(mut self, on: bool) -> Tool {
        self.no_network = on;
        self
    }

    /// Runs the tool without containment, to its end even if envc is killed: for LVM commands,
    /// which change device-mapper tables and loop devices (a SIGKILL halfway can leave a device
    /// suspended, blocking all I/O to it) and never mount anything.
    pub fn uninterruptible(mut self) -> Tool {
        self.uninterruptible = true;
        self
    }

    /// The envc binary the tool runs contained through, if any.
    fn containment(&self) -> Option<&Path> {
        if self.uninterruptible {
            return None;
        }
        match &self.via {
            Some(envc) => Some(envc),
            None => helper(),
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Tool {
        self.args.push(a.into());
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, items: I) -> Tool {
        self.args.extend(items.into_iter().map(Into::into));
        self
    }

    /// Appends the directory the tool works on (mmdebstrap's target). Contained, the tool gets
    /// [`EXPOSED_ROOT`] instead, where the directory is bound in a `/tmp` of its own: the store is
    /// root's alone, and users the tool switches to (apt's `_apt`) could not enter it by its path
    /// there. At most one per tool; errors name the directory itself.
    pub fn root_arg(mut self, dir: &Path) -> Tool {
        self.root = Some(self.args.len());
        self.args.push(dir.into());
        self
    }

    /// Lets the (contained) tool read `dir`, read-only, as [`EXPOSED_REPO`] (a locked base's local
    /// repository, which may be under `/tmp`, where the tool has a tmpfs of its own).
    pub fn repo(mut self, dir: &Path) -> Tool {
        self.repo = Some(dir.to_owned());
        self
    }

    /// Sets an environment variable (on top of a minimal PATH/LANG environment).
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Tool {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The command that runs the tool, and the read end of the containment's report channel.
    fn command(&self) -> Result<(Command, Option<PipeReader>), ToolError> {
        let (mut cmd, report) = match self.containment() {
            None => {
                let mut cmd = Command::new(&self.program);
                cmd.args(&self.args);
                (cmd, None)
            }
            Some(envc) => {
                let fail = |e: io::Error| self.contain_err(SandboxOp::StartHelper, envc, &e);
                let (report, writer) = io::pipe().map_err(fail)?;
                let mut cmd = Command::new(envc);
                let fd = sys::pass_fd(&mut cmd, writer.into()).map_err(fail)?;
                cmd.arg(CONTAIN_ARG)
                    .arg(REPORT_FD_ARG)
                    .arg(fd.to_string())
                    .arg(PARENT_OPT)
                    .arg(std::process::id().to_string());
                if self.no_network {
                    cmd.arg(NO_NETWORK_OPT);
                }
                if self.nosync {
                    cmd.arg(NOSYNC_OPT);
                }
                if let Some(dir) = &self.repo {
                    cmd.arg(REPO_OPT).arg(dir);
                }
                let mut args = self.args.clone();
                if let Some(dir) = self.root.and_then(|i| args.get_mut(i)) {
                    cmd.arg(ROOT_OPT).arg(&*dir);
                    *dir = EXPOSED_ROOT.into();
                }
                cmd.arg("--").arg(&self.program).args(&args);
                (cmd, Some(report))
            }
        };
        cmd.env_clear()
            .env("PATH", TOOL_DIRS.join(":"))
            .env("LANG", "C.UTF-8")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        Ok((cmd, report))
    }

    fn contain_err(&self, op: SandboxOp, object: &Path, e: &io::Error) -> ToolError {
        ToolError::Contain {
            program: self.program.clone(),
            source: Box::new(SandboxError::io(op, object.display().to_string(), e)),
        }
    }

    /// Starts `cmd`; its copies of the pipes' write ends close here.
    fn spawn(&self, mut cmd: Command) -> Result<Child, ToolError> {
        let child = cmd.spawn();
        drop(cmd);
        child.map_err(|source| match self.containment() {
            Some(envc) => self.contain_err(SandboxOp::StartHelper, envc, &source),
            None => ToolError::Spawn {
                program: self.program.clone(),
                source,
            },
        })
    }

    /// The containment's failure, if it reported one (read once the tool has ended: every
    /// process that holds the channel is gone then).
    fn check_contained(&self, report: Option<PipeReader>) -> Result<(), ToolError> {
        let Some(mut report) = report else {
            return Ok(());
        };
        let envc = self.containment().unwrap_or(&self.program).to_owned();
        let mut buf = Vec::new();
        report
            .read_to_end(&mut buf)
            .map_err(|e| self.contain_err(SandboxOp::ReadReport, &envc, &e))?;
        check_report(&buf, &envc.display().to_string()).map_err(|source| ToolError::Contain {
            program: self.program.clone(),
            source: Box::new(source),
        })
    }

    /// Runs the tool and returns its stdout; stderr is kept for the error.
    pub fn output(&self) -> Result<Vec<u8>, ToolError> {
        let (mut cmd, report) = self.command()?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = self
            .spawn(cmd)?
            .wait_with_output()
            .map_err(|source| ToolError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        self.check_contained(report)?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.failed(out.status, &out.stderr))
    }

    /// Runs the tool with `input` on its stdin and returns its stdout; stderr is kept for the
    /// error.
    pub fn output_with_input(&self, input: &[u8]) -> Result<Vec<u8>, ToolError> {
        let (mut cmd, report) = self.command()?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.spawn(cmd)?;
        let stdin = child.stdin.take();
        // Written from another thread, so a tool that answers before reading all of its input
        // cannot deadlock against a full pipe.
        let out = std::thread::scope(|s| {
            s.spawn(move || {
                if let Some(mut stdin) = stdin {
                    let _ = std::io::Write::write_all(&mut stdin, input);
                }
            });
            child.wait_with_output()
        })
        .map_err(|source| ToolError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        self.check_contained(report)?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.failed(out.status, &out.stderr))
    }

    /// Runs the tool, giving each line of its output (stdout and stderr merged) to `on_line`.
    pub fn stream(&self, on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError> {
        self.stream_with(None, on_line)
    }

    /// Runs the tool with the bytes of `input` on its stdin (copied by a thread until `input`
    /// ends or the tool stops reading), giving each line of its output to `on_line`.
    pub fn stream_from(
        &self,
        input: &mut (dyn Read + Send),
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), ToolError> {
        self.stream_with(Some(input), on_line)
    }

    fn stream_with(
        &self,
        input: Option<&mut (dyn Read + Send)>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), ToolError> {
        let spawn_err = |source| ToolError::Spawn {
            program: self.program.clone(),
            source,
        };
        let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
        let writer2 = writer.try_clone().map_err(spawn_err)?;
        let (mut cmd, report) = self.command()?;
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        cmd.stdout(writer).stderr(writer2);
        let mut child = self.spawn(cmd)?;
        crate::failpoint::hit("tool-running");
        let stdin = child.stdin.take();
        let mut tail: Vec<String> = Vec::new();
        std::thread::scope(|s| {
            if let (Some(input), Some(mut stdin)) = (input, stdin) {
                // A tool that stops reading (it failed) ends the copy with EPIPE; its status
                // says why.
                s.spawn(move || {
                    let _ = std::io::copy(input, &mut stdin);
                });
            }
            for_each_line(reader, &mut |line| {
                on_line(line);
                push_tail(&mut tail, line);
            });
        });
        let status = child.wait().map_err(spawn_err)?;
        self.check_contained(report)?;
        if status.success() {
            Ok(())
        } else {
            Err(ToolError::Failed {
                program: self.program.clone(),
                args: self.args.clone(),
                status,
                tail,
            })
        }
    }

    fn failed(&self, status: ExitStatus, stderr: &[u8]) -> ToolError {
        let mut tail = Vec::new();
        for line in String::from_utf8_lossy(stderr).lines() {
            push_tail(&mut tail, line);
        }
        ToolError::Failed {
            program: self.program.clone(),
            args: self.args.clone(),
            status,
            tail,
        }
    }
}

/// Keeps the last [`TAIL_LINES`] lines.
pub fn push_tail(tail: &mut Vec<String>, line: &str) {
    if tail.len() == TAIL_LINES {
        tail.remove(0);
    }
    tail.push(line.to_owned());
}

/// The longest line [`for_each_line`] gives whole: a longer one comes in pieces of this size, so
/// a command that prints gigabytes without a newline costs bounded memory.
pub const MAX_LINE: usize = 64 * 1024;

/// What a terminal would show of `line`: the text after its last carriage return (progress
/// meters such as dpkg's `(Reading database ... 5%\r... 10%\r...` rewrite one line over and over;
/// a log or a pipe gets the last state only).
fn as_shown(line: &str) -> &str {
    let line = line.trim_end_matches(['\n', '\r']);
    line.rsplit('\r').next().unwrap_or(line)
}

/// Calls `f` with every line read from `r` (lossy UTF-8, without the line ending, only what
/// follows its last carriage return) until EOF; a line longer than [`MAX_LINE`] bytes is given in
/// pieces of at most that size.
pub fn for_each_line(r: impl Read, f: &mut dyn FnMut(&str)) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = MAX_LINE - buf.len();
        let (take, ends_line) = match available.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len().min(room), false),
        };
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if ends_line || buf.len() == MAX_LINE {
            f(as_shown(&String::from_utf8_lossy(&buf)));
            buf.clear();
        }
    }
    if !buf.is_empty() {
        f(as_shown(&String::from_utf8_lossy(&buf)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for_each_line(input, &mut |l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn lines_come_whole_and_long_ones_in_bounded_pieces() {
        assert_eq!(lines(b"a\r\n\nb\nlast"), ["a", "", "b", "last"]);
        // A progress meter: only its last state.
        assert_eq!(
            lines(b"(Reading database ... 5%\r(Reading database ... 100%\r(Reading database ... 6 files installed.)\nnext\n"),
            ["(Reading database ... 6 files installed.)", "next"]
        );
        assert!(lines(b"").is_empty());
        // 200 KiB without a newline, then a short line: pieces of at most MAX_LINE bytes, and
        // nothing is lost.
        let mut input = vec![b'x'; 200 * 1024];
        input.extend_from_slice(b"\nend\n");
        let got = lines(&input);
        assert_eq!(
            got.len(),
            5,
            "{:?}",
            got.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|l| l.len() <= MAX_LINE));
        assert_eq!(got[..4].iter().map(String::len).sum::<usize>(), 200 * 1024);
        assert_eq!(got[4], "end");
    }
}
