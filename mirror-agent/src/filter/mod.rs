//! Choosing what to copy: pcap-filter expressions (tcpdump's syntax and
//! semantics, parsed and compiled here, in-process) and AWS-style rule sets,
//! compiled to one program of the datapath's filter machine
//! ([`mirror_common::filter`]). The datapath interprets it; nothing here is
//! ever loaded into the verifier, so an accepted filter always loads.
//!
//! - [`ast`]: what an expression and a rule set say;
//! - [`lexer`], [`parser`]: text to [`ast`], errors pointing at a column;
//! - [`compile`]: [`ast`] to instructions, with libpcap's semantics;
//! - [`rules`]: the rule syntax (`--rule`) and the rules' code;
//! - [`native`]: a program to eBPF, run natively where it can be loaded;
//! - [`reference`]: a plain evaluator of the [`ast`] over packet bytes,
//!   written apart from the compiler, that property tests hold it to.
pub mod ast;
pub mod compile;
pub mod fuse;
pub mod lexer;
pub mod native;
pub mod optimize;
pub mod parser;
pub mod prefilter;
pub mod print;
pub mod reference;
pub mod rules;

#[cfg(test)]
mod proptests;

use mirror_common::FilterInsn;

pub use ast::{Expr, RuleSet, Selection, Span};

/// A compiled selection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Program {
    pub insns: Vec<FilterInsn>,
    /// The program reads parsed fields (rules do): the datapath parses the
    /// headers before running it.
    pub uses_fields: bool,
    /// The packet classes it accepts no packet of ([`prefilter`]).
    pub reject_classes: u64,
}

/// A filter or rule that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", span.map(|s| format!("column {}: ", s.column())).unwrap_or_default())]
pub struct FilterError {
    /// What in the text is wrong; `None` for the expression as a whole
    /// (e.g. it compiles to more instructions than the datapath runs).
    pub span: Option<Span>,
    pub message: String,
}

impl FilterError {
    pub fn at(span: Span, message: impl Into<String>) -> Self {
        Self { span: Some(span), message: message.into() }
    }

    pub fn whole(message: impl Into<String>) -> Self {
        Self { span: None, message: message.into() }
    }

    /// The message, then the text with the faulty part underlined:
    ///
    /// ```text
    /// column 10: port 99999 is out of range (0..=65535)
    ///   tcp port 99999
    ///            ^^^^^
    /// ```
    pub fn render(&self, text: &str) -> String {
        let Some(span) = self.span else { return self.to_string() };
        let start = span.start.min(text.len());
        let width = span.end.saturating_sub(span.start).max(1);
        let pad: String = text[..start].chars().map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        format!("{self}\n  {text}\n  {pad}{}", "^".repeat(width))
    }
}

/// Parses a pcap-filter expression.
pub fn parse_expr(text: &str) -> Result<Expr, FilterError> {
    parser::parse(text)
}

/// Compiles rules, then the expression, into one program: a packet is
/// selected if the rules accept it and the expression matches. `None` if
/// the selection is empty (every packet is selected).
pub fn compile_selection(selection: &Selection) -> Result<Option<Program>, FilterError> {
    if selection.rules.is_none() && selection.expr.is_none() {
        return Ok(None);
    }
    compile::compile(selection).map(Some)
}

/// A captured frame (tags inline, as on the wire) as the filter machine
/// reads it: what tests and the fuzzer run programs on.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    bytes: &'a [u8],
    fields: mirror_common::parse::Fields,
}

impl<'a> Frame<'a> {
    /// `direction` is the hook's ([`mirror_common::direction`]).
    pub fn new(bytes: &'a [u8], direction: u32) -> Self {
        // The datapath parses the copy of the frame's head it makes per packet.
        let head = &bytes[..bytes.len().min(mirror_common::filter::HEADER_BYTES as usize)];
        let fields = mirror_common::parse::parse_fields(&Bytes(head), direction);
        Self { bytes, fields }
    }

    pub fn fields(&self) -> &mirror_common::parse::Fields {
        &self.fields
    }
}

struct Bytes<'a>(&'a [u8]);

fn load_be(bytes: &[u8], off: u32, size: u32) -> Option<u32> {
    // As the datapath: a load is 1, 2 or 4 bytes (the compiler emits no other).
    if size != 1 && size != 2 && size != 4 {
        return None;
    }
    let start = usize::try_from(off).ok()?;
    let s = bytes.get(start..start.checked_add(size as usize)?)?;
    Some(s.iter().fold(0, |v, b| v << 8 | u32::from(*b)))
}

impl mirror_common::parse::Bytes for Bytes<'_> {
    fn load(&self, off: u32, size: u32) -> Option<u32> {
        load_be(self.0, off, size)
    }
}

impl mirror_common::vm::Packet for Frame<'_> {
    fn load(&self, off: u32, size: u32) -> Option<u32> {
        load_be(self.bytes, off, size)
    }

    fn len(&self) -> u32 {
        self.bytes.len() as u32
    }

    fn field(&self, index: u32) -> u32 {
        // As the datapath: the parse's scratch words are no fields.
        if index >= mirror_common::field::COUNT {
            return 0;
        }
        self.fields.get(index as usize).copied().unwrap_or(0)
    }
}

impl Program {
    /// Runs the program on `frame` as the datapath does.
    pub fn matches(&self, frame: &Frame<'_>) -> bool {
        mirror_common::vm::run(&self.insns, frame)
    }
}
