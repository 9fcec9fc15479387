//! Turns the runtime's progress events into a bar on a terminal, plain lines elsewhere.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

use envc_runtime::Event;

use crate::report;

/// Shows progress: on a terminal, a bar (layers done, the current layer, elapsed time) with build
/// output scrolling above it; otherwise plain lines prefixed by the layer's name.
pub struct Progress {
    quiet_output: bool,
    bar: Option<indicatif::ProgressBar>,
    layers: usize,
    /// For `run` and `shell`: the lines of cached layers, held back (and no bar) until
    /// something else happens; a warm run prints nothing of envc's own.
    held: Option<Vec<String>>,
    done: u64,
}

fn new_bar(layers: usize) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(layers as u64);
        let style =
            indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    })
}

impl Progress {
    /// Progress for a plan of `layers` layers; `ENVC_QUIET` hides build output.
    pub fn new(layers: usize) -> Progress {
        Progress {
            quiet_output: std::env::var_os("ENVC_QUIET").is_some(),
            bar: new_bar(layers),
            layers,
            held: None,
            done: 0,
        }
    }

    /// Progress for `run` and `shell`: silent while every layer is cached.
    pub fn for_run(layers: usize) -> Progress {
        Progress {
            quiet_output: std::env::var_os("ENVC_QUIET").is_some(),
            bar: None,
            layers,
            held: Some(Vec::new()),
            done: 0,
        }
    }

    /// Something other than a cached layer happens: what was held back is shown, and the bar
    /// starts.
    fn release(&mut self) {
        if let Some(held) = self.held.take() {
            self.bar = new_bar(self.layers);
            if let Some(bar) = &self.bar {
                bar.set_position(self.done);
            }
            for l in held {
                self.line(l);
            }
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

    /// A warning, above the bar when there is one.
    pub fn warning(&self, w: &dyn Display) {
        self.line(report::warning(w));
    }

    /// Shows one event.
    pub fn event(&mut self, e: Event<'_>) {
        if report::json() {
            json_event(&e);
            return;
        }
        match &e {
            Event::Cached { layer, .. } if self.held.is_some() => {
                self.done += 1;
                let line = format!("[{}] cached {}", layer.name, layer.id.short(12));
                if let Some(held) = &mut self.held {
                    held.push(line);
                }
                return;
            }
            Event::Realized | Event::Step { .. } if self.held.is_some() => return,
            _ => self.release(),
        }
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
            Event::Warning(w) => self.warning(&w),
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
            Event::Pulled {
                layer, bytes, secs, ..
            } => {
                self.line(format!(
                    "[{}] pulled {} ({}) in {:.1} s",
                    layer.name,
                    layer.id.short(12),
                    crate::human::size(bytes),
                    secs
                ));
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

/// `e` as a JSON event on stderr (`--json`).
fn json_event(e: &Event<'_>) {
    use serde_json::json;
    let layer = |index: &usize, l: &envc_plan::Layer| json!({ "index": index, "layer": l.name, "id": l.id.to_hex() });
    match e {
        Event::Cleaned { count } => report::emit("cleaned", json!({ "count": count })),
        Event::Cached { index, layer: l } => report::emit("layer-cached", layer(index, l)),
        Event::Waiting { index, layer: l } => report::emit("layer-waiting", layer(index, l)),
        Event::Building { index, layer: l } => report::emit("layer-started", layer(index, l)),
        Event::Step {
            index,
            step,
            summary,
        } => report::emit(
            "step-started",
            json!({ "index": index, "step": step + 1, "summary": summary }),
        ),
        Event::Output { layer, line } => {
            report::emit("output", json!({ "layer": layer, "line": line }));
        }
        Event::Warning(w) => report::warn(w),
        Event::Realized => report::emit("realized", json!({})),
        Event::Built {
            index,
            layer: l,
            secs,
        } => {
            let mut f = layer(index, l);
            f["secs"] = json!(secs);
            report::emit("layer-built", f);
        }
        Event::Pulled {
            index,
            layer: l,
            bytes,
            secs,
        } => {
            let mut f = layer(index, l);
            f["bytes"] = json!(bytes);
            f["secs"] = json!(secs);
            report::emit("layer-pulled", f);
        }
    }
}
