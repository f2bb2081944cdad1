//! pcap-filter text to [`super::ast`], with the grammar and qualifier
//! inheritance of libpcap 1.10.3 (grammar.y.in), written as recursive
//! descent with the few token look-aheads that reproduce its LALR choices:
//!
//! - after `and`/`or` (and inside `head (...)`) a bare value (`1.2.3.4`,
//!   `443`, `not 5`, `(1.2.3.4 or 5.6.7.8)`) is an *id* that inherits the
//!   qualifiers of the term before: `host A or B`, `port 80 and not 443`,
//!   `tcp port 80 or 443`, `not host A and B` (= `(not host A) and host B`).
//!   A number is an id when `and`, `or`, `)` or the end follows it;
//!   otherwise it starts a relation (`port 80 or 1 + 1 = 2`);
//! - a parenthesized term passes on the qualifiers in force *before* it:
//!   `host A and (tcp) or B` is `... or host B`, and `(host A) or B` has
//!   nothing to inherit;
//! - `(` starting a term opens arithmetic when its matching `)` is
//!   followed by an arithmetic or comparison operator (`(len - 14) / 2 > 9`);
//! - arithmetic precedence: `|` < `&` < `<<`,`>>` < `+`,`-` < `*`,`/` <
//!   unary `-`, all left-associative, while `%` and `^` have no
//!   precedence in libpcap's grammar, so the parser always shifts on them:
//!   `1 + 2 % 3 * 4` is `1 + (2 % (3 * 4))`, `-2 ^ 1` is `-(2 ^ 1)`.
//!
//! Limits (so that no input can exhaust the stack here or in the passes
//! that walk the tree): [`MAX_NESTING`] levels of parentheses and
//! brackets, [`MAX_OPERATORS`] operators.
//!
//! Where the result differs from libpcap's: names are never resolved
//! (hosts, networks, ports, Ethernet hosts; protocol names for `proto` are
//! a fixed table); an empty filter, `ip broadcast` (it needs the capture's
//! netmask), a non-contiguous `mask`, `ip proto` over 255 and `ether proto`
//! over 65535 (libpcap accepts them and matches nothing), a `portrange`
//! with trailing junk (`1-2abc`) and the keywords of other link types and
//! features (`gateway`, `mpls`, `llc`, `inbound`, ...) are errors; libpcap's
//! refusal of an operand whose first instruction loads 0 (`len / tcp[0]`)
//! or a shift over 31 (`len >> (40 - 20)`) is not reproduced. `ip multicast` reads as `ip and ip[16] >= 224`,
//! `ip6 multicast` as `ip6 and ip6[24] = 255`, `igrp` as `ip proto 9` and
//! `carp` as `vrrp` (the same code in libpcap); `host 10.1` is the network
//! 10.1.0.0/16, as libpcap reads it.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    FilterError,
    ast::{
        Arith, ArithOp, Dir, Expr, HostProto, LoadBase, PortProto, Prim, ProtoBase, ProtoName, Rel, RelOp,
        Span,
    },
    lexer::{self, Kw, Op, Tok, Token},
};

/// Deepest nesting of parentheses and brackets.
pub const MAX_NESTING: usize = 64;
/// Most `and`, `or`, `not` and arithmetic operators in one expression.
pub const MAX_OPERATORS: usize = 256;

/// Longest expression accepted, in bytes: what the session's stored text
/// holds (`mirror_common::FILTER_SPEC_LEN`), checked before any work.
pub const MAX_TEXT: usize = mirror_common::FILTER_SPEC_LEN;

/// Parses a pcap-filter expression.
pub fn parse(text: &str) -> Result<Expr> {
    if text.len() > MAX_TEXT {
        return Err(FilterError::whole(format!(
            "the expression is {} bytes long; at most {MAX_TEXT} are accepted",
            text.len()
        )));
    }
    let mut p = Parser { text, toks: lexer::tokenize(text), pos: 0, nesting: 0, operators: 0 };
    if p.peek().tok == Tok::End {
        return Err(FilterError::at(Span::new(0, text.len()), "the filter is empty"));
    }
    let (expr, _) = p.expr(None)?;
    match p.peek().tok {
        Tok::End => Ok(expr),
        Tok::Op(Op::RParen) => Err(p.err_here("unbalanced `)`: no `(` to close")),
        _ => Err(p.unexpected_after_term()),
    }
}

/// libpcap's protocol qualifiers that mirror-agent implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QProto {
    Link,
    Ip,
    Ip6,
    Arp,
    Rarp,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmp6,
    Igmp,
    Igrp,
    Pim,
    Vrrp,
    Carp,
    Ah,
    Esp,
}

impl QProto {
    fn of(kw: Kw) -> Option<Self> {
        Some(match kw {
            Kw::Link => Self::Link,
            Kw::Ip => Self::Ip,
            Kw::Ip6 => Self::Ip6,
            Kw::Arp => Self::Arp,
            Kw::Rarp => Self::Rarp,
            Kw::Tcp => Self::Tcp,
            Kw::Udp => Self::Udp,
            Kw::Sctp => Self::Sctp,
            Kw::Icmp => Self::Icmp,
            Kw::Icmp6 => Self::Icmp6,
            Kw::Igmp => Self::Igmp,
            Kw::Igrp => Self::Igrp,
            Kw::Pim => Self::Pim,
            Kw::Vrrp => Self::Vrrp,
            Kw::Carp => Self::Carp,
            Kw::Ah => Self::Ah,
            Kw::Esp => Self::Esp,
            _ => return None,
        })
    }

    fn of_tok(tok: &Tok) -> Option<Self> {
        match tok {
            Tok::Kw(k) => Self::of(*k),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Link => "ether",
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
            Self::Arp => "arp",
            Self::Rarp => "rarp",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Icmp => "icmp",
            Self::Icmp6 => "icmp6",
            Self::Igmp => "igmp",
            Self::Igrp => "igrp",
            Self::Pim => "pim",
            Self::Vrrp => "vrrp",
            Self::Carp => "carp",
            Self::Ah => "ah",
            Self::Esp => "esp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QAddr {
    Host,
    Net,
    Port,
    PortRange,
    Proto,
}

/// The qualifiers a value is read with (libpcap's `struct qual`); `None`
/// fields are libpcap's `Q_DEFAULT`. Where libpcap has `qerr` (after a
/// relation, a bare protocol, `vlan`, ...), the parser has `None` instead
/// of a `Qual`: nothing to inherit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Qual {
    proto: Option<QProto>,
    dir: Option<Dir>,
    addr: Option<QAddr>,
}

impl Qual {
    /// What a value after these qualifiers should be, for messages.
    fn wants(&self) -> &'static str {
        match self.addr {
            None | Some(QAddr::Host) if self.proto == Some(QProto::Link) => "a MAC address",
            None | Some(QAddr::Host) => "an address",
            Some(QAddr::Net) => "a network",
            Some(QAddr::Port) => "a port number",
            Some(QAddr::PortRange) => "a port range",
            Some(QAddr::Proto) => "a protocol",
        }
    }
}

type Result<T> = std::result::Result<T, FilterError>;

struct Parser<'a> {
    text: &'a str,
    toks: Vec<Token<'a>>,
    pos: usize,
    nesting: usize,
    operators: usize,
}

