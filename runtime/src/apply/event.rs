//! The events the runtime reports while it works; the binary turns them into lines or bars.
#![forbid(unsafe_code)]

use envc_plan::Layer;

use crate::warning::Warning;

/// What the runtime reports while it works; the binary turns these into lines or bars.
#[derive(Debug)]
pub enum Event<'a> {
    /// Leftovers of interrupted builds were removed.
    Cleaned {
        /// How many staging areas.
        count: usize,
    },
    /// A layer is in the store.
    Cached {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
    },
    /// Another envc is building this layer; waiting for it.
    Waiting {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
    },
    /// A layer build starts.
    Building {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
    },
    /// A step starts.
    Step {
        /// The layer's index.
        index: usize,
        /// The step's index in the layer.
        step: usize,
        /// A one-line summary.
        summary: String,
    },
    /// A line of build output.
    Output {
        /// The layer's name.
        layer: &'a str,
        /// The line.
        line: String,
    },
    /// Every layer is stored; what follows is the working root or the command.
    Realized,
    /// Something worth telling that does not stop the work (a nearly full pool, ...).
    Warning(Warning),
    /// A layer was pulled from the remote cache, checked and sealed.
    Pulled {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
        /// Compressed bytes downloaded.
        bytes: u64,
        /// Seconds it took.
        secs: f64,
    },
    /// A layer was built and sealed.
    Built {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
        /// Seconds it took.
        secs: f64,
    },
}
