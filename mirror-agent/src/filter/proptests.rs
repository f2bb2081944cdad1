//! Property tests: the compiled program, run by the filter machine, agrees
//! with [`super::reference`] on random expressions, rule sets and frames.
//!
//! Expressions are drawn over the whole AST (bounded depth), with values
//! from small pools that the random frames also use, so that primitives
//! match often. Frames are mostly well-formed (Ethernet, up to three tags
//! with any of the three TPIDs, IPv4 with options and fragments, IPv6 with
//! a few extension headers, ARP/RARP, 802.3 LLC), often cut short so that
//! loads fall past the end, plus some random bytes. The canonical text
//! of expressions and rules parses back to the same tree.
//!
//! `PROPTEST_CASES=5000 cargo test -p mirror-agent --lib filter::proptests`
//! digs deeper than the default.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::{collection::vec, prelude::*, sample::select};

use super::{
    Frame, Selection, Span,
    ast::{
        Action, Arith, ArithOp, Dir, Expr, HostProto, LoadBase, PortProto, Prim, ProtoBase, ProtoName, Rel,
        RelOp, Rule, RuleSet, TcpFlags,
    },
    compile_selection,
    reference::{self, Outcome},
    rules::validate,
};

/// Cases per property: a few seconds in a debug build.
const CASES: u32 = 512;
/// No regression files in the source tree (a failure prints its minimal
/// case); rejects (selections over a limit, or that libpcap refuses, such
/// as `ip and arp`: "expression rejects all packets") are expected.
///
/// CI runs a fixed seed, so that a run is reproducible; set
/// `PROPTEST_RNG_SEED` (or `random`) to explore.
pub(super) fn config() -> ProptestConfig {
    let defaults = ProptestConfig::default();
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        max_global_rejects: 20 * CASES,
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            defaults.rng_seed
        } else {
            proptest::test_runner::RngSeed::Fixed(20_261_207)
        },
        ..defaults
    }
}

/// Frames each case runs its program on.
const FRAMES: std::ops::Range<usize> = 8..24;

const MACS: [[u8; 6]; 5] = [
    [2, 0, 0, 0, 0, 0x0a],
    [2, 0, 0, 0, 0, 0x0b],
    [0xff; 6],
    [0x01, 0x00, 0x5e, 0, 0, 0xfb],
    [0x33, 0x33, 0, 0, 0, 1],
];
const V4: [[u8; 4]; 4] = [[198, 18, 0, 1], [198, 18, 0, 2], [198, 19, 1, 1], [198, 18, 255, 255]];
const V6: [[u16; 8]; 3] = [
    [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1],
    [0x2001, 0xdb8, 0, 0, 0, 0, 0, 2],
    [0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10],
];
const PORTS: [u16; 6] = [0, 22, 53, 80, 443, 65535];
const VIDS: [u16; 5] = [0, 1, 10, 100, 4095];
const TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const IP_PROTOS: [u8; 9] = [0, 1, 2, 6, 17, 44, 58, 103, 132];
const ETHER_PROTOS: [u16; 12] =
    [0x0800, 0x86dd, 0x0806, 0x8035, 0x8100, 0x88a8, 0x9100, 0x8137, 0x809b, 0x80f3, 0x42, 0xfe];
const PROTO_NAMES: [ProtoName; 14] = [
    ProtoName::Ip,
    ProtoName::Ip6,
    ProtoName::Arp,
    ProtoName::Rarp,
    ProtoName::Tcp,
    ProtoName::Udp,
    ProtoName::Sctp,
    ProtoName::Icmp,
    ProtoName::Icmp6,
    ProtoName::Igmp,
    ProtoName::Pim,
    ProtoName::Vrrp,
    ProtoName::Ah,
    ProtoName::Esp,
];
const TRANSPORTS: [ProtoName; 7] = [
    ProtoName::Tcp,
    ProtoName::Udp,
    ProtoName::Sctp,
    ProtoName::Icmp,
    ProtoName::Igmp,
    ProtoName::Pim,
    ProtoName::Vrrp,
];

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    select(V4.to_vec()).prop_map(Ipv4Addr::from)
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    select(V6.to_vec()).prop_map(Ipv6Addr::from)
}

