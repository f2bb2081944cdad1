//! A plain evaluator of [`super::ast`] over packet bytes, written apart
//! from [`super::compile`] so that property tests can hold one to the
//! other (and the differential test holds both to tcpdump).
//!
//! It walks the tree the way the code libpcap 1.10.3 generates for an
//! Ethernet savefile (DLT_EN10MB, no special VLAN handling) runs:
//!
//! - `and` / `or` short-circuit left to right, `not` negates;
//! - every `vlan` tests the tag at the current offsets, then moves the
//!   link-layer type and payload offsets of everything *after it in the
//!   text* 4 bytes further, whether or not it was evaluated (libpcap's
//!   static shift);
//! - a load past the end of the frame, or a division by zero, stops the
//!   whole filter: the packet is rejected, whatever the enclosing `not` or
//!   `or` would have said (classic BPF returns 0);
//! - within a primitive, the protocol checks come before the loads they
//!   guard, in the order libpcap emits them, so a frame too short for a
//!   field is only rejected when the checks before it held.
//!
//! tcpdump runs the *optimized* program, and libpcap's optimizer drops
//! tests whose outcome does not matter, with their loads: `not (arp and
//! ip)` loads nothing and keeps even an empty frame. So the evaluator is
//! three-valued: a value read past the end (or divided by zero) is unknown,
//! and [`expr_outcome`] says both whether the filter stopped on the way and
//! what it would say if such values did not matter (Kleene logic). An
//! optimized program may keep such a frame only if the answer is true
//! whatever the missing bytes ([`answer_without_missing_bytes`]); whether
//! tcpdump's does, case by case, is what the differential test checks. The
//! optimizer's effects on arithmetic are built in,
//! because tcpdump always shows them: what it computes at compile time
//! ([`known`]: numbers, and `0 * x`, `x & 0`, `0 / x`...) loads nothing; an
//! address word whose mask is 0 (`net 2001:db8::/32` leaves 3 of each
//! address's 4 words unmasked) is never loaded; a constant index is folded
//! into the load's offset modulo 2^32 (`ip[0xffffffff]` is the byte before
//! the IPv4 header).
//!
//! Rules ([`RuleSet`]) are evaluated over the deep parse
//! ([`mirror_common::parse::parse_fields`]); the selection is "the rules
//! accept, and the expression matches".
use std::{cell::Cell, net::IpAddr};

use mirror_common::{field, parse::Fields};

use super::{
    Selection,
    ast::{
        Action, Arith, ArithOp, Dir, Expr, HostProto, LoadBase, PortProto, Prim, ProtoBase, ProtoName, Rel,
        RelOp, Rule, RuleSet,
    },
};

/// Whether `selection` selects `frame` (tags inline, as on the wire) seen
/// in `direction` ([`mirror_common::direction`]), as the unoptimized
/// program does.
pub fn matches(selection: &Selection, frame: &[u8], direction: u32) -> bool {
    if let Some(rules) = &selection.rules {
        let fields = mirror_common::parse::parse_fields(&Bytes(frame), direction);
        if !rules_accept(rules, &fields) {
            return false;
        }
    }
    selection.expr.as_ref().is_none_or(|e| expr_matches(e, frame))
}

/// Whether the pcap-filter expression `expr` matches `frame`, as libpcap's
/// unoptimized program says.
pub fn expr_matches(expr: &Expr, frame: &[u8]) -> bool {
    match expr_outcome(expr, frame) {
        Outcome::Ran(matched) => matched,
        Outcome::Stopped { .. } => false,
    }
}

/// How an expression's program ends on a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end: match or not.
    Ran(bool),
    /// It stopped at a load past the end of the frame (or a division by
    /// zero): the packet is rejected. `otherwise` is the answer if the
    /// values it could not compute did not matter (Kleene logic), `None`
    /// if they do.
    Stopped { otherwise: Option<bool> },
}

/// What `expr` makes of `frame`.
pub fn expr_outcome(expr: &Expr, frame: &[u8]) -> Outcome {
    Eval::new(frame, None).outcome(expr)
}

/// What `expr` would say of `frame` had the bytes past its end been there,
/// if that does not depend on them: `Some(v)` when Kleene logic decides,
/// or else when every continuation tried runs to the same answer `v`.
/// Each of `fillers` continues the frame with its own bytes past that
/// length (a short frame continued as a whole one), then zeros; zeros and
/// ones alone too. tcpdump's optimized program may keep a frame its
/// unoptimized one stops on only when this is `Some(true)`.
pub fn answer_without_missing_bytes(expr: &Expr, frame: &[u8], fillers: &[&[u8]]) -> Option<bool> {
    match expr_outcome(expr, frame) {
        Outcome::Ran(v) | Outcome::Stopped { otherwise: Some(v) } => return Some(v),
        Outcome::Stopped { otherwise: None } => {}
    }
    let mut answer = None;
    let tails = fillers.iter().map(|f| (*f, 0)).chain([(&[][..], 0), (&[][..], 0xff)]);
    for tail in tails {
        match Eval::new(frame, Some(tail)).outcome(expr) {
            Outcome::Ran(v) if answer.is_none_or(|a| a == v) => answer = Some(v),
            Outcome::Ran(_) => return None,
            // A division by zero.
            Outcome::Stopped { .. } => {}
        }
    }
    answer
}

