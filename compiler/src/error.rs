//! Every way a spec can be wrong, each with a stable code, a label on the exact span and help.

use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// A spec file's text with the name it is shown under.
pub type Src = NamedSource<Arc<String>>;

/// How many errors are kept as they are found; the rest are only counted. The report shows the
/// first [`crate::MAX_ERRORS`] of those kept, by position, so this is a margin for sorting.
const KEEP: usize = 4 * crate::MAX_ERRORS;

/// Errors as they are found: the first [`KEEP`] are kept, the others counted, so a spec of a
/// million mistakes costs a counter, not a million diagnostics.
#[derive(Debug, Default)]
pub struct Errors {
    kept: Vec<SpecError>,
    dropped: usize,
}

impl Errors {
    /// Records an error.
    pub fn push(&mut self, error: SpecError) {
        if self.kept.len() < KEEP {
            self.kept.push(error);
        } else {
            self.dropped += 1;
        }
    }

    /// Whether further errors would only be counted: work that only makes an error's text (a
    /// "did you mean", a position in another file) can be skipped then.
    pub fn is_full(&self) -> bool {
        self.kept.len() >= KEEP
    }

    /// Whether no error was found.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The errors kept, and how many more were found.
    pub(crate) fn into_parts(self) -> (Vec<SpecError>, usize) {
        (self.kept, self.dropped)
    }
}

