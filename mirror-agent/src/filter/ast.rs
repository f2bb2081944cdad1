//! What a pcap-filter expression and a rule set say, once parsed.
//!
//! The parser resolves libpcap's qualifier inheritance (`host A or B` is
//! `host A or host B`, `port 80 or 443` is `port 80 or port 443`), so every
//! primitive here is fully qualified. Order matters and is kept: libpcap's
//! `vlan` shifts the offsets of every primitive *after* it in the text, and
//! the compiler walks the tree left to right as libpcap generates code.
use std::net::IpAddr;

/// Byte offsets `[start, end)` into the expression text; errors show
/// `start + 1` as the column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// 1-based column of the start.
    pub fn column(&self) -> usize {
        self.start + 1
    }
}

/// A boolean expression. In pcap-filter, `not` binds tightest and `and` /
/// `or` have the *same* precedence, left-associative: `a or b and c` is
/// `(a or b) and c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Prim(Prim, Span),
    /// `arith relop arith`.
    Rel(Rel, Span),
}

/// `src`, `dst`, `src or dst` (the default), `src and dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dir {
    Src,
    Dst,
    #[default]
    SrcOrDst,
    SrcAndDst,
}

/// Protocol names that stand alone as a primitive (libpcap's
/// `gen_proto_abbrev`) or qualify another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoName {
    Ether,
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
    Pim,
    Vrrp,
    Ah,
    Esp,
}

/// The protocol qualifier of `host` and `net` (`ip host`, `arp net`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostProto {
    /// No qualifier: for IPv4, libpcap tests IP, ARP and RARP addresses;
    /// for IPv6, IPv6 only.
    #[default]
    Any,
    Ip,
    Ip6,
    Arp,
    Rarp,
}

/// The protocol qualifier of `port` and `portrange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortProto {
    /// TCP, UDP or SCTP.
    #[default]
    Any,
    Tcp,
    Udp,
    Sctp,
}

/// Which header `proto N` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtoBase {
    /// `proto N`: IPv4 or IPv6.
    #[default]
    Any,
    Ip,
    Ip6,
}

/// A primitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prim {
    /// `ip`, `tcp`, `icmp6`, ... standing alone.
    Proto(ProtoName),
    /// `vlan` / `vlan ID`: tests the tag, then shifts later offsets by 4.
    Vlan(Option<u16>),
    /// `ether host|src|dst MAC`.
    EtherHost { dir: Dir, mac: [u8; 6] },
    /// `ether broadcast`, `broadcast` (link layer only).
    EtherBroadcast,
    /// `ether multicast` (link layer only).
    EtherMulticast,
    /// `ether proto N` (and `ether proto \ip` etc.).
    EtherProto(u16),
    /// `[ip|ip6|arp|rarp] [src|dst] host ADDR`.
    Host { proto: HostProto, dir: Dir, addr: IpAddr },
    /// `[ip|ip6|arp|rarp] [src|dst] net ADDR/LEN` (or `net A mask M`, or
    /// a bare `net A` with the classful length libpcap infers).
    Net { proto: HostProto, dir: Dir, addr: IpAddr, prefix_len: u8 },
    /// `[tcp|udp|sctp] [src|dst] port N`.
    Port { proto: PortProto, dir: Dir, port: u16 },
    /// `[tcp|udp|sctp] [src|dst] portrange A-B` (`lo <= hi` once parsed).
    PortRange { proto: PortProto, dir: Dir, lo: u16, hi: u16 },
    /// `[ip|ip6] proto N` (and `ip proto \tcp` etc.).
    IpProto { base: ProtoBase, proto: u8 },
    /// `greater N`: frame length >= N.
    Greater(u32),
    /// `less N`: frame length <= N.
    Less(u32),
}

/// Where a `proto[index:size]` load is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBase {
    /// `ether[...]`, `link[...]`: the start of the frame.
    Link,
    /// `ip[...]`, `arp[...]`, `rarp[...]`: the network header, after
    /// libpcap's check of the EtherType.
    Net(ProtoName),
    /// `ip6[...]`: the IPv6 header (only checks the EtherType).
    Ip6,
    /// `tcp[...]`, `udp[...]`, `icmp[...]`, `sctp[...]`, `igmp[...]`, ...:
    /// the transport header *after an IPv4 header* (libpcap's index assumes
    /// IPv4 and checks for an unfragmented or first fragment).
    Transport(ProtoName),
    /// `icmp6[...]`: the header 40 bytes after the IPv6 header's start.
    Icmp6,
}

/// Arithmetic of relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arith {
    Num(u32),
    /// `len`: the frame's length.
    Len,
    /// `proto[index]`, `proto[index:size]` (size 1, 2 or 4).
    Load {
        base: LoadBase,
        index: Box<Arith>,
        size: u8,
        span: Span,
    },
    Binary(ArithOp, Box<Arith>, Box<Arith>),
    /// Unary minus.
    Neg(Box<Arith>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rel {
    pub op: RelOp,
    pub lhs: Arith,
    pub rhs: Arith,
}

/// The structured form, AWS Traffic Mirroring style: the first rule (in
/// rule number order) that matches decides; none matching, the default
/// action does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSet {
    /// Sorted by `number`, numbers unique.
    pub rules: Vec<Rule>,
    /// What a packet no rule matches gets (AWS: reject).
    pub default_action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    Accept,
    #[default]
    Reject,
}

/// One rule. Every criterion present must hold; an absent one matches all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1..=32766, unique in the set.
    pub number: u32,
    pub action: Action,
    /// Only packets seen in this direction (`mirror_common::direction`).
    pub direction: Option<u32>,
    /// IP protocol number after IPv6 extension headers (6 tcp, 17 udp, ...).
    pub protocol: Option<u8>,
    /// Source and destination prefixes; an IPv4 prefix matches only IPv4
    /// packets, an IPv6 one only IPv6 packets. Both present: same family.
    pub source: Option<(IpAddr, u8)>,
    pub destination: Option<(IpAddr, u8)>,
    /// Inclusive port ranges (TCP, UDP, SCTP; a later fragment has none).
    pub source_ports: Option<(u16, u16)>,
    pub destination_ports: Option<(u16, u16)>,
    /// TCP flags: `(flags & mask) == value`, e.g. `S/SA` = SYN without ACK.
    pub tcp_flags: Option<TcpFlags>,
}

impl Rule {
    /// Rule `number` with no criterion: it matches every packet.
    pub fn new(number: u32, action: Action) -> Self {
        Self {
            number,
            action,
            direction: None,
            protocol: None,
            source: None,
            destination: None,
            source_ports: None,
            destination_ports: None,
            tcp_flags: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags {
    pub value: u8,
    pub mask: u8,
}

/// A session's whole selection expression: rules, then the expression.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub rules: Option<RuleSet>,
    pub expr: Option<Expr>,
}
