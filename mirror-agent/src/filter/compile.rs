//! [`super::ast`] to filter-machine instructions, with libpcap's semantics.
//!
//! The expression means exactly what libpcap 1.10.3 makes of it for an
//! Ethernet savefile (`tcpdump -r`): the same tests, on the same offsets,
//! guarded by the same protocol checks in the same order, since a load past
//! the end of the frame rejects the whole packet. Each primitive becomes a
//! small boolean tree of fused tests ([`B`]), in libpcap's evaluation order;
//! `vlan` shifts the network offsets of everything after it in the text.
//! The tree becomes a DAG by continuation passing (`cps`: each test gets
//! its true and false successors, so the size stays linear), which
//! [`super::optimize`] optimizes and lays out.
//!
//! Rules come first: a chain of `TEST_FIELD`s over the deep parse, whose
//! first matching rule sends the packet either to the expression or to a
//! reject.
use std::net::IpAddr;

use mirror_common::{
    FilterInsn,
    field::{self},
    filter::{MAX_INSNS, MEMWORDS, alu, cmp, op},
    vm::{self, compare},
};

use super::{
    FilterError, Program, Selection, Span,
    ast::{
        Action, Arith, ArithOp, Dir, Expr, HostProto, LoadBase, PortProto, Prim, ProtoBase, ProtoName, Rel,
        RelOp, Rule, RuleSet,
    },
    optimize::{self, Builder, Dag, Node, NodeId, Src, Test},
};

/// Deepest nesting of `and`/`or`/`not`/parentheses (beyond plain chains
/// such as `a or b or c`, which do not nest) and of arithmetic.
pub const MAX_NESTING: usize = 256;

/// Most DAG nodes before optimization: far more than any expression that
/// fits in [`MAX_INSNS`] needs; keeps the optimizer's work bounded.
const MAX_NODES: usize = 50_000;

const FULL: u32 = u32::MAX;
const ETHERMTU: u32 = 1500;
const ETHERTYPE_IP: u32 = 0x0800;
const ETHERTYPE_ARP: u32 = 0x0806;
const ETHERTYPE_REVARP: u32 = 0x8035;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const ETHERTYPE_IPX: u32 = 0x8137;
const ETHERTYPE_ATALK: u32 = 0x809b;
const ETHERTYPE_AARP: u32 = 0x80f3;
const VLAN_TPIDS: [u32; 3] = [0x8100, 0x88a8, 0x9100];
const IPPROTO_FRAGMENT: u32 = 44;
const IPPROTO_ICMPV6: u32 = 58;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_SCTP: u32 = 132;

/// Compiles rules, then the expression (either may be absent), into one
/// program.
pub fn compile(selection: &Selection) -> Result<Program, FilterError> {
    let Built { dag: raw, expr, poison } = build(selection)?;
    let optimized = optimize::optimize(&raw);
    if let Some(expr) = expr {
        // What libpcap's optimizer refuses, in the expression on its own.
        let alone = if selection.rules.is_none() {
            optimized.clone()
        } else {
            optimize::optimize(&Dag { nodes: raw.nodes.clone(), entry: expr })
        };
        for node in &alone.nodes {
            if let Node::Branch { test, .. } = node
                && let Some((message, span)) =
                    poison.iter().find_map(|(s, m, at)| (*s == test.src).then_some((*m, *at)))
            {
                return Err(FilterError::at(span, message));
            }
        }
        if alone.nodes == [Node::Leaf(false)] {
            return Err(FilterError::whole("expression rejects all packets"));
        }
    }
    let unfused = lay_out(&raw, optimized)?;
    // Before fusing: the analysis knows more of one test than of a set.
    let reject_classes = !super::prefilter::accept_classes(&unfused);
    let insns = super::fuse::equality_chains(&unfused);
    let uses_fields = insns.iter().any(|i| matches!(i.op, op::TEST_FIELD | op::LD_FIELD));
    Ok(Program { insns, uses_fields, reject_classes })
}

/// The unoptimized DAG, the expression's entry in it, and its poisoned
/// tests (see [`Lower::poison`]).
#[derive(Debug)]
struct Built {
    dag: Dag,
    expr: Option<NodeId>,
    poison: Vec<(Src, &'static str, Span)>,
}

fn build(selection: &Selection) -> Result<Built, FilterError> {
    let mut b = Builder::default();
    let accept = b.leaf(true);
    let reject = b.leaf(false);
    let mut entry = accept;
    let mut expr_entry = None;
    let mut poison = Vec::new();
    if let Some(expr) = &selection.expr {
        let mut lower = Lower::default();
        let tree = lower.expr(expr, 0)?;
        poison = lower.poison;
        entry = cps(&mut b, &tree, accept, reject);
        expr_entry = Some(entry);
    }
    if let Some(rules) = &selection.rules {
        entry = rule_set(&mut b, rules, entry, reject);
    }
    if b.len() > MAX_NODES {
        return Err(FilterError::whole(format!(
            "the filter is too complex (more than {MAX_NODES} tests before optimization)"
        )));
    }
    Ok(Built { dag: b.finish(entry), expr: expr_entry, poison })
}

/// Emits `optimized`, or `raw` in the corner where it would be shorter
/// (so that the optimizer never makes a program longer).
fn lay_out(raw: &Dag, optimized: Dag) -> Result<Vec<FilterInsn>, FilterError> {
    let dag = if optimize::len(&optimized) <= optimize::len(raw) {
        optimized
    } else {
        optimize::rebuild(raw, false, true)
    };
    let n = optimize::len(&dag);
    let too_long = || {
        FilterError::whole(format!(
            "the filter compiles to {n} instructions; the datapath runs at most {MAX_INSNS} per session"
        ))
    };
    if n > MAX_INSNS as usize {
        return Err(too_long());
    }
    optimize::emit(&dag).ok_or_else(too_long)
}

/// A boolean tree of tests, evaluated left to right with short-circuits
/// (libpcap's `gen_and`/`gen_or` order).
#[derive(Debug, Clone)]
enum B {
    Const(bool),
    Test(Test),
    Not(Box<B>),
    And(Vec<B>),
    Or(Vec<B>),
}

fn not(b: B) -> B {
    B::Not(Box::new(b))
}

/// Continuation passing: the node that runs `b`, then goes to `t` if it
/// holds and to `f` otherwise.
fn cps(g: &mut Builder, b: &B, t: NodeId, f: NodeId) -> NodeId {
    match b {
        B::Const(v) => {
            if *v {
                t
            } else {
                f
            }
        }
        B::Test(test) => g.branch(test.clone(), t, f),
        B::Not(inner) => cps(g, inner, f, t),
        B::And(items) => items.iter().rev().fold(t, |next, item| cps(g, item, next, f)),
        B::Or(items) => items.iter().rev().fold(f, |next, item| cps(g, item, t, next)),
    }
}

/// `src <how> val`. A zero mask makes the value a constant: libpcap's
/// optimizer decides the test at once (`and #0; jeq #0` is `jset #0`)
/// and drops its load. (Fields are ours: no libpcap timing to keep.)
fn test(src: Src, how: u8, val: u32) -> B {
    match src {
        Src::Field { mask: 0, .. } => B::Const(compare(how, 0, val)),
        Src::Abs { mask: 0, .. } | Src::Msh { mask: 0, .. } => {
            B::Test(Test { src: Src::Const { value: 0, round: 1 }, cmp: how, val, late: false })
        }
        src => B::Test(Test { src, cmp: how, val, late: false }),
    }
}

/// `P[off:size] & bits != 0` (libpcap's `jset`).
fn jset(off: u32, size: u8, bits: u32) -> B {
    B::Test(Test { src: Src::Abs { off, size, mask: FULL }, cmp: cmp::SET, val: bits, late: false })
}

fn abs(off: u32, size: u8, val: u32) -> B {
    test(Src::Abs { off, size, mask: FULL }, cmp::EQ, val)
}

fn field_eq(k: u32, val: u32) -> B {
    test(Src::Field { k, mask: FULL }, cmp::EQ, val)
}

fn len_code() -> Src {
    Src::Acc(vec![insn(op::LD_LEN, 0, 0)])
}

fn insn(opcode: u8, arg: u8, k: u32) -> FilterInsn {
    FilterInsn { op: opcode, arg, k, ..Default::default() }
}

fn too_deep() -> FilterError {
    FilterError::whole(format!("the filter nests more than {MAX_NESTING} levels deep"))
}

/// Lowering state: the static offset shift of libpcap's `vlan`, which
/// applies to everything after it in the text.
#[derive(Debug, Default)]
struct Lower {
    shift: u32,
    /// Relations whose arithmetic libpcap's optimizer refuses (a division
    /// by a constant 0, a shift by a constant over 31, once folded): an
    /// error only if the test is still reachable once optimized, since
    /// libpcap folds statements only in code it kept.
    poison: Vec<(Src, &'static str, Span)>,
}

impl Lower {
    /// The EtherType (or 802.3 length) field.
    fn lt(&self) -> u32 {
        12 + self.shift
    }

    /// The link-layer payload: the network header, or the 802.2 LLC one.
    fn pl(&self) -> u32 {
        14 + self.shift
    }

    fn expr(&mut self, e: &Expr, depth: usize) -> Result<B, FilterError> {
        if depth > MAX_NESTING {
            return Err(too_deep());
        }
        match e {
            Expr::And(..) | Expr::Or(..) => {
                let is_and = matches!(e, Expr::And(..));
                // `a or b or c` is `(a or b) or c`: walk the left spine
                // without recursing, then lower the terms in text order.
                let mut rights = Vec::new();
                let mut cur = e;
                while let (Expr::And(l, r), true) | (Expr::Or(l, r), false) = (cur, is_and) {
                    rights.push(r);
                    cur = l;
                }
                let mut items = vec![self.expr(cur, depth + 1)?];
                for r in rights.iter().rev() {
                    items.push(self.expr(r, depth + 1)?);
                }
                Ok(if is_and { B::And(items) } else { B::Or(items) })
            }
            Expr::Not(inner) => Ok(not(self.expr(inner, depth + 1)?)),
            Expr::Prim(p, span) => self.prim(p, *span),
            Expr::Rel(r, span) => self.rel(r, *span),
        }
    }

