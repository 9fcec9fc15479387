//! KDL document -> spanned syntax tree. Checks the shape of every node (names, arguments,
//! properties, types); what those values mean is checked later, in `resolve`.

use std::collections::HashMap;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::ast::{BaseDecl, BaseKind, LayerDecl, Spanned, SpecFile, StepDecl, StepKind};
use crate::error::{Errors, SpecError, Src};
use crate::suggest;

/// Nodes allowed at the top level of a spec.
pub const TOP_NODES: &[&str] = &["name", "base", "extends", "layer"];
/// Nodes allowed inside a layer.
pub const STEP_NODES: &[&str] = &[
    "packages",
    "build-deps",
    "run",
    "copy",
    "env",
    "workdir",
    "cache",
];
/// Kinds of base.
pub const BASE_KINDS: &[&str] = &["debian", "tar", "oci", "scratch"];

/// Decodes a parsed document, appending every error found to `errors`.
pub fn decode(doc: &KdlDocument, src: &Src, errors: &mut Errors) -> SpecFile {
    let mut d = Decoder { src, errors };
    d.file(doc)
}

struct Decoder<'a> {
    src: &'a Src,
    errors: &'a mut Errors,
}

fn type_name(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

/// The entries of one node, split into arguments and properties.
struct Reader<'n> {
    node: &'n KdlNode,
    name: &'n str,
    args: Vec<&'n KdlEntry>,
    props: Vec<(&'n str, &'n KdlEntry)>,
}

impl<'n> Reader<'n> {
    fn prop(&self, name: &str) -> Option<&'n KdlEntry> {
        self.props.iter().find(|(k, _)| *k == name).map(|(_, e)| *e)
    }
}

