//! Tokens of pcap-filter expressions, cut as libpcap 1.10.3's scanner cuts
//! them: at each position the longest match wins and a tie goes to the
//! rule listed first (keywords, operators, `$`ARCnet, MAC, number, dotted
//! IPv4, IPv6, malformed MAC, named constants, name, `\`escaped name).
//! That is why `len-1` is one name, `1-1024` is the name `portrange`
//! needs, `0a0b0c0d0e0f` is a MAC and `tcp-syn` is the number 2.
//! Keywords are case-sensitive, as in libpcap.
//!
//! Lexical errors do not stop the scan: they become [`Tok::Bad`] tokens,
//! so the parser reports whatever comes first in the text.
use std::net::Ipv6Addr;

use super::ast::Span;

/// Keywords mirror-agent implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kw {
    Dst,
    Src,
    /// `ether`, and its libpcap synonyms `link`, `ppp`, `slip`, `fddi`,
    /// `tr`, `wlan` (all the link layer on an Ethernet capture).
    Link,
    Arp,
    Rarp,
    Ip,
    Ip6,
    Sctp,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Igmp,
    Igrp,
    Pim,
    Vrrp,
    Carp,
    Ah,
    Esp,
    Host,
    Net,
    Mask,
    Port,
    Portrange,
    Proto,
    Less,
    Greater,
    Broadcast,
    Multicast,
    And,
    Or,
    /// `not` and `!`.
    Not,
    /// `len` and `length`.
    Len,
    Vlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Colon,
    LBracket,
    RBracket,
    Lt,
    Gt,
    LParen,
    RParen,
    Amp,
    Pipe,
    Caret,
    /// `=` and `==`.
    Eq,
    Ge,
    Le,
    Ne,
    Shl,
    Shr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Kw(Kw),
    /// A libpcap keyword mirror-agent does not implement (`gateway`,
    /// `mpls`, `atalk`, ...).
    Unsupported,
    /// A number, or a named constant (`tcpflags`, `tcp-syn`, `icmp-echo`).
    Num(u32),
    /// Two to four dot-separated numbers (libpcap's HID): `10.1` is
    /// `10.1.0.0/16`. Validated where used, as libpcap does.
    Hid,
    Hid6(Ipv6Addr),
    Eid([u8; 6]),
    /// An ARCnet address (`$1f`).
    Aid,
    /// A name (host, port, protocol names, typos): `foo`, `1-1024`, or
    /// `\tcp` (see [`Token::name`]).
    Id,
    Op(Op),
    /// Something libpcap's scanner rejects; the message says what.
    Bad(String),
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    pub tok: Tok,
    pub span: Span,
    /// The token as written.
    pub text: &'a str,
}

impl Token<'_> {
    /// A name's text without the escaping backslash.
    pub fn name(&self) -> &str {
        self.text.strip_prefix('\\').unwrap_or(self.text)
    }
}

