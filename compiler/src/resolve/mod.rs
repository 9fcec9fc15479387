//! The resolve stage's driver: a spec's path in, its plan with a span side table (or every error)
//! out. Stages: `load` reads the spec and the chain it extends, `lower` builds the plan,
//! checking values (`values`) and digesting the host files it reads (`hostfiles`).

mod hostfiles;
mod load;
mod lower;
mod oci;
mod values;

use std::path::Path;
use std::sync::Arc;

use crate::Compiled;
use crate::digest;
use crate::error::{Errors, SpecError};

use load::{File, load_chain};
use lower::Lower;

pub(crate) use load::line_col;
pub use load::{MAX_EXTENDS, MAX_SPEC_BYTES};

/// The most errors one compile reports (like clang's `-ferror-limit`, whose default is 20): past
/// a few dozen, more errors help nobody, and rendering each one costs a scan of its file.
pub const MAX_ERRORS: usize = 50;
pub use values::{ARCHES, DEFAULT_VARIANT, SYNC_MODES, VARIANTS, host_arch};

/// Where the root spec's text comes from.
pub(crate) enum RootText {
    Read,
    /// Bytes as if read from the file: the size limit and the UTF-8 check apply.
    Given(Vec<u8>),
}

pub(crate) fn compile(
    path: &Path,
    root_text: RootText,
    options: &crate::Options,
) -> Result<Compiled, Vec<SpecError>> {
    let mut found = Errors::default();
    let mut chain = load_chain(path, root_text, &mut found);
    if chain.is_empty() {
        let (mut errors, dropped) = found.into_parts();
        cap(&mut errors, dropped);
        return Err(errors);
    }
    let cache = options.digest_cache.as_ref().map(digest::Cache::new);
    let mut cx = Lower {
        files: &chain,
        errors: &mut found,
        cache: cache.as_ref(),
        env_bytes: 0,
        expanded: 0,
    };
    let lowered = cx.lower();
    let (mut errors, dropped) = found.into_parts();
    sort_errors(&chain, &mut errors);
    cap(&mut errors, dropped);
    match lowered {
        Some((lowered, locations)) if errors.is_empty() => {
            // The syntax trees are not needed past here: free them before the ids are computed,
            // which is when memory peaks.
            for file in &mut chain {
                file.ast = crate::ast::SpecFile::default();
            }
            let mut plan = lowered.into_plan();
            plan.spec = Some(path.to_owned());
            Ok(Compiled {
                plan,
                sources: chain.into_iter().map(|f| f.src).collect(),
                locations,
            })
        }
        _ => Err(errors),
    }
}

/// Keeps the first [`MAX_ERRORS`] errors, and says how many more there were (`dropped` were
/// counted and never kept).
fn cap(errors: &mut Vec<SpecError>, dropped: usize) {
    if errors.len() + dropped > MAX_ERRORS {
        let omitted = errors.len() + dropped - MAX_ERRORS.min(errors.len());
        errors.truncate(MAX_ERRORS);
        errors.push(SpecError::TooManyErrors {
            shown: MAX_ERRORS,
            omitted,
        });
    }
}

/// Orders errors as a reader meets them: by file (the compiled spec first, then what it extends),
/// then by position. The sort is stable, so errors at one position keep their stage order.
fn sort_errors(chain: &[File], errors: &mut [SpecError]) {
    use miette::Diagnostic;
    let key = |e: &SpecError| -> (usize, usize) {
        let Some(span) = e.labels().and_then(|mut l| l.next()).map(|l| *l.inner()) else {
            return (0, 0);
        };
        // Which file: the one whose text the error shows (compared by address, as reading the
        // span would scan the text up to it for every error).
        let rank = e
            .src()
            .and_then(|src| {
                chain
                    .iter()
                    .rev()
                    .position(|f| Arc::ptr_eq(f.src.inner(), src.inner()))
            })
            .unwrap_or(usize::MAX);
        (rank, span.offset())
    };
    errors.sort_by_cached_key(key);
}