fn err(span: Span, message: impl Into<String>) -> FilterError {
    FilterError::at(span, message)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Token<'a> {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> &Token<'a> {
        let last = self.toks.len() - 1;
        &self.toks[(self.pos + ahead).min(last)]
    }

    fn tok_at(&self, i: usize) -> &Tok {
        &self.toks[i.min(self.toks.len() - 1)].tok
    }

    fn bump(&mut self) -> Token<'a> {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    /// End of the last consumed token.
    fn prev_end(&self) -> usize {
        self.pos.checked_sub(1).map_or(0, |i| self.toks[i].span.end)
    }

    fn err_here(&self, message: impl Into<String>) -> FilterError {
        err(self.peek().span, message)
    }

    /// The current token's own error if it is a bad one, else `message`.
    fn err_expected(&self, message: impl Into<String>) -> FilterError {
        match &self.peek().tok {
            Tok::Bad(m) => self.err_here(m.clone()),
            Tok::Unsupported => self.unsupported(),
            _ => self.err_here(message),
        }
    }

    fn unsupported(&self) -> FilterError {
        self.err_here(format!("`{}` is not supported by mirror-agent filters", self.peek().text))
    }

    fn count_operator(&mut self, span: Span) -> Result<()> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(err(
                span,
                format!("more than {MAX_OPERATORS} operators: the expression is too complex"),
            ));
        }
        Ok(())
    }

    /// Consumes an opening `(` or `[`.
    fn open(&mut self) -> Result<Span> {
        let span = self.peek().span;
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(err(span, format!("parentheses and brackets nest deeper than {MAX_NESTING} levels")));
        }
        self.bump();
        Ok(span)
    }

    /// Consumes the `)` of the `(` at `open`.
    fn close_paren(&mut self, open: Span) -> Result<()> {
        match self.peek().tok {
            Tok::Op(Op::RParen) => {
                self.bump();
                self.nesting -= 1;
                Ok(())
            }
            Tok::End => Err(err(open, "unbalanced `(`: no `)` closes it")),
            _ => Err(self.unexpected_after_term()),
        }
    }

    /// The current token cannot continue what precedes it.
    fn unexpected_after_term(&self) -> FilterError {
        let t = self.peek();
        match &t.tok {
            Tok::Bad(_) | Tok::Unsupported => self.err_expected(""),
            Tok::Kw(Kw::Mask) => {
                self.err_here("`mask` follows an IPv4 network: `net 10.0.0.0 mask 255.0.0.0`")
            }
            Tok::Kw(_) | Tok::Num(_) | Tok::Hid | Tok::Hid6(_) | Tok::Eid(_) | Tok::Id | Tok::Aid => {
                self.err_here(format!("expected `and` or `or` before `{}`", t.text))
            }
            Tok::Op(Op::LParen) => self.err_here("expected `and` or `or` before `(`"),
            Tok::Op(Op::Slash) if matches!(self.tok_at(self.pos.wrapping_sub(1)), Tok::Num(_)) => {
                self.err_here("a prefix needs a dotted network address, e.g. `net 10.0.0.0/8`")
            }
            Tok::Op(_) if self.pos > 0 && QProto::of_tok(self.tok_at(self.pos - 1)).is_some() => {
                let name = self.toks[self.pos - 1].text;
                self.err_here(format!(
                    "unexpected `{}`: to compare `{name}` header bytes, load them: `{name}[0]`",
                    t.text
                ))
            }
            _ => self.err_here(format!("unexpected `{}`", t.text)),
        }
    }

    // ---- boolean level ----

    /// `expr: term | expr (and|or) (term|id)`. `before`: the qualifiers in
    /// force before the expression. Returns the qualifiers the last term
    /// passes on.
    fn expr(&mut self, before: Option<Qual>) -> Result<(Expr, Option<Qual>)> {
        let (mut expr, mut q) = self.term(before)?;
        loop {
            let and = match self.peek().tok {
                Tok::Kw(Kw::And) => true,
                Tok::Kw(Kw::Or) => false,
                _ => break,
            };
            let op = self.bump();
            self.count_operator(op.span)?;
            let rhs = if self.id_ahead() {
                self.id(q, None)?
            } else {
                let (rhs, q2) = self.term(q)?;
                q = q2;
                rhs
            };
            expr = if and { Expr::And(expr.into(), rhs.into()) } else { Expr::Or(expr.into(), rhs.into()) };
        }
        Ok((expr, q))
    }

    /// `term: rterm | not term`.
    fn term(&mut self, before: Option<Qual>) -> Result<(Expr, Option<Qual>)> {
        if self.peek().tok == Tok::Kw(Kw::Not) {
            let not = self.bump();
            self.count_operator(not.span)?;
            let (e, q) = self.term(before)?;
            return Ok((Expr::Not(e.into()), q));
        }
        self.rterm(before)
    }

    fn rterm(&mut self, before: Option<Qual>) -> Result<(Expr, Option<Qual>)> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Op(Op::LParen) => {
                if self.arith_group_ahead() {
                    return Ok((self.relation()?, None));
                }
                let open = self.open()?;
                let (e, _) = self.expr(before)?;
                self.close_paren(open)?;
                Ok((e, before))
            }
            Tok::Kw(kw) if QProto::of(kw).is_some() => {
                let proto = QProto::of(kw).unwrap_or(QProto::Ip);
                match self.peek_at(1).tok {
                    Tok::Op(Op::LBracket) => Ok((self.relation()?, None)),
                    Tok::Kw(
                        Kw::Src | Kw::Dst | Kw::Host | Kw::Net | Kw::Port | Kw::Portrange | Kw::Proto,
                    ) => {
                        self.bump();
                        self.head(Some(proto), t.span.start)
                    }
                    Tok::Kw(Kw::Broadcast | Kw::Multicast) => {
                        self.bump();
                        Ok((self.cast(Some(proto), t.span)?, None))
                    }
                    Tok::Unsupported => {
                        self.bump();
                        Err(self.unsupported())
                    }
                    _ => {
                        self.bump();
                        Ok((self.bare_proto(proto, t.span)?, None))
                    }
                }
            }
            Tok::Kw(Kw::Src | Kw::Dst | Kw::Host | Kw::Net | Kw::Port | Kw::Portrange | Kw::Proto) => {
                self.head(None, t.span.start)
            }
            Tok::Kw(Kw::Broadcast | Kw::Multicast) => Ok((self.cast(None, t.span)?, None)),
            Tok::Kw(Kw::Less | Kw::Greater) => {
                self.bump();
                let Tok::Num(n) = self.peek().tok else {
                    return Err(self.err_expected(format!("expected a number after `{}`", t.text)));
                };
                let end = self.bump().span.end;
                let prim = if t.tok == Tok::Kw(Kw::Less) { Prim::Less(n) } else { Prim::Greater(n) };
                Ok((Expr::Prim(prim, Span::new(t.span.start, end)), None))
            }
            Tok::Kw(Kw::Vlan) => {
                self.bump();
                let id = match self.peek().tok {
                    Tok::Num(_) | Tok::Op(Op::LParen) => {
                        let Some((v, span)) = self.pnum()? else {
                            return Err(self.err_here("expected a VLAN ID after `vlan`"));
                        };
                        if v > 4095 {
                            return Err(err(span, format!("VLAN ID {v} is out of range (0..=4095)")));
                        }
                        Some(v as u16)
                    }
                    _ => None,
                };
                Ok((Expr::Prim(Prim::Vlan(id), Span::new(t.span.start, self.prev_end())), None))
            }
            Tok::Kw(Kw::Len) | Tok::Num(_) | Tok::Op(Op::Minus) => Ok((self.relation()?, None)),
            Tok::Aid => Err(self.err_here("ARCnet addresses are not supported by mirror-agent filters")),
            Tok::Hid | Tok::Hid6(_) | Tok::Eid(_) => Err(self.no_qualifier()),
            Tok::Id => Err(self.unknown_word()),
            Tok::End => Err(self.err_here("the expression ends early: expected a primitive")),
            Tok::Op(Op::RParen) | Tok::Kw(Kw::And | Kw::Or) => {
                Err(self.err_here(format!("expected a primitive before `{}`", t.text)))
            }
            Tok::Kw(Kw::Mask) => Err(self.unexpected_after_term()),
            _ => Err(self.err_expected(format!("unexpected `{}`", t.text))),
        }
    }

    /// A protocol name standing alone (libpcap's `gen_proto_abbrev`).
    fn bare_proto(&self, proto: QProto, span: Span) -> Result<Expr> {
        let name = match proto {
            QProto::Link => {
                return Err(err(
                    span,
                    "`ether` needs more: `ether host|src|dst MAC`, `ether proto N`, \
                     `ether broadcast|multicast` or `ether[OFFSET]`",
                ));
            }
            // The same code as `ip proto 9` and `vrrp` in libpcap.
            QProto::Igrp => return Ok(Expr::Prim(Prim::IpProto { base: ProtoBase::Ip, proto: 9 }, span)),
            QProto::Carp | QProto::Vrrp => ProtoName::Vrrp,
            QProto::Ip => ProtoName::Ip,
            QProto::Ip6 => ProtoName::Ip6,
            QProto::Arp => ProtoName::Arp,
            QProto::Rarp => ProtoName::Rarp,
            QProto::Tcp => ProtoName::Tcp,
            QProto::Udp => ProtoName::Udp,
            QProto::Sctp => ProtoName::Sctp,
            QProto::Icmp => ProtoName::Icmp,
            QProto::Icmp6 => ProtoName::Icmp6,
            QProto::Igmp => ProtoName::Igmp,
            QProto::Pim => ProtoName::Pim,
            QProto::Ah => ProtoName::Ah,
            QProto::Esp => ProtoName::Esp,
        };
        Ok(Expr::Prim(Prim::Proto(name), span))
    }

    /// `[pqual] broadcast|multicast` (the keyword is the current token).
    fn cast(&mut self, proto: Option<QProto>, start: Span) -> Result<Expr> {
        let kw = self.bump();
        let span = Span::new(start.start, kw.span.end);
        let broadcast = kw.tok == Tok::Kw(Kw::Broadcast);
        match (proto, broadcast) {
            (None | Some(QProto::Link), true) => Ok(Expr::Prim(Prim::EtherBroadcast, span)),
            (None | Some(QProto::Link), false) => Ok(Expr::Prim(Prim::EtherMulticast, span)),
            (Some(QProto::Ip), true) => Err(err(
                span,
                "`ip broadcast` depends on the capture's netmask, which mirror-agent does not know: \
                 use e.g. `ip dst 255.255.255.255`",
            )),
            // libpcap: the EtherType, then the destination's first byte.
            (Some(p @ (QProto::Ip | QProto::Ip6)), false) => {
                let (name, base, offset, op, value) = if p == QProto::Ip {
                    (ProtoName::Ip, LoadBase::Net(ProtoName::Ip), 16, RelOp::Ge, 224)
                } else {
                    (ProtoName::Ip6, LoadBase::Ip6, 24, RelOp::Eq, 255)
                };
                let load = Arith::Load { base, index: Arith::Num(offset).into(), size: 1, span };
                let rel = Expr::Rel(Rel { op, lhs: load, rhs: Arith::Num(value) }, span);
                Ok(Expr::And(Expr::Prim(Prim::Proto(name), span).into(), rel.into()))
            }
            (Some(p), true) => {
                Err(err(span, format!("`{} broadcast` is not valid: use `ether broadcast`", p.name())))
            }
            (Some(p), false) => Err(err(
                span,
                format!(
                    "`{} multicast` is not valid: use `ether multicast`, `ip multicast` or `ip6 multicast`",
                    p.name()
                ),
            )),
        }
    }

    /// `head id`: `[pqual] [dqual] [aqual|proto] VALUE` (the protocol, if
    /// any, is consumed).
    fn head(&mut self, proto: Option<QProto>, start: usize) -> Result<(Expr, Option<Qual>)> {
        let mut dir = None;
        if let Tok::Kw(first @ (Kw::Src | Kw::Dst)) = self.peek().tok {
            let t = self.bump();
            dir = Some(if first == Kw::Src { Dir::Src } else { Dir::Dst });
            if let Tok::Kw(join @ (Kw::And | Kw::Or)) = self.peek().tok {
                let other = if first == Kw::Src { Kw::Dst } else { Kw::Src };
                let j = self.bump();
                if self.peek().tok != Tok::Kw(other) {
                    let other = if other == Kw::Src { "src" } else { "dst" };
                    return Err(
                        self.err_expected(format!("expected `{other}` after `{} {}`", t.text, j.text))
                    );
                }
                self.bump();
                dir = Some(if join == Kw::And { Dir::SrcAndDst } else { Dir::SrcOrDst });
            }
        }
        let addr = match self.peek().tok {
            Tok::Kw(Kw::Host) => Some(QAddr::Host),
            Tok::Kw(Kw::Net) => Some(QAddr::Net),
            Tok::Kw(Kw::Port) => Some(QAddr::Port),
            Tok::Kw(Kw::Portrange) => Some(QAddr::PortRange),
            Tok::Kw(Kw::Proto) if dir.is_some() => {
                return Err(self
                    .err_here("`proto` takes no direction: the protocol field is neither `src` nor `dst`"));
            }
            Tok::Kw(Kw::Proto) => Some(QAddr::Proto),
            Tok::Unsupported => return Err(self.unsupported()),
            _ => None,
        };
        if addr.is_some() {
            self.bump();
        }
        let q = Qual { proto, dir, addr };
        let e = self.id(Some(q), Some(start))?;
        Ok((e, Some(q)))
    }

    // ---- ids: values read with inherited qualifiers ----

    /// After `and`/`or`: is the next thing an id (a bare value, inheriting
    /// qualifiers) rather than a term? Mirrors the LALR parser's choice.
    fn id_ahead(&self) -> bool {
        let mut i = self.pos;
        while *self.tok_at(i) == Tok::Kw(Kw::Not) {
            i += 1;
        }
        match self.tok_at(i) {
            Tok::Id | Tok::Hid | Tok::Hid6(_) | Tok::Eid(_) | Tok::Aid => true,
            Tok::Num(_) => self.id_follows(i + 1),
            Tok::Op(Op::LParen) => match self.pnum_end(i) {
                Some(j) => self.id_follows(j),
                None => self.group_is_ids(i + 1),
            },
            _ => false,
        }
    }

    /// Can an id end before token `i`?
    fn id_follows(&self, i: usize) -> bool {
        matches!(self.tok_at(i), Tok::Kw(Kw::And | Kw::Or) | Tok::Op(Op::RParen) | Tok::End)
    }

    /// Does the group opened before token `i` hold ids (`(A or B)`)?
    fn group_is_ids(&self, mut i: usize) -> bool {
        for _ in 0..=MAX_NESTING {
            let mut nots = false;
            while *self.tok_at(i) == Tok::Kw(Kw::Not) {
                i += 1;
                nots = true;
            }
            let joined = |j: usize| {
                matches!(self.tok_at(j), Tok::Kw(Kw::And | Kw::Or))
                    || nots && *self.tok_at(j) == Tok::Op(Op::RParen)
            };
            return match self.tok_at(i) {
                Tok::Id | Tok::Hid | Tok::Hid6(_) | Tok::Eid(_) | Tok::Aid => true,
                Tok::Num(_) => joined(i + 1),
                Tok::Op(Op::LParen) => match self.pnum_end(i) {
                    Some(j) => joined(j),
                    // `(not (A or B))`: the inner group is the id of `not`.
                    None if nots => {
                        i += 1;
                        continue;
                    }
                    None => false,
                },
                _ => false,
            };
        }
        false
    }

    /// If token `i` starts `( ... ( NUM ) ... )`, the index after it.
    fn pnum_end(&self, i: usize) -> Option<usize> {
        let mut j = i;
        while *self.tok_at(j) == Tok::Op(Op::LParen) && j - i <= MAX_NESTING {
            j += 1;
        }
        let depth = j - i;
        if !matches!(self.tok_at(j), Tok::Num(_)) {
            return None;
        }
        j += 1;
        for _ in 0..depth {
            if *self.tok_at(j) != Tok::Op(Op::RParen) {
                return None;
            }
            j += 1;
        }
        Some(j)
    }

    /// `pnum: NUM | ( pnum )`: the number and its token's span, or `None`
    /// (nothing consumed) if the tokens are not that.
    fn pnum(&mut self) -> Result<Option<(u32, Span)>> {
        if self.pnum_end(self.pos).is_none() {
            return Ok(None);
        }
        let mut opens = 0;
        while self.peek().tok == Tok::Op(Op::LParen) {
            self.open()?;
            opens += 1;
        }
        let t = self.bump();
        let Tok::Num(v) = t.tok else { return Ok(None) };
        for _ in 0..opens {
            self.bump();
            self.nesting -= 1;
        }
        Ok(Some((v, t.span)))
    }

    /// `id: nid | pnum | ( pid )`, read with the qualifiers `q`. `start`:
    /// where the head began, for the primitive's span.
    fn id(&mut self, q: Option<Qual>, start: Option<usize>) -> Result<Expr> {
        let t = self.peek().clone();
        let span_from = |end: usize| Span::new(start.unwrap_or(t.span.start), end);
        match t.tok {
            Tok::Kw(Kw::Not) => {
                self.bump();
                self.count_operator(t.span)?;
                Ok(Expr::Not(self.id(q, None)?.into()))
            }
            Tok::Op(Op::LParen) => {
                if let Some((v, span)) = self.pnum()? {
                    let q = self.qual(q, span)?;
                    return self.number(q, v, span, span_from(self.prev_end()));
                }
                let open = self.open()?;
                let e = self.pid(q)?;
                self.close_paren(open)?;
                Ok(e)
            }
            Tok::Num(v) => {
                self.bump();
                let q = self.qual(q, t.span)?;
                self.number(q, v, t.span, span_from(t.span.end))
            }
            Tok::Hid => {
                self.bump();
                self.ipv4(q, &t, start)
            }
            Tok::Hid6(addr) => {
                self.bump();
                self.ipv6(q, &t, addr, start)
            }
            Tok::Eid(mac) => {
                self.bump();
                let q = self.qual(q, t.span)?;
                if q.proto != Some(QProto::Link) {
                    return Err(err(
                        t.span,
                        format!("a MAC address needs `ether`: write `ether host {}`", t.text),
                    ));
                }
                if !matches!(q.addr, None | Some(QAddr::Host)) {
                    return Err(err(
                        t.span,
                        "a MAC address goes with `ether host`, `ether src` or `ether dst`",
                    ));
                }
                let dir = q.dir.unwrap_or_default();
                Ok(Expr::Prim(Prim::EtherHost { dir, mac }, span_from(t.span.end)))
            }
            Tok::Aid => Err(self.err_here("ARCnet addresses are not supported by mirror-agent filters")),
            Tok::Id => {
                // A name followed by more than a junction is likely a
                // mistyped keyword (`hots 1.2.3.4`), as is one with nothing
                // to inherit.
                if q.is_none() || !self.id_follows(self.pos + 1) {
                    return Err(self.unknown_word());
                }
                self.bump();
                self.name(q, &t, span_from(t.span.end))
            }
            _ => {
                let what = q.map_or("a value", |q| q.wants());
                let prev = self.pos.checked_sub(1).map_or("", |i| self.toks[i].text);
                if let (Some(Qual { addr: Some(QAddr::Proto), .. }), Tok::Kw(_)) = (q, &t.tok)
                    && lookup_proto(q.and_then(|q| q.proto), t.text).is_some()
                {
                    return Err(self.err_here(format!(
                        "`{0}` is a keyword here: write `\\{0}` for the protocol name",
                        t.text
                    )));
                }
                Err(self.err_expected(format!("expected {what} after `{prev}`")))
            }
        }
    }

    /// `pid: nid | qid and id | qid or id` with `qid: pnum | pid`: the
    /// inside of `head (A or B)`.
    fn pid(&mut self, q: Option<Qual>) -> Result<Expr> {
        if self.peek().tok == Tok::Op(Op::LParen) && self.pnum_end(self.pos).is_none() {
            return Err(self.err_here("a group of values cannot start with `(`"));
        }
        let mut e = self.id(q, None)?;
        loop {
            let and = match self.peek().tok {
                Tok::Kw(Kw::And) => true,
                Tok::Kw(Kw::Or) => false,
                _ => return Ok(e),
            };
            let op = self.bump();
            self.count_operator(op.span)?;
            let rhs = self.id(q, None)?;
            e = if and { Expr::And(e.into(), rhs.into()) } else { Expr::Or(e.into(), rhs.into()) };
        }
    }

    /// The qualifiers a value needs: there must be some to inherit.
    fn qual(&self, q: Option<Qual>, span: Span) -> Result<Qual> {
        q.ok_or_else(|| self.no_qualifier_at(span))
    }

    fn no_qualifier(&self) -> FilterError {
        self.no_qualifier_at(self.peek().span)
    }

    fn no_qualifier_at(&self, span: Span) -> FilterError {
        let t = self.toks.iter().find(|t| t.span == span).unwrap_or(self.peek());
        if t.tok == Tok::Id && port_range(t.name()).is_some() {
            return err(span, format!("`{0}` needs a qualifier: write `portrange {0}`", t.text));
        }
        let example = match t.tok {
            Tok::Eid(_) => "ether host",
            Tok::Num(_) => "port",
            _ => "host",
        };
        err(
            span,
            format!("`{0}` needs a qualifier, e.g. `{example} {0}`; there is none to inherit here", t.text),
        )
    }

    /// A number read as a value (libpcap's `gen_ncode` with no string).
    fn number(&self, q: Qual, v: u32, at: Span, span: Span) -> Result<Expr> {
        let dir = q.dir.unwrap_or_default();
        let prim = match q.addr {
            None | Some(QAddr::Host) | Some(QAddr::Net) => {
                if q.proto == Some(QProto::Link) {
                    return Err(err(at, format!("`ether` needs a MAC address, not `{v}`")));
                }
                let (addr, len) = if q.addr == Some(QAddr::Net) {
                    // libpcap left-justifies a short network number: `net 10`
                    // is 10.0.0.0/8, `net 172.16`-like numbers likewise.
                    let (mut addr, mut len) = (v, 32u8);
                    while addr != 0 && addr & 0xff00_0000 == 0 {
                        addr <<= 8;
                        len -= 8;
                    }
                    (addr, len)
                } else {
                    (v, 32)
                };
                return self.host4(q, Ipv4Addr::from(addr), len, at, span);
            }
            Some(a @ (QAddr::Port | QAddr::PortRange)) => {
                let proto = port_proto(q, a, at)?;
                if v > 65535 {
                    return Err(err(at, format!("port {v} is out of range (0..=65535)")));
                }
                let port = v as u16;
                if a == QAddr::Port {
                    Prim::Port { proto, dir, port }
                } else {
                    Prim::PortRange { proto, dir, lo: port, hi: port }
                }
            }
            Some(QAddr::Proto) => return proto_number(q, v, at, span),
        };
        Ok(Expr::Prim(prim, span))
    }

    /// An IPv4 host or network (libpcap's `gen_host`).
    fn host4(&self, q: Qual, addr: Ipv4Addr, len: u8, at: Span, span: Span) -> Result<Expr> {
        let proto = match q.proto {
            None => HostProto::Any,
            Some(QProto::Ip) => HostProto::Ip,
            Some(QProto::Arp) => HostProto::Arp,
            Some(QProto::Rarp) => HostProto::Rarp,
            Some(QProto::Ip6) => {
                return Err(err(at, format!("`ip6` does not go with the IPv4 address `{addr}`")));
            }
            Some(QProto::Link) => return Err(err(at, format!("`ether` needs a MAC address, not `{addr}`"))),
            Some(p) => return Err(err(at, host_proto_message(p, q.addr))),
        };
        let dir = q.dir.unwrap_or_default();
        let addr = IpAddr::V4(addr);
        let prim = if q.addr == Some(QAddr::Net) || len < 32 {
            Prim::Net { proto, dir, addr, prefix_len: len }
        } else {
            Prim::Host { proto, dir, addr }
        };
        Ok(Expr::Prim(prim, span))
    }

    /// A dotted IPv4 value: `A.B.C.D`, a short `A.B`, `/LEN` or `mask M`.
    fn ipv4(&mut self, q: Option<Qual>, t: &Token<'a>, start: Option<usize>) -> Result<Expr> {
        let q = self.qual(q, t.span)?;
        if let Some(a @ (QAddr::Port | QAddr::PortRange | QAddr::Proto)) = q.addr {
            return Err(err(t.span, address_for_number(a, t.text)));
        }
        let (addr, bits) = atoin(t.text).ok_or_else(|| err(t.span, invalid_ipv4(t.text)))?;
        // A short address is the high part: 10.1 is 10.1.0.0.
        let n = if bits == 32 { addr } else { addr << (32 - bits) };
        let (len, whole) = match self.peek().tok {
            Tok::Op(Op::Slash) => {
                self.bump();
                let Tok::Num(len) = self.peek().tok else {
                    return Err(self.err_expected("expected a prefix length after `/`"));
                };
                let lt = self.bump();
                if len > 32 {
                    return Err(err(lt.span, format!("prefix length {len} is out of range (0..=32)")));
                }
                let whole = Span::new(t.span.start, lt.span.end);
                let text = format!("{}/{len}", t.text);
                check_network(n, mask4(len as u8), &text, len as u8, whole)?;
                (len as u8, Some((whole, text)))
            }
            Tok::Kw(Kw::Mask) => {
                self.bump();
                let mt = self.peek().clone();
                if mt.tok != Tok::Hid {
                    return Err(self.err_expected("expected an IPv4 netmask after `mask`"));
                }
                self.bump();
                let (m, mbits) = atoin(mt.text).ok_or_else(|| err(mt.span, invalid_ipv4(mt.text)))?;
                let m = if mbits == 32 { m } else { m << (32 - mbits) };
                let whole = Span::new(t.span.start, mt.span.end);
                let text = format!("{} mask {}", t.text, mt.text);
                let len = m.leading_ones() as u8;
                if m != mask4(len) {
                    let shown = Ipv4Addr::from(m);
                    return Err(err(
                        mt.span,
                        format!("netmask {shown} is not contiguous: mirror-agent needs a prefix such as /16"),
                    ));
                }
                check_network(n, m, &text, len, whole)?;
                (len, Some((whole, text)))
            }
            _ => (bits as u8, None),
        };
        let end = self.prev_end();
        let span = Span::new(start.unwrap_or(t.span.start), end);
        if let Some((whole, text)) = whole
            && q.addr != Some(QAddr::Net)
        {
            return Err(err(whole, format!("`{text}` is a network: write `net {text}`")));
        }
        self.host4(q, Ipv4Addr::from(n), len, t.span, span)
    }

    /// An IPv6 value, `/LEN` optional (libpcap's `gen_mcode6`).
    fn ipv6(&mut self, q: Option<Qual>, t: &Token<'a>, addr: Ipv6Addr, start: Option<usize>) -> Result<Expr> {
        let q = self.qual(q, t.span)?;
        let mut len = 128;
        let mut whole = t.span;
        if self.peek().tok == Tok::Op(Op::Slash) {
            self.bump();
            let Tok::Num(l) = self.peek().tok else {
                return Err(self.err_expected("expected a prefix length after `/`"));
            };
            let lt = self.bump();
            if l > 128 {
                return Err(err(lt.span, format!("prefix length {l} is out of range (0..=128)")));
            }
            len = l as u8;
            whole = Span::new(t.span.start, lt.span.end);
            let bits = u128::from(addr);
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            if bits & !mask != 0 {
                let net = Ipv6Addr::from(bits & mask);
                return Err(err(
                    whole,
                    format!("`{}/{len}` has host bits set (the network is {net}/{len})", t.text),
                ));
            }
        }
        let span = Span::new(start.unwrap_or(t.span.start), self.prev_end());
        let dir = q.dir.unwrap_or_default();
        let addr_ip = IpAddr::V6(addr);
        let prim = match q.addr {
            None | Some(QAddr::Host) if len == 128 => {
                Prim::Host { proto: HostProto::Any, dir, addr: addr_ip }
            }
            None | Some(QAddr::Host) => {
                let text = self.text_of(whole);
                return Err(err(whole, format!("`{text}` is a network: write `net {text}`")));
            }
            Some(QAddr::Net) => Prim::Net { proto: HostProto::Any, dir, addr: addr_ip, prefix_len: len },
            Some(a) => return Err(err(t.span, address_for_number(a, t.text))),
        };
        let proto = match q.proto {
            None => HostProto::Any,
            Some(QProto::Ip6) => HostProto::Ip6,
            Some(p @ (QProto::Ip | QProto::Arp | QProto::Rarp)) => {
                return Err(err(
                    t.span,
                    format!("`{}` does not go with the IPv6 address `{addr}`", p.name()),
                ));
            }
            Some(QProto::Link) => {
                return Err(err(t.span, format!("`ether` needs a MAC address, not `{addr}`")));
            }
            Some(p) => return Err(err(t.span, host_proto_message(p, q.addr))),
        };
        let prim = match prim {
            Prim::Host { dir, addr, .. } => Prim::Host { proto, dir, addr },
            Prim::Net { dir, addr, prefix_len, .. } => Prim::Net { proto, dir, addr, prefix_len },
            other => other,
        };
        Ok(Expr::Prim(prim, span))
    }

    fn text_of(&self, span: Span) -> &'a str {
        self.text.get(span.start..span.end).unwrap_or_default()
    }

    /// A name where a value is expected (libpcap's `gen_scode`). Names are
    /// never resolved; protocol names and `LO-HI` port ranges are read.
    fn name(&self, q: Option<Qual>, t: &Token<'a>, span: Span) -> Result<Expr> {
        let q = self.qual(q, t.span)?;
        let name = t.name();
        let dir = q.dir.unwrap_or_default();
        let prim = match q.addr {
            Some(QAddr::Net) => {
                return Err(err(
                    t.span,
                    "network names are not resolved: use a numeric network (e.g. 10.0.0.0/8)",
                ));
            }
            None | Some(QAddr::Host) if q.proto == Some(QProto::Link) => {
                return Err(err(t.span, "Ethernet host names are not resolved: use a MAC address"));
            }
            None | Some(QAddr::Host) => {
                return Err(err(t.span, "host names are not resolved: use a numeric address"));
            }
            Some(QAddr::Port) => {
                port_proto(q, QAddr::Port, t.span)?;
                if port_range(name).is_some() {
                    return Err(err(t.span, format!("`{name}` is a range: write `portrange {name}`")));
                }
                return Err(err(t.span, "port names are not resolved: use a number"));
            }
            Some(QAddr::PortRange) => {
                let proto = port_proto(q, QAddr::PortRange, t.span)?;
                let Some((lo, hi)) = port_range(name) else {
                    return Err(err(
                        t.span,
                        format!(
                            "`{name}` is not a port range: write LO-HI with numbers (names are not resolved)"
                        ),
                    ));
                };
                for p in [lo, hi] {
                    if p > 65535 {
                        return Err(err(t.span, format!("port {p} is out of range (0..=65535)")));
                    }
                }
                // libpcap accepts a reversed range and swaps it.
                let (lo, hi) = (lo.min(hi) as u16, lo.max(hi) as u16);
                Prim::PortRange { proto, dir, lo, hi }
            }
            Some(QAddr::Proto) => {
                let Some(v) = lookup_proto(q.proto, name) else {
                    if !matches!(q.proto, None | Some(QProto::Ip | QProto::Ip6 | QProto::Link)) {
                        return proto_number(q, 0, t.span, span);
                    }
                    let what = if q.proto == Some(QProto::Link) { "EtherType" } else { "protocol" };
                    return Err(err(t.span, format!("unknown {what} name `{name}`")));
                };
                return proto_number(q, v, t.span, span);
            }
        };
        Ok(Expr::Prim(prim, span))
    }

    /// An identifier where a term should start.
    fn unknown_word(&self) -> FilterError {
        let t = self.peek();
        let word = t.name();
        if port_range(word).is_some() {
            return self.no_qualifier();
        }
        let lower = word.to_ascii_lowercase();
        if lower != word && (lexer::is_keyword(&lower) || lexer::CONSTANTS.iter().any(|(w, _)| *w == lower)) {
            return self.err_here(format!("unknown keyword `{word}` (keywords are lowercase: `{lower}`)"));
        }
        if let Some((head, _)) = word.split_once('-')
            && (head.bytes().all(|b| b.is_ascii_digit()) || lexer::is_keyword(head))
        {
            return self.err_here(format!(
                "unknown keyword `{word}` (a `-` between words or numbers joins them: \
                 put spaces around `-` to subtract)"
            ));
        }
        if let Some(best) = suggestion(word) {
            return self.err_here(format!("unknown keyword `{word}` (did you mean `{best}`?)"));
        }
        self.err_here(format!("unknown keyword `{word}`"))
    }

    // ---- relations and arithmetic ----

    /// At a `(` starting a term: does arithmetic follow its `)`?
    fn arith_group_ahead(&self) -> bool {
        let mut depth = 0usize;
        let mut i = self.pos;
        loop {
            match self.tok_at(i) {
                Tok::Op(Op::LParen) => depth += 1,
                Tok::Op(Op::RParen) => {
                    depth -= 1;
                    if depth == 0 {
                        return matches!(
                            self.tok_at(i + 1),
                            Tok::Op(
                                Op::Plus
                                    | Op::Minus
                                    | Op::Star
                                    | Op::Slash
                                    | Op::Percent
                                    | Op::Amp
                                    | Op::Pipe
                                    | Op::Caret
                                    | Op::Shl
                                    | Op::Shr
                                    | Op::Eq
                                    | Op::Ne
                                    | Op::Lt
                                    | Op::Le
                                    | Op::Gt
                                    | Op::Ge
                            )
                        );
                    }
                }
                Tok::End => return false,
                _ => {}
            }
            i += 1;
        }
    }

    /// `arth relop arth`.
    fn relation(&mut self) -> Result<Expr> {
        let start = self.peek().span.start;
        let lhs = self.arith()?;
        let op = match self.peek().tok {
            Tok::Op(Op::Eq) => RelOp::Eq,
            Tok::Op(Op::Ne) => RelOp::Ne,
            Tok::Op(Op::Lt) => RelOp::Lt,
            Tok::Op(Op::Le) => RelOp::Le,
            Tok::Op(Op::Gt) => RelOp::Gt,
            Tok::Op(Op::Ge) => RelOp::Ge,
            _ => {
                let lhs_text = self.text_of(Span::new(start, self.prev_end()));
                return Err(self.err_expected(format!(
                    "expected a comparison (=, !=, <, <=, >, >=) after `{lhs_text}`"
                )));
            }
        };
        self.bump();
        let rhs = self.arith()?;
        Ok(Expr::Rel(Rel { op, lhs, rhs }, Span::new(start, self.prev_end())))
    }

    /// Arithmetic, by shift-reduce with libpcap's precedences (see the
    /// module comment for `%` and `^`).
    fn arith(&mut self) -> Result<Arith> {
        #[derive(Clone, Copy)]
        enum StackOp {
            Neg,
            Bin(ArithOp, Span),
        }
        fn prec(op: ArithOp) -> Option<u8> {
            match op {
                ArithOp::Or => Some(1),
                ArithOp::And => Some(2),
                ArithOp::Shl | ArithOp::Shr => Some(3),
                ArithOp::Add | ArithOp::Sub => Some(4),
                ArithOp::Mul | ArithOp::Div => Some(5),
                ArithOp::Mod | ArithOp::Xor => None,
            }
        }
        fn reduce(vals: &mut Vec<Arith>, op: StackOp) -> Result<()> {
            let rhs = vals.pop().unwrap_or(Arith::Num(0));
            let v = match op {
                StackOp::Neg => Arith::Neg(rhs.into()),
                StackOp::Bin(op, span) => {
                    let lhs = vals.pop().unwrap_or(Arith::Num(0));
                    check_constant_operand(op, &lhs, &rhs, span)?;
                    Arith::Binary(op, lhs.into(), rhs.into())
                }
            };
            vals.push(v);
            Ok(())
        }
        let mut vals = Vec::new();
        let mut ops: Vec<StackOp> = Vec::new();
        loop {
            while self.peek().tok == Tok::Op(Op::Minus) {
                let t = self.bump();
                self.count_operator(t.span)?;
                ops.push(StackOp::Neg);
            }
            vals.push(self.arith_primary()?);
            let la = match self.peek().tok {
                Tok::Op(Op::Plus) => Some(ArithOp::Add),
                Tok::Op(Op::Minus) => Some(ArithOp::Sub),
                Tok::Op(Op::Star) => Some(ArithOp::Mul),
                Tok::Op(Op::Slash) => Some(ArithOp::Div),
                Tok::Op(Op::Percent) => Some(ArithOp::Mod),
                Tok::Op(Op::Amp) => Some(ArithOp::And),
                Tok::Op(Op::Pipe) => Some(ArithOp::Or),
                Tok::Op(Op::Caret) => Some(ArithOp::Xor),
                Tok::Op(Op::Shl) => Some(ArithOp::Shl),
                Tok::Op(Op::Shr) => Some(ArithOp::Shr),
                _ => None,
            };
            // Reduce what the LALR parser reduces before shifting `la`.
            while let Some(&top) = ops.last() {
                let reduce_it = match (top, la) {
                    (_, None) => true,
                    (StackOp::Neg, Some(la)) => prec(la).is_some(),
                    (StackOp::Bin(top, _), Some(la)) => {
                        matches!((prec(top), prec(la)), (Some(a), Some(b)) if a >= b)
                    }
                };
                if !reduce_it {
                    break;
                }
                ops.pop();
                reduce(&mut vals, top)?;
            }
            let Some(la) = la else { break };
            let t = self.bump();
            self.count_operator(t.span)?;
            ops.push(StackOp::Bin(la, t.span));
        }
        Ok(vals.pop().unwrap_or(Arith::Num(0)))
    }

    fn arith_primary(&mut self) -> Result<Arith> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Num(v) => {
                self.bump();
                Ok(Arith::Num(v))
            }
            Tok::Kw(Kw::Len) => {
                self.bump();
                Ok(Arith::Len)
            }
            Tok::Op(Op::LParen) => {
                let open = self.open()?;
                let a = self.arith()?;
                match self.peek().tok {
                    Tok::Op(Op::RParen) => {
                        self.bump();
                        self.nesting -= 1;
                        Ok(a)
                    }
                    Tok::End => Err(err(open, "unbalanced `(`: no `)` closes it")),
                    _ => Err(self.err_expected(format!("expected `)` before `{}`", self.peek().text))),
                }
            }
            Tok::Kw(kw) if QProto::of(kw).is_some() => self.load(QProto::of(kw).unwrap_or(QProto::Ip)),
            _ => Err(self.err_expected(format!(
                "expected a number, `len` or a load such as `ip[0]`{}",
                if t.tok == Tok::End { String::new() } else { format!(" before `{}`", t.text) }
            ))),
        }
    }

    /// `proto[index]`, `proto[index:size]`.
    fn load(&mut self, proto: QProto) -> Result<Arith> {
        let t = self.bump();
        if self.peek().tok != Tok::Op(Op::LBracket) {
            return Err(self.err_expected(format!(
                "expected `[` after `{0}` (arithmetic reads headers as `{0}[OFFSET]`)",
                t.text
            )));
        }
        let base = match proto {
            QProto::Link => LoadBase::Link,
            QProto::Ip => LoadBase::Net(ProtoName::Ip),
            QProto::Arp => LoadBase::Net(ProtoName::Arp),
            QProto::Rarp => LoadBase::Net(ProtoName::Rarp),
            QProto::Ip6 => LoadBase::Ip6,
            QProto::Icmp6 => LoadBase::Icmp6,
            QProto::Tcp => LoadBase::Transport(ProtoName::Tcp),
            QProto::Udp => LoadBase::Transport(ProtoName::Udp),
            QProto::Sctp => LoadBase::Transport(ProtoName::Sctp),
            QProto::Icmp => LoadBase::Transport(ProtoName::Icmp),
            QProto::Igmp => LoadBase::Transport(ProtoName::Igmp),
            QProto::Pim => LoadBase::Transport(ProtoName::Pim),
            // `carp` is IP protocol 112, as `vrrp`.
            QProto::Vrrp | QProto::Carp => LoadBase::Transport(ProtoName::Vrrp),
            QProto::Igrp => {
                return Err(err(t.span, "`igrp[...]` is not supported by mirror-agent filters"));
            }
            QProto::Ah | QProto::Esp => {
                return Err(err(
                    t.span,
                    format!("`{}[...]` is not valid: libpcap has no loads relative to it", t.text),
                ));
            }
        };
        let open = self.open()?;
        let index = self.arith()?;
        let mut size = 1;
        if self.peek().tok == Tok::Op(Op::Colon) {
            self.bump();
            let Tok::Num(s) = self.peek().tok else {
                return Err(self.err_expected("expected a load size (1, 2 or 4) after `:`"));
            };
            let st = self.bump();
            if !matches!(s, 1 | 2 | 4) {
                return Err(err(st.span, format!("load size {s} is not 1, 2 or 4")));
            }
            size = s as u8;
        }
        match self.peek().tok {
            Tok::Op(Op::RBracket) => {
                self.bump();
                self.nesting -= 1;
            }
            Tok::End => return Err(err(open, "unbalanced `[`: no `]` closes it")),
            _ => return Err(self.err_expected(format!("expected `]` before `{}`", self.peek().text))),
        }
        Ok(Arith::Load { base, index: index.into(), size, span: Span::new(t.span.start, self.prev_end()) })
    }
}