/// Keywords of libpcap 1.10.3's scanner, in its order. `None`: a keyword
/// mirror-agent does not implement.
const KEYWORDS: &[(&str, Option<Kw>)] = &[
    ("dst", Some(Kw::Dst)),
    ("src", Some(Kw::Src)),
    ("link", Some(Kw::Link)),
    ("ether", Some(Kw::Link)),
    ("ppp", Some(Kw::Link)),
    ("slip", Some(Kw::Link)),
    ("fddi", Some(Kw::Link)),
    ("tr", Some(Kw::Link)),
    ("wlan", Some(Kw::Link)),
    ("arp", Some(Kw::Arp)),
    ("rarp", Some(Kw::Rarp)),
    ("ip", Some(Kw::Ip)),
    ("sctp", Some(Kw::Sctp)),
    ("tcp", Some(Kw::Tcp)),
    ("udp", Some(Kw::Udp)),
    ("icmp", Some(Kw::Icmp)),
    ("igmp", Some(Kw::Igmp)),
    ("igrp", Some(Kw::Igrp)),
    ("pim", Some(Kw::Pim)),
    ("vrrp", Some(Kw::Vrrp)),
    ("carp", Some(Kw::Carp)),
    ("radio", None),
    ("ip6", Some(Kw::Ip6)),
    ("icmp6", Some(Kw::Icmp6)),
    ("ah", Some(Kw::Ah)),
    ("esp", Some(Kw::Esp)),
    ("atalk", None),
    ("aarp", None),
    ("decnet", None),
    ("lat", None),
    ("sca", None),
    ("moprc", None),
    ("mopdl", None),
    ("iso", None),
    ("esis", None),
    ("es-is", None),
    ("isis", None),
    ("is-is", None),
    ("l1", None),
    ("l2", None),
    ("iih", None),
    ("lsp", None),
    ("snp", None),
    ("csnp", None),
    ("psnp", None),
    ("clnp", None),
    ("stp", None),
    ("ipx", None),
    ("netbeui", None),
    ("host", Some(Kw::Host)),
    ("net", Some(Kw::Net)),
    ("mask", Some(Kw::Mask)),
    ("port", Some(Kw::Port)),
    ("portrange", Some(Kw::Portrange)),
    ("proto", Some(Kw::Proto)),
    ("protochain", None),
    ("gateway", None),
    ("type", None),
    ("subtype", None),
    ("direction", None),
    ("dir", None),
    ("address1", None),
    ("addr1", None),
    ("address2", None),
    ("addr2", None),
    ("address3", None),
    ("addr3", None),
    ("address4", None),
    ("addr4", None),
    ("ra", None),
    ("ta", None),
    ("less", Some(Kw::Less)),
    ("greater", Some(Kw::Greater)),
    ("byte", None),
    ("broadcast", Some(Kw::Broadcast)),
    ("multicast", Some(Kw::Multicast)),
    ("and", Some(Kw::And)),
    ("&&", Some(Kw::And)),
    ("or", Some(Kw::Or)),
    ("||", Some(Kw::Or)),
    ("not", Some(Kw::Not)),
    ("len", Some(Kw::Len)),
    ("length", Some(Kw::Len)),
    ("inbound", None),
    ("outbound", None),
    ("ifindex", None),
    ("vlan", Some(Kw::Vlan)),
    ("mpls", None),
    ("pppoed", None),
    ("pppoes", None),
    ("geneve", None),
    ("lane", None),
    ("llc", None),
    ("metac", None),
    ("bcc", None),
    ("oam", None),
    ("oamf4", None),
    ("oamf4ec", None),
    ("oamf4sc", None),
    ("sc", None),
    ("ilmic", None),
    ("vpi", None),
    ("vci", None),
    ("connectmsg", None),
    ("metaconnect", None),
    ("on", None),
    ("ifname", None),
    ("rset", None),
    ("ruleset", None),
    ("rnr", None),
    ("rulenum", None),
    ("srnr", None),
    ("subrulenum", None),
    ("reason", None),
    ("action", None),
    ("fisu", None),
    ("lssu", None),
    ("lsu", None),
    ("msu", None),
    ("hfisu", None),
    ("hlssu", None),
    ("hmsu", None),
    ("sio", None),
    ("opc", None),
    ("dpc", None),
    ("sls", None),
    ("hsio", None),
    ("hopc", None),
    ("hdpc", None),
    ("hsls", None),
];