    /// libpcap's `gen_linktype` for Ethernet: an EtherType, or an LLC SAP
    /// (values up to 1500) in an 802.3 frame.
    fn linktype(&self, proto: u32) -> B {
        let (lt, llc) = (self.lt(), self.pl());
        let is_802_3 = || not(test(Src::Abs { off: lt, size: 2, mask: FULL }, cmp::GT, ETHERMTU));
        match proto {
            // ISO, IP-over-802.2, NetBEUI: DSAP and SSAP.
            0xfe | 0x06 | 0xf0 => B::And(vec![is_802_3(), abs(llc, 2, proto << 8 | proto)]),
            // IPX: Ethernet II, SNAP, 802.2, or raw 802.3 (0xffff).
            0xe0 => B::Or(vec![
                abs(lt, 2, ETHERTYPE_IPX),
                B::And(vec![
                    is_802_3(),
                    B::Or(vec![self.snap(0, ETHERTYPE_IPX), abs(llc, 1, 0xe0), abs(llc, 2, 0xffff)]),
                ]),
            ]),
            ETHERTYPE_ATALK | ETHERTYPE_AARP => {
                let org = if proto == ETHERTYPE_ATALK { 0x08_0007 } else { 0 };
                B::Or(vec![abs(lt, 2, proto), B::And(vec![is_802_3(), self.snap(org, proto)])])
            }
            p if p <= ETHERMTU => B::And(vec![is_802_3(), abs(lt + 2, 1, p)]),
            p => abs(lt, 2, p),
        }
    }

    /// An 802.2 SNAP header (`aa aa 03`, OUI, type); libpcap compares its
    /// second word first.
    fn snap(&self, org: u32, ptype: u32) -> B {
        let llc = self.pl();
        B::And(vec![
            abs(llc + 4, 4, (org & 0xffff) << 16 | ptype),
            abs(llc, 4, 0xaaaa_0300 | (org >> 16 & 0xff)),
        ])
    }

    fn proto_ip(&self, v: u32) -> B {
        B::And(vec![self.linktype(ETHERTYPE_IP), abs(self.pl() + 9, 1, v)])
    }

    /// The next header, or the one after a single fragment header.
    fn proto_ip6(&self, v: u32) -> B {
        let pl = self.pl();
        B::And(vec![
            self.linktype(ETHERTYPE_IPV6),
            B::Or(vec![
                abs(pl + 6, 1, v),
                B::And(vec![abs(pl + 6, 1, IPPROTO_FRAGMENT), abs(pl + 40, 1, v)]),
            ]),
        ])
    }

    fn proto_any(&self, v: u32) -> B {
        B::Or(vec![self.proto_ip(v), self.proto_ip6(v)])
    }

    /// libpcap's `gen_proto_abbrev`.
    fn abbrev(&self, p: ProtoName, span: Span) -> Result<B, FilterError> {
        Ok(match p {
            ProtoName::Ip => self.linktype(ETHERTYPE_IP),
            ProtoName::Ip6 => self.linktype(ETHERTYPE_IPV6),
            ProtoName::Arp => self.linktype(ETHERTYPE_ARP),
            ProtoName::Rarp => self.linktype(ETHERTYPE_REVARP),
            ProtoName::Tcp => self.proto_any(IPPROTO_TCP),
            ProtoName::Udp => self.proto_any(IPPROTO_UDP),
            ProtoName::Sctp => self.proto_any(IPPROTO_SCTP),
            ProtoName::Icmp => self.proto_ip(1),
            ProtoName::Igmp => self.proto_ip(2),
            ProtoName::Pim => self.proto_any(103),
            ProtoName::Vrrp => self.proto_ip(112),
            ProtoName::Icmp6 => self.proto_ip6(IPPROTO_ICMPV6),
            ProtoName::Ah => self.proto_any(51),
            ProtoName::Esp => self.proto_any(50),
            ProtoName::Ether => {
                return Err(FilterError::at(span, "'ether' needs a qualifier (host, src, dst, proto, ...)"));
            }
        })
    }

    /// Not an IPv4 fragment other than the first.
    fn ipfrag_ok(&self) -> B {
        not(jset(self.pl() + 6, 2, 0x1fff))
    }

    fn prim(&mut self, p: &Prim, span: Span) -> Result<B, FilterError> {
        Ok(match p {
            Prim::Proto(name) => self.abbrev(*name, span)?,
            Prim::Vlan(id) => {
                let tpid = B::Or(VLAN_TPIDS.iter().map(|t| self.linktype(*t)).collect());
                let b = match id {
                    None => tpid,
                    Some(id) if *id > 0x0fff => {
                        return Err(FilterError::at(
                            span,
                            format!("VLAN tag {id} greater than maximum 4095"),
                        ));
                    }
                    Some(id) => B::And(vec![
                        tpid,
                        test(Src::Abs { off: self.pl(), size: 2, mask: 0x0fff }, cmp::EQ, u32::from(*id)),
                    ]),
                };
                self.shift += 4;
                b
            }
            Prim::EtherHost { dir, mac } => {
                dir_op(*dir, |d| ether_addr(if d == Dir::Src { 6 } else { 0 }, mac))
            }
            Prim::EtherBroadcast => ether_addr(0, &[0xff; 6]),
            Prim::EtherMulticast => jset(0, 1, 1),
            Prim::EtherProto(v) => self.linktype(u32::from(*v)),
            Prim::Host { proto, dir, addr } => {
                let len = if addr.is_ipv4() { 32 } else { 128 };
                self.host(*proto, *dir, *addr, len, span)?
            }
            Prim::Net { proto, dir, addr, prefix_len } => {
                self.host(*proto, *dir, *addr, *prefix_len, span)?
            }
            Prim::Port { proto, dir, port } => {
                let port = u32::from(*port);
                self.ports(*proto, *dir, &|off| Atom::Eq(off, port))
            }
            Prim::PortRange { proto, dir, lo, hi } => {
                let (lo, hi) = (u32::from(*lo.min(hi)), u32::from(*lo.max(hi)));
                self.ports(*proto, *dir, &|off| Atom::Range(off, lo, hi))
            }
            Prim::IpProto { base, proto } => {
                let v = u32::from(*proto);
                match base {
                    ProtoBase::Any => self.proto_any(v),
                    ProtoBase::Ip => self.proto_ip(v),
                    ProtoBase::Ip6 => self.proto_ip6(v),
                }
            }
            Prim::Greater(n) => test(len_code(), cmp::GE, *n),
            Prim::Less(n) => not(test(len_code(), cmp::GT, *n)),
        })
    }