/// What libpcap refuses in arithmetic: a divisor that is constant 0
/// (code generation and constant folding both check), and a constant
/// shift over 31, unless both operands are constants (they fold to 0).
/// Not reproduced: libpcap also refuses an operand whose first
/// instruction loads such a constant (`len / tcp[0]`, `x >> (40 - 20)`).
fn check_constant_operand(op: ArithOp, lhs: &Arith, rhs: &Arith, span: Span) -> Result<()> {
    match (op, const_value(rhs)) {
        (ArithOp::Div, Some(0)) => Err(err(span, "division by zero")),
        (ArithOp::Mod, Some(0)) => Err(err(span, "modulus by zero")),
        (ArithOp::Shl | ArithOp::Shr, Some(n))
            if n > 31 && (const_value(lhs).is_none() || matches!(rhs, Arith::Num(_))) =>
        {
            Err(err(span, format!("shift by {n}: more than 31 bits")))
        }
        _ => Ok(()),
    }
}

/// The value of constant arithmetic (no loads, no `len`).
fn const_value(a: &Arith) -> Option<u32> {
    Some(match a {
        Arith::Num(n) => *n,
        Arith::Len | Arith::Load { .. } => return None,
        Arith::Neg(a) => const_value(a)?.wrapping_neg(),
        Arith::Binary(op, a, b) => {
            let (a, b) = (const_value(a)?, const_value(b)?);
            match op {
                ArithOp::Add => a.wrapping_add(b),
                ArithOp::Sub => a.wrapping_sub(b),
                ArithOp::Mul => a.wrapping_mul(b),
                ArithOp::Div => a.checked_div(b)?,
                ArithOp::Mod => a.checked_rem(b)?,
                ArithOp::And => a & b,
                ArithOp::Or => a | b,
                ArithOp::Xor => a ^ b,
                // Past 31, C leaves it undefined: unknown.
                ArithOp::Shl => a.checked_shl(b)?,
                ArithOp::Shr => a.checked_shr(b)?,
            }
        }
    })
}

