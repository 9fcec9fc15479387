//! The build transaction against a recording fake backend and executor: stage, steps, failure,
//! rollback, seal and publish, without privileges.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use envc_plan::{Base, Layer, LayerId, Plan, Step, SyncMode};

use super::{ApplyError, Event, Executor, Runtime};
use crate::backend::{
    Backend, BackendConfig, BackendError, BackendKind, Build, Labels, Layout, RecordHook, RootMade,
    Scratch,
};
use crate::sandbox::{Action, RootSource, SandboxError, Spec};
use crate::store::Store;
use crate::tools::{Tool, ToolError};

type Journal = Arc<Mutex<Vec<String>>>;

fn note(j: &Journal, s: String) {
    j.lock().unwrap().push(s);
}

/// A backend of plain directories that records every call, and fails the calls it is told to.
struct FakeBackend {
    layout: Layout,
    journal: Journal,
    fail: Arc<Mutex<Vec<String>>>,
}

impl FakeBackend {
    fn check(&self, call: String) -> Result<(), BackendError> {
        note(&self.journal, call.clone());
        if self.fail.lock().unwrap().contains(&call) {
            return Err(BackendError::Unsupported {
                backend: BackendKind::Overlay,
                path: PathBuf::from(&call),
                reason: "injected failure".into(),
            });
        }
        Ok(())
    }
}

fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap();
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Overlay
    }
    fn config(&self) -> BackendConfig {
        BackendConfig::Overlay
    }
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn begin(
        &self,
        id: LayerId,
        chain: &[LayerId],
        labels: Labels<'_>,
    ) -> Result<Build, BackendError> {
        self.check(format!("begin {} on {}", labels.layer, chain.len()))?;
        let st = self.layout.staging(&id);
        mkdir(&st);
        // A tree that cannot be read when the build is digested.
        let unreadable = format!("unreadable tree {}", labels.layer);
        let mountpoint = if self.fail.lock().unwrap().contains(&unreadable) {
            st.join("gone")
        } else {
            st
        };
        Ok(Build {
            id,
            source: RootSource::Dir,
            mountpoint,
        })
    }
    fn seal(&self, build: Build, record: RecordHook<'_>) -> Result<u64, BackendError> {
        self.check(format!("seal {}", build.id.short(4)))?;
        record(7).map_err(|source| BackendError::Record {
            id: build.id,
            source,
        })?;
        // Every test checks the order: the layer's record exists before the layer is published.
        let meta = self
            .layout
            .root()
            .join("meta")
            .join(format!("{}.json", build.id));
        assert!(meta.is_file(), "layer published before its record");
        let publish = format!("publish {}", build.id.short(4));
        if self.fail.lock().unwrap().contains(&publish) {
            return Err(BackendError::Unsupported {
                backend: BackendKind::Overlay,
                path: PathBuf::from(publish),
                reason: "injected failure".into(),
            });
        }
        fs::rename(&build.mountpoint, self.layout.layer(&build.id)).unwrap();
        Ok(7)
    }
    fn discard(&self, id: &LayerId) -> Result<(), BackendError> {
        let st = self.layout.staging(id);
        if st.exists() {
            self.check(format!("discard {}", id.short(4)))?;
            fs::remove_dir_all(st).unwrap();
        }
        Ok(())
    }
    fn remove(&self, id: &LayerId) -> Result<(), BackendError> {
        self.check(format!("remove {}", id.short(4)))?;
        let _ = fs::remove_dir_all(self.layout.layer(id));
        Ok(())
    }
    fn root_ready(&self, name: &str, _chain: &[LayerId]) -> Result<bool, BackendError> {
        Ok(self.root_path(name).is_dir())
    }
    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<RootMade, BackendError> {
        self.check(format!("create_root {name} on {}", chain.len()))?;
        let path = self.root_path(name);
        mkdir(&path);
        Ok(RootMade { path, reap: false })
    }
    fn drop_root(&self, name: &str) -> Result<(), BackendError> {
        self.check(format!("drop_root {name}"))?;
        let _ = fs::remove_dir_all(self.layout.root_dir(name).join("root"));
        Ok(())
    }
    fn scratch_root(&self, chain: &[LayerId]) -> Result<Scratch, BackendError> {
        self.check(format!("scratch_root on {}", chain.len()))?;
        let dir = self.layout.tmp("run");
        mkdir(&dir);
        Ok(Scratch::new(RootSource::Dir, dir.clone(), dir))
    }
    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError> {
        self.check("drop_scratch".into())?;
        fs::remove_dir_all(scratch.dir()).unwrap();
        Ok(())
    }
}