/// The rules' verdict: the first rule (by number) whose criteria all hold
/// decides; none holding, the default action does.
pub fn rules_accept(rules: &RuleSet, fields: &Fields) -> bool {
    let mut sorted: Vec<&Rule> = rules.rules.iter().collect();
    sorted.sort_by_key(|r| r.number);
    let action = sorted.iter().find(|r| rule_matches(r, fields)).map_or(rules.default_action, |r| r.action);
    action == Action::Accept
}

fn rule_matches(rule: &Rule, f: &Fields) -> bool {
    let get = |i: u32| f[i as usize];
    let l4 = get(field::L4_PROTO);
    // Ports exist only in TCP, UDP and SCTP headers that were read (an
    // unfragmented packet or a first fragment).
    let ported = get(field::HAS_L4) != 0 && matches!(l4, 6 | 17 | 132);
    let in_range = |port: u32, (lo, hi): (u16, u16)| (u32::from(lo)..=u32::from(hi)).contains(&port);
    rule.direction.is_none_or(|d| get(field::DIRECTION) == d)
        && rule.protocol.is_none_or(|p| l4 == u32::from(p))
        && rule.source.is_none_or(|(a, len)| prefix_matches(f, field::SRC4, field::SRC6, a, len))
        && rule.destination.is_none_or(|(a, len)| prefix_matches(f, field::DST4, field::DST6, a, len))
        && rule.source_ports.is_none_or(|r| ported && in_range(get(field::SRC_PORT), r))
        && rule.destination_ports.is_none_or(|r| ported && in_range(get(field::DST_PORT), r))
        && rule.tcp_flags.is_none_or(|t| {
            l4 == 6
                && get(field::HAS_L4) != 0
                && get(field::TCP_FLAGS) & u32::from(t.mask) == u32::from(t.value)
        })
}

/// An IPv4 prefix matches IPv4 packets only, an IPv6 one IPv6 packets only.
fn prefix_matches(f: &Fields, v4: u32, v6: u32, addr: IpAddr, len: u8) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let mask = prefix_mask(u32::from(len));
            f[field::IP_VERSION as usize] == 4 && f[v4 as usize] & mask == u32::from(a) & mask
        }
        IpAddr::V6(a) => {
            f[field::IP_VERSION as usize] == 6
                && (0..4).all(|w| {
                    let mask = word_mask(len, w);
                    f[(v6 + w) as usize] & mask == v6_word(&a.octets(), w) & mask
                })
        }
    }
}

/// The mask of a `len`-bit prefix (0..=32) of a 32-bit word.
fn prefix_mask(len: u32) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) }
}

/// The mask of word `w` (0..4) of an IPv6 address under a `len`-bit prefix.
fn word_mask(len: u8, w: u32) -> u32 {
    prefix_mask(u32::from(len).saturating_sub(32 * w).min(32))
}

fn v6_word(addr: &[u8; 16], w: u32) -> u32 {
    let i = 4 * w as usize;
    u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]])
}

struct Bytes<'a>(&'a [u8]);

impl mirror_common::parse::Bytes for Bytes<'_> {
    fn load(&self, off: u32, size: u32) -> Option<u32> {
        load_be(self.0, off, size)
    }
}

fn load_be(frame: &[u8], off: u32, size: u32) -> Option<u32> {
    let start = usize::try_from(off).ok()?;
    let bytes = frame.get(start..start.checked_add(size as usize)?)?;
    Some(bytes.iter().fold(0, |v, b| v << 8 | u32::from(*b)))
}

/// A value, `None` when it could not be computed (read past the end of
/// the frame, or divided by zero).
type Val = Option<u32>;
/// A truth value, `None` when it depends on such a value.
type Truth = Option<bool>;

/// `a and b`, `b` evaluated only if `a` does not decide (Kleene).
fn and(a: Truth, b: impl FnOnce() -> Truth) -> Truth {
    match a {
        Some(false) => Some(false),
        Some(true) => b(),
        None => match b() {
            Some(false) => Some(false),
            _ => None,
        },
    }
}

/// `a or b`, `b` evaluated only if `a` does not decide (Kleene).
fn or(a: Truth, b: impl FnOnce() -> Truth) -> Truth {
    match a {
        Some(true) => Some(true),
        Some(false) => b(),
        None => match b() {
            Some(true) => Some(true),
            _ => None,
        },
    }
}

/// `test(p)` for each `p` in turn, `or`ed.
fn any_of(items: &[u32], test: impl Fn(u32) -> Truth) -> Truth {
    let mut acc = Some(false);
    for &p in items {
        acc = or(acc, || test(p));
    }
    acc
}

fn is(v: Val, want: u32) -> Truth {
    v.map(|v| v == want)
}

const ETHERMTU: u32 = 1500;
const ETHERTYPE_IP: u32 = 0x0800;
const ETHERTYPE_ARP: u32 = 0x0806;
const ETHERTYPE_REVARP: u32 = 0x8035;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const ETHERTYPE_8021Q: u32 = 0x8100;
const ETHERTYPE_8021AD: u32 = 0x88a8;
const ETHERTYPE_8021QINQ: u32 = 0x9100;
const ETHERTYPE_IPX: u32 = 0x8137;
const ETHERTYPE_ATALK: u32 = 0x809b;
const ETHERTYPE_AARP: u32 = 0x80f3;
const LLCSAP_IP: u32 = 0x06;
const LLCSAP_IPX: u32 = 0xe0;
const LLCSAP_NETBEUI: u32 = 0xf0;
const LLCSAP_ISONS: u32 = 0xfe;
const IPPROTO_FRAGMENT: u32 = 44;

