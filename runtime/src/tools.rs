//! One runner for every external tool (tar, mmdebstrap, btrfs, ...): absolute path, argv (never a
//! shell string), an explicit environment, and errors that carry program, args, status and the
//! tail of stderr.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Where tools are looked up, in order. The caller's PATH is not trusted.
const TOOL_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

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

    /// Sets an environment variable (on top of a minimal PATH/LANG environment).
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Tool {
        self.env.push((k.into(), v.into()));
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", TOOL_DIRS.join(":"))
            .env("LANG", "C.UTF-8")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the tool and returns its stdout; stderr is kept for the error.
    pub fn output(&self) -> Result<Vec<u8>, ToolError> {
        let out = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| ToolError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.failed(out.status, &out.stderr))
    }

    /// Runs the tool with `input` on its stdin and returns its stdout; stderr is kept for the
    /// error.
    pub fn output_with_input(&self, input: &[u8]) -> Result<Vec<u8>, ToolError> {
        let spawn_err = |source| ToolError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
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
        .map_err(spawn_err)?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.failed(out.status, &out.stderr))
    }

    /// Runs the tool, giving each line of its output (stdout and stderr merged) to `on_line`.
    pub fn stream(&self, on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError> {
        let (reader, writer) = std::io::pipe().map_err(|source| ToolError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let writer2 = writer.try_clone().map_err(|source| ToolError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let mut cmd = self.command();
        cmd.stdout(writer).stderr(writer2);
        let mut child = cmd.spawn().map_err(|source| ToolError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        drop(cmd);
        crate::failpoint::hit("tool-running");
        let mut tail: Vec<String> = Vec::new();
        for_each_line(reader, &mut |line| {
            on_line(line);
            push_tail(&mut tail, line);
        });
        let status = child.wait().map_err(|source| ToolError::Spawn {
            program: self.program.clone(),
            source,
        })?;
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

/// Calls `f` with every line read from `r` (lossy UTF-8, without the line ending) until EOF.
pub fn for_each_line(r: impl Read, f: &mut dyn FnMut(&str)) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => f(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r'])),
        }
    }
}
