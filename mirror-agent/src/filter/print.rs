//! Canonical text of expressions and rules: every primitive fully
//! qualified (nothing inherited), parentheses where the grammar needs
//! them, primitives in their original order (`vlan` depends on it). The
//! text parses back to the same tree, spans aside ([`Expr::without_spans`]).
use std::fmt::{self, Display, Formatter};

use super::ast::{
    Action, Arith, ArithOp, Dir, Expr, HostProto, LoadBase, PortProto, Prim, ProtoBase, ProtoName, Rel,
    RelOp, Rule, RuleSet, Span, TcpFlags,
};

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::And(a, b) | Self::Or(a, b) => {
                let op = if matches!(self, Self::And(..)) { "and" } else { "or" };
                // Same precedence, left-associative: a left operand of the
                // same kind needs no parentheses; for clarity, one of the
                // other kind gets them. A right operand always does.
                let same =
                    matches!((self, &**a), (Self::And(..), Self::And(..)) | (Self::Or(..), Self::Or(..)));
                if is_junction(a) && !same {
                    write!(f, "({a})")?
                } else {
                    write!(f, "{a}")?
                }
                write!(f, " {op} ")?;
                if is_junction(b) { write!(f, "({b})") } else { write!(f, "{b}") }
            }
            Self::Not(e) if is_junction(e) => write!(f, "not ({e})"),
            Self::Not(e) => write!(f, "not {e}"),
            Self::Prim(p, _) => write!(f, "{p}"),
            Self::Rel(r, _) => write!(f, "{r}"),
        }
    }
}

fn is_junction(e: &Expr) -> bool {
    matches!(e, Expr::And(..) | Expr::Or(..))
}

fn proto_name(p: ProtoName) -> &'static str {
    match p {
        ProtoName::Ether => "ether",
        ProtoName::Ip => "ip",
        ProtoName::Ip6 => "ip6",
        ProtoName::Arp => "arp",
        ProtoName::Rarp => "rarp",
        ProtoName::Tcp => "tcp",
        ProtoName::Udp => "udp",
        ProtoName::Sctp => "sctp",
        ProtoName::Icmp => "icmp",
        ProtoName::Icmp6 => "icmp6",
        ProtoName::Igmp => "igmp",
        ProtoName::Pim => "pim",
        ProtoName::Vrrp => "vrrp",
        ProtoName::Ah => "ah",
        ProtoName::Esp => "esp",
    }
}

/// `src `, `dst `, `src and dst `, or nothing for the default.
fn dir_prefix(dir: Dir) -> &'static str {
    match dir {
        Dir::Src => "src ",
        Dir::Dst => "dst ",
        Dir::SrcOrDst => "",
        Dir::SrcAndDst => "src and dst ",
    }
}

fn host_proto(p: HostProto) -> &'static str {
    match p {
        HostProto::Any => "",
        HostProto::Ip => "ip ",
        HostProto::Ip6 => "ip6 ",
        HostProto::Arp => "arp ",
        HostProto::Rarp => "rarp ",
    }
}

fn port_proto(p: PortProto) -> &'static str {
    match p {
        PortProto::Any => "",
        PortProto::Tcp => "tcp ",
        PortProto::Udp => "udp ",
        PortProto::Sctp => "sctp ",
    }
}

impl Display for Prim {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::Proto(p) => f.write_str(proto_name(*p)),
            Self::Vlan(None) => f.write_str("vlan"),
            Self::Vlan(Some(id)) => write!(f, "vlan {id}"),
            Self::EtherHost { dir, mac } => {
                let m = mac;
                let dir = if *dir == Dir::SrcOrDst { "host " } else { dir_prefix(*dir) };
                write!(
                    f,
                    "ether {dir}{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            }
            Self::EtherBroadcast => f.write_str("ether broadcast"),
            Self::EtherMulticast => f.write_str("ether multicast"),
            Self::EtherProto(t) => write!(f, "ether proto 0x{t:04x}"),
            Self::Host { proto, dir, addr } => {
                write!(f, "{}{}host {addr}", host_proto(*proto), dir_prefix(*dir))
            }
            Self::Net { proto, dir, addr, prefix_len } => {
                write!(f, "{}{}net {addr}/{prefix_len}", host_proto(*proto), dir_prefix(*dir))
            }
            Self::Port { proto, dir, port } => {
                write!(f, "{}{}port {port}", port_proto(*proto), dir_prefix(*dir))
            }
            Self::PortRange { proto, dir, lo, hi } => {
                write!(f, "{}{}portrange {lo}-{hi}", port_proto(*proto), dir_prefix(*dir))
            }
            Self::IpProto { base, proto } => match base {
                ProtoBase::Any => write!(f, "proto {proto}"),
                ProtoBase::Ip => write!(f, "ip proto {proto}"),
                ProtoBase::Ip6 => write!(f, "ip6 proto {proto}"),
            },
            Self::Greater(n) => write!(f, "greater {n}"),
            Self::Less(n) => write!(f, "less {n}"),
        }
    }
}

impl Display for Rel {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            RelOp::Eq => "=",
            RelOp::Ne => "!=",
            RelOp::Lt => "<",
            RelOp::Le => "<=",
            RelOp::Gt => ">",
            RelOp::Ge => ">=",
        };
        write!(f, "{} {op} {}", self.lhs, self.rhs)
    }
}