/// One mistake in a spec.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SpecError {
    /// The spec file (or a file it extends) cannot be read.
    #[error("cannot read spec `{path}`: {reason}")]
    #[diagnostic(
        code(envc::spec::unreadable),
        help("check that the path exists and is a readable KDL file")
    )]
    Unreadable { path: String, reason: String },

    /// The spec (not a file it extends) is not a regular file: a FIFO, a device, a directory.
    #[error("spec `{path}` is {kind}, not a regular file")]
    #[diagnostic(
        code(envc::spec::not_a_file),
        help(
            "envc reads specs only from regular files; write the spec to a file and give its path"
        )
    )]
    NotAFile { path: String, kind: &'static str },

    /// The spec (not a file it extends) is larger than envc reads.
    #[error("spec `{path}` is larger than the limit of {limit} bytes")]
    #[diagnostic(
        code(envc::spec::too_large),
        help(
            "a spec is read only up to {limit} bytes (16 MiB); split it with `extends`, or move data into files that `copy` reads"
        )
    )]
    TooLarge { path: String, limit: u64 },

    /// A file that a spec extends is not a regular file.
    #[error("cannot extend `{path}`: it is {kind}, not a regular file")]
    #[diagnostic(
        code(envc::spec::extends_not_a_file),
        help("`extends` reads only regular files")
    )]
    ExtendsNotAFile {
        #[source_code]
        src: Src,
        #[label("{kind}")]
        span: SourceSpan,
        path: String,
        kind: &'static str,
    },

    /// A file that a spec extends is larger than envc reads.
    #[error(
        "cannot extend `{path}`: the specs of the chain are larger than the limit of {limit} bytes together"
    )]
    #[diagnostic(
        code(envc::spec::extends_too_large),
        help(
            "a spec and the specs it extends are read only up to {limit} bytes (16 MiB) together"
        )
    )]
    ExtendsTooLarge {
        #[source_code]
        src: Src,
        #[label("larger than {limit} bytes")]
        span: SourceSpan,
        path: String,
        limit: u64,
    },

    /// A spec file that is not UTF-8 text.
    #[error("spec is not valid UTF-8: byte 0x{byte:02x} at line {line}, column {column}")]
    #[diagnostic(
        code(envc::spec::invalid_utf8),
        help("KDL documents are UTF-8 text; save the file as UTF-8")
    )]
    InvalidUtf8 {
        #[source_code]
        src: Src,
        #[label("invalid UTF-8")]
        span: SourceSpan,
        byte: u8,
        line: usize,
        column: usize,
    },

    /// Children blocks (or block comments) nested deeper than the parser allows.
    #[error("{what} nested more than {limit} levels deep")]
    #[diagnostic(
        code(envc::spec::nesting_too_deep),
        help("envc reads at most {limit} levels of nested blocks and comments; a spec needs 2")
    )]
    NestingTooDeep {
        #[source_code]
        src: Src,
        #[label("one level too deep")]
        span: SourceSpan,
        what: &'static str,
        limit: usize,
    },

    /// Slashdashed children blocks nested deeper than envc reads.
    #[error("slashdashed children blocks are nested more than {limit} levels deep")]
    #[diagnostic(
        code(envc::spec::slashdash_too_deep),
        help(
            "envc reads at most {limit} slashdashed (`/-`) children blocks inside each other; slashdash the outermost block only, or delete the commented-out text"
        )
    )]
    SlashdashTooDeep {
        #[source_code]
        src: Src,
        #[label("one slashdashed block too deep")]
        span: SourceSpan,
        limit: usize,
    },

    /// More words (nodes, arguments, properties) than envc parses in one spec.
    #[error("the spec has more than {limit} words (nodes, arguments and properties)")]
    #[diagnostic(
        code(envc::spec::too_many_words),
        help(
            "envc parses at most {limit} words per spec file; a spec this big is likely generated by mistake"
        )
    )]
    TooManyWords {
        #[source_code]
        src: Src,
        #[label("word {} starts here", limit + 1)]
        span: SourceSpan,
        limit: usize,
    },

    /// Text after a lexical error that cannot be read safely.
    #[error("cannot read the spec past {reason}")]
    #[diagnostic(
        code(envc::spec::unreadable_text),
        help(
            "fix this first: what follows it is too long or too nested to be read while it is wrong"
        )
    )]
    UnreadableText {
        #[source_code]
        src: Src,
        #[label("{reason}")]
        span: SourceSpan,
        reason: &'static str,
    },

    /// A chain of layers longer than the backends can mount.
    #[error("the environment has {layers} layers, more than the {limit} a root can stack")]
    #[diagnostic(code(envc::spec::chain_too_deep))]
    ChainTooDeep {
        #[source_code]
        src: Src,
        #[label("layer {position}, one past the limit")]
        span: SourceSpan,
        layers: usize,
        position: usize,
        limit: usize,
        #[help]
        help: String,
    },

    /// More errors than are worth showing; the first ones are shown.
    #[error("{omitted} more errors not shown")]
    #[diagnostic(
        code(envc::spec::too_many_errors),
        help("envc shows the first {shown} errors; fix them and check again")
    )]
    TooManyErrors { shown: usize, omitted: usize },

    /// The text is not valid KDL v2.
    #[error("{message}")]
    #[diagnostic(code(envc::spec::syntax))]
    Syntax {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: Option<String>,
    },

    /// A node envc does not know.
    #[error("unknown node `{name}` {place}")]
    #[diagnostic(code(envc::spec::unknown_node))]
    UnknownNode {
        #[source_code]
        src: Src,
        #[label("not a known node")]
        span: SourceSpan,
        name: String,
        place: &'static str,
        #[help]
        help: String,
    },

    /// A property a node does not take.
    #[error("`{node}` has no property `{name}`")]
    #[diagnostic(code(envc::spec::unknown_property))]
    UnknownProperty {
        #[source_code]
        src: Src,
        #[label("unknown property")]
        span: SourceSpan,
        node: String,
        name: String,
        #[help]
        help: String,
    },

    /// The same property given twice on one node.
    #[error("property `{name}` is given twice")]
    #[diagnostic(code(envc::spec::duplicate_property), help("remove one of them"))]
    DuplicateProperty {
        #[source_code]
        src: Src,
        #[label("given again here")]
        span: SourceSpan,
        #[label("first given here")]
        first: SourceSpan,
        name: String,
    },

    /// A required argument is missing.
    #[error("`{node}` needs {what}")]
    #[diagnostic(code(envc::spec::missing_argument))]
    MissingArgument {
        #[source_code]
        src: Src,
        #[label("missing {what}")]
        span: SourceSpan,
        node: String,
        what: String,
        #[help]
        help: String,
    },

    /// More arguments than the node takes.
    #[error("`{node}` takes {expected}")]
    #[diagnostic(
        code(envc::spec::too_many_arguments),
        help("remove the extra argument")
    )]
    TooManyArguments {
        #[source_code]
        src: Src,
        #[label("unexpected argument")]
        span: SourceSpan,
        node: String,
        expected: String,
    },

    /// A value of the wrong type.
    #[error("expected {expected}, found {found}")]
    #[diagnostic(code(envc::spec::wrong_type))]
    WrongType {
        #[source_code]
        src: Src,
        #[label("this is {found}")]
        span: SourceSpan,
        expected: String,
        found: &'static str,
        #[help]
        help: Option<String>,
    },

    /// A block on a node that takes none.
    #[error("`{node}` does not take a block")]
    #[diagnostic(
        code(envc::spec::unexpected_block),
        help("only `layer` nodes have a `{{ ... }}` block")
    )]
    UnexpectedBlock {
        #[source_code]
        src: Src,
        #[label("unexpected block")]
        span: SourceSpan,
        node: String,
    },

    /// The spec has no `name`.
    #[error("the spec has no `name`")]
    #[diagnostic(
        code(envc::spec::missing_name),
        help("add a line such as `name \"rust-ci\"` at the top of the spec")
    )]
    MissingName {
        #[source_code]
        src: Src,
        #[label("expected `name` in this spec")]
        span: SourceSpan,
    },

    /// A node that may appear once appears again.
    #[error("`{node}` is given more than once")]
    #[diagnostic(code(envc::spec::duplicate_node), help("keep exactly one `{node}`"))]
    DuplicateNode {
        #[source_code]
        src: Src,
        #[label("given again here")]
        span: SourceSpan,
        #[label("first given here")]
        first: SourceSpan,
        node: String,
    },

    /// Neither the spec nor anything it extends has a `base`.
    #[error("the spec has no `base`")]
    #[diagnostic(
        code(envc::spec::missing_base),
        help(
            "add one of `base \"debian\" suite=\"bookworm\"`, `base \"tar\" \"rootfs.tar.gz\"` or `base \"scratch\"`, or `extends` a spec that has one"
        )
    )]
    MissingBase {
        #[source_code]
        src: Src,
        #[label("expected `base` in this spec")]
        span: SourceSpan,
    },

    /// More than one base along the spec and what it extends.
    #[error("the environment has more than one `base`")]
    #[diagnostic(code(envc::spec::multiple_bases))]
    MultipleBases {
        #[source_code]
        src: Src,
        #[label("another base")]
        span: SourceSpan,
        #[label("first base")]
        first: Option<SourceSpan>,
        #[help]
        help: String,
    },

    /// An environment or layer name that is not a short identifier.
    #[error("invalid {what} `{value}`")]
    #[diagnostic(
        code(envc::spec::invalid_name),
        help(
            "use 1 to 64 characters from a-z, A-Z, 0-9, `.`, `_` and `-`, starting with a letter or digit"
        )
    )]
    InvalidName {
        #[source_code]
        src: Src,
        #[label("not a valid {what}")]
        span: SourceSpan,
        what: &'static str,
        value: String,
    },

    /// A layer named like the base layer.
    #[error("the layer name `base` is reserved for the base layer")]
    #[diagnostic(
        code(envc::spec::reserved_layer_name),
        help("choose another name for this layer")
    )]
    ReservedLayerName {
        #[source_code]
        src: Src,
        #[label("reserved name")]
        span: SourceSpan,
    },

    /// Two layers with the same name.
    #[error("there is already a layer named `{name}`")]
    #[diagnostic(code(envc::spec::duplicate_layer))]
    DuplicateLayer {
        #[source_code]
        src: Src,
        #[label("second layer named `{name}`")]
        span: SourceSpan,
        #[label("first defined here")]
        first: Option<SourceSpan>,
        name: String,
        #[help]
        help: String,
    },

    /// A layer without steps.
    #[error("layer `{name}` has no steps")]
    #[diagnostic(
        code(envc::spec::empty_layer),
        help(
            "give the layer at least one of `packages`, `run`, `copy`, `env` or `workdir`, or remove it"
        )
    )]
    EmptyLayer {
        #[source_code]
        src: Src,
        #[label("this layer is empty")]
        span: SourceSpan,
        name: String,
    },

    /// A base kind envc does not know.
    #[error("unknown base `{kind}`")]
    #[diagnostic(code(envc::spec::unknown_base))]
    UnknownBase {
        #[source_code]
        src: Src,
        #[label("not a known base")]
        span: SourceSpan,
        kind: String,
        #[help]
        help: String,
    },

    /// A required property is missing.
    #[error("`{node}` needs the property `{name}`")]
    #[diagnostic(code(envc::spec::missing_property))]
    MissingProperty {
        #[source_code]
        src: Src,
        #[label("missing `{name}=...`")]
        span: SourceSpan,
        node: String,
        name: String,
        #[help]
        help: String,
    },

    /// A value outside what a property or argument accepts.
    #[error("invalid {what} `{value}`")]
    #[diagnostic(code(envc::spec::invalid_value))]
    InvalidValue {
        #[source_code]
        src: Src,
        #[label("{reason}")]
        span: SourceSpan,
        what: String,
        value: String,
        reason: String,
        #[help]
        help: Option<String>,
    },

    /// A package name that apt would not accept.
    #[error("invalid package `{package}`")]
    #[diagnostic(
        code(envc::spec::invalid_package),
        help(
            "write `NAME` or `NAME=VERSION`, e.g. `hello` or `hello=2.10-3`; names use a-z, 0-9, `+`, `-` and `.`"
        )
    )]
    InvalidPackage {
        #[source_code]
        src: Src,
        #[label("{reason}")]
        span: SourceSpan,
        package: String,
        reason: String,
    },

    /// A package listed twice in one step.
    #[error("package `{package}` is listed twice")]
    #[diagnostic(
        code(envc::spec::duplicate_package),
        help("list each package once per `packages` step")
    )]
    DuplicatePackage {
        #[source_code]
        src: Src,
        #[label("listed again here")]
        span: SourceSpan,
        #[label("first listed here")]
        first: SourceSpan,
        package: String,
    },

    /// A copy source that does not exist.
    #[error("copy source `{path}` does not exist")]
    #[diagnostic(code(envc::spec::copy_source_missing))]
    CopySourceMissing {
        #[source_code]
        src: Src,
        #[label("no such file or directory")]
        span: SourceSpan,
        path: String,
        #[help]
        help: String,
    },

    /// A copy source outside the spec's directory.
    #[error("copy source `{path}` {reason}")]
    #[diagnostic(
        code(envc::spec::copy_source_escapes),
        help(
            "copy sources are relative to the spec's directory and must stay inside it, so that the spec's directory holds everything that defines the environment"
        )
    )]
    CopySourceEscapes {
        #[source_code]
        src: Src,
        #[label("outside the spec's directory")]
        span: SourceSpan,
        path: String,
        reason: String,
    },

    /// A copy source that cannot be read or copied.
    #[error("cannot copy `{path}`: {reason}")]
    #[diagnostic(
        code(envc::spec::copy_source_unreadable),
        help("copy sources must be readable regular files, directories and symbolic links")
    )]
    CopySourceUnreadable {
        #[source_code]
        src: Src,
        #[label("cannot be copied")]
        span: SourceSpan,
        path: String,
        reason: String,
    },

    /// A relative destination inside the root.
    #[error("`{path}` is not an absolute path")]
    #[diagnostic(code(envc::spec::relative_destination))]
    RelativeDestination {
        #[source_code]
        src: Src,
        #[label("relative path")]
        span: SourceSpan,
        path: String,
        #[help]
        help: String,
    },

    /// A path inside the root that is not usable.
    #[error("invalid path `{path}`")]
    #[diagnostic(code(envc::spec::invalid_path))]
    InvalidPath {
        #[source_code]
        src: Src,
        #[label("{reason}")]
        span: SourceSpan,
        path: String,
        reason: String,
        #[help]
        help: Option<String>,
    },

    /// A mode that is not octal permission bits.
    #[error("invalid mode `{value}`")]
    #[diagnostic(
        code(envc::spec::invalid_mode),
        help(
            "write the mode as an octal string of permission bits, e.g. mode=\"0644\" or mode=\"0755\""
        )
    )]
    InvalidMode {
        #[source_code]
        src: Src,
        #[label("{reason}")]
        span: SourceSpan,
        value: String,
        reason: String,
    },

    /// An owner or user that is not a user name or number.
    #[error("invalid {what} `{value}`")]
    #[diagnostic(code(envc::spec::invalid_user))]
    InvalidUser {
        #[source_code]
        src: Src,
        #[label("not a valid {what}")]
        span: SourceSpan,
        what: &'static str,
        value: String,
        #[help]
        help: String,
    },

    /// An environment variable name that is not valid.
    #[error("invalid environment variable name `{name}`")]
    #[diagnostic(
        code(envc::spec::invalid_env_name),
        help("names use A-Z, a-z, 0-9 and `_`, and do not start with a digit")
    )]
    InvalidEnvName {
        #[source_code]
        src: Src,
        #[label("invalid name")]
        span: SourceSpan,
        name: String,
    },

    /// A `build-deps` step's file that cannot be used.
    #[error("cannot use `{path}` for build-deps: it {reason}")]
    #[diagnostic(
        code(envc::spec::build_deps_unusable),
        help(
            "give a source package's .dsc or its debian/control, relative to the spec's directory"
        )
    )]
    BuildDepsUnusable {
        #[source_code]
        src: Src,
        #[label("this file")]
        span: SourceSpan,
        path: String,
        reason: String,
    },

    /// A `cache` step's `name=` that cannot name a directory of the store.
    #[error("invalid cache name `{name}`")]
    #[diagnostic(
        code(envc::spec::invalid_cache_name),
        help("1 to 64 of A-Z, a-z, 0-9, `.`, `_` and `-`, not starting with `.`")
    )]
    InvalidCacheName {
        #[source_code]
        src: Src,
        #[label("invalid name")]
        span: SourceSpan,
        name: String,
    },

    /// An `env` entry that makes the environment in effect larger than [`env::MAX_ENV_BYTES`].
    #[error("the environment grows to {total} bytes at `{name}`, more than {limit} bytes")]
    #[diagnostic(
        code(envc::spec::env_too_large),
        help(
            "every step is given the whole environment (each variable as `NAME=value` and a NUL), and Linux passes it with the arguments in at most 2 MiB; envc allows 1 MiB (1048576 bytes) in all: shorten the values, or stop copying a large value into many variables"
        )
    )]
    EnvTooLarge {
        #[source_code]
        src: Src,
        #[label("the environment passes {limit} bytes here")]
        span: SourceSpan,
        name: String,
        total: usize,
        limit: usize,
    },

    /// An expansion that makes the plan's expanded values larger than
    /// [`env::MAX_EXPANDED_BYTES`] in all.
    #[error("the expanded values of this spec pass {limit} bytes in all")]
    #[diagnostic(
        code(envc::spec::expansions_too_large),
        help(
            "each `env`, `workdir` and `copy` step keeps its own expanded copy of every `$VAR` it uses; envc allows 16 MiB (16777216 bytes) of them per spec: stop copying a large value over and over"
        )
    )]
    ExpansionsTooLarge {
        #[source_code]
        src: Src,
        #[label("the expanded values pass {limit} bytes here")]
        span: SourceSpan,
        limit: usize,
    },

    /// A `$VAR` in an `env` value that cannot be expanded.
    #[error("cannot expand `{value}`: {reason}")]
    #[diagnostic(code(envc::spec::bad_expansion))]
    BadExpansion {
        #[source_code]
        src: Src,
        #[label("{reason}")]
        span: SourceSpan,
        value: String,
        reason: String,
        #[help]
        help: String,
    },

    /// An `extends` target that cannot be read.
    #[error("cannot extend `{path}`: {reason}")]
    #[diagnostic(
        code(envc::spec::extends_missing),
        help("`extends` takes a path relative to this spec's directory")
    )]
    ExtendsMissing {
        #[source_code]
        src: Src,
        #[label("cannot be read")]
        span: SourceSpan,
        path: String,
        reason: String,
    },

    /// An `extends` chain longer than envc follows.
    #[error("`extends` chains more than {limit} specs")]
    #[diagnostic(
        code(envc::spec::extends_too_deep),
        help("envc follows at most {limit} specs along `extends`; merge some of them")
    )]
    ExtendsTooDeep {
        #[source_code]
        src: Src,
        #[label("spec {limit} extends one more")]
        span: SourceSpan,
        limit: usize,
    },

    /// Specs that extend each other in a loop.
    #[error("`extends` forms a cycle: {chain}")]
    #[diagnostic(
        code(envc::spec::extends_cycle),
        help("a spec cannot extend itself, directly or through other specs")
    )]
    ExtendsCycle {
        #[source_code]
        src: Src,
        #[label("this closes the cycle")]
        span: SourceSpan,
        chain: String,
    },

    /// A tar base whose file cannot be read.
    #[error("cannot read base tarball `{path}`: {reason}")]
    #[diagnostic(
        code(envc::spec::base_file_unreadable),
        help("the path is relative to the spec's directory, or absolute")
    )]
    BaseFileUnreadable {
        #[source_code]
        src: Src,
        #[label("cannot be read")]
        span: SourceSpan,
        path: String,
        reason: String,
    },

    /// An OCI base that cannot be read or used: no such layout or archive, a malformed or
    /// oversized `index.json`, manifest or config, a blob whose bytes do not match its digest,
    /// a layer of a media type envc cannot unpack, or no single manifest to take.
    #[error("cannot use OCI image `{path}` as a base: {reason}")]
    #[diagnostic(code(envc::spec::bad_image), help("{help}"))]
    BadImage {
        #[source_code]
        src: Src,
        #[label("this image")]
        span: SourceSpan,
        path: String,
        reason: String,
        help: String,
    },
}