/// Named constants of libpcap 1.10.3's scanner (numbers in disguise).
pub const CONSTANTS: &[(&str, u32)] = &[
    ("icmptype", 0),
    ("icmpcode", 1),
    ("icmp-echoreply", 0),
    ("icmp-unreach", 3),
    ("icmp-sourcequench", 4),
    ("icmp-redirect", 5),
    ("icmp-echo", 8),
    ("icmp-routeradvert", 9),
    ("icmp-routersolicit", 10),
    ("icmp-timxceed", 11),
    ("icmp-paramprob", 12),
    ("icmp-tstamp", 13),
    ("icmp-tstampreply", 14),
    ("icmp-ireq", 15),
    ("icmp-ireqreply", 16),
    ("icmp-maskreq", 17),
    ("icmp-maskreply", 18),
    ("icmp6type", 0),
    ("icmp6code", 1),
    ("icmp6-destinationunreach", 1),
    ("icmp6-packettoobig", 2),
    ("icmp6-timeexceeded", 3),
    ("icmp6-parameterproblem", 4),
    ("icmp6-echo", 128),
    ("icmp6-echoreply", 129),
    ("icmp6-multicastlistenerquery", 130),
    ("icmp6-multicastlistenerreportv1", 131),
    ("icmp6-multicastlistenerdone", 132),
    ("icmp6-routersolicit", 133),
    ("icmp6-routeradvert", 134),
    ("icmp6-neighborsolicit", 135),
    ("icmp6-neighboradvert", 136),
    ("icmp6-redirect", 137),
    ("icmp6-routerrenum", 138),
    ("icmp6-nodeinformationquery", 139),
    ("icmp6-nodeinformationresponse", 140),
    ("icmp6-ineighbordiscoverysolicit", 141),
    ("icmp6-ineighbordiscoveryadvert", 142),
    ("icmp6-multicastlistenerreportv2", 143),
    ("icmp6-homeagentdiscoveryrequest", 144),
    ("icmp6-homeagentdiscoveryreply", 145),
    ("icmp6-mobileprefixsolicit", 146),
    ("icmp6-mobileprefixadvert", 147),
    ("icmp6-certpathsolicit", 148),
    ("icmp6-certpathadvert", 149),
    ("icmp6-multicastrouteradvert", 151),
    ("icmp6-multicastroutersolicit", 152),
    ("icmp6-multicastrouterterm", 153),
    ("tcpflags", 13),
    ("tcp-fin", 0x01),
    ("tcp-syn", 0x02),
    ("tcp-rst", 0x04),
    ("tcp-push", 0x08),
    ("tcp-ack", 0x10),
    ("tcp-urg", 0x20),
    ("tcp-ece", 0x40),
    ("tcp-cwr", 0x80),
];

/// Is `word` a keyword of libpcap's scanner (implemented or not)?
pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|(w, _)| *w == word)
}

/// Splits `text` into tokens, ending with [`Tok::End`].
pub fn tokenize(text: &str) -> Vec<Token<'_>> {
    let s = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if matches!(s[i], b' ' | b'\r' | b'\n' | b'\t') {
            i += 1;
            continue;
        }
        let (len, tok) = longest(text, i);
        let end = i + len;
        out.push(Token { tok, span: Span::new(i, end), text: &text[i..end] });
        i = end;
    }
    out.push(Token { tok: Tok::End, span: Span::new(s.len(), s.len()), text: "" });
    out
}

/// Rules after the keywords, in the scanner's order (the tie-breaker).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    Keyword,
    Op,
    Aid,
    Mac,
    Num,
    Hid,
    V6,
    BadMac,
    Constant,
    Id,
    Escape,
}

/// The token at `i` (not whitespace): its length and kind.
fn longest(text: &str, i: usize) -> (usize, Tok) {
    let s = &text.as_bytes()[i..];
    let mut best: Option<(usize, Rule)> = None;
    let mut offer = |len: usize, rule: Rule| {
        if len > 0 && best.is_none_or(|(l, r)| len > l || (len == l && rule < r)) {
            best = Some((len, rule));
        }
    };
    let mut keyword = None;
    for (w, k) in KEYWORDS {
        if s.starts_with(w.as_bytes()) && keyword.is_none_or(|(l, _)| w.len() > l) {
            keyword = Some((w.len(), *k));
        }
    }
    if let Some((l, _)) = keyword {
        offer(l, Rule::Keyword);
    }
    offer(op_len(s), Rule::Op);
    if s[0] == b'$' {
        offer(hex_run(&s[1..], 2).map_or(0, |n| n + 1), Rule::Aid);
    }
    offer(mac_len(s), Rule::Mac);
    offer(num_len(s), Rule::Num);
    offer(hid_len(s), Rule::Hid);
    offer(v6_len(s), Rule::V6);
    offer(bad_mac_len(s), Rule::BadMac);
    let mut constant = None;
    for (w, v) in CONSTANTS {
        if s.starts_with(w.as_bytes()) && constant.is_none_or(|(l, _)| w.len() > l) {
            constant = Some((w.len(), *v));
        }
    }
    if let Some((l, _)) = constant {
        offer(l, Rule::Constant);
    }
    offer(id_len(s), Rule::Id);
    if s[0] == b'\\' {
        let n = s[1..].iter().take_while(|b| !matches!(b, b' ' | b'!' | b'(' | b')' | b'\n' | b'\t')).count();
        if n > 0 {
            offer(n + 1, Rule::Escape);
        }
    }
    let Some((len, rule)) = best else {
        // No rule matches: one character (a whole UTF-8 one, so spans stay
        // on character boundaries).
        let c = text[i..].chars().next().unwrap_or('\u{fffd}');
        let what = if c == '"' || c == '\'' {
            format!("unexpected quote `{c}`: the filter is one expression, without quotes inside")
        } else {
            format!("unexpected character `{}`", c.escape_debug())
        };
        return (c.len_utf8(), Tok::Bad(what));
    };
    let word = &text[i..i + len];
    let tok = match rule {
        Rule::Keyword => match keyword.and_then(|(_, k)| k) {
            Some(k) => Tok::Kw(k),
            None => Tok::Unsupported,
        },
        Rule::Op => op_tok(word),
        Rule::Aid => Tok::Aid,
        Rule::Mac => Tok::Eid(parse_mac(word)),
        Rule::Num => match parse_num(word) {
            Ok(v) => Tok::Num(v),
            Err(m) => Tok::Bad(m),
        },
        Rule::Hid => Tok::Hid,
        Rule::V6 => match word.parse::<Ipv6Addr>() {
            Ok(a) => Tok::Hid6(a),
            Err(_) => Tok::Bad(format!("`{word}` is not a valid IPv6 address")),
        },
        Rule::BadMac if word.contains("::") => Tok::Bad(format!("`{word}` is not a valid IPv6 address")),
        Rule::BadMac => Tok::Bad(format!("`{word}` is not a valid MAC address")),
        Rule::Constant => Tok::Num(constant.map_or(0, |(_, v)| v)),
        Rule::Id | Rule::Escape => Tok::Id,
    };
    (len, tok)
}