    /// libpcap's `gen_host`/`gen_host6` (with `gen_hostop`/`gen_hostop6`).
    fn host(&self, proto: HostProto, dir: Dir, addr: IpAddr, len: u8, span: Span) -> Result<B, FilterError> {
        match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(FilterError::at(span, format!("mask length must be <= 32, not {len}")));
                }
                let addr = u32::from(a);
                let mask = if len == 0 { 0 } else { FULL << (32 - u32::from(len)) };
                if addr & !mask != 0 {
                    return Err(FilterError::at(span, format!("non-network bits set in \"{a}/{len}\"")));
                }
                let op = |ll: u32, src: u32, dst: u32| {
                    dir_op(dir, |d| {
                        let off = self.pl() + if d == Dir::Src { src } else { dst };
                        B::And(vec![self.linktype(ll), test(Src::Abs { off, size: 4, mask }, cmp::EQ, addr)])
                    })
                };
                Ok(match proto {
                    HostProto::Any => B::Or(vec![
                        op(ETHERTYPE_IP, 12, 16),
                        op(ETHERTYPE_ARP, 14, 24),
                        op(ETHERTYPE_REVARP, 14, 24),
                    ]),
                    HostProto::Ip => op(ETHERTYPE_IP, 12, 16),
                    HostProto::Arp => op(ETHERTYPE_ARP, 14, 24),
                    HostProto::Rarp => op(ETHERTYPE_REVARP, 14, 24),
                    HostProto::Ip6 => {
                        return Err(FilterError::at(span, "'ip6' modifier applied to an IPv4 address"));
                    }
                })
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(FilterError::at(span, format!("mask length must be <= 128, not {len}")));
                }
                if !matches!(proto, HostProto::Any | HostProto::Ip6) {
                    return Err(FilterError::at(span, "only 'ip6' applies to an IPv6 address"));
                }
                let addr = u128::from(a);
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                if addr & !mask != 0 {
                    return Err(FilterError::at(span, format!("non-network bits set in \"{a}/{len}\"")));
                }
                let word = |v: u128, i: u32| (v >> (96 - 32 * i)) as u32;
                Ok(dir_op(dir, |d| {
                    let off = self.pl() + if d == Dir::Src { 8 } else { 24 };
                    let mut tests = vec![self.linktype(ETHERTYPE_IPV6)];
                    for i in 0..4 {
                        let src = Src::Abs { off: off + 4 * i, size: 4, mask: word(mask, i) };
                        tests.push(test(src, cmp::EQ, word(addr, i)));
                    }
                    B::And(tests)
                }))
            }
        }
    }

    /// `port`/`portrange` (libpcap's `gen_port6` or'ed before `gen_port`).
    fn ports(&self, proto: PortProto, dir: Dir, atom: &dyn Fn(u32) -> Atom) -> B {
        let pl = self.pl();
        let protos: Vec<u32> = match proto {
            PortProto::Any => vec![IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP],
            PortProto::Tcp => vec![IPPROTO_TCP],
            PortProto::Udp => vec![IPPROTO_UDP],
            PortProto::Sctp => vec![IPPROTO_SCTP],
        };
        let v6 = |p: u32| {
            let ports = dir_op(dir, |d| {
                atom(if d == Dir::Src { 0 } else { 2 }).lower(|off| Src::Abs {
                    off: pl + 40 + off,
                    size: 2,
                    mask: FULL,
                })
            });
            B::And(vec![abs(pl + 6, 1, p), ports])
        };
        let v4 = |p: u32| {
            let ports = dir_op(dir, |d| {
                atom(if d == Dir::Src { 0 } else { 2 }).lower(|off| Src::Msh {
                    hdr: pl,
                    off: pl + off,
                    size: 2,
                    mask: FULL,
                })
            });
            B::And(vec![abs(pl + 9, 1, p), self.ipfrag_ok(), ports])
        };
        B::Or(vec![
            B::And(vec![self.linktype(ETHERTYPE_IPV6), B::Or(protos.iter().map(|p| v6(*p)).collect())]),
            B::And(vec![self.linktype(ETHERTYPE_IP), B::Or(protos.iter().map(|p| v4(*p)).collect())]),
        ])
    }

    fn rel(&mut self, r: &Rel, span: Span) -> Result<B, FilterError> {
        // Only the leftmost operand's protocol checks survive libpcap's
        // `gen_arth`; a relation checks its left side's, then its right's.
        let (lhs, mut checks) = self.arith(&r.lhs, 0, span)?;
        let (rhs, rchecks) = self.arith(&r.rhs, 0, span)?;
        checks.extend(rchecks);
        let (folded_l, poison_l) = fold(lhs.clone());
        let (folded_r, poison_r) = fold(rhs.clone());
        let core = if let Some(message) = poison_l.or(poison_r) {
            let code = x_compare(&lhs, &rhs, span)?;
            self.poison.push((Src::AccX(code.clone()), message, span));
            B::Test(Test { src: Src::AccX(code), cmp: cmp::EQ, val: 0, late: false })
        } else if let (Val::Const(a), Val::Const(b)) = (&folded_l, &folded_r) {
            let (how, negate) = rel_cmp(r.op);
            // Literals are compared in libpcap's first pass, which moves
            // jumps; folded arithmetic only in its second (`Src::Folded`).
            let b = if matches!((&r.lhs, &r.rhs), (Arith::Num(_), Arith::Num(_))) {
                let round = if how == cmp::EQ { 2 } else { 1 };
                B::Test(Test { src: Src::Const { value: *a, round }, cmp: how, val: *b, late: false })
            } else {
                let src = Src::Folded { code: x_compare(&lhs, &rhs, span)?, value: *a };
                B::Test(Test { src, cmp: how, val: *b, late: false })
            };
            if negate { not(b) } else { b }
        } else {
            let b = relation(r.op, folded_l, folded_r, span)?;
            if rel_cmp(r.op).0 == cmp::EQ { late(b) } else { b }
        };
        checks.push(core);
        Ok(B::And(checks))
    }

    /// An arithmetic operand, and the protocol checks libpcap ands before
    /// the relation that uses it.
    fn arith(&self, a: &Arith, depth: usize, span: Span) -> Result<(Val, Vec<B>), FilterError> {
        if depth > MAX_NESTING {
            return Err(too_deep());
        }
        Ok(match a {
            Arith::Num(n) => (Val::Const(*n), Vec::new()),
            Arith::Len => (Val::Len, Vec::new()),
            Arith::Neg(x) => {
                let (v, c) = self.arith(x, depth + 1, span)?;
                (Val::Neg(Box::new(v)), c)
            }
            Arith::Binary(o, x, y) => {
                // libpcap's `gen_arth` checks the first statement of the
                // right operand's code: its leftmost literal (`x / tcp[0]`
                // is refused too).
                match (o, first_literal(y)) {
                    (ArithOp::Div, Some(0)) => return Err(FilterError::at(span, "division by zero")),
                    (ArithOp::Mod, Some(0)) => return Err(FilterError::at(span, "modulus by zero")),
                    (ArithOp::Shl | ArithOp::Shr, Some(n)) if n > 31 => {
                        return Err(FilterError::at(span, "shift by more than 31 bits"));
                    }
                    _ => {}
                }
                let (vx, c) = self.arith(x, depth + 1, span)?;
                let (vy, _dropped) = self.arith(y, depth + 1, span)?;
                (Val::Bin(*o, Box::new(vx), Box::new(vy)), c)
            }
            Arith::Load { base, index, size, span: load_span } => {
                if !matches!(size, 1 | 2 | 4) {
                    return Err(FilterError::at(*load_span, "data size must be 1, 2, or 4"));
                }
                let (index, index_checks) = self.arith(index, depth + 1, span)?;
                let pl = self.pl();
                let (base, checks) = match *base {
                    LoadBase::Link => (XBase::Abs(0), index_checks),
                    LoadBase::Net(p @ (ProtoName::Ip | ProtoName::Arp | ProtoName::Rarp)) => {
                        let mut c = index_checks;
                        c.push(self.abbrev(p, *load_span)?);
                        (XBase::Abs(pl), c)
                    }
                    LoadBase::Ip6 | LoadBase::Net(ProtoName::Ip6) => {
                        let mut c = index_checks;
                        c.push(self.linktype(ETHERTYPE_IPV6));
                        (XBase::Abs(pl), c)
                    }
                    LoadBase::Icmp6 | LoadBase::Transport(ProtoName::Icmp6) => {
                        let mut c = index_checks;
                        c.push(self.linktype(ETHERTYPE_IPV6));
                        c.push(abs(pl + 6, 1, IPPROTO_ICMPV6));
                        (XBase::Abs(pl + 40), c)
                    }
                    LoadBase::Transport(
                        p @ (ProtoName::Tcp
                        | ProtoName::Udp
                        | ProtoName::Sctp
                        | ProtoName::Icmp
                        | ProtoName::Igmp
                        | ProtoName::Pim
                        | ProtoName::Vrrp),
                    ) => {
                        // The index assumes IPv4: X = its header length.
                        let mut c = vec![self.linktype(ETHERTYPE_IP)];
                        c.extend(index_checks);
                        c.push(self.abbrev(p, *load_span)?);
                        c.push(self.ipfrag_ok());
                        (XBase::Msh { hdr: pl, k: pl }, c)
                    }
                    LoadBase::Net(_) | LoadBase::Transport(_) => {
                        return Err(FilterError::at(*load_span, "this protocol cannot be indexed"));
                    }
                };
                (Val::Load { base, index: Box::new(index), size: *size }, checks)
            }
        })
    }
}

/// One side of a port test: `port N` or `portrange A-B`.
#[derive(Debug, Clone, Copy)]
enum Atom {
    Eq(u32, u32),
    /// `off`, `lo`, `hi`.
    Range(u32, u32, u32),
}

impl Atom {
    fn lower(self, src: impl Fn(u32) -> Src) -> B {
        match self {
            Atom::Eq(off, v) => test(src(off), cmp::EQ, v),
            Atom::Range(off, lo, hi) => {
                B::And(vec![test(src(off), cmp::GE, lo), not(test(src(off), cmp::GT, hi))])
            }
        }
    }
}

/// `src`, `dst`, `src or dst`, `src and dst` of a per-direction test.
fn dir_op(dir: Dir, one: impl Fn(Dir) -> B) -> B {
    match dir {
        Dir::Src => one(Dir::Src),
        Dir::Dst => one(Dir::Dst),
        Dir::SrcOrDst => B::Or(vec![one(Dir::Src), one(Dir::Dst)]),
        Dir::SrcAndDst => B::And(vec![one(Dir::Src), one(Dir::Dst)]),
    }
}

/// A MAC address at `off`; libpcap compares the last four bytes first.
fn ether_addr(off: u32, mac: &[u8; 6]) -> B {
    let hi = u32::from(u16::from_be_bytes([mac[0], mac[1]]));
    let lo = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    B::And(vec![abs(off + 2, 4, lo), abs(off, 2, hi)])
}

/// Where a variable-index load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XBase {
    /// `P[index + k]`.
    Abs(u32),
    /// `P[4 * (P[hdr] & 0xf) + index + k]`: a transport header after IPv4.
    Msh { hdr: u32, k: u32 },
}

/// An arithmetic value of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Const(u32),
    Len,
    Load { base: XBase, index: Box<Val>, size: u8 },
    Bin(ArithOp, Box<Val>, Box<Val>),
    Neg(Box<Val>),
}

/// Constant folding: what the machine computes (`None`: a fault).
fn apply(o: ArithOp, a: u32, b: u32) -> Option<u32> {
    vm::arith(alu_op(o), a, b)
}

/// The literal libpcap's code for `a` starts with, if it starts with one.
fn first_literal(a: &Arith) -> Option<u32> {
    match a {
        Arith::Num(n) => Some(*n),
        Arith::Len => None,
        Arith::Load { index, .. } => first_literal(index),
        Arith::Binary(_, x, _) | Arith::Neg(x) => first_literal(x),
    }
}