impl SpecError {
    /// The text the error points into, if it points into one.
    pub fn src(&self) -> Option<&Src> {
        match self {
            SpecError::ExtendsTooLarge { src, .. }
            | SpecError::InvalidUtf8 { src, .. }
            | SpecError::NestingTooDeep { src, .. }
            | SpecError::SlashdashTooDeep { src, .. }
            | SpecError::UnreadableText { src, .. }
            | SpecError::TooManyWords { src, .. }
            | SpecError::ChainTooDeep { src, .. }
            | SpecError::UnknownNode { src, .. }
            | SpecError::UnknownProperty { src, .. }
            | SpecError::DuplicateProperty { src, .. }
            | SpecError::MissingArgument { src, .. }
            | SpecError::TooManyArguments { src, .. }
            | SpecError::WrongType { src, .. }
            | SpecError::UnexpectedBlock { src, .. }
            | SpecError::MissingName { src, .. }
            | SpecError::DuplicateNode { src, .. }
            | SpecError::MissingBase { src, .. }
            | SpecError::MultipleBases { src, .. }
            | SpecError::InvalidName { src, .. }
            | SpecError::ReservedLayerName { src, .. }
            | SpecError::DuplicateLayer { src, .. }
            | SpecError::EmptyLayer { src, .. }
            | SpecError::UnknownBase { src, .. }
            | SpecError::MissingProperty { src, .. }
            | SpecError::InvalidValue { src, .. }
            | SpecError::InvalidPackage { src, .. }
            | SpecError::DuplicatePackage { src, .. }
            | SpecError::CopySourceMissing { src, .. }
            | SpecError::CopySourceEscapes { src, .. }
            | SpecError::CopySourceUnreadable { src, .. }
            | SpecError::RelativeDestination { src, .. }
            | SpecError::InvalidPath { src, .. }
            | SpecError::InvalidMode { src, .. }
            | SpecError::InvalidUser { src, .. }
            | SpecError::InvalidEnvName { src, .. }
            | SpecError::InvalidCacheName { src, .. }
            | SpecError::BuildDepsUnusable { src, .. }
            | SpecError::BadExpansion { src, .. }
            | SpecError::EnvTooLarge { src, .. }
            | SpecError::ExpansionsTooLarge { src, .. }
            | SpecError::ExtendsMissing { src, .. }
            | SpecError::ExtendsTooDeep { src, .. }
            | SpecError::ExtendsCycle { src, .. }
            | SpecError::BaseFileUnreadable { src, .. }
            | SpecError::BadImage { src, .. }
            | SpecError::ExtendsNotAFile { src, .. }
            | SpecError::Syntax { src, .. } => Some(src),
            SpecError::Unreadable { .. }
            | SpecError::NotAFile { .. }
            | SpecError::TooLarge { .. }
            | SpecError::TooManyErrors { .. } => None,
        }
    }
}