fn dir() -> impl Strategy<Value = Dir> {
    select(vec![Dir::Src, Dir::Dst, Dir::SrcOrDst, Dir::SrcAndDst])
}

/// `addr` with the bits past `len` cleared (libpcap rejects a net with
/// host bits set).
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// An address and a prefix length of the same family.
fn prefix() -> impl Strategy<Value = (IpAddr, u8)> {
    prop_oneof![
        (v4(), select(vec![0u8, 8, 15, 16, 24, 31, 32])).prop_map(|(a, l)| (network(a.into(), l), l)),
        (v6(), select(vec![0u8, 32, 48, 64, 127, 128])).prop_map(|(a, l)| (network(a.into(), l), l)),
    ]
}

fn host_proto(addr: &IpAddr) -> BoxedStrategy<HostProto> {
    match addr {
        IpAddr::V4(_) => select(vec![HostProto::Any, HostProto::Ip, HostProto::Arp, HostProto::Rarp]).boxed(),
        IpAddr::V6(_) => select(vec![HostProto::Any, HostProto::Ip6]).boxed(),
    }
}

fn port_proto() -> impl Strategy<Value = PortProto> {
    select(vec![PortProto::Any, PortProto::Tcp, PortProto::Udp, PortProto::Sctp])
}

fn prim() -> impl Strategy<Value = Prim> {
    let host = prop_oneof![v4().prop_map(IpAddr::from), v6().prop_map(IpAddr::from)]
        .prop_flat_map(|addr| (host_proto(&addr), dir(), Just(addr)))
        .prop_map(|(proto, dir, addr)| Prim::Host { proto, dir, addr });
    let net = prefix()
        .prop_flat_map(|(addr, len)| (host_proto(&addr), dir(), Just(addr), Just(len)))
        .prop_map(|(proto, dir, addr, prefix_len)| Prim::Net { proto, dir, addr, prefix_len });
    let port = (port_proto(), dir(), select(PORTS.to_vec())).prop_map(|(proto, dir, port)| Prim::Port {
        proto,
        dir,
        port,
    });
    let range = (port_proto(), dir(), select(PORTS.to_vec()), select(PORTS.to_vec()))
        .prop_map(|(proto, dir, a, b)| Prim::PortRange { proto, dir, lo: a.min(b), hi: a.max(b) });
    let ip_proto = (select(vec![ProtoBase::Any, ProtoBase::Ip, ProtoBase::Ip6]), select(IP_PROTOS.to_vec()))
        .prop_map(|(base, proto)| Prim::IpProto { base, proto });
    let len = select(vec![0u32, 14, 20, 54, 60, 61, 100, 1500]);
    prop_oneof![
        4 => select(PROTO_NAMES.to_vec()).prop_map(Prim::Proto),
        3 => prop::option::of(select(VIDS.to_vec())).prop_map(Prim::Vlan),
        2 => (dir(), select(MACS.to_vec())).prop_map(|(dir, mac)| Prim::EtherHost { dir, mac }),
        1 => Just(Prim::EtherBroadcast),
        1 => Just(Prim::EtherMulticast),
        2 => select(ETHER_PROTOS.to_vec()).prop_map(Prim::EtherProto),
        3 => host,
        2 => net,
        3 => port,
        2 => range,
        2 => ip_proto,
        1 => len.clone().prop_map(Prim::Greater),
        1 => len.prop_map(Prim::Less),
    ]
}

fn load_base() -> impl Strategy<Value = LoadBase> {
    prop_oneof![
        Just(LoadBase::Link),
        select(vec![ProtoName::Ip, ProtoName::Arp, ProtoName::Rarp]).prop_map(LoadBase::Net),
        Just(LoadBase::Ip6),
        select(TRANSPORTS.to_vec()).prop_map(LoadBase::Transport),
        Just(LoadBase::Icmp6),
    ]
}