/// The protocol of `port`/`portrange` (libpcap: "illegal qualifier").
fn port_proto(q: Qual, addr: QAddr, at: Span) -> Result<PortProto> {
    Ok(match q.proto {
        None => PortProto::Any,
        Some(QProto::Tcp) => PortProto::Tcp,
        Some(QProto::Udp) => PortProto::Udp,
        Some(QProto::Sctp) => PortProto::Sctp,
        Some(p) => {
            let kw = if addr == QAddr::Port { "port" } else { "portrange" };
            return Err(err(
                at,
                format!("`{} {kw}` is not valid: `{kw}` takes `tcp`, `udp` or `sctp`", p.name()),
            ));
        }
    })
}

/// `proto N` under each protocol qualifier (libpcap's `gen_proto`).
fn proto_number(q: Qual, v: u32, at: Span, span: Span) -> Result<Expr> {
    if q.dir.is_some() {
        return Err(err(at, "`proto` takes no direction: the protocol field is neither `src` nor `dst`"));
    }
    let base = match q.proto {
        None => ProtoBase::Any,
        Some(QProto::Ip) => ProtoBase::Ip,
        Some(QProto::Ip6) => ProtoBase::Ip6,
        Some(QProto::Link) => {
            if v > 0xffff {
                return Err(err(at, format!("EtherType {v} is out of range (0..=65535)")));
            }
            return Ok(Expr::Prim(Prim::EtherProto(v as u16), span));
        }
        Some(p) => {
            return Err(err(
                at,
                format!(
                    "`{} proto` is not valid: use `proto`, `ip proto`, `ip6 proto` or `ether proto`",
                    p.name()
                ),
            ));
        }
    };
    if v > 255 {
        return Err(err(at, format!("protocol {v} is out of range (0..=255)")));
    }
    Ok(Expr::Prim(Prim::IpProto { base, proto: v as u8 }, span))
}

