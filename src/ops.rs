//! The runtime commands: apply, run, shell, rm, ls. Progress events become lines on stderr.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use envc_compiler::Compiled;
use envc_runtime::backend::{BackendConfig, BackendInit, Capacity};
use envc_runtime::store::Meta;
use envc_runtime::{ApplyError, BackendKind, Event, Runtime, Store, Warning};
use miette::{LabeledSpan, MietteDiagnostic, Report};

use crate::{Ui, exit};

/// Opens the runtime for the store and backend the command line names.
pub fn runtime(ui: &Ui, store: &Path, backend: Option<&str>) -> Result<Runtime, u8> {
    let choice = match backend.map(str::parse::<BackendKind>) {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            ui.error(&e);
            return Err(exit::USAGE);
        }
        None => None,
    };
    let store = Store::open(store, choice).map_err(|e| {
        ui.error(&e.to_string());
        exit::FAILURE
    })?;
    let helper = std::env::current_exe().map_err(|e| {
        ui.error(&format!(
            "cannot find the envc binary to run sandboxes: {e}"
        ));
        exit::FAILURE
    })?;
    Ok(Runtime::new(store, helper))
}

/// Shows progress: on a terminal, a bar (layers done, the current layer, elapsed time) with build
/// output scrolling above it; otherwise plain lines prefixed by the layer's name.
pub struct Progress {
    quiet_output: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(layers: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(layers as u64);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{pos}/{len}] {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress {
            quiet_output: std::env::var_os("ENVC_QUIET").is_some(),
            bar,
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    pub fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Cleaned { count } => self.line(format!(
                "envc: removed {count} interrupted build{}",
                if count == 1 { "" } else { "s" }
            )),
            Event::Cached { layer, .. } => {
                self.line(format!("[{}] cached {}", layer.name, layer.id.short(12)));
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
            }
            Event::Waiting { layer, .. } => {
                self.line(format!(
                    "[{}] waiting for another envc building {}",
                    layer.name,
                    layer.id.short(12)
                ));
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("waiting for {}", layer.name));
                }
            }
            Event::Building { layer, .. } => {
                self.line(format!("[{}] building {}", layer.name, layer.id.short(12)));
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("building {}", layer.name));
                }
            }
            Event::Step { summary, .. } => {
                if let Some(bar) = &self.bar {
                    let mut s: String = summary.chars().take(60).collect();
                    if s.len() < summary.len() {
                        s.push('…');
                    }
                    bar.set_message(s);
                }
            }
            Event::Output { layer, line } => {
                if !self.quiet_output {
                    if self.bar.is_some() {
                        self.line(format!("\x1b[2m[{layer}]\x1b[0m {line}"));
                    } else {
                        self.line(format!("[{layer}] {line}"));
                    }
                }
            }
            Event::Warning(w) => match &self.bar {
                Some(bar) => bar.println(format!("envc: warning: {w}")),
                None => warn(&w),
            },
            Event::Realized => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
            Event::Built { layer, secs, .. } => {
                self.line(format!("[{}] built in {:.1} s", layer.name, secs));
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Renders an apply failure; a failed step points at its line in the spec.
pub fn report_apply_error(ui: &Ui, compiled: &Compiled, e: &ApplyError) {
    if let ApplyError::StepFailed {
        index,
        layer,
        step,
        reason,
        tail,
        log,
        ..
    } = e
        && let Some((src, span)) = compiled.step_location(*index, *step)
    {
        let mut help = String::new();
        if !tail.is_empty() {
            help.push_str("last lines of output:\n");
            for line in tail
                .iter()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                help.push_str("  ");
                help.push_str(line);
                help.push('\n');
            }
        }
        help.push_str(&format!("full log: {}", log.display()));
        let diag = MietteDiagnostic::new(format!(
            "layer `{layer}`: step {} failed: {reason}",
            step + 1
        ))
        .with_code("envc::apply::step_failed")
        .with_label(LabeledSpan::at(span, "this step failed"))
        .with_help(help);
        let report = Report::new(diag).with_source_code(src.clone());
        ui.report(report.as_ref());
        return;
    }
    ui.error(&e.to_string());
}