fn num() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..64, 1 => select(vec![0xff, 0x1fff, 0xffff, 0x8000_0000, u32::MAX]), 1 => any::<u32>()]
}

fn load(index: impl Strategy<Value = Arith>) -> impl Strategy<Value = Arith> {
    (load_base(), index, select(vec![1u8, 2, 4])).prop_map(|(base, index, size)| Arith::Load {
        base,
        index: Box::new(index),
        size,
        span: Span::default(),
    })
}

fn arith() -> impl Strategy<Value = Arith> {
    let leaf = prop_oneof![
        3 => num().prop_map(Arith::Num),
        1 => Just(Arith::Len),
        4 => load((0u32..72).prop_map(Arith::Num)),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        let op = select(vec![
            ArithOp::Add,
            ArithOp::Sub,
            ArithOp::Mul,
            ArithOp::Div,
            ArithOp::Mod,
            ArithOp::And,
            ArithOp::Or,
            ArithOp::Xor,
            ArithOp::Shl,
            ArithOp::Shr,
        ]);
        prop_oneof![
            4 => (op, inner.clone(), inner.clone()).prop_map(|(op, a, b)| {
                // Literal operands the compiler rejects (as libpcap does)
                // would only be thrown away.
                let b = match (op, b) {
                    (ArithOp::Shl | ArithOp::Shr, Arith::Num(n)) => Arith::Num(n & 31),
                    (ArithOp::Div | ArithOp::Mod, Arith::Num(0)) => Arith::Num(1),
                    (_, b) => b,
                };
                Arith::Binary(op, Box::new(a), Box::new(b))
            }),
            1 => inner.clone().prop_map(|a| Arith::Neg(Box::new(a))),
            1 => load(inner),
        ]
    })
}

fn rel() -> impl Strategy<Value = Rel> {
    let op = select(vec![RelOp::Eq, RelOp::Ne, RelOp::Lt, RelOp::Le, RelOp::Gt, RelOp::Ge]);
    (op, arith(), arith()).prop_map(|(op, lhs, rhs)| Rel { op, lhs, rhs })
}

/// A primitive or a relation.
fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        4 => prim().prop_map(|p| Expr::Prim(p, Span::default())),
        1 => rel().prop_map(|r| Expr::Rel(r, Span::default())),
    ]
}

/// A leaf, maybe after a `vlan` (whose shift it then sees) or negated.
fn simple_expr() -> impl Strategy<Value = Expr> {
    let vlan =
        prop::option::of(select(VIDS.to_vec())).prop_map(|v| Expr::Prim(Prim::Vlan(v), Span::default()));
    prop_oneof![
        3 => leaf(),
        1 => (vlan, leaf()).prop_map(|(v, e)| Expr::And(Box::new(v), Box::new(e))),
        1 => leaf().prop_map(|e| Expr::Not(Box::new(e))),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            2 => (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            2 => (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
            1 => inner.prop_map(|a| Expr::Not(Box::new(a))),
        ]
    })
}

/// The transport header: ports (or ICMP type and code) and TCP's flags.
#[derive(Debug, Clone)]
struct L4 {
    sport: u16,
    dport: u16,
    flags: u8,
}

fn l4() -> impl Strategy<Value = L4> {
    (select(PORTS.to_vec()), select(PORTS.to_vec()), any::<u8>()).prop_map(|(sport, dport, flags)| L4 {
        sport,
        dport,
        flags,
    })
}

impl L4 {
    /// 20 bytes: a TCP header, whose first 8 bytes also read as UDP, SCTP
    /// ports or ICMP type / code (taken from the ports' high bytes).
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&self.sport.to_be_bytes());
        b[2..4].copy_from_slice(&self.dport.to_be_bytes());
        b[12] = 0x50;
        b[13] = self.flags;
        b
    }
}

#[derive(Debug, Clone)]
enum Net {
    V4 {
        ihl: u8,
        frag: u16,
        proto: u8,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4: L4,
    },
    /// `ext`: the extension headers before `proto` (0, 43, 44, 60).
    V6 {
        ext: Vec<u8>,
        proto: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        l4: L4,
    },
    Arp {
        rarp: bool,
        op: u16,
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
    },
    /// An 802.3 frame: length field, then an LLC header.
    Llc {
        dsap: u8,
        ssap: u8,
    },
    Other {
        ethertype: u16,
        payload: Vec<u8>,
    },
}