/// An executor that records the commands it is given and answers with scripted exit statuses.
struct FakeExecutor {
    journal: Journal,
    status: Arc<Mutex<BTreeMap<String, i32>>>,
}

impl Executor for FakeExecutor {
    fn helper(&self) -> &Path {
        Path::new("/nonexistent/envc")
    }
    fn sandbox(&self, spec: &Spec, on_line: &mut dyn FnMut(&str)) -> Result<i32, SandboxError> {
        let Action::Exec { argv, .. } = &spec.action else {
            panic!("only exec steps in these tests");
        };
        let command = argv.last().cloned().unwrap_or_default();
        assert!(
            spec.mountpoint
                .starts_with(spec.mountpoint.parent().unwrap()),
            "runs in a staging area"
        );
        note(&self.journal, format!("exec {command}"));
        on_line(&format!("output of {command}"));
        Ok(self
            .status
            .lock()
            .unwrap()
            .get(&command)
            .copied()
            .unwrap_or(0))
    }
    fn interactive(&self, spec: &Spec) -> Result<i32, SandboxError> {
        let Action::Exec { argv, .. } = &spec.action else {
            panic!("run is an exec");
        };
        note(&self.journal, format!("interactive {}", argv.join(" ")));
        Ok(3)
    }
    fn tool(&self, tool: &Tool, _on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError> {
        note(&self.journal, format!("tool {tool:?}"));
        Ok(())
    }
}

struct Fixture {
    _dir: TempDir,
    rt: Runtime,
    journal: Journal,
    fail: Arc<Mutex<Vec<String>>>,
    status: Arc<Mutex<BTreeMap<String, i32>>>,
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("envc-apply-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    mkdir(&dir);
    let journal: Journal = Arc::default();
    let fail = Arc::<Mutex<Vec<String>>>::default();
    let status = Arc::<Mutex<BTreeMap<String, i32>>>::default();
    let backend = FakeBackend {
        layout: Layout::new(&fs::canonicalize(&dir).unwrap()),
        journal: journal.clone(),
        fail: fail.clone(),
    };
    let store = Store::with_backend(&dir, Box::new(backend)).unwrap();
    let exec = FakeExecutor {
        journal: journal.clone(),
        status: status.clone(),
    };
    Fixture {
        _dir: TempDir(dir),
        rt: Runtime::with_executor(store, Box::new(exec)),
        journal,
        fail,
        status,
    }
}

fn id(n: u8) -> LayerId {
    LayerId([n; 32])
}

/// base (scratch) -> a (`true`) -> b (`make`).
fn plan() -> Plan {
    let run = |command: &str| Step::Run {
        command: command.into(),
        network: false,
        user: None,
        sync: SyncMode::Off,
    };
    Plan {
        name: "t".into(),
        spec: None,
        layers: vec![
            Layer {
                name: "base".into(),
                id: id(1),
                parent: None,
                steps: vec![Step::Base {
                    base: Base::Scratch,
                    sync: SyncMode::Off,
                    locked: None,
                }],
            },
            Layer {
                name: "a".into(),
                id: id(2),
                parent: Some(id(1)),
                steps: vec![run("true")],
            },
            Layer {
                name: "b".into(),
                id: id(3),
                parent: Some(id(2)),
                steps: vec![run("make")],
            },
        ],
    }
}

impl Fixture {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.journal.lock().unwrap())
    }

