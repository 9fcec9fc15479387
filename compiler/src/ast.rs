//! The spanned syntax tree of one spec file, as decoded from KDL (before any file is read).

use miette::SourceSpan;

/// A value with the span it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: SourceSpan,
}

impl<T> Spanned<T> {
    /// Wraps a value with its span.
    pub fn new(value: T, span: SourceSpan) -> Self {
        Spanned { value, span }
    }
}

/// One spec file.
#[derive(Debug, Default)]
pub struct SpecFile {
    /// `name "..."`.
    pub name: Option<Spanned<String>>,
    /// `base ...` (the first one; more are reported while decoding).
    pub base: Option<BaseDecl>,
    /// `extends "..."`.
    pub extends: Option<Spanned<String>>,
    /// `layer ... { }`, in order.
    pub layers: Vec<LayerDecl>,
    /// Whether a `name` node was written (even one that failed to decode).
    pub wrote_name: bool,
    /// Whether a `base` node was written (even one that failed to decode).
    pub wrote_base: bool,
}

/// A `base` node.
#[derive(Debug)]
pub struct BaseDecl {
    /// The node's name span (`base`).
    pub span: SourceSpan,
    /// `sync="..."`, for bases that are built by a package manager.
    pub sync: Option<Spanned<String>>,
    /// What it declares.
    pub kind: BaseKind,
}

/// The kinds of base.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a spec has one base: its size does not add up"
)]
pub enum BaseKind {
    /// `base "debian" suite=... [variant= arch= components= include= mirror=]`.
    Debian {
        suite: Spanned<String>,
        variant: Option<Spanned<String>>,
        arch: Option<Spanned<String>>,
        components: Option<Spanned<String>>,
        include: Option<Spanned<String>>,
        mirror: Option<Spanned<String>>,
        exclude_docs: bool,
    },
    /// `base "tar" "path"`.
    Tar { path: Spanned<String> },
    /// `base "oci" "path" [tag="..."]`.
    Oci {
        path: Spanned<String>,
        tag: Option<Spanned<String>>,
    },
    /// `base "scratch"`.
    Scratch,
}

/// A `layer` node.
#[derive(Debug)]
pub struct LayerDecl {
    /// The layer's name.
    pub name: Spanned<String>,
    /// The span of the node's name (`layer`).
    pub span: SourceSpan,
    /// The steps, in order.
    pub steps: Vec<StepDecl>,
}

/// A step node inside a layer.
#[derive(Debug)]
pub struct StepDecl {
    /// The span of the whole node, for errors at build time.
    pub span: SourceSpan,
    /// `sync="..."` on `run` and `packages`.
    pub sync: Option<Spanned<String>>,
    /// What the step does.
    pub kind: StepKind,
}

/// The kinds of step.
#[derive(Debug)]
pub enum StepKind {
    /// `packages NAME...`.
    Packages(Vec<Spanned<String>>),
    /// `run "command" [network=#bool] [user="name"]`.
    Run {
        command: Spanned<String>,
        network: bool,
        user: Option<Spanned<String>>,
    },
    /// `copy SRC DEST [mode= owner=]`.
    Copy {
        source: Spanned<String>,
        dest: Spanned<String>,
        mode: Option<Spanned<u32>>,
        owner: Option<Spanned<String>>,
    },
    /// `env KEY="VALUE"...`, in written order.
    Env(Vec<(Spanned<String>, Spanned<String>)>),
    /// `workdir PATH`.
    Workdir(Spanned<String>),
    /// `build-deps FILE [sync=]`: a `.dsc` or `debian/control` file.
    BuildDeps(Spanned<String>),
    /// `cache PATH [name=]`.
    Cache {
        path: Spanned<String>,
        name: Option<Spanned<String>>,
    },
}