/// libpcap's optimizer's algebra, which decides which loads still run:
/// constants fold; `x * 0`, `x & 0`, and `0 * x`, `0 & x`, `0 / x`,
/// `0 % x`, `0 << x`, `0 >> x` are 0 (dropping `x`'s loads, and its
/// division by zero); `x + 0`, `0 + x` etc. are `x`. A division by a
/// constant 0, or a shift of a variable by a constant over 31, is what the
/// optimizer refuses: it stays, and the message says why.
fn fold(v: Val) -> (Val, Option<&'static str>) {
    match v {
        Val::Const(_) | Val::Len => (v, None),
        Val::Neg(x) => match fold(*x) {
            (Val::Const(c), p) => (Val::Const(c.wrapping_neg()), p),
            (x, p) => (Val::Neg(Box::new(x)), p),
        },
        Val::Load { base, index, size } => {
            let (index, p) = fold(*index);
            (Val::Load { base, index: Box::new(index), size }, p)
        }
        Val::Bin(o, x, y) => {
            let ((x, px), (y, py)) = (fold(*x), fold(*y));
            let poison = px.or(py);
            let keep = |x: Val, y: Val| Val::Bin(o, Box::new(x), Box::new(y));
            let by_zero = if o == ArithOp::Mod { "modulus by zero" } else { "division by zero" };
            match (&x, &y) {
                (Val::Const(a), Val::Const(b)) => match apply(o, *a, *b) {
                    Some(v) => (Val::Const(v), poison),
                    None => (keep(x, y), poison.or(Some(by_zero))),
                },
                (_, Val::Const(0)) => match o {
                    ArithOp::Add
                    | ArithOp::Sub
                    | ArithOp::Or
                    | ArithOp::Xor
                    | ArithOp::Shl
                    | ArithOp::Shr => (x, poison),
                    ArithOp::Mul | ArithOp::And => (Val::Const(0), poison),
                    ArithOp::Div | ArithOp::Mod => (keep(x, y), poison.or(Some(by_zero))),
                },
                (_, Val::Const(n)) if matches!(o, ArithOp::Shl | ArithOp::Shr) && *n > 31 => {
                    (keep(x, y), poison.or(Some("shift by more than 31 bits")))
                }
                (Val::Const(0), _) => match o {
                    ArithOp::Add | ArithOp::Or | ArithOp::Xor => (y, poison),
                    ArithOp::Sub => (keep(x, y), poison),
                    _ => (Val::Const(0), poison),
                },
                _ => (keep(x, y), poison),
            }
        }
    }
}

/// A relation's load at a constant index, masked, as a test source.
fn fixed_load(v: &Val, mask: u32) -> Option<Src> {
    let Val::Load { base, index, size } = v else { return None };
    let Val::Const(index) = **index else { return None };
    let (hdr, base) = match *base {
        XBase::Abs(k) => (None, k),
        XBase::Msh { hdr, k } => (Some(hdr), k),
    };
    Some(Src::Rel { hdr, base, index, size: *size, mask })
}

/// `lhs op rhs` once folded: a fused test when the left side is a
/// (masked) load and the right a constant, straight-line code otherwise.
/// Each node tests what libpcap's jump does (`A` is the left side, the
/// comparison is libpcap's, `<`, `<=` and `!=` negated): its optimizer
/// moves tests by the value they compare and the way their jumps point.
fn relation(op: RelOp, lhs: Val, rhs: Val, span: Span) -> Result<B, FilterError> {
    let (how, negate) = rel_cmp(op);
    let b = match (lhs, rhs) {
        (Val::Const(a), Val::Const(b)) => B::Const(compare(how, a, b)),
        (l, Val::Const(v)) if !matches!(l, Val::Const(_)) => {
            // `load & m` is one test (with its own value: libpcap's `and`).
            let masked = match &l {
                Val::Bin(ArithOp::And, x, y) => match **y {
                    Val::Const(m) => fixed_load(x, m),
                    _ => None,
                },
                _ => None,
            };
            match masked.or_else(|| fixed_load(&l, FULL)) {
                Some(src) => B::Test(Test { src, cmp: how, val: v, late: false }),
                None => {
                    let mut code = Vec::new();
                    eval(&l, &mut code, 0, span)?;
                    B::Test(Test { src: Src::Acc(code), cmp: how, val: v, late: false })
                }
            }
        }
        (l, r) => B::Test(Test { src: Src::AccX(x_compare(&l, &r, span)?), cmp: how, val: 0, late: false }),
    };
    Ok(if negate { not(b) } else { b })
}

/// Marks the test of `b` [`Test::late`].
fn late(b: B) -> B {
    match b {
        B::Test(t) => B::Test(Test { late: true, ..t }),
        B::Not(inner) => not(late(*inner)),
        other => other,
    }
}

/// A relation's comparison, and whether its outcome is negated.
fn rel_cmp(op: RelOp) -> (u8, bool) {
    match op {
        RelOp::Eq => (cmp::EQ, false),
        RelOp::Ne => (cmp::EQ, true),
        RelOp::Gt => (cmp::GT, false),
        RelOp::Ge => (cmp::GE, false),
        RelOp::Lt => (cmp::GE, true),
        RelOp::Le => (cmp::GT, true),
    }
}

/// Code leaving `l` in `A` and `r` in `X`.
fn x_compare(l: &Val, r: &Val, span: Span) -> Result<Vec<FilterInsn>, FilterError> {
    let mut code = Vec::new();
    if uses_x(l) {
        eval(r, &mut code, 0, span)?;
        code.push(insn(op::ST, 0, 0));
        eval(l, &mut code, 1, span)?;
        code.push(insn(op::LDX_MEM, 0, 0));
    } else {
        eval(r, &mut code, 0, span)?;
        code.push(insn(op::TAX, 0, 0));
        eval(l, &mut code, 0, span)?;
    }
    Ok(code)
}

/// Whether computing `v` changes `X`.
fn uses_x(v: &Val) -> bool {
    match v {
        Val::Const(_) | Val::Len => false,
        Val::Load { base: XBase::Abs(_), index, .. } => !matches!(**index, Val::Const(_)),
        _ => true,
    }
}

fn alu_op(o: ArithOp) -> u8 {
    match o {
        ArithOp::Add => alu::ADD,
        ArithOp::Sub => alu::SUB,
        ArithOp::Mul => alu::MUL,
        ArithOp::Div => alu::DIV,
        ArithOp::Mod => alu::MOD,
        ArithOp::And => alu::AND,
        ArithOp::Or => alu::OR,
        ArithOp::Xor => alu::XOR,
        ArithOp::Shl => alu::LSH,
        ArithOp::Shr => alu::RSH,
    }
}

/// Code leaving `v` in `A`; scratch words from `slot` up are free.
fn eval(v: &Val, code: &mut Vec<FilterInsn>, slot: u32, span: Span) -> Result<(), FilterError> {
    match v {
        Val::Const(c) => code.push(insn(op::LD_IMM, 0, *c)),
        Val::Len => code.push(insn(op::LD_LEN, 0, 0)),
        Val::Load { base, index, size } => match (base, &**index) {
            (XBase::Abs(k), Val::Const(i)) => code.push(insn(op::LD_ABS, *size, k.wrapping_add(*i))),
            (XBase::Msh { hdr, k }, Val::Const(i)) => {
                code.push(insn(op::LDX_MSH, 1, *hdr));
                code.push(insn(op::LD_IND, *size, k.wrapping_add(*i)));
            }
            (XBase::Abs(k), index) => {
                eval(index, code, slot, span)?;
                code.push(insn(op::TAX, 0, 0));
                code.push(insn(op::LD_IND, *size, *k));
            }
            (XBase::Msh { hdr, k }, index) => {
                eval(index, code, slot, span)?;
                // `tcp[tcp[0]]`: the index's own load left X as needed.
                let last_x = code.iter().rev().find(|i| {
                    matches!(i.op, op::LDX_MSH | op::LDX_IMM | op::LDX_MEM | op::LDX_LEN | op::TAX)
                });
                if !last_x.is_some_and(|i| i.op == op::LDX_MSH && i.k == *hdr) {
                    code.push(insn(op::LDX_MSH, 1, *hdr));
                }
                code.push(insn(op::ALU_X, alu::ADD, 0));
                code.push(insn(op::TAX, 0, 0));
                code.push(insn(op::LD_IND, *size, *k));
            }
        },
        Val::Neg(x) => {
            eval(x, code, slot, span)?;
            code.push(insn(op::ALU_K, alu::NEG, 0));
        }
        Val::Bin(o, x, y) => match &**y {
            Val::Const(c) => {
                eval(x, code, slot, span)?;
                code.push(insn(op::ALU_K, alu_op(*o), *c));
            }
            y if !uses_x(x) => {
                eval(y, code, slot, span)?;
                code.push(insn(op::TAX, 0, 0));
                eval(x, code, slot, span)?;
                code.push(insn(op::ALU_X, alu_op(*o), 0));
            }
            y => {
                if slot >= MEMWORDS {
                    return Err(FilterError::at(
                        span,
                        format!("the expression needs more than {MEMWORDS} scratch registers"),
                    ));
                }
                eval(y, code, slot, span)?;
                code.push(insn(op::ST, 0, slot));
                eval(x, code, slot + 1, span)?;
                code.push(insn(op::LDX_MEM, 0, slot));
                code.push(insn(op::ALU_X, alu_op(*o), 0));
            }
        },
    }
    Ok(())
}

/// The rules, first match deciding: accepted packets go on to `accept`
/// (the expression), rejected ones to `reject`.
fn rule_set(g: &mut Builder, rules: &RuleSet, accept: NodeId, reject: NodeId) -> NodeId {
    let target = |a: Action| if a == Action::Accept { accept } else { reject };
    let mut sorted: Vec<&Rule> = rules.rules.iter().collect();
    sorted.sort_by_key(|r| r.number);
    sorted
        .iter()
        .rev()
        .fold(target(rules.default_action), |next, rule| cps(g, &rule_match(rule), target(rule.action), next))
}