fn net() -> impl Strategy<Value = Net> {
    let ip4 = (
        select(vec![5u8, 5, 5, 6, 15, 4]),
        select(vec![0u16, 0, 0x2000, 0x4000, 0x0010, 0x2010, 0x1fff]),
        select(IP_PROTOS.to_vec()),
        v4(),
        v4(),
        l4(),
    )
        .prop_map(|(ihl, frag, proto, src, dst, l4)| Net::V4 { ihl, frag, proto, src, dst, l4 });
    let ip6 = (vec(select(vec![0u8, 43, 44, 60]), 0..3), select(IP_PROTOS.to_vec()), v6(), v6(), l4())
        .prop_map(|(ext, proto, src, dst, l4)| Net::V6 { ext, proto, src, dst, l4 });
    let arp =
        (any::<bool>(), 1u16..5, v4(), v4()).prop_map(|(rarp, op, spa, tpa)| Net::Arp { rarp, op, spa, tpa });
    let llc =
        (select(vec![0x42u8, 0xfe, 0xe0, 0xaa, 0xf0, 0x06, 0xff]), select(vec![0x42u8, 0xfe, 0xaa, 0x03]))
            .prop_map(|(dsap, ssap)| Net::Llc { dsap, ssap });
    let other = (
        select(vec![0x88ccu16, 0x8137, 0x809b, 0x80f3, 0x0800, 0x86dd, 0x05dc, 0x05dd]),
        vec(any::<u8>(), 0..48),
    )
        .prop_map(|(ethertype, payload)| Net::Other { ethertype, payload });
    prop_oneof![5 => ip4, 4 => ip6, 1 => arp, 1 => llc, 1 => other]
}

impl Net {
    fn ethertype(&self, payload_len: usize) -> u16 {
        match self {
            Net::V4 { .. } => 0x0800,
            Net::V6 { .. } => 0x86dd,
            Net::Arp { rarp, .. } => {
                if *rarp {
                    0x8035
                } else {
                    0x0806
                }
            }
            Net::Llc { .. } => u16::try_from(payload_len).unwrap_or(1500).min(1500),
            Net::Other { ethertype, .. } => *ethertype,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Net::V4 { ihl, frag, proto, src, dst, l4 } => {
                let mut b = vec![0x40 | ihl, 0, 0, 0, 0, 1];
                b.extend_from_slice(&frag.to_be_bytes());
                b.extend_from_slice(&[64, *proto, 0, 0]);
                b.extend_from_slice(&src.octets());
                b.extend_from_slice(&dst.octets());
                // Options: NOPs up to the IHL (or none when it is below 5).
                b.resize(usize::from(*ihl).max(5) * 4, 1);
                let total = u16::try_from(b.len() + 20).unwrap();
                b[2..4].copy_from_slice(&total.to_be_bytes());
                b.extend(l4.bytes());
                b
            }
            Net::V6 { ext, proto, src, dst, l4 } => {
                let first = ext.first().copied().unwrap_or(*proto);
                let mut b = vec![0x60, 0, 0, 0, 0, 0, first, 64];
                b.extend_from_slice(&src.octets());
                b.extend_from_slice(&dst.octets());
                for (i, &h) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).copied().unwrap_or(*proto);
                    // 8 bytes each; a fragment header's offset and M flag
                    // vary with the position.
                    let frag: u16 = if h == 44 { [1, 0x0010, 0][i % 3] } else { 0 };
                    b.extend_from_slice(&[next, 0]);
                    b.extend_from_slice(&frag.to_be_bytes());
                    b.extend_from_slice(&[0, 0, 0, 7]);
                }
                let payload = u16::try_from(b.len() - 40 + 20).unwrap();
                b[4..6].copy_from_slice(&payload.to_be_bytes());
                b.extend(l4.bytes());
                b
            }
            Net::Arp { op, spa, tpa, .. } => {
                let mut b = vec![0, 1, 8, 0, 6, 4];
                b.extend_from_slice(&op.to_be_bytes());
                b.extend_from_slice(&MACS[0]);
                b.extend_from_slice(&spa.octets());
                b.extend_from_slice(&[0; 6]);
                b.extend_from_slice(&tpa.octets());
                b
            }
            Net::Llc { dsap, ssap } => {
                let mut b = vec![*dsap, *ssap, 3];
                if *dsap == 0xaa {
                    b.extend_from_slice(&[0, 0, 0, 0x81, 0x37]);
                }
                b.resize(40, 0);
                b
            }
            Net::Other { payload, .. } => payload.clone(),
        }
    }
}