    fn apply(&self, plan: &Plan) -> Result<super::Applied, ApplyError> {
        self.rt.apply(plan, false, &mut |_: Event<'_>| {})
    }

    fn sealed(&self) -> Vec<LayerId> {
        let mut v = self.rt.store.backend().sealed().unwrap();
        v.sort();
        v
    }
}

#[test]
fn layers_are_staged_run_sealed_and_recorded_in_order() {
    let f = fixture("order");
    let plan = plan();
    let mut events = Vec::new();
    let applied =
        f.rt.apply(&plan, false, &mut |e| {
            events.push(
                format!("{e:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            )
        })
        .unwrap();
    assert_eq!(
        f.take(),
        [
            "begin base on 0",
            "seal 0101",
            "begin a on 1",
            "exec true",
            "seal 0202",
            "begin b on 2",
            "exec make",
            "seal 0303",
            "create_root t on 3",
        ]
    );
    assert_eq!(
        (applied.built, applied.cached, applied.fresh_root),
        (3, 0, true)
    );
    assert_eq!(f.sealed(), [id(1), id(2), id(3)]);
    for n in 1..=3 {
        let meta = f.rt.store.read_meta(&id(n)).unwrap().expect("recorded");
        assert_eq!(meta.size, 7);
        let layer = f.rt.store.backend().layout().layer(&id(n));
        assert_eq!(
            meta.tree_digest,
            Some(crate::digest::tree_digest(&layer).unwrap()),
            "the record has the digest of the sealed tree"
        );
        assert!(
            f.rt.store.log_path(&id(n)).is_file(),
            "the build log is kept"
        );
    }
    let log = fs::read_to_string(f.rt.store.log_path(&id(3))).unwrap();
    assert!(log.contains("output of make"), "{log}");
    let root = f.rt.store.read_root("t").unwrap().expect("root recorded");
    assert_eq!(root.chain, [id(1), id(2), id(3)]);
    assert!(
        events.first().is_some_and(|e| e == "Building"),
        "{events:?}"
    );
    assert!(events.contains(&"Realized".to_owned()), "{events:?}");

    // Warm: nothing is staged, run or sealed, and the root is kept.
    let again = f.apply(&plan).unwrap();
    assert_eq!((again.built, again.cached, again.fresh_root), (0, 3, false));
    assert_eq!(f.take(), Vec::<String>::new());
}

#[test]
fn a_failing_step_rolls_its_layer_back_and_keeps_the_ones_before() {
    let f = fixture("fail");
    let plan = plan();
    f.status.lock().unwrap().insert("make".into(), 2);
    let err = f.apply(&plan).unwrap_err();
    let ApplyError::StepFailed {
        layer,
        step,
        status,
        tail,
        log,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((layer.as_str(), *step, *status), ("b", 0, Some(2)));
    assert_eq!(tail, &["output of make"]);
    assert!(log.is_file() && log.ends_with(format!("{}.failed.log", id(3))));
    let calls = f.take();
    assert_eq!(
        &calls[calls.len() - 3..],
        ["begin b on 2", "exec make", "discard 0303"],
        "{calls:?}"
    );
    assert_eq!(f.sealed(), [id(1), id(2)], "nothing of b is sealed");
    assert!(f.rt.store.read_meta(&id(3)).unwrap().is_none());
    assert!(
        !f.rt
            .store
            .path()
            .join("staging")
            .join(id(3).to_hex())
            .exists()
    );
    assert!(
        f.rt.store.read_root("t").unwrap().is_none(),
        "no root for a failed apply"
    );

    // Fixed: only b is built, and its failed log goes.
    f.status.lock().unwrap().clear();
    let applied = f.apply(&plan).unwrap();
    assert_eq!((applied.built, applied.cached), (1, 2));
    assert!(!log.exists());
    assert_eq!(
        f.take(),
        [
            "begin b on 2",
            "exec make",
            "seal 0303",
            "create_root t on 3"
        ]
    );
}

#[test]
fn a_failed_rollback_reports_both_errors() {
    let f = fixture("rollback");
    let plan = plan();
    f.status.lock().unwrap().insert("make".into(), 1);
    f.fail.lock().unwrap().push("discard 0303".into());
    let err = f.apply(&plan).unwrap_err();
    let ApplyError::Rollback {
        layer,
        error,
        rollback,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(layer, "b");
    assert!(matches!(**error, ApplyError::StepFailed { .. }), "{error}");
    assert!(rollback.to_string().contains("injected failure"));
    let text = err.to_string();
    assert!(
        text.contains("exit status 1") && text.contains("injected failure"),
        "{text}"
    );
    // The staging area stays for the next apply to clean, and nothing is sealed.
    assert_eq!(f.sealed(), [id(1), id(2)]);
    f.fail.lock().unwrap().clear();
    f.status.lock().unwrap().clear();
    f.take();
    f.apply(&plan).unwrap();
    let calls = f.take();
    assert_eq!(
        calls[0], "discard 0303",
        "the leftover is cleaned first: {calls:?}"
    );
}

#[test]
fn a_failed_seal_rolls_back_and_publishes_nothing() {
    let f = fixture("seal");
    let plan = plan();
    f.fail.lock().unwrap().push("seal 0202".into());
    let err = f.apply(&plan).unwrap_err();
    let ApplyError::Layer { index, source, .. } = &err else {
        panic!("a failed seal names its layer: {err}");
    };
    assert_eq!(*index, 1);
    assert!(matches!(**source, ApplyError::Backend(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("layer `{}`", plan.layers[1].name)),
        "{err}"
    );
    let calls = f.take();
    assert_eq!(
        &calls[calls.len() - 2..],
        ["seal 0202", "discard 0202"],
        "{calls:?}"
    );
    assert_eq!(f.sealed(), [id(1)]);
    assert!(f.rt.store.read_meta(&id(2)).unwrap().is_none());
}

#[test]
fn a_tree_that_cannot_be_digested_fails_its_build_and_is_rolled_back() {
    let f = fixture("digest");
    let plan = plan();
    f.fail.lock().unwrap().push("unreadable tree a".into());
    let err = f.apply(&plan).unwrap_err();
    let ApplyError::Layer { index, source, .. } = &err else {
        panic!("a failed digest names its layer: {err}");
    };
    assert_eq!(*index, 1);
    assert!(matches!(**source, ApplyError::Digest { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("layer `a`"), "{text}");
    assert!(text.contains("tree digest"), "{text}");
    assert!(text.contains("gone"), "names the path: {text}");
    let calls = f.take();
    assert_eq!(
        &calls[calls.len() - 3..],
        ["begin a on 1", "exec true", "discard 0202"],
        "never sealed: {calls:?}"
    );
    assert_eq!(f.sealed(), [id(1)]);
    assert!(f.rt.store.read_meta(&id(2)).unwrap().is_none());
}

#[test]
fn run_uses_a_throwaway_root_and_removes_it() {
    let f = fixture("run");
    let plan = plan();
    let code =
        f.rt.run(
            &plan,
            vec!["echo".into(), "hi".into()],
            &super::RunOptions::default(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(code, 3, "the command's own status");
    let calls = f.take();
    assert_eq!(
        &calls[calls.len() - 3..],
        ["scratch_root on 3", "interactive echo hi", "drop_scratch"]
    );
    assert!(
        f.rt.store.read_root("t").unwrap().is_none(),
        "run makes no working root"
    );
}

#[test]
fn a_corrupt_root_record_stops_the_apply_instead_of_replacing_the_root() {
    let f = fixture("corrupt");
    let plan = plan();
    f.apply(&plan).unwrap();
    let rec = f.rt.store.path().join("roots/t/root.json");
    fs::write(&rec, b"{ not json").unwrap();
    f.take();
    let err = f.apply(&plan).unwrap_err();
    assert!(err.to_string().contains("root.json"), "{err}");
    assert_eq!(f.take(), Vec::<String>::new(), "the root was left alone");
}

/// The warnings of an apply, as text.
fn warnings_of(f: &Fixture, plan: &Plan) -> Vec<String> {
    let mut warnings = Vec::new();
    f.rt.apply(plan, false, &mut |e| {
        if let Event::Warning(w) = e {
            warnings.push(w.to_string());
        }
    })
    .unwrap();
    warnings
}

#[test]
fn a_record_written_for_a_layer_that_fails_to_publish_goes_with_the_build() {
    let f = fixture("publish");
    let plan = plan();
    f.fail.lock().unwrap().push("publish 0202".into());
    let err = f.apply(&plan).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(f.sealed(), [id(1)]);
    assert!(f.rt.store.read_meta(&id(2)).unwrap().is_none());
    f.fail.lock().unwrap().clear();
    f.apply(&plan).unwrap();
    assert_eq!(f.sealed(), [id(1), id(2), id(3)]);
}

#[test]
fn a_reused_layer_without_its_record_gets_it_back_from_the_plan() {
    let f = fixture("repair");
    let plan = plan();
    f.apply(&plan).unwrap();
    let path = f.rt.store.meta_path(&id(2));
    fs::remove_file(&path).unwrap();
    assert_eq!(f.rt.store.layers().unwrap().len(), 3);
    let warnings = warnings_of(&f, &plan);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("layer `a`")
            && warnings[0].contains("no record")
            && warnings[0].contains(&path.display().to_string()),
        "{warnings:?}"
    );
    let meta = f.rt.store.read_meta(&id(2)).unwrap().expect("repaired");
    assert_eq!(meta, {
        let mut m = super::layer::meta_of(&plan, 1, meta.size);
        (m.created, m.last_used) = (meta.created, meta.last_used);
        m
    });
    assert!(meta.created > 0 && meta.key.is_object());
    // Unreadable: the same.
    fs::write(&path, b"").unwrap();
    let warnings = warnings_of(&f, &plan);
    assert!(
        warnings.len() == 1 && warnings[0].contains("an unreadable record"),
        "{warnings:?}"
    );
    assert!(f.rt.store.read_meta(&id(2)).unwrap().is_some());
    // Nothing to repair: no warning.
    assert_eq!(warnings_of(&f, &plan), Vec::<String>::new());
}

#[test]
fn touching_a_corrupt_record_warns_naming_it() {
    let f = fixture("touch");
    let plan = plan();
    f.apply(&plan).unwrap();
    let path = f.rt.store.meta_path(&id(1));
    fs::write(&path, b"{ not json").unwrap();
    let mut warnings = Vec::new();
    f.rt.touch(&[id(1), id(2)], &mut |e| {
        if let Event::Warning(w) = e {
            warnings.push(w);
        }
    });
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let crate::warning::Warning::RecordNotUpdated { path: named, .. } = &warnings[0] else {
        panic!("{warnings:?}");
    };
    assert_eq!(named, &path);
    assert!(warnings[0].to_string().contains("corrupt record"));
    assert_eq!(fs::read(&path).unwrap(), b"{ not json", "left as it was");
}

#[test]
fn a_record_naming_another_layer_or_looping_parents_is_corrupt() {
    let f = fixture("mismatch");
    let plan = plan();
    f.apply(&plan).unwrap();
    let (p2, p3) = (f.rt.store.meta_path(&id(2)), f.rt.store.meta_path(&id(3)));
    fs::copy(&p3, &p2).unwrap();
    let e = f.rt.store.read_meta(&id(2)).unwrap_err().to_string();
    assert!(
        e.contains(&p2.display().to_string()) && e.contains("records layer"),
        "{e}"
    );
    assert!(f.rt.store.layers().is_err());
    // Parents that loop: 1 -> 3 -> 2 -> 1.
    f.apply(&plan).unwrap(); // repairs 2
    let mut m1 = f.rt.store.read_meta(&id(1)).unwrap().unwrap();
    m1.parent = Some(id(3));
    f.rt.store.write_meta(&m1).unwrap();
    let e = f.rt.store.layers().unwrap_err().to_string();
    assert!(e.contains("loop"), "{e}");
    let e = crate::maintain::gc(
        &f.rt.store,
        crate::maintain::GcPolicy {
            keep_bytes: Some(0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("loop"), "{e}");
}

#[test]
fn orphan_records_and_temporaries_of_dead_writers_go_and_live_ones_stay() {
    let f = fixture("orphans");
    let plan = plan();
    f.apply(&plan).unwrap();
    let store = &f.rt.store;
    let mut orphan = store.read_meta(&id(3)).unwrap().unwrap();
    orphan.id = id(9);
    orphan.parent = Some(id(3));
    store.write_meta(&orphan).unwrap();
    // Being built (its lock held): its record stays.
    let lock = store.try_lock_layer(&id(9)).unwrap().unwrap();
    let left = crate::maintain::clean_leftovers(store);
    assert_eq!(left.records, 0, "{left:?}");
    assert!(store.meta_path(&id(9)).is_file());
    drop(lock);
    let dead = u32::MAX - 1;
    let meta_dir = store.path().join("meta");
    let dead_tmp = [
        meta_dir.join(format!("{}.json.tmp.{dead}.0", id(9))),
        meta_dir.join(format!("{}.tmp.{dead}", id(8))),
        store.path().join(format!("store.json.tmp.{dead}.3")),
        store.path().join(format!("roots/t/root.json.tmp.{dead}.1")),
    ];
    for p in &dead_tmp {
        fs::write(p, b"half").unwrap();
    }
    // A temporary whose writer is alive and holds its lock.
    let live = meta_dir.join(format!("{}.json.tmp.{}.99", id(1), std::process::id()));
    fs::write(&live, b"half").unwrap();
    let held = fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let left = crate::maintain::clean_leftovers(store);
    assert_eq!(
        (left.records, left.temporaries, left.warnings.len()),
        (1, 4, 0),
        "{left:?}"
    );
    assert!(!store.meta_path(&id(9)).exists());
    assert!(dead_tmp.iter().all(|p| !p.exists()));
    assert!(live.exists(), "a live writer's temporary stays");
    assert_eq!(f.sealed(), [id(1), id(2), id(3)]);
    for n in 1..=3 {
        assert!(
            store.read_meta(&id(n)).unwrap().is_some(),
            "sealed layers keep theirs"
        );
    }
}

#[test]
fn a_cache_directory_is_never_reached_through_a_symlink() {
    let f = fixture("cachelink");
    let store = f.rt.store.path().to_owned();
    let made = f.rt.store.cache_dir("apt-lists/k").unwrap();
    assert_eq!(made, store.join("cache/apt-lists/k"));
    assert!(made.is_dir());
    // A cache that became a symlink to a host directory is refused by name, never followed.
    let decoy = store.join("decoy");
    mkdir(&decoy);
    fs::write(decoy.join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(&decoy, store.join("cache/debs")).unwrap();
    let err = f.rt.store.cache_dir("debs").unwrap_err().to_string();
    assert!(err.contains("cache/debs"), "{err}");
    let err = f.rt.store.cache_dir("debs/sub").unwrap_err().to_string();
    assert!(err.contains("cache/debs"), "{err}");
    assert!(!decoy.join("sub").exists());
    assert_eq!(fs::read_to_string(decoy.join("keep")).unwrap(), "x");
}

#[test]
fn apt_caches_are_shared_only_from_the_same_starting_tree() {
    use super::apt::{cache_key, lists_key};
    let run = |command: &str| Step::Run {
        command: command.into(),
        network: false,
        user: None,
        sync: SyncMode::Off,
    };
    let packages = |p: &str| Step::Packages {
        packages: vec![p.into()],
        sync: SyncMode::Off,
        locked: None,
        build_deps: None,
    };
    let mut p = plan();
    // The first step of the layer on the base shares the base build's lists.
    p.layers[1].steps = vec![packages("hello"), packages("make")];
    assert_eq!(cache_key(&p, 1, 0), lists_key(&p));
    // A step after another one in its layer starts from another tree.
    let after_packages = cache_key(&p, 1, 1);
    assert_ne!(after_packages, lists_key(&p));
    // Whatever ran before it makes the key: another step before it, another key.
    let mut q = p.clone();
    q.layers[1].steps = vec![run("cp evil /usr/local/bin/apt-get"), packages("make")];
    assert_ne!(cache_key(&q, 1, 1), after_packages);
    // The same steps before it, the same key, whatever the step itself installs.
    q.layers[1].steps = vec![packages("hello"), packages("gcc")];
    assert_eq!(cache_key(&q, 1, 1), after_packages);
    // A later layer's first step is keyed by its parent.
    assert_eq!(cache_key(&p, 2, 0), id(2).short(16));
}