struct Eval<'a> {
    frame: &'a [u8],
    /// What the frame is continued with past its end, for the loads that
    /// would stop the program: bytes at the same offsets, then a fill byte.
    tail: Option<(&'a [u8], u8)>,
    /// Bytes the `vlan`s seen so far (in the text) add to the link-layer
    /// type and payload offsets.
    shift: u32,
    /// A value could not be computed: the program stopped there.
    stopped: Cell<bool>,
}

impl<'a> Eval<'a> {
    fn new(frame: &'a [u8], tail: Option<(&'a [u8], u8)>) -> Self {
        Self { frame, tail, shift: 0, stopped: Cell::new(false) }
    }

    fn outcome(mut self, expr: &Expr) -> Outcome {
        let truth = self.expr(expr);
        if self.stopped.get() {
            Outcome::Stopped { otherwise: truth }
        } else {
            Outcome::Ran(truth == Some(true))
        }
    }

    /// `size` bytes at `off`; `None` (and the program stops) past the end
    /// (or at an offset past 2^32), unless the frame is continued.
    fn load(&self, off: Val, size: u32) -> Val {
        if let Some(v) = off.and_then(|off| load_be(self.frame, off, size)) {
            return Some(v);
        }
        let Some((bytes, fill)) = self.tail else {
            self.stopped.set(true);
            return None;
        };
        let byte = |i: u64| {
            let i = usize::try_from(i).unwrap_or(usize::MAX);
            u32::from(*self.frame.get(i).or_else(|| bytes.get(i)).unwrap_or(&fill))
        };
        let start = off.map_or(u64::MAX - 4, u64::from);
        Some((start..start + u64::from(size)).fold(0, |v, i| v << 8 | byte(i)))
    }

    fn at(&self, off: u32, size: u32) -> Val {
        self.load(Some(off), size)
    }

    /// The frame's length (BPF's wire length).
    fn len(&self) -> u32 {
        u32::try_from(self.frame.len()).unwrap_or(u32::MAX)
    }

    /// Offset of the EtherType (or 802.3 length) field.
    fn off_linktype(&self) -> u32 {
        12 + self.shift
    }

    /// Offset of the link-layer payload: the network header or the LLC one.
    fn off_linkpl(&self) -> u32 {
        14 + self.shift
    }

    /// A byte, half-word or word of the network header.
    fn net(&self, off: u32, size: u32) -> Val {
        self.at(self.off_linkpl() + off, size)
    }

    fn expr(&mut self, e: &Expr) -> Truth {
        match e {
            Expr::And(a, b) => {
                let a = self.expr(a);
                if a == Some(false) {
                    self.skip(b);
                }
                and(a, || self.expr(b))
            }
            Expr::Or(a, b) => {
                let a = self.expr(a);
                if a == Some(true) {
                    self.skip(b);
                }
                or(a, || self.expr(b))
            }
            Expr::Not(a) => self.expr(a).map(|a| !a),
            Expr::Prim(p, _) => self.prim(p),
            Expr::Rel(r, _) => self.rel(r),
        }
    }

    /// Passes over an expression that short-circuit evaluation does not
    /// run: its `vlan`s still shift what follows.
    fn skip(&mut self, e: &Expr) {
        match e {
            Expr::And(a, b) | Expr::Or(a, b) => {
                self.skip(a);
                self.skip(b);
            }
            Expr::Not(a) => self.skip(a),
            Expr::Prim(Prim::Vlan(_), _) => self.shift += 4,
            Expr::Prim(..) | Expr::Rel(..) => {}
        }
    }

    fn prim(&mut self, p: &Prim) -> Truth {
        match *p {
            Prim::Proto(name) => self.proto_abbrev(name),
            Prim::Vlan(vid) => {
                let tagged =
                    or(or(self.linktype(ETHERTYPE_8021Q), || self.linktype(ETHERTYPE_8021AD)), || {
                        self.linktype(ETHERTYPE_8021QINQ)
                    });
                // The VID is in the TCI, at the (current) link-layer payload.
                let result = and(tagged, || {
                    vid.map_or(Some(true), |v| is(self.net(0, 2).map(|t| t & 0x0fff), u32::from(v)))
                });
                self.shift += 4;
                result
            }
            Prim::EtherHost { dir, mac } => self.ether_host(dir, &mac),
            Prim::EtherBroadcast => self.ether_host(Dir::Dst, &[0xff; 6]),
            Prim::EtherMulticast => self.at(0, 1).map(|b| b & 1 != 0),
            Prim::EtherProto(v) => self.linktype(u32::from(v)),
            Prim::Host { proto, dir, addr } => self.host(proto, dir, addr, 128),
            Prim::Net { proto, dir, addr, prefix_len } => self.host(proto, dir, addr, prefix_len),
            Prim::Port { proto, dir, port } => self.ports(proto, dir, u32::from(port), u32::from(port)),
            Prim::PortRange { proto, dir, lo, hi } => {
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                self.ports(proto, dir, u32::from(lo), u32::from(hi))
            }
            Prim::IpProto { base, proto } => match base {
                ProtoBase::Any => self.ip_proto_any(u32::from(proto)),
                ProtoBase::Ip => self.ip4_proto(u32::from(proto)),
                ProtoBase::Ip6 => self.ip6_proto(u32::from(proto)),
            },
            Prim::Greater(n) => Some(self.len() >= n),
            Prim::Less(n) => Some(self.len() <= n),
        }
    }

    /// libpcap's `gen_linktype` on Ethernet: an EtherType (> 1500) is
    /// compared with the type field; a smaller value is an LLC SAP, looked
    /// for in 802.3 frames (type field <= 1500, a length); a few protocols
    /// are also looked for in their LLC / SNAP encapsulations.
    fn linktype(&self, v: u32) -> Truth {
        let lt = self.off_linktype();
        let llc = self.off_linkpl();
        let type_field = || self.at(lt, 2);
        let is_802_3 = || type_field().map(|t| t <= ETHERMTU);
        match v {
            LLCSAP_ISONS | LLCSAP_IP | LLCSAP_NETBEUI => and(is_802_3(), || is(self.at(llc, 2), v << 8 | v)),
            LLCSAP_IPX => or(is(type_field(), ETHERTYPE_IPX), || {
                and(is_802_3(), || {
                    or(or(self.snap(0, ETHERTYPE_IPX), || is(self.at(llc, 1), LLCSAP_IPX)), || {
                        is(self.at(llc, 2), 0xffff)
                    })
                })
            }),
            ETHERTYPE_ATALK | ETHERTYPE_AARP => {
                let org = if v == ETHERTYPE_ATALK { 0x08_0007 } else { 0 };
                or(is(type_field(), v), || and(is_802_3(), || self.snap(org, v)))
            }
            _ if v <= ETHERMTU => and(is_802_3(), || is(self.at(lt + 2, 1), v)),
            _ => is(type_field(), v),
        }
    }

    /// An LLC + SNAP header (AA AA 03, OUI, type), compared as libpcap
    /// does: the last word first.
    fn snap(&self, org: u32, ptype: u32) -> Truth {
        let llc = self.off_linkpl();
        and(is(self.at(llc + 4, 4), (org & 0xffff) << 16 | ptype), || {
            is(self.at(llc, 4), 0xaaaa_0300 | org >> 16)
        })
    }

    /// A protocol name standing alone (libpcap's `gen_proto_abbrev`).
    fn proto_abbrev(&self, name: ProtoName) -> Truth {
        match name {
            ProtoName::Ip => self.linktype(ETHERTYPE_IP),
            ProtoName::Ip6 => self.linktype(ETHERTYPE_IPV6),
            ProtoName::Arp => self.linktype(ETHERTYPE_ARP),
            ProtoName::Rarp => self.linktype(ETHERTYPE_REVARP),
            ProtoName::Tcp => self.ip_proto_any(6),
            ProtoName::Udp => self.ip_proto_any(17),
            ProtoName::Sctp => self.ip_proto_any(132),
            ProtoName::Pim => self.ip_proto_any(103),
            ProtoName::Ah => self.ip_proto_any(51),
            ProtoName::Esp => self.ip_proto_any(50),
            ProtoName::Icmp => self.ip4_proto(1),
            ProtoName::Igmp => self.ip4_proto(2),
            ProtoName::Vrrp => self.ip4_proto(112),
            ProtoName::Icmp6 => self.ip6_proto(58),
            // libpcap: "link layer applied in wrong context"; the parser
            // never produces it. Every frame is Ethernet.
            ProtoName::Ether => Some(true),
        }
    }

    /// `proto N`: IPv4 first, then IPv6.
    fn ip_proto_any(&self, v: u32) -> Truth {
        or(self.ip4_proto(v), || self.ip6_proto(v))
    }

    fn ip4_proto(&self, v: u32) -> Truth {
        and(self.linktype(ETHERTYPE_IP), || is(self.net(9, 1), v))
    }

    /// The next header, or the one after a single fragment header.
    fn ip6_proto(&self, v: u32) -> Truth {
        and(self.linktype(ETHERTYPE_IPV6), || {
            or(is(self.net(6, 1), v), || and(is(self.net(6, 1), IPPROTO_FRAGMENT), || is(self.net(40, 1), v)))
        })
    }

    /// Not an IPv4 fragment other than the first.
    fn ip4_first_fragment(&self) -> Truth {
        self.net(6, 2).map(|f| f & 0x1fff == 0)
    }

    /// `dir` over a test of the source (`true`) or the destination.
    fn dir(dir: Dir, test: impl Fn(bool) -> Truth) -> Truth {
        match dir {
            Dir::Src => test(true),
            Dir::Dst => test(false),
            Dir::SrcOrDst => or(test(true), || test(false)),
            Dir::SrcAndDst => and(test(true), || test(false)),
        }
    }

    /// MACs are compared as libpcap's `gen_bcmp` does: the word at bytes
    /// 2..6 of the address first, then the half-word at 0..2. They are not
    /// shifted by `vlan`.
    fn ether_host(&self, dir: Dir, mac: &[u8; 6]) -> Truth {
        let tail = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
        let head = u32::from(u16::from_be_bytes([mac[0], mac[1]]));
        Self::dir(dir, |src| {
            let at = if src { 6 } else { 0 };
            and(is(self.at(at + 2, 4), tail), || is(self.at(at, 2), head))
        })
    }

    /// `host` and `net`: `len` is the prefix length (128 for a host; an
    /// IPv4 host is a /32).
    fn host(&self, proto: HostProto, dir: Dir, addr: IpAddr, len: u8) -> Truth {
        match addr {
            IpAddr::V4(a) => {
                let mask = prefix_mask(u32::from(len).min(32));
                let a = u32::from(a) & mask;
                let ip = || self.host4(ETHERTYPE_IP, 12, 16, dir, a, mask);
                let arp = |ll| self.host4(ll, 14, 24, dir, a, mask);
                match proto {
                    HostProto::Any => or(or(ip(), || arp(ETHERTYPE_ARP)), || arp(ETHERTYPE_REVARP)),
                    HostProto::Arp => arp(ETHERTYPE_ARP),
                    HostProto::Rarp => arp(ETHERTYPE_REVARP),
                    // `ip6 host <IPv4>` is a libpcap error; not produced.
                    HostProto::Ip | HostProto::Ip6 => ip(),
                }
            }
            // Only `ip6` (or no qualifier) is legal with an IPv6 address.
            IpAddr::V6(a) => self.host6(dir, a.octets(), len),
        }
    }

    /// One IPv4 address field per direction at `src_off` / `dst_off` of
    /// the network header, behind the link type `ll`.
    fn host4(&self, ll: u32, src_off: u32, dst_off: u32, dir: Dir, addr: u32, mask: u32) -> Truth {
        Self::dir(dir, |src| {
            and(self.linktype(ll), || self.masked_word(if src { src_off } else { dst_off }, addr, mask))
        })
    }

    /// `net[off:4] & mask == addr`; a zero mask loads nothing (see the
    /// module's note on tcpdump's optimizer).
    fn masked_word(&self, off: u32, addr: u32, mask: u32) -> Truth {
        if mask == 0 { Some(true) } else { self.net(off, 4).map(|w| w & mask == addr & mask) }
    }

    /// IPv6 addresses: the link type, then the words in order.
    fn host6(&self, dir: Dir, addr: [u8; 16], len: u8) -> Truth {
        Self::dir(dir, |src| {
            let base = if src { 8 } else { 24 };
            (0..4).fold(self.linktype(ETHERTYPE_IPV6), |acc, w| {
                and(acc, || self.masked_word(base + 4 * w, v6_word(&addr, w), word_mask(len, w)))
            })
        })
    }

    /// `port` and `portrange`: libpcap tests IPv6 first (the next header
    /// right after the fixed header, no extension headers), then IPv4
    /// (unfragmented or first fragment, past the header's IHL).
    fn ports(&self, proto: PortProto, dir: Dir, lo: u32, hi: u32) -> Truth {
        let protos: &[u32] = match proto {
            PortProto::Any => &[6, 17, 132],
            PortProto::Tcp => &[6],
            PortProto::Udp => &[17],
            PortProto::Sctp => &[132],
        };
        let in_range = |port: Val| port.map(|p| (lo..=hi).contains(&p));
        let v6 = || {
            and(self.linktype(ETHERTYPE_IPV6), || {
                any_of(protos, |p| {
                    and(is(self.net(6, 1), p), || {
                        Self::dir(dir, |src| in_range(self.net(40 + port_off(src), 2)))
                    })
                })
            })
        };
        let v4 = || {
            and(self.linktype(ETHERTYPE_IP), || {
                any_of(protos, |p| {
                    and(and(is(self.net(9, 1), p), || self.ip4_first_fragment()), || {
                        Self::dir(dir, |src| in_range(self.transport4(port_off(src), 2)))
                    })
                })
            })
        };
        or(v6(), v4)
    }

    /// A load relative to the end of the IPv4 header (X = 4 * IHL).
    fn transport4(&self, off: u32, size: u32) -> Val {
        let ihl = self.net(0, 1).map(|b| (b & 0xf) * 4);
        self.load(ihl.map(|ihl| self.off_linkpl() + ihl + off), size)
    }

    fn rel(&self, r: &Rel) -> Truth {
        // The protocol checks of both sides come first (libpcap keeps
        // only the left operand's checks through an arithmetic operator),
        // then the whole arithmetic, then the comparison.
        and(and(self.checks(&r.lhs), || self.checks(&r.rhs)), || {
            let (a, b) = (self.arith(&r.lhs), self.arith(&r.rhs));
            let (a, b) = (a?, b?);
            Some(match r.op {
                RelOp::Eq => a == b,
                RelOp::Ne => a != b,
                RelOp::Lt => a < b,
                RelOp::Le => a <= b,
                RelOp::Gt => a > b,
                RelOp::Ge => a >= b,
            })
        })
    }

    /// The protocol checks that guard the loads of `a`, evaluated in
    /// libpcap's order.
    fn checks(&self, a: &Arith) -> Truth {
        match a {
            Arith::Num(_) | Arith::Len => Some(true),
            // libpcap's gen_arth drops the right operand's checks: its
            // loads run unguarded (`ip[0] + tcp[0] = 5` reads the "TCP"
            // byte of any IPv4 packet).
            Arith::Binary(_, l, _) => self.checks(l),
            Arith::Neg(x) => self.checks(x),
            Arith::Load { base, index, .. } => match *base {
                LoadBase::Link => self.checks(index),
                LoadBase::Net(name) => and(self.checks(index), || self.proto_abbrev(name)),
                LoadBase::Ip6 => and(self.checks(index), || self.linktype(ETHERTYPE_IPV6)),
                LoadBase::Transport(name) => and(
                    and(and(self.linktype(ETHERTYPE_IP), || self.checks(index)), || self.proto_abbrev(name)),
                    || self.ip4_first_fragment(),
                ),
                LoadBase::Icmp6 => {
                    and(and(self.checks(index), || self.linktype(ETHERTYPE_IPV6)), || is(self.net(6, 1), 58))
                }
            },
        }
    }

    /// The value of `a`; every operand is computed (no short circuit).
    fn arith(&self, a: &Arith) -> Val {
        // What the optimizer computes at compile time is never computed
        // at run time: no load, no division by zero.
        if let Some(v) = known(a) {
            return Some(v);
        }
        match a {
            Arith::Num(n) => Some(*n),
            Arith::Len => Some(self.len()),
            Arith::Neg(x) => self.arith(x).map(u32::wrapping_neg),
            Arith::Binary(op, l, r) => {
                let (l, r) = (self.arith(l), self.arith(r));
                let (l, r) = (l?, r?);
                let v = match op {
                    ArithOp::Add => l.wrapping_add(r),
                    ArithOp::Sub => l.wrapping_sub(r),
                    ArithOp::Mul => l.wrapping_mul(r),
                    ArithOp::Div => l.checked_div(r).or_else(|| self.division_by_zero())?,
                    ArithOp::Mod => l.checked_rem(r).or_else(|| self.division_by_zero())?,
                    ArithOp::And => l & r,
                    ArithOp::Or => l | r,
                    ArithOp::Xor => l ^ r,
                    ArithOp::Shl => l.checked_shl(r).unwrap_or(0),
                    ArithOp::Shr => l.checked_shr(r).unwrap_or(0),
                };
                Some(v)
            }
            Arith::Load { base, index, size, .. } => {
                let i = self.arith(index);
                let size = u32::from(*size);
                // The header's offset: the index goes in X (for the
                // transport header, added to the IPv4 header length by the
                // 32-bit ALU), the offset in the instruction, and a load
                // whose X + offset passes the end rejects. A constant index
                // is folded into the offset by tcpdump's optimizer, modulo
                // 2^32: `ip[0xffffffff]` reads the byte before the header.
                let (x, off) = match *base {
                    LoadBase::Link => (Some(0), 0),
                    LoadBase::Net(_) | LoadBase::Ip6 => (Some(0), self.off_linkpl()),
                    LoadBase::Icmp6 => (Some(0), self.off_linkpl() + 40),
                    LoadBase::Transport(_) => (self.net(0, 1).map(|b| (b & 0xf) * 4), self.off_linkpl()),
                };
                let at = match known(index) {
                    Some(c) => x.and_then(|x| x.checked_add(off.wrapping_add(c))),
                    None => x.zip(i).and_then(|(x, i)| x.wrapping_add(i).checked_add(off)),
                };
                self.load(at, size)
            }
        }
    }

    /// Classic BPF stops on a division by zero.
    fn division_by_zero(&self) -> Option<u32> {
        self.stopped.set(true);
        None
    }
}