fn op_len(s: &[u8]) -> usize {
    if s.len() >= 2 && [b">=", b"<=", b"!=", b"==", b"<<", b">>"].iter().any(|o| s.starts_with(*o)) {
        return 2;
    }
    usize::from(b"+-*/%:[]!<>()&|^=".contains(&s[0]))
}

fn op_tok(word: &str) -> Tok {
    Tok::Op(match word {
        "+" => Op::Plus,
        "-" => Op::Minus,
        "*" => Op::Star,
        "/" => Op::Slash,
        "%" => Op::Percent,
        ":" => Op::Colon,
        "[" => Op::LBracket,
        "]" => Op::RBracket,
        "<" => Op::Lt,
        ">" => Op::Gt,
        "(" => Op::LParen,
        ")" => Op::RParen,
        "&" => Op::Amp,
        "|" => Op::Pipe,
        "^" => Op::Caret,
        "=" | "==" => Op::Eq,
        ">=" => Op::Ge,
        "<=" => Op::Le,
        "!=" => Op::Ne,
        "<<" => Op::Shl,
        ">>" => Op::Shr,
        // `!` is `not`.
        _ => return Tok::Kw(Kw::Not),
    })
}

/// Hex digits at the start of `s`, if 1..=`max` of them are there and
/// `max` is not exceeded (a longer run fails: a separator must follow).
fn hex_run(s: &[u8], max: usize) -> Option<usize> {
    let n = s.iter().take(max + 1).take_while(|b| b.is_ascii_hexdigit()).count();
    (1..=max).contains(&n).then_some(n)
}

/// Like [`hex_run`], for the last group of a pattern: takes at most `max`.
fn hex_tail(s: &[u8], max: usize) -> Option<usize> {
    let n = s.iter().take(max).take_while(|b| b.is_ascii_hexdigit()).count();
    (n > 0).then_some(n)
}

/// `xx:xx:xx:xx:xx:xx`, `-` or `.` separated (1 or 2 digits a group),
/// `xxxx.xxxx.xxxx` or `xxxxxxxxxxxx`.
fn mac_len(s: &[u8]) -> usize {
    let mut best = 0;
    for sep in [b':', b'-', b'.'] {
        let mut at = 0;
        let mut ok = true;
        for g in 0..6 {
            let n = if g == 5 { hex_tail(&s[at..], 2) } else { hex_run(&s[at..], 2) };
            let Some(n) = n else {
                ok = false;
                break;
            };
            at += n;
            if g < 5 {
                if s.get(at) != Some(&sep) {
                    ok = false;
                    break;
                }
                at += 1;
            }
        }
        if ok {
            best = best.max(at);
        }
    }
    let quad = |at: usize| s.len() >= at + 4 && s[at..at + 4].iter().all(u8::is_ascii_hexdigit);
    if quad(0) && s.get(4) == Some(&b'.') && quad(5) && s.get(9) == Some(&b'.') && quad(10) {
        best = best.max(14);
    }
    if s.len() >= 12 && s[..12].iter().all(u8::is_ascii_hexdigit) {
        best = best.max(12);
    }
    best
}