impl Display for Arith {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // Operands that are operations get parentheses: libpcap's `%` and
        // `^` have no precedence, so nothing else would be safe.
        struct Operand<'a>(&'a Arith);
        impl Display for Operand<'_> {
            fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Arith::Binary(..) | Arith::Neg(_) => write!(f, "({})", self.0),
                    other => write!(f, "{other}"),
                }
            }
        }
        match self {
            Self::Num(n) => write!(f, "{n}"),
            Self::Len => f.write_str("len"),
            Self::Load { base, index, size, .. } => {
                let base = match base {
                    LoadBase::Link => "ether",
                    LoadBase::Net(p) | LoadBase::Transport(p) => proto_name(*p),
                    LoadBase::Ip6 => "ip6",
                    LoadBase::Icmp6 => "icmp6",
                };
                if *size == 1 { write!(f, "{base}[{index}]") } else { write!(f, "{base}[{index}:{size}]") }
            }
            Self::Binary(op, a, b) => {
                let op = match op {
                    ArithOp::Add => "+",
                    ArithOp::Sub => "-",
                    ArithOp::Mul => "*",
                    ArithOp::Div => "/",
                    ArithOp::Mod => "%",
                    ArithOp::And => "&",
                    ArithOp::Or => "|",
                    ArithOp::Xor => "^",
                    ArithOp::Shl => "<<",
                    ArithOp::Shr => ">>",
                };
                write!(f, "{} {op} {}", Operand(a), Operand(b))
            }
            Self::Neg(a) => write!(f, "-{}", Operand(a)),
        }
    }
}

impl Expr {
    /// The same tree with every span zeroed: what to compare after a
    /// print and a parse.
    pub fn without_spans(&self) -> Self {
        match self {
            Self::And(a, b) => Self::And(a.without_spans().into(), b.without_spans().into()),
            Self::Or(a, b) => Self::Or(a.without_spans().into(), b.without_spans().into()),
            Self::Not(e) => Self::Not(e.without_spans().into()),
            Self::Prim(p, _) => Self::Prim(p.clone(), Span::default()),
            Self::Rel(r, _) => Self::Rel(
                Rel { op: r.op, lhs: r.lhs.without_spans(), rhs: r.rhs.without_spans() },
                Span::default(),
            ),
        }
    }
}

impl Arith {
    fn without_spans(&self) -> Self {
        match self {
            Self::Load { base, index, size, .. } => Self::Load {
                base: *base,
                index: index.without_spans().into(),
                size: *size,
                span: Span::default(),
            },
            Self::Binary(op, a, b) => Self::Binary(*op, a.without_spans().into(), b.without_spans().into()),
            Self::Neg(a) => Self::Neg(a.without_spans().into()),
            other => other.clone(),
        }
    }
}

impl Display for Action {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
        })
    }
}

/// TCP flag letters, lowest bit first (FIN .. CWR).
pub const FLAG_LETTERS: [char; 8] = ['F', 'S', 'R', 'P', 'A', 'U', 'E', 'C'];

struct Flags(u8);

impl Display for Flags {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (bit, c) in FLAG_LETTERS.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl Display for TcpFlags {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.value == self.mask {
            write!(f, "{}", Flags(self.value))
        } else {
            write!(f, "{}/{}", Flags(self.value), Flags(self.mask))
        }
    }
}

/// The rule syntax's name of an IP protocol, if it has one.
pub fn protocol_name(p: u8) -> Option<&'static str> {
    Some(match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmp6",
        132 => "sctp",
        _ => return None,
    })
}

fn ports(f: &mut Formatter<'_>, key: &str, range: Option<(u16, u16)>) -> fmt::Result {
    match range {
        None => Ok(()),
        Some((lo, hi)) if lo == hi => write!(f, " {key} {lo}"),
        Some((lo, hi)) => write!(f, " {key} {lo}-{hi}"),
    }
}

/// `NUMBER ACTION [PROTOCOL] [src P] [dst P] [sport R] [dport R] [flags F]
/// [dir D]`, the syntax [`super::rules::parse_rule`] reads.
impl Display for Rule {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number, self.action)?;
        match self.protocol {
            None => {}
            Some(p) => match protocol_name(p) {
                Some(name) => write!(f, " {name}")?,
                None => write!(f, " proto {p}")?,
            },
        }
        if let Some((addr, len)) = self.source {
            write!(f, " src {addr}/{len}")?;
        }
        if let Some((addr, len)) = self.destination {
            write!(f, " dst {addr}/{len}")?;
        }
        ports(f, "sport", self.source_ports)?;
        ports(f, "dport", self.destination_ports)?;
        if let Some(flags) = self.tcp_flags {
            write!(f, " flags {flags}")?;
        }
        match self.direction {
            None => Ok(()),
            Some(mirror_common::direction::INGRESS) => write!(f, " dir ingress"),
            Some(mirror_common::direction::EGRESS) => write!(f, " dir egress"),
            Some(d) => write!(f, " dir {d}"),
        }
    }
}

/// One rule a line, then `default ACTION`.
impl Display for RuleSet {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for rule in &self.rules {
            writeln!(f, "{rule}")?;
        }
        write!(f, "default {}", self.default_action)
    }
}