/// The value of `a` when libpcap's optimizer knows it without running
/// anything: numbers folded (a shift by 32 or more gives 0), and 0 times,
/// and-ed with, divided, or shifted by anything; `0 * ip[100]` loads
/// nothing. `None` for a division by a folded 0, which libpcap refuses.
pub fn known(a: &Arith) -> Option<u32> {
    match a {
        Arith::Num(n) => Some(*n),
        Arith::Len | Arith::Load { .. } => None,
        Arith::Neg(x) => known(x).map(u32::wrapping_neg),
        Arith::Binary(op, l, r) => {
            let (l, r) = (known(l), known(r));
            match (op, l, r) {
                (ArithOp::Mul | ArithOp::And, Some(0), _) | (ArithOp::Mul | ArithOp::And, _, Some(0)) => {
                    Some(0)
                }
                (ArithOp::Div | ArithOp::Mod | ArithOp::Shl | ArithOp::Shr, Some(0), _) => Some(0),
                (_, Some(l), Some(r)) => match op {
                    ArithOp::Add => Some(l.wrapping_add(r)),
                    ArithOp::Sub => Some(l.wrapping_sub(r)),
                    ArithOp::Mul => Some(l.wrapping_mul(r)),
                    ArithOp::Div => l.checked_div(r),
                    ArithOp::Mod => l.checked_rem(r),
                    ArithOp::And => Some(l & r),
                    ArithOp::Or => Some(l | r),
                    ArithOp::Xor => Some(l ^ r),
                    ArithOp::Shl => Some(l.checked_shl(r).unwrap_or(0)),
                    ArithOp::Shr => Some(l.checked_shr(r).unwrap_or(0)),
                },
                _ => None,
            }
        }
    }
}