/// Reads a MAC as libpcap does: skip a separator, take one hex digit and
/// a second if there is one.
fn parse_mac(word: &str) -> [u8; 6] {
    let b = word.as_bytes();
    let mut mac = [0u8; 6];
    let (mut i, mut k) = (0, 0);
    while i < b.len() && k < 6 {
        if matches!(b[i], b':' | b'.' | b'-') {
            i += 1;
        }
        let mut d = hex_val(b[i]);
        i += 1;
        if i < b.len() && b[i].is_ascii_hexdigit() {
            d = d << 4 | hex_val(b[i]);
            i += 1;
        }
        mac[k] = d;
        k += 1;
    }
    mac
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// libpcap's `N`: decimal (octal with a leading 0) or `0x` hex digits.
fn num_len(s: &[u8]) -> usize {
    let dec = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let hex = if s.len() > 2 && s[0] == b'0' && matches!(s[1], b'x' | b'X') {
        let n = s[2..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if n > 0 { n + 2 } else { 0 }
    } else {
        0
    };
    dec.max(hex)
}

/// A number as libpcap's `stou` reads it.
fn parse_num(word: &str) -> Result<u32, String> {
    let overflow = || format!("number {word} does not fit in 32 bits");
    let (digits, radix) = if let Some(h) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        (h, 16)
    } else if word.len() > 1 && word.starts_with('0') {
        if word.bytes().any(|b| b == b'8' || b == b'9') {
            return Err(format!("number {word} has a leading 0 (octal) but a digit 8 or 9"));
        }
        (&word[1..], 8)
    } else {
        (word, 10)
    };
    digits
        .bytes()
        .try_fold(0u32, |v, b| v.checked_mul(radix)?.checked_add(u32::from(hex_val(b))))
        .ok_or_else(overflow)
}

/// libpcap's HID: `N.N`, `N.N.N` or `N.N.N.N`.
fn hid_len(s: &[u8]) -> usize {
    let mut at = 0;
    let mut best = 0;
    for part in 0..4 {
        let n = num_len(&s[at..]);
        if n == 0 {
            break;
        }
        at += n;
        if part >= 1 {
            best = at;
        }
        if s.get(at) != Some(&b'.') {
            break;
        }
        at += 1;
    }
    best
}

/// `{B}:+({B}:+)+`: what libpcap reports as a bogus Ethernet address.
fn bad_mac_len(s: &[u8]) -> usize {
    let mut at = 0;
    let mut groups = 0;
    while let Some(n) = hex_run(&s[at..], 2) {
        let colons = s[at + n..].iter().take_while(|b| **b == b':').count();
        if colons == 0 {
            break;
        }
        at += n + colons;
        groups += 1;
    }
    if groups >= 2 { at } else { 0 }
}

/// `[A-Za-z0-9]([-_.A-Za-z0-9]*[.A-Za-z0-9])?`
fn id_len(s: &[u8]) -> usize {
    if !s[0].is_ascii_alphanumeric() {
        return 0;
    }
    let run = s.iter().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')).count();
    s[..run].iter().rposition(|b| b.is_ascii_alphanumeric() || *b == b'.').map_or(1, |p| p + 1)
}

/// The longest of libpcap's IPv6 patterns at the start of `s`: eight
/// groups; or up to seven around one `::`; or six groups then a dotted
/// IPv4 address; or up to five around one `::`, then the IPv4 address.
/// Each group is 1 to 4 hex digits.
fn v6_len(s: &[u8]) -> usize {
    if !(s[0].is_ascii_hexdigit() || s[0] == b':') {
        return 0;
    }
    // (groups before `::`, groups after `::` or None without `::`, IPv4 tail)
    let mut best =
        [(8, None, false), (6, None, true)].iter().filter_map(|&(b, a, v4)| match_v6(s, b, a, v4)).max();
    for total in 0..=7 {
        for before in 0..=total {
            for v4 in [false, true] {
                if !v4 || total <= 5 {
                    best = best.max(match_v6(s, before, Some(total - before), v4));
                }
            }
        }
    }
    best.unwrap_or(0)
}

fn match_v6(s: &[u8], before: usize, after: Option<usize>, v4: bool) -> Option<usize> {
    let mut at = 0;
    // Groups joined by `:`; `last`: nothing follows the final group.
    let groups = |at: &mut usize, count: usize, last: bool| -> Option<()> {
        for g in 0..count {
            if g > 0 {
                (s.get(*at) == Some(&b':')).then_some(())?;
                *at += 1;
            }
            let n = if last && g + 1 == count { hex_tail(&s[*at..], 4) } else { hex_run(&s[*at..], 4) }?;
            *at += n;
        }
        Some(())
    };
    match after {
        None => {
            groups(&mut at, before, !v4)?;
        }
        Some(after) => {
            groups(&mut at, before, false)?;
            s.get(at..at + 2).filter(|d| d == b"::")?;
            at += 2;
            groups(&mut at, after, !v4)?;
        }
    }
    if v4 {
        let needs_colon = after.is_none_or(|a| a > 0);
        if needs_colon {
            (s.get(at) == Some(&b':')).then_some(())?;
            at += 1;
        }
        for part in 0..4 {
            if part > 0 {
                (s.get(at) == Some(&b'.')).then_some(())?;
                at += 1;
            }
            let n = num_len(&s[at..]);
            (n > 0).then_some(())?;
            at += n;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(Tok, &str)> {
        tokenize(text).into_iter().map(|t| (t.tok, t.text)).collect()
    }

    #[test]
    fn longest_match_and_rule_order_decide_like_libpcap() {
        let t = kinds("len-1 1-1024 tcp-syn tcpx 0a0b0c0d0e0f 1.2.3.4 10.1 ::1 2001:db8::/32");
        assert_eq!(t[0], (Tok::Id, "len-1"));
        assert_eq!(t[1], (Tok::Id, "1-1024"));
        assert_eq!(t[2], (Tok::Num(2), "tcp-syn"));
        assert_eq!(t[3], (Tok::Id, "tcpx"));
        assert_eq!(t[4], (Tok::Eid([0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]), "0a0b0c0d0e0f"));
        assert_eq!(t[5], (Tok::Hid, "1.2.3.4"));
        assert_eq!(t[6], (Tok::Hid, "10.1"));
        assert_eq!(t[7], (Tok::Hid6(Ipv6Addr::LOCALHOST), "::1"));
        assert_eq!(t[8].1, "2001:db8::");
        assert_eq!(t[9], (Tok::Op(Op::Slash), "/"));
        assert_eq!(t[10], (Tok::Num(32), "32"));
    }

    #[test]
    fn mac_forms() {
        let mac = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06];
        for text in ["1:2:3:4:5:6", "01-02-03-04-05-06", "1.2.3.4.5.6", "0102.0304.0506", "010203040506"] {
            assert_eq!(kinds(text)[0], (Tok::Eid(mac), text), "{text}");
        }
        assert!(matches!(kinds("1:2:")[0].0, Tok::Bad(_)));
    }

    #[test]
    fn numbers_follow_stou() {
        assert_eq!(
            kinds("0x1F 010 4294967295")[..3].iter().map(|t| t.0.clone()).collect::<Vec<_>>(),
            [Tok::Num(31), Tok::Num(8), Tok::Num(u32::MAX)]
        );
        assert!(matches!(kinds("4294967296")[0].0, Tok::Bad(_)));
        assert!(matches!(kinds("08")[0].0, Tok::Bad(_)));
    }

    #[test]
    fn operators_and_escapes() {
        let t = kinds("a>=b && !c || \\tcp==d");
        assert_eq!(t[1].0, Tok::Op(Op::Ge));
        assert_eq!(t[3].0, Tok::Kw(Kw::And));
        assert_eq!(t[4].0, Tok::Kw(Kw::Not));
        assert_eq!(t[6].0, Tok::Kw(Kw::Or));
        assert_eq!(t[7], (Tok::Id, "\\tcp==d"));
    }

    #[test]
    fn odd_bytes_never_split_characters() {
        let t = tokenize("tcp é");
        assert_eq!(t[1].span, Span::new(4, 6));
        assert!(matches!(t[1].tok, Tok::Bad(_)));
    }
}
