//! Failpoints: a test hook that stops envc at a named point, so the fault-injection test
//! (tests/crash.rs) can kill it there with SIGKILL.
//!
//! `ENVC_TEST_STOP_AT=POINT` stops the process the first time it reaches [`hit`]`("POINT")`;
//! `ENVC_TEST_STOP_AT=POINT#N` stops it at the Nth time. Stopping is: print
//! `envc: stopped at POINT` to stderr, then raise SIGSTOP against the process itself. The test
//! waits until a process of envc's process group is stopped (state `T` in `/proc/PID/stat`) and
//! kills envc's pid alone or its whole process group. Without the variable (every real use),
//! [`hit`] costs one load of a `OnceLock` and changes nothing. This is not a user setting: it is
//! not documented in `--help`, and nothing but tests may set it.
//!
//! The points (each a one-line hook):
//!
//! | point | where |
//! |---|---|
//! | `tool-running` | a streamed tool (a base's tar or mmdebstrap) was started (`tools.rs`: `stream`, `stream_from`) |
//! | `step-before`, `step-after` | around each step of a layer being built (`apply/layer.rs`) |
//! | `step-output` | a sandboxed step (run, packages) printed a line (`apply/layer.rs`) |
//! | `seal-before` | every step succeeded; neither the layer nor its record is written yet |
//! | `seal-recorded` | `meta/ID.json` is written (inside the backend's seal), the layer not yet published |
//! | `seal-published` | the backend's seal returned: the layer is published and recorded |
//! | `layer-looked` | a directory is found at `layers/ID`, not yet asked whether it is a sealed layer (`store.rs`: `check_sealed`) |
//! | `layer-held` | a layer of the chain, reused or just built, is held for use (shared lock) (`apply/mod.rs`) |
//! | `root-before` | the working root is about to be (re)made, nothing written yet (`apply/mod.rs`) |
//! | `root-recorded` | `root.json` is written, the root not yet made |
//! | `root-dropped` | the old working root is dropped, the new one not yet made (backends) |
//! | `root-made` | the new working root exists (mounted) and is recorded |
//! | `gc-removed` | gc removed a layer's data, not yet its meta record (`maintain/gc.rs`) |
//! | `gc-between` | gc removed one layer completely, before the next |
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that names the point to stop at.
pub const VAR: &str = "ENVC_TEST_STOP_AT";

/// The point to stop at and at which hit of it (1 = the first).
struct Target {
    point: String,
    nth: u64,
    hits: AtomicU64,
}

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| parse(&std::env::var(VAR).ok()?))
        .as_ref()
}

fn parse(value: &str) -> Option<Target> {
    let (point, nth) = match value.rsplit_once('#') {
        Some((p, n)) => (p, n.parse().ok().filter(|n| *n > 0)?),
        None => (value, 1),
    };
    (!point.is_empty()).then(|| Target {
        point: point.to_owned(),
        nth,
        hits: AtomicU64::new(0),
    })
}

/// Whether this hit of `point` is the one to stop at (counts the hit).
fn stops(target: &Target, point: &str) -> bool {
    target.point == point && target.hits.fetch_add(1, Ordering::SeqCst) + 1 == target.nth
}

/// A failpoint: stops this process (SIGSTOP) when `ENVC_TEST_STOP_AT` names `point` (and this is
/// the hit it counts); otherwise does nothing.
pub fn hit(point: &'static str) {
    let Some(target) = target() else { return };
    if stops(target, point) {
        let _ = writeln!(std::io::stderr(), "envc: stopped at {point}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_stops_at_its_first_hit_or_the_nth() {
        let t = parse("seal-before").unwrap();
        assert!(!stops(&t, "seal-after"));
        assert!(stops(&t, "seal-before"));
        assert!(!stops(&t, "seal-before"), "only once");
        let t = parse("gc-between#3").unwrap();
        assert_eq!(
            (0..4).map(|_| stops(&t, "gc-between")).collect::<Vec<_>>(),
            [false, false, true, false]
        );
    }

    #[test]
    fn malformed_values_stop_nowhere() {
        for v in ["", "#2", "x#0", "x#y", "x#"] {
            assert!(parse(v).is_none(), "{v:?}");
        }
    }
}