/// Whether `a` divides by a 0 the optimizer folds (`len / (1 / 2)`):
/// libpcap refuses the expression ("division by zero").
pub fn divides_by_known_zero(a: &Arith) -> bool {
    match a {
        Arith::Num(_) | Arith::Len => false,
        Arith::Load { index, .. } => divides_by_known_zero(index),
        Arith::Neg(x) => divides_by_known_zero(x),
        Arith::Binary(op, l, r) => {
            // Not when the whole is folded to 0 first (`0 / (1 / 2)`).
            let zero_first = matches!(op, ArithOp::Div | ArithOp::Mod) && known(l) == Some(0);
            (matches!(op, ArithOp::Div | ArithOp::Mod) && known(r) == Some(0) && !zero_first)
                || divides_by_known_zero(l)
                || divides_by_known_zero(r)
        }
    }
}

/// Offset of the source or destination port in a TCP/UDP/SCTP header.
fn port_off(src: bool) -> u32 {
    if src { 0 } else { 2 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Span;

    fn prim(p: Prim) -> Expr {
        Expr::Prim(p, Span::default())
    }

    fn and(a: Expr, b: Expr) -> Expr {
        Expr::And(Box::new(a), Box::new(b))
    }

    fn or(a: Expr, b: Expr) -> Expr {
        Expr::Or(Box::new(a), Box::new(b))
    }

    fn not(a: Expr) -> Expr {
        Expr::Not(Box::new(a))
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa];
        v.extend_from_slice(&ethertype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn ipv4(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut v = vec![0x45, 0, 0, 0, 0, 0];
        v.extend_from_slice(&frag.to_be_bytes());
        v.extend_from_slice(&[64, proto, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2]);
        v.extend_from_slice(l4);
        v
    }

    const TCP_SYN_443: [u8; 20] =
        [0x30, 0x39, 0x01, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0];

    fn tcp_flags_rel(mask: u32, value: u32) -> Expr {
        let load = Arith::Load {
            base: LoadBase::Transport(ProtoName::Tcp),
            index: Box::new(Arith::Num(13)),
            size: 1,
            span: Span::default(),
        };
        Expr::Rel(
            Rel {
                op: RelOp::Eq,
                lhs: Arith::Binary(ArithOp::And, Box::new(load), Box::new(Arith::Num(mask))),
                rhs: Arith::Num(value),
            },
            Span::default(),
        )
    }

    fn port(p: u16) -> Expr {
        prim(Prim::Port { proto: PortProto::Any, dir: Dir::SrcOrDst, port: p })
    }

    #[test]
    fn ports_and_flags() {
        let f = eth(0x0800, &ipv4(6, 0, &TCP_SYN_443));
        assert!(expr_matches(&port(443), &f));
        assert!(expr_matches(&port(12345), &f));
        assert!(!expr_matches(&port(80), &f));
        assert!(expr_matches(&tcp_flags_rel(0x12, 0x02), &f));
        assert!(!expr_matches(&tcp_flags_rel(0x12, 0x12), &f));
        // A later fragment has no ports.
        let later = eth(0x0800, &ipv4(6, 0x0010, &TCP_SYN_443));
        assert!(!expr_matches(&port(443), &later));
        assert!(expr_matches(&prim(Prim::Proto(ProtoName::Tcp)), &later));
    }

    #[test]
    fn vlan_shifts_what_follows_even_when_skipped() {
        let mut tagged = vec![0x00, 0x64, 0x08, 0x00];
        tagged.extend(ipv4(17, 0, &[0, 53, 0, 53, 0, 8, 0, 0]));
        let tagged = eth(0x8100, &tagged);
        let plain = eth(0x0800, &ipv4(17, 0, &[0, 53, 0, 53, 0, 8, 0, 0]));
        let vlan100 = prim(Prim::Vlan(Some(100)));
        let udp = prim(Prim::Proto(ProtoName::Udp));
        assert!(expr_matches(&and(vlan100.clone(), udp.clone()), &tagged));
        assert!(!expr_matches(&and(vlan100.clone(), udp.clone()), &plain));
        // `not vlan and udp`: udp is looked for 4 bytes in, so it misses
        // the untagged frame.
        assert!(!expr_matches(&and(not(prim(Prim::Vlan(None))), udp.clone()), &plain));
        // `udp or vlan`: the shift only affects what follows.
        assert!(expr_matches(&or(udp.clone(), prim(Prim::Vlan(None))), &plain));
        // `vlan or udp` on the plain frame: vlan fails, udp is at +4.
        assert!(!expr_matches(&or(prim(Prim::Vlan(None)), udp), &plain));
    }

    #[test]
    fn short_frame_aborts_the_whole_filter() {
        // A TCP frame cut inside its header: `tcp[13]` is past the end.
        let mut f = eth(0x0800, &ipv4(6, 0, &TCP_SYN_443));
        f.truncate(14 + 20 + 10);
        let flags = tcp_flags_rel(0x02, 0x02);
        assert!(!expr_matches(&flags, &f));
        assert!(!expr_matches(&not(flags.clone()), &f));
        assert!(!expr_matches(&or(flags.clone(), prim(Prim::Proto(ProtoName::Tcp))), &f));
        // Short-circuited before the load: no abort.
        assert!(expr_matches(&or(prim(Prim::Proto(ProtoName::Tcp)), flags.clone()), &f));
        // Guarded by the checks: on ARP, nothing is loaded.
        let arp = eth(0x0806, &[0; 10]);
        assert!(expr_matches(&not(flags), &arp));
    }

    #[test]
    fn host_matches_arp_addresses() {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0xa, 198, 18, 0, 9];
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 7]);
        let f = eth(0x0806, &arp);
        let host = |a: [u8; 4], dir| prim(Prim::Host { proto: HostProto::Any, dir, addr: IpAddr::from(a) });
        assert!(expr_matches(&host([198, 18, 0, 9], Dir::Src), &f));
        assert!(expr_matches(&host([198, 18, 0, 7], Dir::Dst), &f));
        assert!(!expr_matches(&host([198, 18, 0, 7], Dir::Src), &f));
    }

    fn rel(op: RelOp, lhs: Arith, rhs: Arith) -> Expr {
        Expr::Rel(Rel { op, lhs, rhs }, Span::default())
    }

    fn load(base: LoadBase, index: Arith, size: u8) -> Arith {
        Arith::Load { base, index: Box::new(index), size, span: Span::default() }
    }

    fn bin(op: ArithOp, l: Arith, r: Arith) -> Arith {
        Arith::Binary(op, Box::new(l), Box::new(r))
    }

    #[test]
    fn what_the_optimizer_folds_loads_nothing() {
        let f = eth(0x0800, &ipv4(6, 0, &TCP_SYN_443));
        // ether[1] is 0: `0 / ether[1]` is folded to 0, never divided.
        let zero_div = rel(
            RelOp::Eq,
            bin(ArithOp::Div, Arith::Num(0), load(LoadBase::Link, Arith::Num(1), 1)),
            Arith::Num(0),
        );
        assert_eq!(expr_outcome(&zero_div, &f), Outcome::Ran(true));
        // `len / ether[1]` divides by zero: the program stops.
        let len_div = rel(
            RelOp::Eq,
            bin(ArithOp::Div, Arith::Len, load(LoadBase::Link, Arith::Num(1), 1)),
            Arith::Num(0),
        );
        assert_eq!(expr_outcome(&len_div, &f), Outcome::Stopped { otherwise: None });
        // `ip[500] * 0 = 0` loads nothing past the end.
        let times_zero = rel(
            RelOp::Eq,
            bin(ArithOp::Mul, load(LoadBase::Net(ProtoName::Ip), Arith::Num(500), 1), Arith::Num(0)),
            Arith::Num(0),
        );
        assert_eq!(expr_outcome(&times_zero, &f), Outcome::Ran(true));
        // A constant index wraps: ip[0xffffffff] is byte 13, the EtherType's low byte.
        let wrapped =
            rel(RelOp::Eq, load(LoadBase::Net(ProtoName::Ip), Arith::Num(u32::MAX), 1), Arith::Num(0));
        assert_eq!(expr_outcome(&wrapped, &f), Outcome::Ran(true));
        // A computed one does not: ip[ether[1] - 1] is past 2^32.
        let computed = rel(
            RelOp::Eq,
            load(
                LoadBase::Net(ProtoName::Ip),
                bin(ArithOp::Sub, load(LoadBase::Link, Arith::Num(1), 1), Arith::Num(1)),
                1,
            ),
            Arith::Num(0),
        );
        assert_eq!(expr_outcome(&computed, &f), Outcome::Stopped { otherwise: None });
    }

    #[test]
    fn answers_that_do_not_depend_on_missing_bytes() {
        let ip = prim(Prim::Proto(ProtoName::Ip));
        let arp = prim(Prim::Proto(ProtoName::Arp));
        // `not (ip and arp)` holds whatever the EtherType is, which Kleene
        // logic alone cannot tell.
        let never_both = not(and(ip.clone(), arp));
        assert_eq!(expr_outcome(&never_both, &[]), Outcome::Stopped { otherwise: None });
        assert!(!expr_matches(&never_both, &[]));
        assert_eq!(answer_without_missing_bytes(&never_both, &[], &[]), Some(true));
        // `ip` does depend on it.
        let f = eth(0x0800, &ipv4(6, 0, &TCP_SYN_443));
        assert_eq!(answer_without_missing_bytes(&ip, &[], &[&f]), None);
        // `port 443 or tcp`: Kleene logic decides once the port is missing.
        let mut cut = f.clone();
        cut.truncate(14 + 20 + 2);
        let port_or_tcp = or(port(443), prim(Prim::Proto(ProtoName::Tcp)));
        assert_eq!(expr_outcome(&port_or_tcp, &cut), Outcome::Stopped { otherwise: Some(true) });
    }

    #[test]
    fn rules_first_match_decides() {
        use crate::filter::ast::TcpFlags;
        let f = eth(0x0800, &ipv4(6, 0, &TCP_SYN_443));
        let rule = |number, action, flags: Option<TcpFlags>| Rule {
            number,
            action,
            direction: None,
            protocol: Some(6),
            source: Some((IpAddr::from([198, 18, 0, 0]), 16)),
            destination: None,
            source_ports: None,
            destination_ports: Some((443, 443)),
            tcp_flags: flags,
        };
        let syn_only = TcpFlags { value: 0x02, mask: 0x12 };
        let rules = RuleSet {
            rules: vec![rule(20, Action::Accept, None), rule(10, Action::Reject, Some(syn_only))],
            default_action: Action::Accept,
        };
        let sel = Selection { rules: Some(rules.clone()), expr: None };
        assert!(!matches(&sel, &f, 0));
        let sel = Selection {
            rules: Some(RuleSet { rules: vec![rule(20, Action::Accept, None)], ..rules }),
            expr: Some(port(80)),
        };
        assert!(!matches(&sel, &f, 0));
        assert!(matches(&Selection { expr: Some(port(443)), ..sel }, &f, 0));
    }
}