fn host_proto_message(p: QProto, addr: Option<QAddr>) -> String {
    let kw = if addr == Some(QAddr::Net) { "net" } else { "host" };
    format!("`{} {kw}` is not valid: `{kw}` takes `ip`, `ip6`, `arp` or `rarp`", p.name())
}

fn address_for_number(addr: QAddr, text: &str) -> String {
    let (kw, what) = match addr {
        QAddr::Port => ("port", "a port number"),
        QAddr::PortRange => ("portrange", "a port range"),
        _ => ("proto", "a protocol"),
    };
    format!("`{kw}` needs {what}, not the address `{text}`")
}

fn invalid_ipv4(text: &str) -> String {
    format!("`{text}` is not a valid IPv4 address")
}

fn mask4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) }
}

/// libpcap rejects a network with bits set past its mask.
fn check_network(n: u32, mask: u32, text: &str, len: u8, span: Span) -> Result<()> {
    if n & !mask != 0 {
        let net = Ipv4Addr::from(n & mask);
        return Err(err(span, format!("`{text}` has host bits set (the network is {net}/{len})")));
    }
    Ok(())
}

/// libpcap's `__pcap_atoin`: 1 to 4 decimal parts of 0..=255; the value
/// and its width in bits.
fn atoin(text: &str) -> Option<(u32, u32)> {
    let mut v = 0u32;
    let mut bits = 0;
    for part in text.split('.') {
        if part.is_empty() || part.len() > 10 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = part.parse().ok().filter(|n| *n <= 255)?;
        v = v << 8 | n;
        bits += 8;
    }
    (bits <= 32).then_some((v, bits))
}