pub fn apply(ui: &Ui, rt: &Runtime, compiled: &Compiled, reset: bool) -> Result<(), u8> {
    let mut progress = Progress::new(compiled.plan.layers.len());
    let result = rt.apply(&compiled.plan, reset, &mut |e| progress.event(e));
    drop(progress);
    match result {
        Ok(applied) => {
            let _ = writeln!(
                std::io::stderr(),
                "envc: {} built, {} cached; root {}",
                applied.built,
                applied.cached,
                if applied.fresh_root {
                    "created"
                } else {
                    "kept"
                }
            );
            println!("{}", applied.root.display());
            Ok(())
        }
        Err(e) => {
            report_apply_error(ui, compiled, &e);
            Err(exit::FAILURE)
        }
    }
}

pub fn run(
    ui: &Ui,
    rt: &Runtime,
    compiled: &Compiled,
    argv: Vec<String>,
    keep: bool,
    network: bool,
) -> Result<u8, u8> {
    let mut progress = Progress::new(compiled.plan.layers.len());
    // The progress bar must be gone before the command takes the terminal.
    let result = rt.run(&compiled.plan, argv, keep, network, &mut |e| {
        progress.event(e)
    });
    drop(progress);
    match result {
        Ok(code) => Ok(u8::try_from(code).unwrap_or(exit::FAILURE)),
        Err(e) => {
            report_apply_error(ui, compiled, &e);
            Err(exit::FAILURE)
        }
    }
}

pub fn rm(ui: &Ui, rt: &Runtime, name: &str) -> Result<(), u8> {
    match rt.remove_root(name) {
        Ok(true) => Ok(()),
        Ok(false) => {
            ui.error(&format!(
                "no working root named `{name}` in {}",
                rt.store.path().display()
            ));
            Err(exit::FAILURE)
        }
        Err(e) => {
            ui.error(&e.to_string());
            Err(exit::FAILURE)
        }
    }
}