/// A frame: MACs, tags, a network layer; maybe cut short.
#[derive(Debug, Clone)]
struct FrameSpec {
    dst: [u8; 6],
    src: [u8; 6],
    tags: Vec<(u16, u16)>,
    net: Net,
    padding: usize,
    /// Keep only this fraction (per mille) of the bytes.
    cut: Option<u16>,
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        select(MACS.to_vec()),
        select(MACS.to_vec()),
        vec((select(TPIDS.to_vec()), select(VIDS.to_vec()), 0u16..16), 0..4),
        net(),
        0usize..32,
        prop::option::weighted(0.25, 0u16..1000),
    )
        .prop_map(|(dst, src, tags, net, padding, cut)| FrameSpec {
            dst,
            src,
            // PCP and DEI bits above the VID.
            tags: tags.into_iter().map(|(tpid, vid, prio)| (tpid, vid | prio << 12)).collect(),
            net,
            padding,
            cut,
        })
}

impl FrameSpec {
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.dst);
        b.extend_from_slice(&self.src);
        for (tpid, tci) in &self.tags {
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&tci.to_be_bytes());
        }
        let mut payload = self.net.bytes();
        payload.extend((0..self.padding).map(|i| i as u8));
        b.extend_from_slice(&self.net.ethertype(payload.len()).to_be_bytes());
        b.extend(payload);
        if let Some(cut) = self.cut {
            b.truncate(b.len() * usize::from(cut) / 1000);
        }
        b
    }
}

fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![9 => frame_spec().prop_map(|f| f.bytes()), 1 => vec(any::<u8>(), 0..96)]
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the compiled `selection` and the reference on every frame.
///
/// Where the unoptimized program runs to its end, the compiled one must
/// say the same. Where it stops at a load past the end of the frame, the
/// compiled one may reject too, or accept if it dropped the loads (as
/// libpcap's optimizer does, e.g. `not (ip and arp)` loads nothing): then
/// the answer must not depend on the missing bytes (checked on the frame
/// continued by the other frames' bytes).
fn agree(selection: &Selection, frames: &[(Vec<u8>, u32)]) -> Result<(), TestCaseError> {
    let program = match compile_selection(selection) {
        Ok(Some(p)) => p,
        Ok(None) => return Err(TestCaseError::fail("a non-empty selection compiled to no program")),
        // Over a datapath limit, for instance: nothing to compare.
        Err(e) => return Err(TestCaseError::reject(e.message)),
    };
    // libpcap refuses a division by a 0 its optimizer folds (`len / (1 /
    // 2)`); the compiler may accept it, and then nothing says what it means.
    if selection.expr.as_ref().is_some_and(divides_by_known_zero) {
        return Err(TestCaseError::reject("a division by a folded 0"));
    }
    let fillers: Vec<&[u8]> = frames.iter().map(|(f, _)| f.as_slice()).collect();
    for (frame, direction) in frames {
        let seen = Frame::new(frame, *direction);
        let ours = program.matches(&seen);
        // The native code says the same, or leaves to the interpreter a
        // frame whose bytes it does not have (`decide` checks that).
        if let Some(native) = super::native::emulate::decide(&program.insns, &seen, frame.len()) {
            prop_assert_eq!(native, ours, "native code disagrees on frame {}", hex(frame));
        }
        let rules = selection.rules.as_ref().is_none_or(|r| {
            reference::rules_accept(r, &mirror_common::parse::parse_fields(&super::Bytes(frame), *direction))
        });
        let outcome = match &selection.expr {
            Some(e) if rules => reference::expr_outcome(e, frame),
            _ => Outcome::Ran(rules),
        };
        let ok = match (outcome, &selection.expr) {
            (Outcome::Ran(want), _) => ours == want,
            // A program of one instruction decides without reading the
            // packet: the optimizer proved the verdict the same for every
            // packet, and dropped a test that could fault on this one (as
            // libpcap's does, e.g. `x % len` inside an unsatisfiable `and`,
            // on an empty frame).
            (Outcome::Stopped { .. }, Some(_)) if program.insns.len() == 1 => true,
            (Outcome::Stopped { .. }, Some(e)) => {
                !ours || reference::answer_without_missing_bytes(e, frame, &fillers) == Some(true)
            }
            (Outcome::Stopped { .. }, None) => unreachable!("rules alone never stop"),
        };
        prop_assert!(
            ok,
            "compiled program says {} where the reference says {:?}, on frame {} (direction {}); \
             {} instructions:\n{:#?}",
            ours,
            outcome,
            hex(frame),
            direction,
            program.insns.len(),
            program.insns
        );
    }
    Ok(())
}