/// `LO-HI` with decimal numbers.
fn port_range(name: &str) -> Option<(u32, u32)> {
    let (lo, hi) = name.split_once('-')?;
    let num = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    Some((num(lo)?, num(hi)?))
}

/// Protocol names `proto \NAME` knows: libpcap's EtherType table for
/// `ether proto`, else the IP protocol names of netbase's /etc/protocols
/// (fixed here, so that a filter means the same on every host).
fn lookup_proto(proto: Option<QProto>, name: &str) -> Option<u32> {
    const ETHER: &[(&str, u32)] = &[
        ("aarp", 0x80f3),
        ("arp", 0x0806),
        ("atalk", 0x809b),
        ("decnet", 0x6003),
        ("ip", 0x0800),
        ("ip6", 0x86dd),
        ("lat", 0x6004),
        ("loopback", 0x9000),
        ("mopdl", 0x6001),
        ("moprc", 0x6002),
        ("rarp", 0x8035),
        ("sca", 0x6007),
        // libpcap's LLC SAP names.
        ("iso", 0xfe),
        ("stp", 0x42),
        ("ipx", 0xe0),
        ("netbeui", 0xf0),
    ];
    const IP: &[(&str, u32)] = &[
        ("ip", 0),
        ("IP", 0),
        ("hopopt", 0),
        ("HOPOPT", 0),
        ("icmp", 1),
        ("ICMP", 1),
        ("igmp", 2),
        ("IGMP", 2),
        ("ggp", 3),
        ("GGP", 3),
        ("ipencap", 4),
        ("IP-ENCAP", 4),
        ("st", 5),
        ("ST", 5),
        ("tcp", 6),
        ("TCP", 6),
        ("egp", 8),
        ("EGP", 8),
        ("igp", 9),
        ("IGP", 9),
        ("pup", 12),
        ("PUP", 12),
        ("udp", 17),
        ("UDP", 17),
        ("hmp", 20),
        ("HMP", 20),
        ("xns-idp", 22),
        ("XNS-IDP", 22),
        ("rdp", 27),
        ("RDP", 27),
        ("iso-tp4", 29),
        ("ISO-TP4", 29),
        ("dccp", 33),
        ("DCCP", 33),
        ("xtp", 36),
        ("XTP", 36),
        ("ddp", 37),
        ("DDP", 37),
        ("idpr-cmtp", 38),
        ("IDPR-CMTP", 38),
        ("ipv6", 41),
        ("IPv6", 41),
        ("ipv6-route", 43),
        ("IPv6-Route", 43),
        ("ipv6-frag", 44),
        ("IPv6-Frag", 44),
        ("idrp", 45),
        ("IDRP", 45),
        ("rsvp", 46),
        ("RSVP", 46),
        ("gre", 47),
        ("GRE", 47),
        ("esp", 50),
        ("IPSEC-ESP", 50),
        ("ah", 51),
        ("IPSEC-AH", 51),
        ("skip", 57),
        ("SKIP", 57),
        ("ipv6-icmp", 58),
        ("IPv6-ICMP", 58),
        ("ipv6-nonxt", 59),
        ("IPv6-NoNxt", 59),
        ("ipv6-opts", 60),
        ("IPv6-Opts", 60),
        ("rspf", 73),
        ("RSPF", 73),
        ("CPHB", 73),
        ("vmtp", 81),
        ("VMTP", 81),
        ("eigrp", 88),
        ("EIGRP", 88),
        ("ospf", 89),
        ("OSPFIGP", 89),
        ("ax.25", 93),
        ("AX.25", 93),
        ("ipip", 94),
        ("IPIP", 94),
        ("etherip", 97),
        ("ETHERIP", 97),
        ("encap", 98),
        ("ENCAP", 98),
        ("pim", 103),
        ("PIM", 103),
        ("ipcomp", 108),
        ("IPCOMP", 108),
        ("vrrp", 112),
        ("VRRP", 112),
        ("l2tp", 115),
        ("L2TP", 115),
        ("isis", 124),
        ("ISIS", 124),
        ("sctp", 132),
        ("SCTP", 132),
        ("fc", 133),
        ("FC", 133),
        ("mobility-header", 135),
        ("Mobility-Header", 135),
        ("udplite", 136),
        ("UDPLite", 136),
        ("mpls-in-ip", 137),
        ("MPLS-in-IP", 137),
        ("manet", 138),
        ("hip", 139),
        ("HIP", 139),
        ("shim6", 140),
        ("Shim6", 140),
        ("wesp", 141),
        ("WESP", 141),
        ("rohc", 142),
        ("ROHC", 142),
        ("ethernet", 143),
        ("Ethernet", 143),
    ];
    let table = if proto == Some(QProto::Link) { ETHER } else { IP };
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The keyword `word` is most likely a typo of, if any.
fn suggestion(word: &str) -> Option<&'static str> {
    const WORDS: &[&str] = &[
        "host",
        "net",
        "port",
        "portrange",
        "proto",
        "src",
        "dst",
        "ether",
        "ip",
        "ip6",
        "arp",
        "rarp",
        "tcp",
        "udp",
        "sctp",
        "icmp",
        "icmp6",
        "igmp",
        "pim",
        "vrrp",
        "ah",
        "esp",
        "vlan",
        "broadcast",
        "multicast",
        "mask",
        "and",
        "or",
        "not",
        "len",
        "less",
        "greater",
        "tcpflags",
        "icmptype",
        "icmpcode",
        "icmp6type",
        "icmp6code",
        "tcp-fin",
        "tcp-syn",
        "tcp-rst",
        "tcp-push",
        "tcp-ack",
        "tcp-urg",
        "tcp-ece",
        "tcp-cwr",
        "icmp-echo",
        "icmp-echoreply",
        "icmp-unreach",
        "icmp6-echo",
        "icmp6-echoreply",
    ];
    if word.len() < 2 || word.len() > 40 {
        return None;
    }
    let limit = if word.len() <= 4 { 1 } else { 2 };
    WORDS
        .iter()
        .map(|w| (distance(word, w), *w))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, w)| w)
}