fn human_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn ago(secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let d = now.saturating_sub(secs);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

pub fn ls(ui: &Ui, rt: &Runtime, json: bool) -> Result<(), u8> {
    let layers = rt.store.layers().map_err(|e| {
        ui.error(&e.to_string());
        exit::FAILURE
    })?;
    let roots = rt.store.roots().map_err(|e| {
        ui.error(&e.to_string());
        exit::FAILURE
    })?;
    let capacity = rt.store.backend().capacity();
    if json {
        let lvm = match rt.store.backend().config() {
            BackendConfig::Lvm(c) => {
                let usage = capacity.as_ref().and_then(|c| c.usage.as_ref());
                Some(serde_json::json!({
                    "vg": c.vg,
                    "pool": c.pool,
                    "fs": c.fs,
                    "volume_size": c.volume_size,
                    "data_percent": usage.map(|u| u.data),
                    "metadata_percent": usage.map(|u| u.metadata),
                }))
            }
            _ => None,
        };
        let value = serde_json::json!({
            "store": rt.store.path(),
            "backend": rt.store.backend().kind().to_string(),
            "lvm": lvm,
            "layers": layers,
            "roots": roots,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    let by_id: BTreeMap<_, &Meta> = layers.iter().map(|m| (m.id, m)).collect();
    let mut children: BTreeMap<Option<envc_plan::LayerId>, Vec<&Meta>> = BTreeMap::new();
    for m in &layers {
        let parent = m.parent.filter(|p| by_id.contains_key(p));
        children.entry(parent).or_default().push(m);
    }
    for v in children.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{} ({} backend, {} layers, {})\n",
        rt.store.path().display(),
        rt.store.backend().kind(),
        layers.len(),
        human_size(layers.iter().map(|m| m.size).sum())
    ));
    if let Some(c) = &capacity {
        out.push_str(&format!("{}\n", capacity_line(c)));
    }
    fn walk(
        out: &mut String,
        children: &BTreeMap<Option<envc_plan::LayerId>, Vec<&Meta>>,
        roots: &[envc_runtime::store::RootRecord],
        parent: Option<envc_plan::LayerId>,
        prefix: &str,
    ) {
        let Some(list) = children.get(&parent) else {
            return;
        };
        for (i, m) in list.iter().enumerate() {
            let last = i + 1 == list.len();
            let users: Vec<&str> = roots
                .iter()
                .filter(|r| r.chain.last() == Some(&m.id))
                .map(|r| r.name.as_str())
                .collect();
            let users = if users.is_empty() {
                String::new()
            } else {
                format!("  <- root {}", users.join(", "))
            };
            out.push_str(&format!(
                "{prefix}{} {} {}  {}  used {}{users}\n",
                if last { "└─" } else { "├─" },
                m.name,
                m.id.short(12),
                human_size(m.size),
                ago(m.last_used)
            ));
            let next = format!("{prefix}{}", if last { "   " } else { "│  " });
            walk(out, children, roots, Some(m.id), &next);
        }
    }
    walk(&mut out, &children, &roots, None, "");
    print!("{out}");
    Ok(())
}

/// One line about a backend's pool: `thin pool VG/POOL: data 12.0%, metadata 3.1%`.
fn capacity_line(c: &Capacity) -> String {
    match (&c.usage, &c.unknown) {
        (Some(u), _) => format!(
            "{}: data {:.1}%, metadata {:.1}%",
            c.pool, u.data, u.metadata
        ),
        (None, reason) => format!(
            "{}: usage unknown ({})",
            c.pool,
            reason.as_deref().unwrap_or("not reported")
        ),
    }
}

/// Prints a warning.
pub fn warn(w: &Warning) {
    let _ = writeln!(std::io::stderr().lock(), "envc: warning: {w}");
}

/// Parses `30d`, `12h`, `45m`, `10s` or plain seconds.
pub fn parse_age(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses `20G`, `500M`, `64K`, `1024` (binary units; an optional trailing `B` or `iB`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let unit = unit.trim_end_matches("iB").trim_end_matches('B');
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub fn gc(
    ui: &Ui,
    rt: &Runtime,
    older_than: Option<&str>,
    keep_bytes: Option<&str>,
    dry_run: bool,
) -> Result<(), u8> {
    let older_than = match older_than {
        Some(a) => Some(parse_age(a).ok_or_else(|| {
            ui.error(&format!(
                "--older-than `{a}` is not an age like 30d, 12h, 45m or 10s"
            ));
            exit::USAGE
        })?),
        None if keep_bytes.is_none() => Some(7 * 86400),
        None => None,
    };
    let keep_bytes = match keep_bytes {
        Some(b) => Some(parse_size(b).ok_or_else(|| {
            ui.error(&format!(
                "--keep-bytes `{b}` is not a size like 20G, 500M or 1024"
            ));
            exit::USAGE
        })?),
        None => None,
    };
    let policy = envc_runtime::maintain::GcPolicy {
        older_than,
        keep_bytes,
        dry_run,
    };
    let report = envc_runtime::maintain::gc(&rt.store, policy).map_err(|e| {
        ui.error(&e.to_string());
        exit::FAILURE
    })?;
    for w in &report.warnings {
        warn(w);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for m in &report.removed {
        println!(
            "{verb} {} {} ({}, {})",
            m.name,
            m.id.short(12),
            human_size(m.size),
            m.env
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "envc: {verb} {} layer{}, {} freed; {} in use by working roots",
        report.removed.len(),
        if report.removed.len() == 1 { "" } else { "s" },
        human_size(report.freed),
        report.in_use
    );
    Ok(())
}

pub fn why(ui: &Ui, rt: &Runtime, compiled: &Compiled, json: bool) -> Result<(), u8> {
    let layers = envc_runtime::maintain::why(&rt.store, &compiled.plan).map_err(|e| {
        ui.error(&e.to_string());
        exit::FAILURE
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&layers).unwrap_or_default()
        );
        return Ok(());
    }
    let width = layers.iter().map(|l| l.name.len()).max().unwrap_or(4);
    let mut out = String::new();
    for l in &layers {
        let state = if l.cached { "cached" } else { "missing" };
        out.push_str(&format!("{:width$}  {}  {state}\n", l.name, l.id.short(12)));
        if l.cached {
            continue;
        }
        let pad = " ".repeat(width + 2);
        match (&l.nearest, &l.because_of) {
            (_, Some(cause)) if l.differs.iter().all(|d| d.path == "parent") => {
                out.push_str(&format!(
                    "{pad}because its parent changed: the first missing layer is `{cause}`\n"
                ));
                continue;
            }
            (None, _) => {
                out.push_str(&format!(
                    "{pad}no stored layer named `{}` to compare with\n",
                    l.name
                ));
                continue;
            }
            (Some(m), _) => {
                out.push_str(&format!(
                    "{pad}nearest stored: {} {} (built by {}, used {})\n",
                    m.name,
                    m.id.short(12),
                    m.env,
                    ago(m.last_used)
                ));
            }
        }
        for d in &l.differs {
            out.push_str(&format!(
                "{pad}  {}: {} -> {}\n",
                d.path, d.stored, d.wanted
            ));
        }
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes() {
        assert_eq!(parse_age("30d"), Some(30 * 86400));
        assert_eq!(parse_age("0"), Some(0));
        assert_eq!(parse_age("5x"), None);
        assert_eq!(parse_size("20G"), Some(20 << 30));
        assert_eq!(parse_size("500MiB"), Some(500 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("lots"), None);
    }
}

/// `envc store init` and `envc store recover`.
pub fn store(ui: &Ui, store: &Path, command: crate::cli::StoreCommand) -> Result<(), u8> {
    use envc_runtime::backend::lvm::{FsKind, LvmInit};
    use envc_runtime::maintain::{self, Recovered};
    let fail = |e: &dyn std::fmt::Display| {
        ui.error(&e.to_string());
        exit::FAILURE
    };
    let size = |opt: &str, v: Option<String>| -> Result<Option<u64>, u8> {
        v.map(|s| {
            parse_size(&s).ok_or_else(|| {
                ui.error(&format!("{opt} `{s}` is not a size like 20G or 512M"));
                exit::USAGE
            })
        })
        .transpose()
    };
    let print = |r: &Recovered| {
        let mut out = std::io::stdout().lock();
        for id in &r.adopted {
            let _ = writeln!(out, "adopted layer {}", id.short(12));
        }
        for id in &r.forgotten {
            let _ = writeln!(out, "forgot layer {} (its volume is gone)", id.short(12));
        }
        for name in &r.roots {
            let _ = writeln!(out, "recovered working root {name}");
        }
        if r.removed_builds > 0 {
            let _ = writeln!(
                out,
                "removed {} interrupted build{}",
                r.removed_builds,
                if r.removed_builds == 1 { "" } else { "s" }
            );
        }
    };
    match command {
        crate::cli::StoreCommand::Init {
            backend: _,
            vg,
            pool,
            size: pool_size,
            volume_size,
            fs,
            loop_file,
        } => {
            let fs: FsKind = fs.parse().map_err(|e: String| {
                ui.error(&e);
                exit::USAGE
            })?;
            let init = LvmInit {
                vg,
                pool,
                size: size("--size", pool_size)?,
                volume_size: size("--volume-size", volume_size)?,
                fs,
                loop_file,
            };
            let st = Store::init(store, &BackendInit::Lvm(init)).map_err(|e| fail(&e))?;
            // A pool that already holds envc's volumes is adopted.
            let recovered = maintain::recover(&st).map_err(|e| fail(&e))?;
            print(&recovered);
            if let BackendConfig::Lvm(c) = st.backend().config() {
                let _ = writeln!(
                    std::io::stderr(),
                    "envc: store {} uses thin pool {}/{} ({} volumes of {}); {}",
                    st.path().display(),
                    c.vg,
                    c.pool,
                    match c.fs {
                        FsKind::Ext4 => "ext4",
                        FsKind::Xfs => "xfs",
                    },
                    human_size(c.volume_size),
                    st.backend()
                        .capacity()
                        .map(|c| capacity_line(&c))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        crate::cli::StoreCommand::Recover => {
            let st = Store::open(store, None).map_err(|e| fail(&e))?;
            let r = maintain::recover(&st).map_err(|e| fail(&e))?;
            if !r.applicable {
                let _ = writeln!(
                    std::io::stderr(),
                    "envc: the {} backend keeps its layers as files in the store: nothing to recover",
                    st.backend().kind()
                );
                return Ok(());
            }
            print(&r);
            Ok(())
        }
    }
}