fn rule_set() -> impl Strategy<Value = RuleSet> {
    let flags = (any::<u8>(), any::<u8>()).prop_map(|(value, mask)| TcpFlags { value: value & mask, mask });
    let ports = (select(PORTS.to_vec()), select(PORTS.to_vec())).prop_map(|(a, b)| (a.min(b), a.max(b)));
    let addrs = prop_oneof![
        // Both of one family.
        (prefix(), prefix()).prop_map(|(s, d)| if s.0.is_ipv4() == d.0.is_ipv4() {
            (Some(s), Some(d))
        } else {
            (Some(s), None)
        }),
        prefix().prop_map(|p| (Some(p), None)),
        prefix().prop_map(|p| (None, Some(p))),
        Just((None, None)),
    ];
    let rule = (
        any::<bool>(),
        prop::option::of(0u32..2),
        prop::option::of(select(vec![1u8, 6, 17, 58, 132])),
        addrs,
        prop::option::of(ports.clone()),
        prop::option::of(ports),
        prop::option::weighted(0.3, flags),
    );
    // Only rule sets `validate` accepts, as the CLI and the config would.
    (vec(rule, 0..6), any::<bool>()).prop_filter_map("invalid rule set", |(rules, accept_by_default)| {
        let action = |accept: bool| if accept { Action::Accept } else { Action::Reject };
        validate(
            rules
                .into_iter()
                .enumerate()
                .map(|(i, (accept, direction, protocol, (source, destination), sp, dp, tcp_flags))| Rule {
                    number: 10 * (u32::try_from(i).unwrap() + 1),
                    action: action(accept),
                    direction,
                    protocol,
                    source,
                    destination,
                    source_ports: sp,
                    destination_ports: dp,
                    tcp_flags,
                })
                .collect(),
            action(accept_by_default),
        )
        .ok()
    })
}

fn frames() -> impl Strategy<Value = Vec<(Vec<u8>, u32)>> {
    vec((frame(), 0u32..2), FRAMES)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn compiled_primitives_agree_with_the_reference(e in simple_expr(), frames in vec((frame(), 0u32..2), 48..64)) {
        agree(&Selection { rules: None, expr: Some(e) }, &frames)?;
    }

    #[test]
    fn compiled_expressions_agree_with_the_reference(e in expr(), frames in frames()) {
        agree(&Selection { rules: None, expr: Some(e) }, &frames)?;
    }

    #[test]
    fn compiled_rules_agree_with_the_reference(
        rules in rule_set(),
        e in prop::option::weighted(0.3, expr()),
        frames in frames(),
    ) {
        agree(&Selection { rules: Some(rules), expr: e }, &frames)?;
    }
}