/// Edit distance with adjacent transpositions (`tpc` is one from `tcp`).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each wrong expression, the column and the message it gets.
    const WRONG: &[(&str, usize, &str)] = &[
        ("", 1, "the filter is empty"),
        ("   ", 1, "the filter is empty"),
        ("tpc", 1, "unknown keyword `tpc` (did you mean `tcp`?)"),
        ("TCP", 1, "unknown keyword `TCP` (keywords are lowercase: `tcp`)"),
        ("tcp and hots 1.2.3.4", 9, "unknown keyword `hots` (did you mean `host`?)"),
        ("foo", 1, "unknown keyword `foo`"),
        (
            "len-1 > 5",
            1,
            "unknown keyword `len-1` (a `-` between words or numbers joins them: put spaces around `-` to subtract)",
        ),
        ("1-1024", 1, "`1-1024` needs a qualifier: write `portrange 1-1024`"),
        ("host www.example.com", 6, "host names are not resolved: use a numeric address"),
        ("src foo", 5, "host names are not resolved: use a numeric address"),
        ("net foo", 5, "network names are not resolved: use a numeric network (e.g. 10.0.0.0/8)"),
        ("ether host foo", 12, "Ethernet host names are not resolved: use a MAC address"),
        ("tcp dst port https", 14, "port names are not resolved: use a number"),
        ("port 80-90", 6, "`80-90` is a range: write `portrange 80-90`"),
        (
            "portrange 1-2abc",
            11,
            "`1-2abc` is not a port range: write LO-HI with numbers (names are not resolved)",
        ),
        ("port 70000", 6, "port 70000 is out of range (0..=65535)"),
        ("portrange 1-70000", 11, "port 70000 is out of range (0..=65535)"),
        ("vlan 5000", 6, "VLAN ID 5000 is out of range (0..=4095)"),
        ("net 10.0.0.0/33", 14, "prefix length 33 is out of range (0..=32)"),
        ("net ::/129", 8, "prefix length 129 is out of range (0..=128)"),
        ("net 10.1.2.3/16", 5, "`10.1.2.3/16` has host bits set (the network is 10.1.0.0/16)"),
        ("net 2001:db8::1/32", 5, "`2001:db8::1/32` has host bits set (the network is 2001:db8::/32)"),
        (
            "net 10.0.0.1 mask 255.0.0.0",
            5,
            "`10.0.0.1 mask 255.0.0.0` has host bits set (the network is 10.0.0.0/8)",
        ),
        (
            "net 10.0.0.0 mask 255.0.255.0",
            19,
            "netmask 255.0.255.0 is not contiguous: mirror-agent needs a prefix such as /16",
        ),
        ("host 10.0.0.0/8", 6, "`10.0.0.0/8` is a network: write `net 10.0.0.0/8`"),
        ("host ::/64", 6, "`::/64` is a network: write `net ::/64`"),
        ("host 1.2.3.300", 6, "`1.2.3.300` is not a valid IPv4 address"),
        ("host 1::2::3", 6, "`1::2::` is not a valid IPv6 address"),
        ("ether host 1:2:", 12, "`1:2:` is not a valid MAC address"),
        ("ether host 1.2.3.4", 12, "`ether` needs a MAC address, not `1.2.3.4`"),
        ("host 01:02:03:04:05:06", 6, "a MAC address needs `ether`: write `ether host 01:02:03:04:05:06`"),
        ("1.2.3.4", 1, "`1.2.3.4` needs a qualifier, e.g. `host 1.2.3.4`; there is none to inherit here"),
        ("vlan 100 or 200", 13, "`200` needs a qualifier, e.g. `port 200`; there is none to inherit here"),
        (
            "(host 1.1.1.1) or 2.2.2.2",
            19,
            "`2.2.2.2` needs a qualifier, e.g. `host 2.2.2.2`; there is none to inherit here",
        ),
        ("tcp[0:3] = 1", 7, "load size 3 is not 1, 2 or 4"),
        ("ah[0] = 1", 1, "`ah[...]` is not valid: libpcap has no loads relative to it"),
        (
            "ip broadcast",
            1,
            "`ip broadcast` depends on the capture's netmask, which mirror-agent does not know: \
             use e.g. `ip dst 255.255.255.255`",
        ),
        ("tcp broadcast", 1, "`tcp broadcast` is not valid: use `ether broadcast`"),
        (
            "ether",
            1,
            "`ether` needs more: `ether host|src|dst MAC`, `ether proto N`, `ether broadcast|multicast` \
             or `ether[OFFSET]`",
        ),
        ("ip proto tcp", 10, "`tcp` is a keyword here: write `\\tcp` for the protocol name"),
        ("ip proto \\foo", 10, "unknown protocol name `foo`"),
        ("ip proto 300", 10, "protocol 300 is out of range (0..=255)"),
        (
            "tcp proto 6",
            11,
            "`tcp proto` is not valid: use `proto`, `ip proto`, `ip6 proto` or `ether proto`",
        ),
        ("src proto 6", 5, "`proto` takes no direction: the protocol field is neither `src` nor `dst`"),
        ("ip port 80", 9, "`ip port` is not valid: `port` takes `tcp`, `udp` or `sctp`"),
        ("tcp host 1.2.3.4", 10, "`tcp host` is not valid: `host` takes `ip`, `ip6`, `arp` or `rarp`"),
        ("ip6 host 1.2.3.4", 10, "`ip6` does not go with the IPv4 address `1.2.3.4`"),
        ("port 1.2.3.4", 6, "`port` needs a port number, not the address `1.2.3.4`"),
        ("gateway 1.2.3.4", 1, "`gateway` is not supported by mirror-agent filters"),
        ("ip6 protochain 6", 5, "`protochain` is not supported by mirror-agent filters"),
        ("tcp and outbound", 9, "`outbound` is not supported by mirror-agent filters"),
        ("vlan and mpls", 10, "`mpls` is not supported by mirror-agent filters"),
        ("ip and", 7, "the expression ends early: expected a primitive"),
        ("and ip", 1, "expected a primitive before `and`"),
        ("()", 2, "expected a primitive before `)`"),
        ("(ip or (tcp)", 1, "unbalanced `(`: no `)` closes it"),
        ("ip)", 3, "unbalanced `)`: no `(` to close"),
        ("tcp udp", 5, "expected `and` or `or` before `udp`"),
        ("ip[0", 3, "unbalanced `[`: no `]` closes it"),
        ("ip[0]", 6, "expected a comparison (=, !=, <, <=, >, >=) after `ip[0]`"),
        ("tcp[0] =", 9, "expected a number, `len` or a load such as `ip[0]`"),
        ("ip = 1", 4, "unexpected `=`: to compare `ip` header bytes, load them: `ip[0]`"),
        ("net 10/8", 7, "a prefix needs a dotted network address, e.g. `net 10.0.0.0/8`"),
        ("4294967296 = 1", 1, "number 4294967296 does not fit in 32 bits"),
        ("09 = 1", 1, "number 09 has a leading 0 (octal) but a digit 8 or 9"),
        ("len / 0 = 1", 5, "division by zero"),
        ("len >> 32 = 1", 5, "shift by 32: more than 31 bits"),
        ("len % (2 - 2) = 0", 5, "modulus by zero"),
        ("src and tcp", 9, "expected `dst` after `src and`"),
        ("host", 5, "expected an address after `host`"),
        ("tcp \"port\" 80", 5, "unexpected quote `\"`: the filter is one expression, without quotes inside"),
        ("tcp port 80 @", 13, "unexpected character `@`"),
        ("$1f", 1, "ARCnet addresses are not supported by mirror-agent filters"),
    ];

    #[test]
    fn overlong_text_is_refused_before_any_work() {
        let long = "tcp or ".repeat(700) + "udp";
        let e = parse(&long).unwrap_err();
        assert_eq!(
            (e.span, e.message.as_str()),
            (None, "the expression is 4903 bytes long; at most 4092 are accepted")
        );
    }

    #[test]
    fn wrong_expressions_get_their_message_and_column() {
        for (text, column, message) in WRONG {
            let e = parse(text).expect_err(text);
            assert_eq!((e.span.map(|s| s.column()), e.message.as_str()), (Some(*column), *message), "{text}");
            let _ = e.render(text);
        }
        assert!(WRONG.len() >= 35);
    }

    /// Accepted expressions and their canonical text. Each was checked
    /// against libpcap 1.10.3: `tcpdump -d` compiles both texts to the
    /// same program.
    const RIGHT: &[(&str, &str)] = &[
        // Protocols standing alone.
        ("ip", "ip"),
        ("ip6 or arp or rarp", "ip6 or arp or rarp"),
        ("tcp || udp || sctp", "tcp or udp or sctp"),
        (
            "icmp or icmp6 or igmp or pim or vrrp or ah or esp",
            "icmp or icmp6 or igmp or pim or vrrp or ah or esp",
        ),
        ("igrp or carp", "ip proto 9 or vrrp"),
        // VLAN.
        ("vlan", "vlan"),
        ("vlan 100 and vlan (200) and ip", "vlan 100 and vlan 200 and ip"),
        // Ethernet.
        ("ether host 1:2:3:4:5:6", "ether host 01:02:03:04:05:06"),
        ("ether src 0a-0b-0c-0d-0e-0f", "ether src 0a:0b:0c:0d:0e:0f"),
        ("ether dst aabb.ccdd.eeff", "ether dst aa:bb:cc:dd:ee:ff"),
        ("ether host 010203040506", "ether host 01:02:03:04:05:06"),
        ("link src and dst 1.2.3.4.5.6", "ether src and dst 01:02:03:04:05:06"),
        ("ether src or dst 1:2:3:4:5:6", "ether host 01:02:03:04:05:06"),
        ("broadcast or ether multicast", "ether broadcast or ether multicast"),
        ("ether proto 0x800 or \\arp", "ether proto 0x0800 or ether proto 0x0806"),
        ("ether proto \\ip6", "ether proto 0x86dd"),
        ("ip multicast", "ip and ip[16] >= 224"),
        ("ip6 multicast", "ip6 and ip6[24] = 255"),
        // Hosts and networks.
        ("host 198.18.0.1", "host 198.18.0.1"),
        ("src host 198.18.0.1 or dst 2001:db8::1", "src host 198.18.0.1 or dst host 2001:db8::1"),
        ("ip src and dst host 1.2.3.4", "ip src and dst host 1.2.3.4"),
        ("arp dst or src 1.2.3.4", "arp host 1.2.3.4"),
        ("rarp host 1.2.3.4 or ip6 host ::1", "rarp host 1.2.3.4 or ip6 host ::1"),
        ("net 198.18.0.0/15", "net 198.18.0.0/15"),
        ("net 198.18.0.0 mask 255.254.0.0", "net 198.18.0.0/15"),
        ("net 198.18", "net 198.18.0.0/16"),
        ("net 10", "net 10.0.0.0/8"),
        ("net 10.0/8", "net 10.0.0.0/8"),
        ("host 10.1", "net 10.1.0.0/16"),
        ("src 10", "src host 0.0.0.10"),
        ("ip6 net 2001:db8::/32", "ip6 net 2001:db8::/32"),
        ("net ::1", "net ::1/128"),
        ("net 0.0.0.0/0 or ::/0", "net 0.0.0.0/0 or net ::/0"),
        // Ports and protocols.
        ("port 80", "port 80"),
        ("tcp src port 0x50", "tcp src port 80"),
        ("udp dst port 010", "udp dst port 8"),
        ("sctp portrange 20-10", "sctp portrange 10-20"),
        ("portrange 80", "portrange 80-80"),
        ("proto 6 or ip proto \\gre or ip6 proto \\ipv6-frag", "proto 6 or ip proto 47 or ip6 proto 44"),
        ("proto \\tcp", "proto 6"),
        ("greater 100 and less 0x200", "greater 100 and less 512"),
        // Relations and named constants.
        ("tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn", "tcp[13] & (2 | 16) = 2"),
        ("icmp[icmptype] != icmp-echo", "icmp[0] != 8"),
        ("icmp6[icmp6type] = icmp6-neighborsolicit", "icmp6[0] = 135"),
        ("ip[6:2] & 0x1fff = 0", "ip[6:2] & 8191 = 0"),
        ("ether[12:2] = 0x8100 and arp[6:2] = 1", "ether[12:2] = 33024 and arp[6:2] = 1"),
        ("rarp[7] = 3 or ip6[6] = 44 or udp[0:2] > 1023", "rarp[7] = 3 or ip6[6] = 44 or udp[0:2] > 1023"),
        ("len - 14 > 500", "len - 14 > 500"),
        ("(len - 14) / 2 >= 9", "(len - 14) / 2 >= 9"),
        ("length <= 64 or len < 9 or len > 1", "len <= 64 or len < 9 or len > 1"),
        ("tcp[13]&2!=0", "tcp[13] & 2 != 0"),
        ("ip[2:2]-20>0", "ip[2:2] - 20 > 0"),
        ("tcp[1 + 2:2] = 3", "tcp[1 + 2:2] = 3"),
        ("(tcp[0]) = 1", "tcp[0] = 1"),
        // libpcap's precedences: `%` and `^` bind rightwards.
        ("1 + 2 % 3 * 4 = 3", "1 + (2 % (3 * 4)) = 3"),
        ("8 ^ 1 + 1 = 10", "8 ^ (1 + 1) = 10"),
        ("-2 ^ 1 = 0xfffffffd", "-(2 ^ 1) = 4294967293"),
        ("-2 + 1 = 1", "(-2) + 1 = 1"),
        ("1 | 2 & 3 << 1 + 2 * 3 = 0", "1 | (2 & (3 << (1 + (2 * 3)))) = 0"),
        ("8 - 2 - 1 = 5", "(8 - 2) - 1 = 5"),
        ("- - 2 = 2", "-(-2) = 2"),
        // and/or: same precedence, left-associative; not binds tightest.
        ("tcp or udp and icmp", "(tcp or udp) and icmp"),
        ("tcp and udp or icmp", "(tcp and udp) or icmp"),
        ("tcp and (udp or icmp)", "tcp and (udp or icmp)"),
        ("not tcp and udp", "not tcp and udp"),
        ("not (tcp and udp)", "not (tcp and udp)"),
        ("!!tcp", "not not tcp"),
        ("((((tcp))))", "tcp"),
        ("not tcp[13] & 2 != 0", "not tcp[13] & 2 != 0"),
        // Qualifier inheritance.
        ("host 1.1.1.1 or 2.2.2.2", "host 1.1.1.1 or host 2.2.2.2"),
        ("host 1.1.1.1 and not 2.2.2.2", "host 1.1.1.1 and not host 2.2.2.2"),
        ("not host 1.1.1.1 and 2.2.2.2", "not host 1.1.1.1 and host 2.2.2.2"),
        ("src host 1.1.1.1 or 2.2.2.2", "src host 1.1.1.1 or src host 2.2.2.2"),
        ("tcp port 80 or 443", "tcp port 80 or tcp port 443"),
        (
            "tcp src port 80 or 443 and not 22",
            "(tcp src port 80 or tcp src port 443) and not tcp src port 22",
        ),
        ("port 80 and (443 or (8080))", "port 80 and (port 443 or port 8080)"),
        ("host (1.1.1.1 or 2.2.2.2)", "host 1.1.1.1 or host 2.2.2.2"),
        ("host not 1.1.1.1", "not host 1.1.1.1"),
        ("host 1.1.1.1 or (not (2.2.2.2 or 3.3.3.3))", "host 1.1.1.1 or not (host 2.2.2.2 or host 3.3.3.3)"),
        ("host 1.1.1.1 and (tcp) or 2.2.2.2", "(host 1.1.1.1 and tcp) or host 2.2.2.2"),
        ("host 1.1.1.1 or 5", "host 1.1.1.1 or host 0.0.0.5"),
        ("net 10.0.0.0/8 or 11.0.0.0", "net 10.0.0.0/8 or net 11.0.0.0/32"),
        (
            "ether src 1:2:3:4:5:6 or 0a0b0c0d0e0f",
            "ether src 01:02:03:04:05:06 or ether src 0a:0b:0c:0d:0e:0f",
        ),
        ("ip proto 6 or 17", "ip proto 6 or ip proto 17"),
        ("port 53 and udp or 1 + 1 = 2", "(port 53 and udp) or 1 + 1 = 2"),
        ("port 80 or (1) + 1 = 2", "port 80 or 1 + 1 = 2"),
        ("port 80 and not 1 = 2", "port 80 and not 1 = 2"),
        ("1 = 1 and port 80 or 2", "(1 = 1 and port 80) or port 2"),
        ("udp portrange 1-10 or 20-30", "udp portrange 1-10 or udp portrange 20-30"),
    ];

    #[test]
    fn right_expressions_print_canonically_and_parse_back() {
        for (text, canonical) in RIGHT {
            let e = parse(text).unwrap_or_else(|e| panic!("{text}: {}", e.render(text)));
            let printed = e.to_string();
            assert_eq!(printed, *canonical, "{text}");
            let again = parse(&printed).unwrap_or_else(|e| panic!("{printed}: {}", e.render(&printed)));
            assert_eq!(again.without_spans(), e.without_spans(), "{text}");
            assert_eq!(again.to_string(), printed);
        }
    }

    fn prim(e: &Expr) -> &Prim {
        match e {
            Expr::Prim(p, _) => p,
            other => panic!("not a primitive: {other:?}"),
        }
    }

    #[test]
    fn trees_and_spans() {
        let e = parse("tcp or udp and icmp").unwrap();
        let Expr::And(l, r) = &e else { panic!("{e:?}") };
        assert!(matches!(**l, Expr::Or(..)));
        assert_eq!(prim(r), &Prim::Proto(ProtoName::Icmp));

        let e = parse("tcp dst port 443").unwrap();
        assert_eq!(
            e,
            Expr::Prim(Prim::Port { proto: PortProto::Tcp, dir: Dir::Dst, port: 443 }, Span::new(0, 16))
        );
        let e = parse("src net 10.0.0.0 mask 255.0.0.0").unwrap();
        let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0));
        let net = Prim::Net { proto: HostProto::Any, dir: Dir::Src, addr, prefix_len: 8 };
        assert_eq!(e, Expr::Prim(net, Span::new(0, 31)));
        // An inherited value's span is its own.
        let Expr::Or(_, r) = parse("host 1.1.1.1 or 2.2.2.2").unwrap() else { panic!() };
        assert!(matches!(*r, Expr::Prim(Prim::Host { .. }, Span { start: 16, end: 23 })));

        let Expr::Rel(rel, span) = parse("tcp[13:2] & 0x12 != 0").unwrap() else { panic!() };
        assert_eq!(span, Span::new(0, 21));
        let Arith::Binary(ArithOp::And, load, mask) = rel.lhs else { panic!() };
        assert_eq!(*mask, Arith::Num(0x12));
        assert_eq!(
            *load,
            Arith::Load {
                base: LoadBase::Transport(ProtoName::Tcp),
                index: Arith::Num(13).into(),
                size: 2,
                span: Span::new(0, 9),
            }
        );
        let e = parse("ip6[0] = 1 and icmp6[0] = 1 and link[0] = 1 and arp[0] = 1").unwrap();
        let mut bases = Vec::new();
        collect_bases(&e, &mut bases);
        assert_eq!(bases, [LoadBase::Ip6, LoadBase::Icmp6, LoadBase::Link, LoadBase::Net(ProtoName::Arp)]);
    }

    fn collect_bases(e: &Expr, out: &mut Vec<LoadBase>) {
        match e {
            Expr::And(a, b) | Expr::Or(a, b) => {
                collect_bases(a, out);
                collect_bases(b, out);
            }
            Expr::Not(a) => collect_bases(a, out),
            Expr::Rel(Rel { lhs: Arith::Load { base, .. }, .. }, _) => out.push(*base),
            _ => {}
        }
    }

    #[test]
    fn limits_are_errors_not_crashes() {
        let nest = |n: usize| format!("{}tcp{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nest(MAX_NESTING)).is_ok());
        let e = parse(&nest(MAX_NESTING + 1)).unwrap_err();
        assert_eq!(e.message, "parentheses and brackets nest deeper than 64 levels");
        assert_eq!(e.span, Some(Span::new(MAX_NESTING, MAX_NESTING + 1)));
        let brackets = format!("{}0{} = 1", "ip[".repeat(MAX_NESTING + 1), "]".repeat(MAX_NESTING + 1));
        assert!(parse(&brackets).unwrap_err().message.contains("deeper than 64"));

        let chain = |n: usize| vec!["tcp"; n + 1].join(" or ");
        assert!(parse(&chain(MAX_OPERATORS)).is_ok());
        let e = parse(&chain(MAX_OPERATORS + 1)).unwrap_err();
        assert_eq!(e.message, "more than 256 operators: the expression is too complex");
        assert!(parse(&format!("{}tcp", "not ".repeat(100_000))).is_err());
        assert!(parse(&format!("{}1 = 1", "-".repeat(100_000))).is_err());
        assert!(parse(&"(".repeat(100_000)).is_err());
        assert!(parse(&format!("host 1.1.1.1 or {}", "(not ".repeat(50_000))).is_err());
        assert!(parse(&format!("port 1 or {}1", "(".repeat(100_000))).is_err());
    }

    /// A small deterministic fuzz: token soup never panics, and what parses
    /// prints to text that parses to the same tree.
    #[test]
    fn token_soup_never_panics_and_round_trips() {
        const WORDS: &[&str] = &[
            "tcp",
            "udp",
            "ip",
            "ip6",
            "ether",
            "vlan",
            "10",
            "host",
            "net",
            "port",
            "portrange",
            "proto",
            "src",
            "dst",
            "and",
            "or",
            "not",
            "(",
            ")",
            "[",
            "]",
            ":",
            "2",
            "=",
            "!=",
            "<",
            ">",
            "+",
            "-",
            "*",
            "/",
            "%",
            "&",
            "|",
            "^",
            "<<",
            ">>",
            "len",
            "1.2.3.4",
            "10.1",
            "::1",
            "2001:db8::",
            "1:2:3:4:5:6",
            "1-20",
            "\\tcp",
            "foo",
            "mask",
            "255.0.0.0",
            "broadcast",
            "multicast",
            "less",
            "greater",
            "tcpflags",
            "0x10",
            "0",
            "33",
            "icmp",
            "arp",
            "!",
            "&&",
            "||",
            "é",
            "$1",
            "gateway",
            "2001:db8::1",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = 1 + next(12);
            let text: Vec<&str> = (0..len).map(|_| WORDS[next(WORDS.len())]).collect();
            let text = text.join(if next(4) == 0 { "" } else { " " });
            match parse(&text) {
                Ok(e) => {
                    parsed += 1;
                    let printed = e.to_string();
                    let again = parse(&printed).unwrap_or_else(|err| panic!("{text} -> {printed}: {err}"));
                    assert_eq!(again.without_spans(), e.without_spans(), "{text} -> {printed}");
                }
                Err(e) => {
                    let _ = e.render(&text);
                }
            }
        }
        assert!(parsed > 100, "{parsed}");
    }
}
