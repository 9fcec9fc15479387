//! `envc push`, `envc key generate`, and the remote layer cache that `apply`, `run` and `shell`
//! use: made from `--remote`, `--sign-key`, `--trusted-key` and `--insecure-registry` (or their
//! variables) and the registry credentials in docker's and podman's files.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use envc_runtime::Runtime;
use envc_runtime::apply::PushOutcome;
use envc_runtime::oci::registry::{Credentials, Options, Reference};
use envc_runtime::oci::remote::{Limits, Remote, Settings};
use envc_runtime::oci::sign::{PublicKey, SecretKey};

use crate::cli::{Backend, RemoteArgs};
use crate::compile::compile_for;
use crate::error::{CliError, exit};
use crate::lockfile::plan_for;

/// The remote cache the arguments name, if any; a bad reference or key file is an error. A
/// command that pulls (`pulls`) says when no key is trusted.
pub fn remote_for(args: &RemoteArgs, pulls: bool) -> Result<Option<Remote>, CliError> {
    let Some(reference) = args.remote.as_deref().filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let reference: Reference = reference
        .parse()
        .map_err(|e| usage(format!("--remote {reference}: {e}")))?;
    let signing = match &args.sign_key {
        Some(p) => Some(SecretKey::read(p).map_err(|e| CliError::failed(e.to_string()))?),
        None => None,
    };
    let trusted = args
        .trusted_keys
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| PublicKey::read(p).map_err(|e| CliError::failed(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let (auth, notes) = Credentials::from_environment(&reference.host)
        .map_err(|e| CliError::failed(e.to_string()))?;
    for n in notes {
        crate::report::warn(&n);
    }
    // How long the registry may stay silent: ENVC_REMOTE_TIMEOUT seconds (default 30).
    let silence = match std::env::var("ENVC_REMOTE_TIMEOUT") {
        Ok(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .ok_or_else(|| {
                usage(format!(
                    "ENVC_REMOTE_TIMEOUT={v}: give seconds, from 1 to 3600"
                ))
            })?,
        Err(_) => 30,
    };
    let options = Options {
        insecure_hosts: args.insecure_registries.clone(),
        connect_timeout: Duration::from_secs(silence.min(5)),
        read_timeout: Duration::from_secs(silence),
        attempts: 3,
        backoff: Duration::from_millis(500),
        auth,
    };
    let remote = Remote::new(Settings {
        reference,
        options,
        signing,
        trusted,
        limits: Limits::default(),
    })
    .map_err(|e| CliError::failed(e.to_string()))?;
    if pulls && !remote.can_pull() {
        crate::report::warn(&format!(
            "no trusted key (--trusted-key or ENVC_TRUSTED_KEYS): nothing is pulled from {}",
            remote.name()
        ));
    }
    Ok(Some(remote))
}

/// Sets the runtime's remote cache from the arguments (for a command that pulls when `pulls`).
pub fn use_remote(rt: &mut Runtime, args: &RemoteArgs, pulls: bool) -> Result<(), CliError> {
    if let Some(remote) = remote_for(args, pulls)? {
        rt.set_remote(remote);
    }
    Ok(())
}

/// `envc push SPEC`: exit 1 when a layer could not be pushed.
pub fn push(
    store: &Path,
    backend: Option<Backend>,
    spec: &Path,
    locked: bool,
    args: &RemoteArgs,
) -> Result<u8, CliError> {
    if args.remote.as_deref().is_none_or(str::is_empty) {
        return Err(usage(
            "envc push needs --remote REF (or ENVC_REMOTE)".into(),
        ));
    }
    if args.sign_key.is_none() {
        return Err(usage(
            "envc push needs --sign-key FILE (or ENVC_SIGNING_KEY); make a key with `envc key generate NAME`".into(),
        ));
    }
    let compiled = compile_for(spec, store)?;
    let plan = plan_for(&compiled, spec, store, locked, false)?;
    let mut rt = crate::store::open(store, backend)?;
    use_remote(&mut rt, args, false)?;
    let failures = push_plan(&rt, &plan, false)?;
    Ok(if failures == 0 {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

/// Pushes the plan's stored layers, one line each on stderr (a failure as a warning when
/// `best_effort`); returns how many failed.
pub fn push_plan(
    rt: &Runtime,
    plan: &envc_plan::Plan,
    best_effort: bool,
) -> Result<usize, CliError> {
    let remote = rt.remote().map(|r| r.name()).unwrap_or_default();
    let mut err = std::io::stderr();
    let failures = rt
        .push(plan, &mut |_, layer, outcome| {
            let id = &layer.id.to_hex()[..12];
            match outcome {
                PushOutcome::Uploaded(n) => {
                    let _ = writeln!(
                        err,
                        "envc: pushed layer `{}` ({id}, {}) to {remote}",
                        layer.name,
                        crate::human::size(*n)
                    );
                }
                PushOutcome::Present => {
                    let _ = writeln!(err, "envc: layer `{}` ({id}) is in {remote}", layer.name);
                }
                PushOutcome::NotStored => crate::report::warn(&format!(
                    "layer `{}` ({id}) is not in this store, so not pushed (envc apply builds it)",
                    layer.name
                )),
                PushOutcome::Failed(reason) => {
                    let m = format!(
                        "cannot push layer `{}` ({id}) to {remote}: {reason}",
                        layer.name
                    );
                    if best_effort {
                        crate::report::warn(&m);
                    } else {
                        let _ = writeln!(err, "error: {m}");
                    }
                }
            }
        })
        .map_err(CliError::from)?;
    Ok(failures)
}

/// `envc key generate NAME`.
pub fn key_generate(name: &str, dir: &Path) -> Result<(), CliError> {
    let key = SecretKey::generate(name).map_err(|e| usage(e.to_string()))?;
    let (secret, public) = key
        .write_pair(dir)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let _ = writeln!(
        std::io::stderr(),
        "envc: wrote {} (secret: sign pushes with --sign-key) and {} (give it to those who pull: --trusted-key); fingerprint {}",
        secret.display(),
        public.display(),
        key.public().fingerprint()
    );
    Ok(())
}

fn usage(message: String) -> CliError {
    CliError::Usage(clap::Error::raw(
        clap::error::ErrorKind::InvalidValue,
        format!("{message}\n"),
    ))
}