/// Whether an arithmetic of `e` divides by a 0 the optimizer folds.
fn divides_by_known_zero(e: &Expr) -> bool {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => divides_by_known_zero(a) || divides_by_known_zero(b),
        Expr::Not(a) => divides_by_known_zero(a),
        Expr::Prim(..) => false,
        Expr::Rel(r, _) => {
            reference::divides_by_known_zero(&r.lhs) || reference::divides_by_known_zero(&r.rhs)
        }
    }
}

/// `e` with every span zeroed: a parsed tree compares with a built one.
fn strip(e: &Expr) -> Expr {
    fn arith(a: &Arith) -> Arith {
        match a {
            Arith::Num(_) | Arith::Len => a.clone(),
            Arith::Load { base, index, size, .. } => {
                Arith::Load { base: *base, index: Box::new(arith(index)), size: *size, span: Span::default() }
            }
            Arith::Binary(op, l, r) => Arith::Binary(*op, Box::new(arith(l)), Box::new(arith(r))),
            Arith::Neg(x) => Arith::Neg(Box::new(arith(x))),
        }
    }
    match e {
        Expr::And(a, b) => Expr::And(Box::new(strip(a)), Box::new(strip(b))),
        Expr::Or(a, b) => Expr::Or(Box::new(strip(a)), Box::new(strip(b))),
        Expr::Not(a) => Expr::Not(Box::new(strip(a))),
        Expr::Prim(p, _) => Expr::Prim(p.clone(), Span::default()),
        Expr::Rel(r, _) => {
            Expr::Rel(Rel { op: r.op, lhs: arith(&r.lhs), rhs: arith(&r.rhs) }, Span::default())
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The canonical text (what `list` shows and the maps keep) means the
    /// same tree.
    #[test]
    fn printed_expressions_parse_back(e in expr()) {
        let text = e.to_string();
        let back = match super::parse_expr(&text) {
            Ok(back) => back,
            // Constant operands libpcap refuses (`len << (0 + 32)`): the
            // generator does not avoid them all.
            Err(err) if ["shift by", "division by zero", "modulus by zero"].iter().any(|m| err.message.contains(m)) => {
                return Err(TestCaseError::reject(err.message));
            }
            Err(err) => return Err(TestCaseError::fail(format!("{text:?} does not parse: {}", err.render(&text)))),
        };
        prop_assert_eq!(strip(&back), strip(&e), "{}", text);
    }

    #[test]
    fn printed_rules_parse_back(rules in rule_set()) {
        for rule in &rules.rules {
            let text = rule.to_string();
            let back = super::rules::parse_rule(&text)
                .map_err(|err| TestCaseError::fail(format!("{text:?} does not parse: {}", err.render(&text))))?;
            prop_assert_eq!(&back, rule, "{}", text);
        }
    }
}

/// The frame generator makes what the properties need: frames that parse
/// to every kind of packet, and frames cut short.
#[test]
fn frames_cover_the_primitives() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let strategy = frame_spec();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        let f = spec.bytes();
        let fields = mirror_common::parse::parse_fields(&super::Bytes(&f), 0);
        let get = |i: u32| fields[i as usize];
        use mirror_common::field;
        seen.insert(format!("ethertype {:#x}", get(field::ETHERTYPE)));
        seen.insert(format!("tags {}", get(field::VLAN_COUNT)));
        if get(field::HAS_L4) != 0 {
            seen.insert(format!("l4 {}", get(field::L4_PROTO)));
        }
        seen.insert(format!("fragment {}", get(field::FRAGMENT)));
        if spec.cut.is_some() {
            seen.insert("cut".into());
        }
    }
    for want in [
        "ethertype 0x800",
        "ethertype 0x86dd",
        "ethertype 0x806",
        "ethertype 0x8035",
        "tags 0",
        "tags 1",
        "tags 2",
        "l4 6",
        "l4 17",
        "l4 132",
        "l4 1",
        "l4 58",
        "fragment 1",
        "fragment 2",
        "cut",
    ] {
        assert!(seen.contains(want), "no frame with {want}: {seen:?}");
    }
}