/// What one rule requires, on the deep parse's fields.
fn rule_match(rule: &Rule) -> B {
    let mut all = Vec::new();
    if let Some(d) = rule.direction {
        all.push(field_eq(field::DIRECTION, d));
    }
    if let Some(p) = rule.protocol {
        all.push(field_eq(field::L4_PROTO, u32::from(p)));
    }
    for (prefix, v4, v6) in
        [(rule.source, field::SRC4, field::SRC6), (rule.destination, field::DST4, field::DST6)]
    {
        match prefix {
            None => {}
            Some((IpAddr::V4(a), len)) => {
                all.push(field_eq(field::IP_VERSION, 4));
                let mask = if len == 0 { 0 } else { FULL << (32 - u32::from(len.min(32))) };
                all.push(test(Src::Field { k: v4, mask }, cmp::EQ, u32::from(a) & mask));
            }
            Some((IpAddr::V6(a), len)) => {
                all.push(field_eq(field::IP_VERSION, 6));
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
                let addr = u128::from(a);
                for i in 0..4 {
                    let word = |v: u128| (v >> (96 - 32 * i)) as u32;
                    all.push(test(Src::Field { k: v6 + i, mask: word(mask) }, cmp::EQ, word(addr & mask)));
                }
            }
        }
    }
    let l4 = |protos: &[u32]| {
        let mut b = vec![];
        if !rule.protocol.is_some_and(|p| protos.contains(&u32::from(p))) {
            b.push(B::Or(protos.iter().map(|p| field_eq(field::L4_PROTO, *p)).collect()));
        }
        b.push(field_eq(field::HAS_L4, 1));
        b
    };
    if rule.source_ports.is_some() || rule.destination_ports.is_some() {
        all.extend(l4(&[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP]));
    }
    for (range, k) in [(rule.source_ports, field::SRC_PORT), (rule.destination_ports, field::DST_PORT)] {
        if let Some((lo, hi)) = range {
            let src = Src::Field { k, mask: FULL };
            if lo == hi {
                // One port: one test (and chains of them fuse, see `fuse`).
                all.push(test(src, cmp::EQ, u32::from(lo)));
                continue;
            }
            if lo > 0 {
                all.push(test(src.clone(), cmp::GE, u32::from(lo)));
            }
            if hi < u16::MAX {
                all.push(not(test(src, cmp::GT, u32::from(hi))));
            }
        }
    }
    if let Some(flags) = rule.tcp_flags {
        all.extend(l4(&[IPPROTO_TCP]));
        let src = Src::Field { k: field::TCP_FLAGS, mask: u32::from(flags.mask) };
        all.push(test(src, cmp::EQ, u32::from(flags.value)));
    }
    B::And(all)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use mirror_common::direction;

    use super::*;
    use crate::filter::{Frame, ast::TcpFlags};

    // ---- expressions -------------------------------------------------

    fn p(prim: Prim) -> Expr {
        Expr::Prim(prim, Span::default())
    }

    fn and(a: Expr, b: Expr) -> Expr {
        Expr::And(Box::new(a), Box::new(b))
    }

    fn or(a: Expr, b: Expr) -> Expr {
        Expr::Or(Box::new(a), Box::new(b))
    }

    fn neg(a: Expr) -> Expr {
        Expr::Not(Box::new(a))
    }

    fn proto(name: ProtoName) -> Expr {
        p(Prim::Proto(name))
    }

    fn rel(op: RelOp, lhs: Arith, rhs: Arith) -> Expr {
        Expr::Rel(Rel { op, lhs, rhs }, Span::default())
    }

    fn num(n: u32) -> Arith {
        Arith::Num(n)
    }

    fn ld(base: LoadBase, index: u32, size: u8) -> Arith {
        ldx(base, num(index), size)
    }

    fn ldx(base: LoadBase, index: Arith, size: u8) -> Arith {
        Arith::Load { base, index: Box::new(index), size, span: Span::default() }
    }

    fn bin(o: ArithOp, a: Arith, b: Arith) -> Arith {
        Arith::Binary(o, Box::new(a), Box::new(b))
    }

    fn tcp_at(i: u32) -> Arith {
        ld(LoadBase::Transport(ProtoName::Tcp), i, 1)
    }

    fn port(proto: PortProto, dir: Dir, port: u16) -> Expr {
        p(Prim::Port { proto, dir, port })
    }

    fn host(dir: Dir, addr: &str) -> Expr {
        p(Prim::Host { proto: HostProto::Any, dir, addr: addr.parse().unwrap() })
    }

    fn compile_expr(e: &Expr) -> Program {
        compile(&Selection { rules: None, expr: Some(e.clone()) }).unwrap()
    }

    // ---- frames --------------------------------------------------------

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = MAC_B.to_vec();
        v.extend(MAC_A);
        v.extend(ethertype.to_be_bytes());
        v.extend(payload);
        v
    }

    /// `tags` (TPID, VID) outermost first, then `ethertype`.
    fn tagged(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = MAC_B.to_vec();
        v.extend(MAC_A);
        for (tpid, vid) in tags {
            v.extend(tpid.to_be_bytes());
            v.extend(vid.to_be_bytes());
        }
        v.extend(ethertype.to_be_bytes());
        v.extend(payload);
        v
    }

    fn ipv4_opts(proto: u8, frag: u16, src: [u8; 4], dst: [u8; 4], options: &[u8], l4: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let ihl = 5 + options.len() / 4;
        let mut v = vec![0x40 | ihl as u8, 0, 0, 0, 0, 0];
        v.extend(frag.to_be_bytes());
        v.extend([64, proto, 0, 0]);
        v.extend(src);
        v.extend(dst);
        v.extend(options);
        v.extend(l4);
        v
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        ipv4_opts(proto, 0, src, dst, &[], l4)
    }

    fn v6(last: u16) -> [u8; 16] {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last).octets()
    }

    fn ipv6(nh: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x60, 0, 0, 0];
        v.extend((payload.len() as u16).to_be_bytes());
        v.extend([nh, 64]);
        v.extend(src);
        v.extend(dst);
        v.extend(payload);
        v
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut v = sport.to_be_bytes().to_vec();
        v.extend(dport.to_be_bytes());
        v.extend([0; 8]);
        v.extend([0x50, flags, 0, 0, 0, 0, 0, 0]);
        v
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut v = sport.to_be_bytes().to_vec();
        v.extend(dport.to_be_bytes());
        v.extend([0, 8, 0, 0]);
        v
    }

    fn arp(spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut v = vec![0, 1, 8, 0, 6, 4, 0, 1];
        v.extend(MAC_A);
        v.extend(spa);
        v.extend([0; 6]);
        v.extend(tpa);
        v
    }

    const H1: [u8; 4] = [198, 18, 0, 1];
    const H2: [u8; 4] = [198, 18, 0, 2];
    const H3: [u8; 4] = [203, 0, 113, 7];

    fn tcp4(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        eth(0x0800, &ipv4(6, H1, H2, &tcp(sport, dport, flags)))
    }

    fn udp4(sport: u16, dport: u16) -> Vec<u8> {
        eth(0x0800, &ipv4(17, H1, H2, &udp(sport, dport)))
    }

    fn tcp6(sport: u16, dport: u16) -> Vec<u8> {
        eth(0x86dd, &ipv6(6, v6(1), v6(2), &tcp(sport, dport, 0x10)))
    }

    fn runs(prog: &Program, frame: &[u8]) -> bool {
        prog.matches(&Frame::new(frame, direction::INGRESS))
    }

    /// Asserts the verdict of `e` on each `(frame, expected)`.
    #[track_caller]
    fn check(e: &Expr, cases: &[(&[u8], bool)]) {
        let prog = compile_expr(e);
        for (i, (frame, want)) in cases.iter().enumerate() {
            assert_eq!(runs(&prog, frame), *want, "case {i} of {e:?}\n{}", disasm(&prog.insns));
        }
    }

    fn ip4_tcp(src: [u8; 4], dst: [u8; 4], frag: u16, l4: &[u8]) -> Vec<u8> {
        eth(0x0800, &ipv4_opts(6, frag, src, dst, &[], l4))
    }

    #[test]
    fn protocols() {
        let tcp_v4 = tcp4(1, 2, 0);
        let udp_v4 = udp4(1, 2);
        let tcp_v6 = tcp6(1, 2);
        // IPv6 fragment header, then TCP: `tcp` looks past it.
        let mut frag = vec![6, 0, 0, 1, 0, 0, 0, 7];
        frag.extend(tcp(1, 2, 0));
        let tcp_v6_frag = eth(0x86dd, &ipv6(44, v6(1), v6(2), &frag));
        // Hop-by-hop, then TCP: libpcap does not walk it.
        let mut hbh = vec![6, 0, 0, 0, 0, 0, 0, 0];
        hbh.extend(tcp(1, 2, 0));
        let tcp_v6_hbh = eth(0x86dd, &ipv6(0, v6(1), v6(2), &hbh));
        let icmp_v4 = eth(0x0800, &ipv4(1, H1, H2, &[8, 0, 0, 0]));
        let icmp_v6 = eth(0x86dd, &ipv6(58, v6(1), v6(2), &[128, 0, 0, 0]));
        let arp_f = eth(0x0806, &arp(H1, H2));
        let rarp_f = eth(0x8035, &arp(H1, H2));
        let all: [&[u8]; 9] =
            [&tcp_v4, &udp_v4, &tcp_v6, &tcp_v6_frag, &tcp_v6_hbh, &icmp_v4, &icmp_v6, &arp_f, &rarp_f];
        let want = |name: ProtoName, yes: [bool; 9]| {
            let cases: Vec<(&[u8], bool)> = all.iter().copied().zip(yes).collect();
            check(&proto(name), &cases);
        };
        want(ProtoName::Ip, [true, true, false, false, false, true, false, false, false]);
        want(ProtoName::Ip6, [false, false, true, true, true, false, true, false, false]);
        want(ProtoName::Arp, [false, false, false, false, false, false, false, true, false]);
        want(ProtoName::Rarp, [false, false, false, false, false, false, false, false, true]);
        want(ProtoName::Tcp, [true, false, true, true, false, false, false, false, false]);
        want(ProtoName::Udp, [false, true, false, false, false, false, false, false, false]);
        want(ProtoName::Icmp, [false, false, false, false, false, true, false, false, false]);
        want(ProtoName::Icmp6, [false, false, false, false, false, false, true, false, false]);
        check(
            &p(Prim::IpProto { base: ProtoBase::Ip6, proto: 0 }),
            &[(&tcp_v6_hbh, true), (&tcp_v6, false), (&tcp_v4, false)],
        );
        check(&p(Prim::IpProto { base: ProtoBase::Any, proto: 17 }), &[(&udp_v4, true), (&tcp_v4, false)]);
        assert!(compile(&Selection { rules: None, expr: Some(proto(ProtoName::Ether)) }).is_err());
    }

    #[test]
    fn ports_and_fragments() {
        let e = port(PortProto::Tcp, Dir::SrcOrDst, 443);
        // First fragment (MF, offset 0): ports are read.
        let first = ip4_tcp(H1, H2, 0x2000, &tcp(443, 9, 0));
        // A later fragment whose payload happens to read as port 443.
        let later = ip4_tcp(H1, H2, 0x0010, &tcp(443, 443, 0));
        // IPv4 options: the transport header moves (X = 4 * IHL).
        let opts = eth(0x0800, &ipv4_opts(6, 0, H1, H2, &[1, 1, 1, 0], &tcp(9, 443, 0)));
        // An IPv6 fragment header before TCP: `port` does not look past it.
        let mut frag = vec![6, 0, 0, 1, 0, 0, 0, 7];
        frag.extend(tcp(443, 443, 0));
        let v6_frag = eth(0x86dd, &ipv6(44, v6(1), v6(2), &frag));
        check(
            &e,
            &[
                (&tcp4(443, 1000, 0), true),
                (&tcp4(1000, 443, 0), true),
                (&tcp4(1000, 1001, 0), false),
                (&udp4(443, 443), false),
                (&tcp6(1000, 443), true),
                (&first, true),
                (&later, false),
                (&opts, true),
                (&v6_frag, false),
            ],
        );
        check(&port(PortProto::Any, Dir::Src, 53), &[(&udp4(53, 1), true), (&udp4(1, 53), false)]);
        check(&port(PortProto::Udp, Dir::Dst, 53), &[(&udp4(1, 53), true), (&tcp4(1, 53, 0), false)]);
        check(
            &port(PortProto::Any, Dir::SrcAndDst, 53),
            &[(&udp4(53, 53), true), (&udp4(53, 1), false), (&tcp6(53, 53), true)],
        );
        let range = p(Prim::PortRange { proto: PortProto::Any, dir: Dir::Dst, lo: 1000, hi: 2000 });
        check(
            &range,
            &[
                (&tcp4(1, 999, 0), false),
                (&tcp4(1, 1000, 0), true),
                (&tcp4(1, 2000, 0), true),
                (&tcp4(1, 2001, 0), false),
                (&tcp6(1, 1500), true),
                (&tcp4(1500, 1, 0), false),
            ],
        );
    }

    #[test]
    fn vlan_shifts_what_follows() {
        let inner = ipv4(6, H1, H2, &tcp(1, 443, 0));
        let one = tagged(&[(0x8100, 10)], 0x0800, &inner);
        let ad = tagged(&[(0x88a8, 10)], 0x0800, &inner);
        let qinq = tagged(&[(0x9100, 0x2000 | 10)], 0x0800, &inner);
        let two = tagged(&[(0x88a8, 20), (0x8100, 10)], 0x0800, &inner);
        let plain = eth(0x0800, &inner);
        let vlan10_tcp443 = and(p(Prim::Vlan(Some(10))), port(PortProto::Tcp, Dir::Dst, 443));
        check(&vlan10_tcp443, &[(&one, true), (&ad, true), (&qinq, true), (&two, false), (&plain, false)]);
        // Stacked: the second `vlan` tests the inner tag.
        let stacked = and(and(p(Prim::Vlan(Some(20))), p(Prim::Vlan(Some(10)))), proto(ProtoName::Tcp));
        check(&stacked, &[(&two, true), (&one, false)]);
        // libpcap's static shift: `ip` after `vlan` reads 4 bytes further
        // even where the `vlan` test failed.
        let either = or(p(Prim::Vlan(None)), proto(ProtoName::Ip));
        check(&either, &[(&one, true), (&plain, false)]);
        // Before the `vlan`, no shift.
        check(&or(proto(ProtoName::Ip), p(Prim::Vlan(None))), &[(&plain, true), (&one, true)]);
        // Link-layer tests do not move.
        let mac = and(p(Prim::Vlan(None)), p(Prim::EtherHost { dir: Dir::Src, mac: MAC_A }));
        check(&mac, &[(&one, true)]);
        let err = compile(&Selection { rules: None, expr: Some(p(Prim::Vlan(Some(4096)))) }).unwrap_err();
        assert!(err.message.contains("4096"), "{err}");
    }

    #[test]
    fn hosts_and_nets() {
        let to_h2 = ip4_tcp(H1, H2, 0, &tcp(1, 2, 0));
        let arp_f = eth(0x0806, &arp(H3, H2));
        let rarp_f = eth(0x8035, &arp(H3, H1));
        let h2 = "198.18.0.2";
        check(&host(Dir::SrcOrDst, h2), &[(&to_h2, true), (&arp_f, true), (&rarp_f, false)]);
        check(&host(Dir::Src, h2), &[(&to_h2, false), (&arp_f, false)]);
        check(&host(Dir::Dst, "198.18.0.1"), &[(&rarp_f, true), (&to_h2, false)]);
        let ip_only = p(Prim::Host { proto: HostProto::Ip, dir: Dir::SrcOrDst, addr: h2.parse().unwrap() });
        check(&ip_only, &[(&to_h2, true), (&arp_f, false)]);
        let arp_only =
            p(Prim::Host { proto: HostProto::Arp, dir: Dir::Src, addr: "203.0.113.7".parse().unwrap() });
        check(&arp_only, &[(&arp_f, true), (&rarp_f, false), (&to_h2, false)]);
        let both = p(Prim::Host { proto: HostProto::Any, dir: Dir::SrcAndDst, addr: h2.parse().unwrap() });
        check(&both, &[(&to_h2, false), (&ip4_tcp(H2, H2, 0, &tcp(1, 2, 0)), true)]);
        let net = |addr: &str, len: u8| {
            p(Prim::Net {
                proto: HostProto::Any,
                dir: Dir::SrcOrDst,
                addr: addr.parse().unwrap(),
                prefix_len: len,
            })
        };
        check(&net("198.18.0.0", 16), &[(&to_h2, true), (&arp_f, true), (&tcp6(1, 2), false)]);
        check(&net("203.0.113.0", 24), &[(&to_h2, false), (&arp_f, true)]);
        check(&net("0.0.0.0", 0), &[(&to_h2, true), (&tcp6(1, 2), false)]);
        // IPv6: only IPv6 packets.
        check(&host(Dir::Dst, "2001:db8::2"), &[(&tcp6(1, 2), true), (&to_h2, false)]);
        check(&host(Dir::Src, "2001:db8::2"), &[(&tcp6(1, 2), false)]);
        check(&net("2001:db8::", 32), &[(&tcp6(1, 2), true)]);
        check(&net("2001:db9::", 32), &[(&tcp6(1, 2), false)]);
        // The masked-out words are never loaded (tcpdump's optimizer drops
        // them): a frame cut after the first word still matches.
        let v6 = tcp6(1, 2);
        check(&net("2001:db8::", 32), &[(&v6[..26], true), (&v6[..25], false)]);
        assert!(compile(&Selection { rules: None, expr: Some(net("198.18.0.1", 16)) }).is_err());
    }

    #[test]
    fn link_layer() {
        let f = tcp4(1, 2, 0);
        let ehost = |dir, mac| p(Prim::EtherHost { dir, mac });
        check(&ehost(Dir::Src, MAC_A), &[(&f, true)]);
        check(&ehost(Dir::Dst, MAC_A), &[(&f, false)]);
        check(&ehost(Dir::SrcOrDst, MAC_B), &[(&f, true)]);
        check(&ehost(Dir::SrcAndDst, MAC_B), &[(&f, false)]);
        let mut bcast = f.clone();
        bcast[..6].copy_from_slice(&[0xff; 6]);
        let mut mcast = f.clone();
        mcast[..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
        check(&p(Prim::EtherBroadcast), &[(&bcast, true), (&mcast, false), (&f, false)]);
        check(&p(Prim::EtherMulticast), &[(&bcast, true), (&mcast, true), (&f, false)]);
        // 802.3 frames: a length, then LLC.
        let stp = eth(38, &[0x42, 0x42, 0x03, 0, 0]);
        let iso = eth(38, &[0xfe, 0xfe, 0x03, 0, 0]);
        let iso_half = eth(38, &[0xfe, 0x42, 0x03, 0, 0]);
        check(&p(Prim::EtherProto(0x42)), &[(&stp, true), (&iso, false), (&f, false)]);
        check(&p(Prim::EtherProto(0xfe)), &[(&iso, true), (&iso_half, false)]);
        check(&p(Prim::EtherProto(0x0800)), &[(&f, true), (&stp, false)]);
        let ipx_snap = eth(38, &[0xaa, 0xaa, 0x03, 0, 0, 0, 0x81, 0x37]);
        // (The SNAP test before the raw 802.3 one loads 4 bytes at 18.)
        let ipx_raw = eth(38, &[0xff, 0xff, 0, 0, 0, 0, 0, 0]);
        check(
            &p(Prim::EtherProto(0xe0)),
            &[(&ipx_snap, true), (&ipx_raw, true), (&eth(0x8137, &[0; 8]), true), (&stp, false)],
        );
        check(&p(Prim::Greater(60)), &[(&f, false), (&[f.clone(), vec![0; 6]].concat(), true)]);
        check(&p(Prim::Less(54)), &[(&f, true), (&[f.clone(), vec![0; 1]].concat(), false)]);
    }

    #[test]
    fn relations() {
        const SYN: u32 = 0x02;
        const ACK: u32 = 0x10;
        let syn = tcp4(1, 2, SYN as u8);
        let synack = tcp4(1, 2, (SYN | ACK) as u8);
        let flags = ld(LoadBase::Transport(ProtoName::Tcp), 13, 1);
        let syn_only = rel(RelOp::Eq, bin(ArithOp::And, flags.clone(), num(SYN | ACK)), num(SYN));
        check(&syn_only, &[(&syn, true), (&synack, false), (&udp4(1, 2), false), (&tcp6(1, 2), false)]);
        let any_syn = rel(RelOp::Ne, bin(ArithOp::And, flags.clone(), num(SYN)), num(0));
        check(&any_syn, &[(&syn, true), (&synack, true), (&tcp4(1, 2, 0), false)]);
        // The fragment check guards transport loads.
        check(&any_syn, &[(&ip4_tcp(H1, H2, 0x0010, &tcp(1, 2, 2)), false)]);
        // `ip[6:2] & 0x1fff = 0`, with IPv4's own check.
        let unfragmented =
            rel(RelOp::Eq, bin(ArithOp::And, ld(LoadBase::Net(ProtoName::Ip), 6, 2), num(0x1fff)), num(0));
        check(
            &unfragmented,
            &[(&syn, true), (&ip4_tcp(H1, H2, 0x0010, &[0; 20]), false), (&tcp6(1, 2), false)],
        );
        // len - 14 > 40, and 40 < len - 14.
        let longer = rel(RelOp::Gt, bin(ArithOp::Sub, Arith::Len, num(14)), num(40));
        check(&longer, &[(&syn, false), (&[syn.clone(), vec![0]].concat(), true)]);
        let flipped = rel(RelOp::Lt, num(40), bin(ArithOp::Sub, Arith::Len, num(14)));
        check(&flipped, &[(&syn, false), (&[syn.clone(), vec![0]].concat(), true)]);
        // Two loads: the source port's high byte equals the low one.
        let same = rel(RelOp::Eq, tcp_at(0), tcp_at(1));
        check(&same, &[(&tcp4(0x0101, 2, 0), true), (&tcp4(0x0102, 2, 0), false)]);
        // Arithmetic on both sides, scratch registers in use.
        let lhs = bin(ArithOp::Mul, bin(ArithOp::Add, tcp_at(2), tcp_at(3)), num(3));
        let rhs =
            bin(ArithOp::Sub, bin(ArithOp::Shl, tcp_at(0), num(2)), bin(ArithOp::Div, tcp_at(1), num(2)));
        let e = rel(RelOp::Eq, lhs, rhs);
        // (0 + 2) * 3 = 6 = (2 << 2) - (4 / 2)
        check(&e, &[(&tcp4(0x0204, 2, 0), true), (&tcp4(0x0205, 2, 0), true), (&tcp4(0x0206, 2, 0), false)]);
        // Variable index: tcp[tcp[12] >> 2] is the first payload byte.
        let payload = ldx(LoadBase::Transport(ProtoName::Tcp), bin(ArithOp::Shr, tcp_at(12), num(2)), 1);
        let mut with_payload = tcp4(1, 2, 0);
        with_payload.push(0x7f);
        check(&rel(RelOp::Eq, payload, num(0x7f)), &[(&with_payload, true), (&tcp4(1, 2, 0), false)]);
        // ip6[6], icmp6[0], arp[7]: their own protocol checks.
        check(&rel(RelOp::Eq, ld(LoadBase::Ip6, 6, 1), num(6)), &[(&tcp6(1, 2), true), (&syn, false)]);
        let echo6 = eth(0x86dd, &ipv6(58, v6(1), v6(2), &[128, 0, 0, 0]));
        check(
            &rel(RelOp::Eq, ld(LoadBase::Icmp6, 0, 1), num(128)),
            &[(&echo6, true), (&tcp6(128, 0), false)],
        );
        let arp_f = eth(0x0806, &arp(H1, H2));
        check(
            &rel(RelOp::Eq, ld(LoadBase::Net(ProtoName::Arp), 7, 1), num(1)),
            &[(&arp_f, true), (&syn, false)],
        );
        // libpcap keeps only the left operand's checks: `udp[0]` here is
        // read after TCP's checks, as the same bytes as `tcp[0]`.
        let mixed = rel(
            RelOp::Eq,
            bin(ArithOp::Add, tcp_at(0), ld(LoadBase::Transport(ProtoName::Udp), 0, 1)),
            num(4),
        );
        check(&mixed, &[(&tcp4(0x0200, 2, 0), true), (&udp4(0x0200, 2), false)]);
        // Bad constants are compile errors, as in libpcap.
        for (o, n) in [(ArithOp::Div, 0), (ArithOp::Mod, 0), (ArithOp::Shl, 32)] {
            let e = rel(RelOp::Eq, bin(o, tcp_at(0), num(n)), num(0));
            assert!(compile(&Selection { rules: None, expr: Some(e) }).is_err());
        }
    }

    #[test]
    fn loads_past_the_end_reject_everything() {
        let short_tcp = tcp4(1, 2, 0);
        let e = neg(rel(RelOp::Eq, ld(LoadBase::Transport(ProtoName::Tcp), 100, 1), num(1)));
        check(
            &e,
            &[(&short_tcp, false), (&udp4(1, 2), true), (&[short_tcp.clone(), vec![0; 100]].concat(), true)],
        );
        // Under an `or` whose other side already holds, the load never runs.
        check(&or(proto(ProtoName::Tcp), e.clone()), &[(&short_tcp, true)]);
        check(&or(e.clone(), proto(ProtoName::Udp)), &[(&short_tcp, false)]);
        // tcpdump's optimizer sees `tcp` hold on both outcomes of the load
        // and drops it: every packet matches.
        check(&or(e, proto(ProtoName::Tcp)), &[(&short_tcp, true)]);
        // Division by zero at run time rejects too.
        let div = neg(rel(RelOp::Eq, bin(ArithOp::Div, tcp_at(0), tcp_at(1)), num(7)));
        check(&div, &[(&tcp4(0x0500, 2, 0), false), (&tcp4(0x0501, 2, 0), true)]);
        // A frame cut inside the TCP ports: tcpdump's optimizer tests the
        // source port against both values before loading the destination.
        let either = or(port(PortProto::Any, Dir::SrcOrDst, 80), port(PortProto::Any, Dir::SrcOrDst, 443));
        let cut = &tcp4(443, 2, 0)[..36];
        check(&either, &[(cut, true), (&tcp4(1, 2, 0)[..36], false)]);
        // What libpcap's optimizer folds away is not loaded either.
        let zero = rel(RelOp::Eq, bin(ArithOp::Mul, ld(LoadBase::Link, 1000, 1), num(0)), num(0));
        check(&zero, &[(&short_tcp, true)]);
    }

    fn rules(default_action: Action, rules: Vec<Rule>) -> Selection {
        Selection { rules: Some(RuleSet { rules, default_action }), expr: None }
    }

    fn rule(number: u32, action: Action) -> Rule {
        Rule::new(number, action)
    }

    #[test]
    fn rule_sets() {
        let run =
            |sel: &Selection, frame: &[u8], dir: u32| compile(sel).unwrap().matches(&Frame::new(frame, dir));
        let web = Rule { destination_ports: Some((443, 443)), protocol: Some(6), ..rule(10, Action::Accept) };
        let deny_h1 = Rule { source: Some((IpAddr::V4(Ipv4Addr::from(H1)), 32)), ..rule(5, Action::Reject) };
        // Numbers decide the order, not the list's.
        let sel = rules(Action::Reject, vec![web.clone(), deny_h1]);
        assert!(!run(&sel, &tcp4(1, 443, 0), direction::INGRESS));
        let from_h3 = eth(0x0800, &ipv4(6, H3, H2, &tcp(1, 443, 0)));
        assert!(run(&sel, &from_h3, direction::INGRESS));
        assert!(!run(&sel, &eth(0x0800, &ipv4(6, H3, H2, &tcp(1, 80, 0))), direction::INGRESS));
        assert!(compile(&sel).unwrap().uses_fields);
        // Default action.
        let sel = rules(Action::Accept, vec![Rule { protocol: Some(17), ..rule(1, Action::Reject) }]);
        assert!(run(&sel, &tcp4(1, 2, 0), direction::INGRESS));
        assert!(!run(&sel, &udp4(1, 2), direction::INGRESS));
        // Families: an IPv4 prefix never matches IPv6.
        let any4 = Rule { source: Some(("0.0.0.0".parse().unwrap(), 0)), ..rule(1, Action::Accept) };
        let sel = rules(Action::Reject, vec![any4]);
        assert!(run(&sel, &tcp4(1, 2, 0), 0) && !run(&sel, &tcp6(1, 2), 0));
        let net6 = Rule { destination: Some(("2001:db8::".parse().unwrap(), 64)), ..rule(1, Action::Accept) };
        let sel = rules(Action::Reject, vec![net6]);
        assert!(run(&sel, &tcp6(1, 2), 0) && !run(&sel, &tcp4(1, 2, 0), 0));
        // Port ranges: TCP/UDP/SCTP with ports read, both ends included.
        let range = Rule { source_ports: Some((1000, 2000)), ..rule(1, Action::Accept) };
        let sel = rules(Action::Reject, vec![range]);
        for (sport, want) in [(999, false), (1000, true), (2000, true), (2001, false)] {
            assert_eq!(run(&sel, &udp4(sport, 1), 0), want, "{sport}");
        }
        let later = eth(0x0800, &ipv4_opts(17, 0x0010, H1, H2, &[], &udp(1500, 1)));
        assert!(!run(&sel, &later, 0));
        let icmp = eth(0x0800, &ipv4(1, H1, H2, &[0x05, 0xdc, 0, 0]));
        assert!(!run(&sel, &icmp, 0));
        // TCP flags: SYN without ACK.
        let syn = Rule { tcp_flags: Some(TcpFlags { value: 0x02, mask: 0x12 }), ..rule(1, Action::Accept) };
        let sel = rules(Action::Reject, vec![syn]);
        assert!(run(&sel, &tcp4(1, 2, 0x02), 0));
        assert!(!run(&sel, &tcp4(1, 2, 0x12), 0));
        assert!(!run(&sel, &udp4(1, 2), 0));
        // Direction.
        let egress = Rule { direction: Some(direction::EGRESS), ..rule(1, Action::Accept) };
        let sel = rules(Action::Reject, vec![egress]);
        assert!(
            run(&sel, &tcp4(1, 2, 0), direction::EGRESS) && !run(&sel, &tcp4(1, 2, 0), direction::INGRESS)
        );
        // Rules, then the expression.
        let sel = Selection {
            expr: Some(port(PortProto::Any, Dir::Dst, 443)),
            ..rules(Action::Accept, vec![Rule { protocol: Some(17), ..rule(1, Action::Reject) }])
        };
        assert!(run(&sel, &tcp4(1, 443, 0), 0));
        assert!(!run(&sel, &udp4(1, 443), 0));
        assert!(!run(&sel, &tcp4(1, 80, 0), 0));
        // No rule can match and the default accepts: no fields read.
        let sel = rules(Action::Accept, vec![]);
        assert!(!compile(&sel).unwrap().uses_fields);
    }

    #[test]
    fn limits() {
        // 64 hosts do not fit in 256 instructions.
        let mut e = host(Dir::SrcOrDst, "10.0.0.0");
        for i in 1..64 {
            e = or(e, host(Dir::SrcOrDst, &format!("10.0.0.{i}")));
        }
        let err = compile(&Selection { rules: None, expr: Some(e) }).unwrap_err();
        assert!(err.message.ends_with("instructions; the datapath runs at most 256 per session"), "{err}");
        // Deep nesting is refused, not a stack overflow.
        let mut e = proto(ProtoName::Ip);
        for _ in 0..=MAX_NESTING {
            e = neg(e);
        }
        assert!(compile(&Selection { rules: None, expr: Some(e) }).is_err());
        // Long chains do not nest.
        let mut e = proto(ProtoName::Ip);
        for _ in 0..2000 {
            e = and(e, proto(ProtoName::Ip));
        }
        assert_eq!(compile_expr(&e).insns.len(), 3);
    }

    /// Filters of every kind, run optimized and not on well-formed frames
    /// long enough for every load (where the optimizer may not change a
    /// verdict): the same verdicts, never more instructions.
    #[test]
    fn optimizer_keeps_verdicts() {
        let exprs = vec![
            port(PortProto::Tcp, Dir::SrcOrDst, 443),
            (1..=10).fold(port(PortProto::Any, Dir::SrcOrDst, 1), |e, i| {
                or(e, port(PortProto::Any, Dir::SrcOrDst, i * 100))
            }),
            or(
                and(proto(ProtoName::Tcp), port(PortProto::Any, Dir::Dst, 2)),
                and(proto(ProtoName::Udp), neg(port(PortProto::Any, Dir::Dst, 2))),
            ),
            and(p(Prim::Vlan(None)), or(host(Dir::Src, "198.18.0.1"), host(Dir::Dst, "2001:db8::2"))),
            or(host(Dir::SrcOrDst, "198.18.0.1"), host(Dir::SrcOrDst, "198.18.0.2")),
            neg(or(proto(ProtoName::Arp), and(proto(ProtoName::Ip), rel(RelOp::Gt, tcp_at(13), num(1))))),
            and(rel(RelOp::Ge, Arith::Len, num(60)), neg(rel(RelOp::Ge, Arith::Len, num(60)))),
            or(
                p(Prim::PortRange { proto: PortProto::Udp, dir: Dir::SrcOrDst, lo: 1, hi: 100 }),
                p(Prim::EtherProto(0xe0)),
            ),
            or(rel(RelOp::Eq, tcp_at(0), tcp_at(1)), rel(RelOp::Eq, tcp_at(0), tcp_at(1))),
        ];
        let mut frames =
            vec![tcp4(1, 2, 0x12), tcp4(443, 100, 0), udp4(200, 1), udp4(1, 2), tcp6(2, 443), tcp6(1, 1)];
        frames.push(eth(0x0806, &arp(H1, H2)));
        frames.push(tagged(&[(0x8100, 7)], 0x0800, &ipv4(6, H1, H2, &tcp(1, 2, 0))));
        frames.push(tagged(&[(0x8100, 7)], 0x86dd, &ipv6(17, v6(1), v6(2), &udp(50, 2))));
        frames.push(eth(38, &[0xff, 0xff, 0, 0]));
        for f in &mut frames {
            f.resize(300, 0);
        }
        for e in &exprs {
            let raw = build(&Selection { rules: None, expr: Some(e.clone()) }).unwrap().dag;
            let optimized = optimize::optimize(&raw);
            assert!(optimize::len(&optimized) <= optimize::len(&raw), "{e:?}");
            let optimized =
                Program { insns: optimize::emit(&optimized).unwrap(), uses_fields: false, reject_classes: 0 };
            for f in &frames {
                assert_eq!(
                    runs(&optimized, f),
                    run_dag(&raw, f),
                    "{e:?} on {f:?}\n{}",
                    disasm(&optimized.insns)
                );
            }
        }
    }

    fn compile_text(text: &str) -> Result<Program, FilterError> {
        compile(&Selection { rules: None, expr: Some(crate::filter::parse_expr(text).unwrap()) })
    }

    /// What libpcap's optimizer does, and when, decides which loads run:
    /// tcpdump's verdicts on short frames, and what it refuses.
    #[test]
    fn optimizer_timing_follows_libpcap() {
        let short = tcp4(1, 2, 0);
        let runs_text = |text: &str| runs(&compile_text(text).unwrap(), &short);
        // Literals are compared in libpcap's first pass: the load whose
        // outcome no longer matters is dropped. Folded arithmetic only in
        // its second pass: the load stays, and is past the end.
        assert!(runs_text("ether[100] = 1 or 4 >= 4"));
        assert!(!runs_text("ether[100] = 1 or (1 + 3) >= 4"));
        // What folding leaves unloaded is not loaded.
        assert!(runs_text("ether[100] * 0 = 0"));
        assert!(runs_text("0 / ether[100] = 0"));
        // A primitive's `ldh [12]` and a relation's `ether[12:2]` are not
        // the same value to libpcap's first pass.
        assert_eq!(compile_text("ip and ether[12:2] = 0x800").unwrap().insns.len(), 4);
        // A division by a folded zero is refused where it can run, not
        // where the optimizer removed it.
        let by_zero = rel(
            RelOp::Eq,
            bin(ArithOp::Div, ld(LoadBase::Link, 0, 1), bin(ArithOp::Sub, num(3), num(3))),
            num(1),
        );
        let reachable = and(proto(ProtoName::Ip), by_zero.clone());
        let err = compile(&Selection { rules: None, expr: Some(reachable) }).unwrap_err();
        assert_eq!(err.message, "division by zero");
        let dead = or(and(and(proto(ProtoName::Ip), proto(ProtoName::Arp)), by_zero), proto(ProtoName::Tcp));
        assert!(compile(&Selection { rules: None, expr: Some(dead) }).is_ok());
        // libpcap's refusal of a filter that matches nothing.
        let err = compile_text("ip and not ip").unwrap_err();
        assert_eq!(err.to_string(), "expression rejects all packets");
        // Its pull-ups: a source port is tested against both values before
        // the destination port is loaded (past the end of this frame).
        assert!(runs(&compile_text("src port 80 or dst port 8080 or src port 1").unwrap(), &short[..36]));
    }

    /// Runs the unoptimized DAG node by node (its program may be too long
    /// for 8-bit jumps): each node as a tiny program on the machine.
    fn run_dag(dag: &Dag, frame: &[u8]) -> bool {
        use mirror_common::vm::{Machine, step};
        let frame = Frame::new(frame, direction::INGRESS);
        let mut id = dag.entry;
        loop {
            let node = match &dag.nodes[id as usize] {
                Node::Leaf(v) => return *v,
                Node::Branch { test, jt, jf } => (test, *jt, *jf),
            };
            let (test, jt, jf) = node;
            let one = Dag {
                nodes: vec![
                    Node::Leaf(true),
                    Node::Leaf(false),
                    Node::Branch { test: test.clone(), jt: 0, jf: 1 },
                ],
                entry: 2,
            };
            let insns = optimize::emit(&one).unwrap();
            let mut m = Machine::default();
            loop {
                let insn = insns[m.pc as usize];
                if !step(&mut m, &insn, &frame) {
                    break;
                }
            }
            let stopped_at = &insns[m.pc as usize - 1];
            if stopped_at.op != op::RET_K {
                return false; // A fault rejects the packet.
            }
            id = if stopped_at.k != 0 { jt } else { jf };
        }
    }

    /// tcpdump -d's notation, roughly, for failure messages.
    fn disasm(insns: &[FilterInsn]) -> String {
        let mut out = String::new();
        for (pc, i) in insns.iter().enumerate() {
            let how = |c: u8| ["jeq", "jgt", "jge", "jset"][usize::from(c & 3)];
            let jumps = format!("jt {} jf {}", pc + 1 + usize::from(i.jt), pc + 1 + usize::from(i.jf));
            let text = match i.op {
                op::TEST_ABS => format!(
                    "[{}:{}] & {:#x} {} {:#x}  {jumps}",
                    i.k,
                    i.arg & 7,
                    i.mask,
                    how(i.arg >> 4),
                    i.val
                ),
                op::TEST_IND => format!(
                    "[x+{}:{}] & {:#x} {} {:#x}  {jumps}",
                    i.k,
                    i.arg & 7,
                    i.mask,
                    how(i.arg >> 4),
                    i.val
                ),
                op::TEST_FIELD => {
                    format!("field[{}] & {:#x} {} {:#x}  {jumps}", i.k, i.mask, how(i.arg >> 4), i.val)
                }
                op::JMP_K => format!("{} #{:#x}  {jumps}", how(i.arg), i.k),
                op::JMP_X => format!("{} x  {jumps}", how(i.arg)),
                op::LDX_MSH => format!("ldxb 4*([{}]&0xf)", i.k),
                op::LD_ABS => format!("ld{} [{}]", i.arg, i.k),
                op::LD_IND => format!("ld{} [x+{}]", i.arg, i.k),
                op::RET_K => format!("ret #{}", i.k),
                _ => format!("op {:#x} arg {} k {:#x}", i.op, i.arg, i.k),
            };
            out.push_str(&format!("({pc:03}) {text}\n"));
        }
        out
    }
}