impl Decoder<'_> {
    fn src(&self) -> Src {
        self.src.clone()
    }

    fn reader<'n>(&mut self, node: &'n KdlNode, takes_block: bool) -> Reader<'n> {
        let mut args = Vec::new();
        let mut props: Vec<(&'n str, &'n KdlEntry)> = Vec::new();
        // Where each property is in `props` (a node may have very many: `env` with thousands).
        let mut index: HashMap<&'n str, usize> = HashMap::new();
        for entry in node.entries() {
            match entry.name() {
                None => args.push(entry),
                Some(key) => {
                    let key = key.value();
                    if let Some(&pos) = index.get(key) {
                        self.errors.push(SpecError::DuplicateProperty {
                            src: self.src(),
                            span: entry.span(),
                            first: props[pos].1.span(),
                            name: key.to_owned(),
                        });
                        props[pos] = (key, entry);
                    } else {
                        index.insert(key, props.len());
                        props.push((key, entry));
                    }
                }
            }
        }
        if !takes_block && let Some(children) = node.children() {
            self.errors.push(SpecError::UnexpectedBlock {
                src: self.src(),
                span: self.brace_span(children.span()),
                node: node.name().value().to_owned(),
            });
        }
        Reader {
            node,
            name: node.name().value(),
            args,
            props,
        }
    }

    /// The span from the `{` before a children block's content to the `}` after it.
    fn brace_span(&self, inner: SourceSpan) -> SourceSpan {
        let text = self.src.inner().as_str();
        let start = inner.offset().min(text.len());
        let end = (inner.offset() + inner.len()).min(text.len());
        let open = text
            .get(..start)
            .and_then(|t| t.rfind('{'))
            .unwrap_or(start);
        let close = text
            .get(end..)
            .and_then(|t| t.find('}'))
            .map_or(end, |i| end + i + 1);
        (open, close - open).into()
    }

    /// Reports properties not in `allowed` and arguments past `max_args`.
    fn finish(&mut self, r: &Reader<'_>, allowed: &[&str], max_args: usize, expected: &str) {
        self.finish_props(r, allowed);
        self.finish_args(r, max_args, expected);
    }

    fn finish_props(&mut self, r: &Reader<'_>, allowed: &[&str]) {
        for (key, entry) in &r.props {
            if !allowed.contains(key) {
                let help = if allowed.is_empty() {
                    format!("`{}` takes no properties", r.name)
                } else {
                    suggest::help(key, allowed, "properties")
                };
                self.errors.push(SpecError::UnknownProperty {
                    src: self.src(),
                    span: entry.span(),
                    node: r.name.to_owned(),
                    name: (*key).to_owned(),
                    help,
                });
            }
        }
    }

    fn finish_args(&mut self, r: &Reader<'_>, max_args: usize, expected: &str) {
        if let Some(extra) = r.args.get(max_args) {
            self.errors.push(SpecError::TooManyArguments {
                src: self.src(),
                span: extra.span(),
                node: r.name.to_owned(),
                expected: expected.to_owned(),
            });
        }
    }

    fn string_value(&mut self, entry: &KdlEntry, expected: &str) -> Option<Spanned<String>> {
        match entry.value() {
            KdlValue::String(s) => Some(Spanned::new(s.clone(), entry.span())),
            other => {
                let help = match other {
                    KdlValue::Integer(_) | KdlValue::Float(_) | KdlValue::Bool(_) => {
                        Some("quote the value to make it a string".to_owned())
                    }
                    _ => None,
                };
                self.errors.push(SpecError::WrongType {
                    src: self.src(),
                    span: entry.span(),
                    expected: expected.to_owned(),
                    found: type_name(other),
                    help,
                });
                None
            }
        }
    }

    /// Argument `i`, which must be a string; reports it missing with `what` and `example`.
    fn string_arg(
        &mut self,
        r: &Reader<'_>,
        i: usize,
        what: &str,
        example: &str,
    ) -> Option<Spanned<String>> {
        match r.args.get(i) {
            Some(entry) => self.string_value(entry, &format!("{what} (a string)")),
            None => {
                self.errors.push(SpecError::MissingArgument {
                    src: self.src(),
                    span: r.node.name().span(),
                    node: r.name.to_owned(),
                    what: what.to_owned(),
                    help: format!("for example: {example}"),
                });
                None
            }
        }
    }

    fn string_prop(&mut self, r: &Reader<'_>, name: &str) -> Option<Spanned<String>> {
        let entry = r.prop(name)?;
        self.string_value(entry, &format!("`{name}` to be a string"))
    }

    fn bool_prop(&mut self, r: &Reader<'_>, name: &str) -> Option<bool> {
        let entry = r.prop(name)?;
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                let help = match other {
                    KdlValue::String(s) if s == "true" || s == "false" => {
                        Some(format!("KDL booleans are written `#{s}`, without quotes"))
                    }
                    _ => Some("write `#true` or `#false`".to_owned()),
                };
                self.errors.push(SpecError::WrongType {
                    src: self.src(),
                    span: entry.span(),
                    expected: format!("`{name}` to be a boolean"),
                    found: type_name(other),
                    help,
                });
                None
            }
        }
    }

    fn file(&mut self, doc: &KdlDocument) -> SpecFile {
        let mut spec = SpecFile::default();
        let mut name_span: Option<SourceSpan> = None;
        let mut extends_span: Option<SourceSpan> = None;
        for node in doc.nodes() {
            let node_name = node.name().value();
            match node_name {
                "name" => {
                    spec.wrote_name = true;
                    let r = self.reader(node, false);
                    self.finish(&r, &[], 1, "exactly one argument, the environment's name");
                    let value =
                        self.string_arg(&r, 0, "the environment's name", "name \"rust-ci\"");
                    if let Some(first) = name_span {
                        self.errors.push(SpecError::DuplicateNode {
                            src: self.src(),
                            span: node.name().span(),
                            first,
                            node: "name".into(),
                        });
                    } else {
                        name_span = Some(node.name().span());
                        spec.name = value;
                    }
                }
                "extends" => {
                    let r = self.reader(node, false);
                    self.finish(
                        &r,
                        &[],
                        1,
                        "exactly one argument, the path of the spec to extend",
                    );
                    let value = self.string_arg(
                        &r,
                        0,
                        "the path of the spec to extend",
                        "extends \"common.kdl\"",
                    );
                    if let Some(first) = extends_span {
                        self.errors.push(SpecError::DuplicateNode {
                            src: self.src(),
                            span: node.name().span(),
                            first,
                            node: "extends".into(),
                        });
                    } else {
                        extends_span = Some(node.name().span());
                        spec.extends = value;
                    }
                }
                "base" => {
                    spec.wrote_base = true;
                    let decl = self.base(node);
                    match (&spec.base, decl) {
                        (Some(first), Some(_)) => self.errors.push(SpecError::MultipleBases {
                            src: self.src(),
                            span: node.name().span(),
                            first: Some(first.span),
                            help: "an environment has exactly one base; remove one of them".into(),
                        }),
                        (None, decl) => spec.base = decl,
                        (Some(_), None) => {}
                    }
                }
                "layer" => {
                    if let Some(layer) = self.layer(node) {
                        spec.layers.push(layer);
                    }
                }
                other => {
                    let mut help = suggest::help(other, TOP_NODES, "top-level nodes");
                    if STEP_NODES.contains(&other) {
                        help = format!(
                            "`{other}` is a step: put it inside a `layer \"NAME\" {{ ... }}` block"
                        );
                    }
                    self.errors.push(SpecError::UnknownNode {
                        src: self.src(),
                        span: node.name().span(),
                        name: other.to_owned(),
                        place: "at the top level",
                        help,
                    });
                }
            }
        }
        spec
    }

    fn base(&mut self, node: &KdlNode) -> Option<BaseDecl> {
        let r = self.reader(node, false);
        let kind = self.string_arg(
            &r,
            0,
            "the kind of base",
            "base \"debian\" suite=\"bookworm\"",
        )?;
        let span = node.name().span();
        let mut sync = None;
        let kind = match kind.value.as_str() {
            "debian" => {
                const PROPS: &[&str] = &[
                    "suite",
                    "variant",
                    "arch",
                    "components",
                    "include",
                    "mirror",
                    "exclude-docs",
                    "sync",
                ];
                self.finish(&r, PROPS, 1, "one argument, `debian`, and properties");
                let suite = self.string_prop(&r, "suite");
                let variant = self.string_prop(&r, "variant");
                let arch = self.string_prop(&r, "arch");
                let components = self.string_prop(&r, "components");
                let include = self.string_prop(&r, "include");
                let mirror = self.string_prop(&r, "mirror");
                let exclude_docs = self.bool_prop(&r, "exclude-docs").unwrap_or(false);
                sync = self.string_prop(&r, "sync");
                let Some(suite) = suite else {
                    if r.prop("suite").is_none() {
                        self.errors.push(SpecError::MissingProperty {
                            src: self.src(),
                            span,
                            node: "base \"debian\"".into(),
                            name: "suite".into(),
                            help:
                                "name the Debian release, e.g. `base \"debian\" suite=\"bookworm\"`"
                                    .into(),
                        });
                    }
                    return None;
                };
                BaseKind::Debian {
                    suite,
                    variant,
                    arch,
                    components,
                    include,
                    mirror,
                    exclude_docs,
                }
            }
            "tar" => {
                self.finish(&r, &[], 2, "two arguments, `tar` and the tarball's path");
                let path = self.string_arg(
                    &r,
                    1,
                    "the tarball's path",
                    "base \"tar\" \"rootfs.tar.gz\"",
                )?;
                BaseKind::Tar { path }
            }
            "oci" => {
                self.finish(
                    &r,
                    &["tag"],
                    2,
                    "two arguments, `oci` and the image's path, and `tag=`",
                );
                let tag = self.string_prop(&r, "tag");
                let path = self.string_arg(
                    &r,
                    1,
                    "the image's path (an OCI layout directory or archive)",
                    "base \"oci\" \"image.tar\" tag=\"latest\"",
                )?;
                BaseKind::Oci { path, tag }
            }
            "scratch" => {
                self.finish(&r, &[], 1, "one argument, `scratch`");
                BaseKind::Scratch
            }
            other => {
                self.errors.push(SpecError::UnknownBase {
                    src: self.src(),
                    span: kind.span,
                    kind: other.to_owned(),
                    help: suggest::help(other, BASE_KINDS, "bases"),
                });
                return None;
            }
        };
        Some(BaseDecl { span, sync, kind })
    }

    fn layer(&mut self, node: &KdlNode) -> Option<LayerDecl> {
        let r = self.reader(node, true);
        self.finish(&r, &[], 1, "exactly one argument, the layer's name");
        let name = self.string_arg(
            &r,
            0,
            "the layer's name",
            "layer \"toolchain\" { packages \"gcc\" }",
        )?;
        let mut steps = Vec::with_capacity(node.children().map_or(0, |c| c.nodes().len()));
        if let Some(children) = node.children() {
            for child in children.nodes() {
                if let Some(step) = self.step(child) {
                    steps.push(step);
                }
            }
        }
        if node.children().is_none_or(|c| c.nodes().is_empty()) {
            self.errors.push(SpecError::EmptyLayer {
                src: self.src(),
                span: node.span(),
                name: name.value.clone(),
            });
        }
        Some(LayerDecl {
            name,
            span: node.name().span(),
            steps,
        })
    }

    fn step(&mut self, node: &KdlNode) -> Option<StepDecl> {
        let span = node.span();
        let mut sync = None;
        let kind = match node.name().value() {
            "packages" => {
                let r = self.reader(node, false);
                self.finish_props(&r, &["sync"]);
                sync = self.string_prop(&r, "sync");
                if r.args.is_empty() {
                    self.string_arg(
                        &r,
                        0,
                        "at least one package",
                        "packages \"build-essential\" \"pkg-config\"",
                    );
                    return None;
                }
                let names: Vec<_> = r
                    .args
                    .iter()
                    .filter_map(|e| self.string_value(e, "a package name (a string)"))
                    .collect();
                StepKind::Packages(names)
            }
            "build-deps" => {
                let r = self.reader(node, false);
                self.finish(
                    &r,
                    &["sync"],
                    1,
                    "exactly one argument, a .dsc or debian/control file",
                );
                sync = self.string_prop(&r, "sync");
                StepKind::BuildDeps(self.string_arg(
                    &r,
                    0,
                    "a .dsc or debian/control file",
                    "build-deps \"debian/control\"",
                )?)
            }
            "run" => {
                let r = self.reader(node, false);
                self.finish(
                    &r,
                    &["network", "user", "sync"],
                    1,
                    "exactly one argument, the shell command",
                );
                sync = self.string_prop(&r, "sync");
                let command = self.string_arg(&r, 0, "a shell command", "run \"make install\"");
                let network = self.bool_prop(&r, "network").unwrap_or(false);
                let user = self.string_prop(&r, "user");
                StepKind::Run {
                    command: command?,
                    network,
                    user,
                }
            }
            "copy" => {
                let r = self.reader(node, false);
                self.finish(
                    &r,
                    &["mode", "owner"],
                    2,
                    "two arguments, the source and the destination",
                );
                let source = self.string_arg(
                    &r,
                    0,
                    "a source path",
                    "copy \"files/gitconfig\" \"/etc/gitconfig\"",
                );
                let dest = if source.is_some() {
                    self.string_arg(
                        &r,
                        1,
                        "a destination path",
                        "copy \"files/gitconfig\" \"/etc/gitconfig\"",
                    )
                } else {
                    None
                };
                let mode = r.prop("mode").and_then(|e| self.mode(e));
                let owner = self.string_prop(&r, "owner");
                StepKind::Copy {
                    source: source?,
                    dest: dest?,
                    mode,
                    owner,
                }
            }
            "env" => {
                let r = self.reader(node, false);
                self.finish_args(&r, 0, "only properties, e.g. `env LANG=\"C.UTF-8\"`");
                if r.props.is_empty() && r.args.is_empty() {
                    self.errors.push(SpecError::MissingArgument {
                        src: self.src(),
                        span: node.name().span(),
                        node: "env".into(),
                        what: "at least one variable".into(),
                        help: "for example: env LANG=\"C.UTF-8\" PATH=\"/opt/bin:$PATH\"".into(),
                    });
                    return None;
                }
                // Exactly as many as written: a spec of many one-variable `env` lines would
                // otherwise hold four slots per line.
                let mut vars = Vec::with_capacity(r.props.len());
                for (key, entry) in &r.props {
                    let value = match entry.value() {
                        KdlValue::String(s) => s.clone(),
                        KdlValue::Integer(i) => i.to_string(),
                        other => {
                            self.errors.push(SpecError::WrongType {
                                src: self.src(),
                                span: entry.span(),
                                expected: "a string value".into(),
                                found: type_name(other),
                                help: Some("quote the value to make it a string".into()),
                            });
                            continue;
                        }
                    };
                    let key_span = entry.name().map_or(entry.span(), |n| n.span());
                    vars.push((
                        Spanned::new((*key).to_owned(), key_span),
                        Spanned::new(value, entry.span()),
                    ));
                }
                StepKind::Env(vars)
            }
            "workdir" => {
                let r = self.reader(node, false);
                self.finish(&r, &[], 1, "exactly one argument, the directory");
                StepKind::Workdir(self.string_arg(
                    &r,
                    0,
                    "a directory",
                    "workdir \"/home/builder\"",
                )?)
            }
            "cache" => {
                let r = self.reader(node, false);
                self.finish(&r, &["name"], 1, "exactly one argument, the directory");
                let name = self.string_prop(&r, "name");
                StepKind::Cache {
                    path: self.string_arg(&r, 0, "a directory", "cache \"/root/.cache/ccache\"")?,
                    name,
                }
            }
            other => {
                let mut help = suggest::help(other, STEP_NODES, "steps");
                if TOP_NODES.contains(&other) {
                    help = format!(
                        "`{other}` belongs at the top level of the spec, not inside a layer"
                    );
                }
                self.errors.push(SpecError::UnknownNode {
                    src: self.src(),
                    span: node.name().span(),
                    name: other.to_owned(),
                    place: "in a layer",
                    help,
                });
                return None;
            }
        };
        Some(StepDecl { span, sync, kind })
    }

    /// A `mode` property: an octal string ("0644", "644", "0o644") or an integer written `0o644`.
    fn mode(&mut self, entry: &KdlEntry) -> Option<Spanned<u32>> {
        let span = entry.span();
        let (text, digits) = match entry.value() {
            KdlValue::String(s) => (s.clone(), s.strip_prefix("0o").unwrap_or(s).to_owned()),
            KdlValue::Integer(i) => {
                let repr = entry
                    .format()
                    .map(|f| f.value_repr.clone())
                    .unwrap_or_else(|| i.to_string());
                match repr.strip_prefix("0o") {
                    Some(d) => (repr.clone(), d.replace('_', "")),
                    None => {
                        self.errors.push(SpecError::InvalidMode {
                            src: self.src(),
                            span,
                            value: repr,
                            reason: "not written in octal".into(),
                        });
                        return None;
                    }
                }
            }
            other => {
                self.errors.push(SpecError::InvalidMode {
                    src: self.src(),
                    span,
                    value: entry.value().to_string(),
                    reason: format!("{} is not a mode", type_name(other)),
                });
                return None;
            }
        };
        let reason = if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            Some("only octal digits 0-7 are allowed")
        } else {
            match u32::from_str_radix(&digits, 8) {
                Ok(m) if m <= 0o7777 => return Some(Spanned::new(m, span)),
                _ => Some("larger than 07777"),
            }
        };
        self.errors.push(SpecError::InvalidMode {
            src: self.src(),
            span,
            value: text,
            reason: reason.unwrap_or_default().into(),
        });
        None
    }
}
