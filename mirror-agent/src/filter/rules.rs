//! The rule syntax of `--rule` (AWS Traffic Mirroring style), one rule a
//! text:
//!
//! ```text
//! NUMBER ACTION [FIELD...]      fields in any order, each at most once:
//!   tcp | udp | sctp | icmp | icmp6 | any | proto NAME|0-255
//!   src PREFIX   dst PREFIX     198.18.0.0/16, 2001:db8::/32, or an address
//!   sport RANGE  dport RANGE    443 or 1024-65535
//!   flags VALUE[/MASK]          letters F S R P A U E C: S/SA = SYN set,
//!                               ACK clear; S alone = S/S; /SA = neither
//!   dir ingress | egress
//! ```
//!
//! e.g. `100 accept tcp src 198.18.0.0/16 dport 443 flags S/SA dir ingress`.
//!
//! Decisions: a port criterion matches TCP, UDP and SCTP packets when no
//! protocol is given (other protocols have no ports); `flags` implies TCP,
//! and [`validate`] makes that explicit by setting the protocol to 6, so
//! the compiled rule and its printed form both say `tcp`. A reversed port
//! range is an error (unlike libpcap's `portrange`, which swaps it).
use std::net::IpAddr;

use super::{
    FilterError,
    ast::{Action, Rule, RuleSet, Span, TcpFlags},
    print::FLAG_LETTERS,
};

/// Rule numbers, as in AWS.
pub const RULE_NUMBERS: std::ops::RangeInclusive<u32> = 1..=32766;

const TCP: u8 = 6;

/// A field of a rule, for messages and for finding it in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Number,
    Protocol,
    Source,
    Destination,
    SourcePorts,
    DestinationPorts,
    Flags,
    Direction,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Protocol => "protocol",
            Self::Source => "src",
            Self::Destination => "dst",
            Self::SourcePorts => "sport",
            Self::DestinationPorts => "dport",
            Self::Flags => "flags",
            Self::Direction => "dir",
        }
    }
}

/// `accept` or `reject`.
pub fn parse_action(text: &str) -> Result<Action, FilterError> {
    match text {
        "accept" => Ok(Action::Accept),
        "reject" => Ok(Action::Reject),
        _ => Err(FilterError::at(
            Span::new(0, text.len()),
            format!("unknown action `{text}`: expected `accept` or `reject`"),
        )),
    }
}

/// Parses one rule; errors point at the column of the faulty word.
pub fn parse_rule(text: &str) -> Result<Rule, FilterError> {
    let words = split(text);
    let mut it = words.iter().copied();
    let end = Span::new(text.len(), text.len());
    let Some((number_word, number_span)) = it.next() else {
        return Err(FilterError::at(
            Span::new(0, text.len()),
            "the rule is empty: expected `NUMBER ACTION ...`",
        ));
    };
    let number = number_word
        .parse::<u32>()
        .ok()
        .filter(|_| number_word.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            FilterError::at(
                number_span,
                format!("a rule starts with its number (1..=32766), not `{number_word}`"),
            )
        })?;
    let Some((action_word, action_span)) = it.next() else {
        return Err(FilterError::at(end, "expected `accept` or `reject` after the rule number"));
    };
    let action = parse_action(action_word).map_err(|e| FilterError::at(action_span, e.message))?;
    let mut rule = Rule::new(number, action);
    let mut seen: Vec<(Field, Span)> = vec![(Field::Number, number_span)];
    while let Some((word, span)) = it.next() {
        let field = match word {
            "tcp" | "udp" | "sctp" | "icmp" | "icmp6" | "any" | "proto" => Field::Protocol,
            "src" => Field::Source,
            "dst" => Field::Destination,
            "sport" => Field::SourcePorts,
            "dport" => Field::DestinationPorts,
            "flags" => Field::Flags,
            "dir" => Field::Direction,
            _ => return Err(FilterError::at(span, unknown_field(word))),
        };
        if seen.iter().any(|(f, _)| *f == field) {
            return Err(FilterError::at(span, format!("the {} is given twice", describe(field))));
        }
        // The word that carries the value (the keyword itself for a bare
        // protocol name).
        let (value, vspan) = if matches!(word, "tcp" | "udp" | "sctp" | "icmp" | "icmp6" | "any") {
            (word, span)
        } else {
            it.next()
                .ok_or_else(|| FilterError::at(end, format!("`{word}` needs a value: {}", expects(field))))?
        };
        let bad = |m: String| FilterError::at(vspan, m);
        match field {
            Field::Protocol => rule.protocol = parse_protocol(value).map_err(bad)?,
            Field::Source => rule.source = Some(parse_prefix(value).map_err(bad)?),
            Field::Destination => rule.destination = Some(parse_prefix(value).map_err(bad)?),
            Field::SourcePorts => rule.source_ports = Some(parse_ports(value).map_err(bad)?),
            Field::DestinationPorts => rule.destination_ports = Some(parse_ports(value).map_err(bad)?),
            Field::Flags => rule.tcp_flags = Some(parse_flags(value).map_err(bad)?),
            Field::Direction => {
                rule.direction = Some(match value {
                    "ingress" => mirror_common::direction::INGRESS,
                    "egress" => mirror_common::direction::EGRESS,
                    _ => {
                        return Err(bad(format!(
                            "unknown direction `{value}`: expected `ingress` or `egress`"
                        )));
                    }
                });
            }
            Field::Number => {}
        }
        seen.push((field, vspan));
    }
    check(&rule).map_err(|(field, message)| {
        let span = seen.iter().find(|(f, _)| *f == field).map_or(number_span, |(_, s)| *s);
        FilterError::at(span, message)
    })?;
    Ok(rule)
}

/// Checks rules (from `--rule` or a config file) and orders them by
/// number. Errors name the rule and the field.
pub fn validate(mut rules: Vec<Rule>, default_action: Action) -> Result<RuleSet, FilterError> {
    for rule in &mut rules {
        check(rule).map_err(|(field, m)| {
            FilterError::whole(format!("rule {}: {}: {m}", rule.number, field.name()))
        })?;
        if rule.tcp_flags.is_some() {
            rule.protocol = Some(TCP);
        }
    }
    rules.sort_by_key(|r| r.number);
    if let Some(w) = rules.windows(2).find(|w| w[0].number == w[1].number) {
        return Err(FilterError::whole(format!(
            "two rules are numbered {}: rule numbers must be unique",
            w[0].number
        )));
    }
    Ok(RuleSet { rules, default_action })
}

/// What one rule must satisfy on its own.
fn check(rule: &Rule) -> Result<(), (Field, String)> {
    if !RULE_NUMBERS.contains(&rule.number) {
        return Err((Field::Number, format!("rule number {} is out of range (1..=32766)", rule.number)));
    }
    for (field, prefix) in [(Field::Source, rule.source), (Field::Destination, rule.destination)] {
        if let Some((addr, len)) = prefix {
            check_prefix(addr, len).map_err(|m| (field, m))?;
        }
    }
    if let (Some((s, _)), Some((d, _))) = (rule.source, rule.destination)
        && s.is_ipv4() != d.is_ipv4()
    {
        return Err((
            Field::Destination,
            format!("source {s} and destination {d} are not the same IP version"),
        ));
    }
    let proto = rule.protocol.map(|p| super::print::protocol_name(p).map_or(p.to_string(), str::to_owned));
    for (field, range) in
        [(Field::SourcePorts, rule.source_ports), (Field::DestinationPorts, rule.destination_ports)]
    {
        let Some((lo, hi)) = range else { continue };
        if lo > hi {
            return Err((field, format!("port range {lo}-{hi} is reversed: write {hi}-{lo}")));
        }
        if rule.protocol.is_some_and(|p| ![6, 17, 132].contains(&p)) {
            return Err((
                field,
                format!(
                    "ports need protocol tcp, udp or sctp (or none), not {}",
                    proto.clone().unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(flags) = rule.tcp_flags {
        if rule.protocol.is_some_and(|p| p != TCP) {
            return Err((
                Field::Flags,
                format!("flags need protocol tcp (or none), not {}", proto.unwrap_or_default()),
            ));
        }
        if flags.mask == 0 {
            return Err((Field::Flags, "the flags mask is empty".to_owned()));
        }
        if flags.value & !flags.mask != 0 {
            return Err((Field::Flags, format!("flags {flags}: the value has flags outside the mask")));
        }
    }
    if rule.direction.is_some_and(|d| d >= mirror_common::direction::COUNT) {
        return Err((Field::Direction, "unknown direction".to_owned()));
    }
    Ok(())
}

fn check_prefix(addr: IpAddr, len: u8) -> Result<(), String> {
    let (bits, width): (u128, u8) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    if len > width {
        return Err(format!("prefix length {len} is out of range (0..={width})"));
    }
    let host_bits = width - len;
    let host_mask = if host_bits == 0 { 0 } else { u128::MAX >> (128 - u32::from(host_bits)) };
    if bits & host_mask != 0 {
        let net = match addr {
            IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from((bits & !host_mask) as u32)),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(bits & !host_mask)),
        };
        return Err(format!("{addr}/{len} has host bits set (the network is {net}/{len})"));
    }
    Ok(())
}

/// Whitespace-separated words and their spans.
fn split(text: &str) -> Vec<(&str, Span)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((&text[s..i], Span::new(s, i)));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    out
}

fn describe(field: Field) -> &'static str {
    match field {
        Field::Number => "rule number",
        Field::Protocol => "protocol",
        Field::Source => "source (`src`)",
        Field::Destination => "destination (`dst`)",
        Field::SourcePorts => "source port (`sport`)",
        Field::DestinationPorts => "destination port (`dport`)",
        Field::Flags => "`flags` field",
        Field::Direction => "direction (`dir`)",
    }
}

fn expects(field: Field) -> &'static str {
    match field {
        Field::Protocol => "a protocol name or number (0..=255)",
        Field::Source | Field::Destination => "a prefix such as 198.18.0.0/16",
        Field::SourcePorts | Field::DestinationPorts => "a port or a range such as 1024-65535",
        Field::Flags => "TCP flags such as S/SA",
        Field::Direction => "`ingress` or `egress`",
        Field::Number => "a number",
    }
}

fn unknown_field(word: &str) -> String {
    const FIELDS: &[&str] = &[
        "tcp", "udp", "sctp", "icmp", "icmp6", "any", "proto", "src", "dst", "sport", "dport", "flags", "dir",
    ];
    let near = FIELDS.iter().find(|f| {
        let (a, b) = (word.as_bytes(), f.as_bytes());
        // One letter off, or two swapped.
        a.len() == b.len() && a.iter().zip(b).filter(|(x, y)| x != y).count() == 1
            || a.len() == b.len() && {
                let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
                diff.len() == 2
                    && diff[1] == diff[0] + 1
                    && a[diff[0]] == b[diff[1]]
                    && a[diff[1]] == b[diff[0]]
            }
            || a.len() + 1 == b.len() && (0..b.len()).any(|i| [&b[..i], &b[i + 1..]].concat() == a)
            || b.len() + 1 == a.len() && (0..a.len()).any(|i| [&a[..i], &a[i + 1..]].concat() == b)
    });
    match near {
        Some(f) => format!("unknown rule field `{word}` (did you mean `{f}`?)"),
        None => format!(
            "unknown rule field `{word}`: expected a protocol (tcp, udp, sctp, icmp, icmp6, any, proto N), \
             src, dst, sport, dport, flags or dir"
        ),
    }
}

fn parse_protocol(word: &str) -> Result<Option<u8>, String> {
    Ok(Some(match word {
        "any" => return Ok(None),
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmp6" => 58,
        _ => {
            if !word.bytes().all(|b| b.is_ascii_digit()) || word.is_empty() {
                return Err(format!(
                    "unknown protocol `{word}`: expected tcp, udp, sctp, icmp, icmp6, any or a number (0..=255)"
                ));
            }
            word.parse::<u8>().map_err(|_| format!("protocol {word} is out of range (0..=255)"))?
        }
    }))
}

fn parse_prefix(word: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match word.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (word, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!(
            "`{word}` is not a prefix: expected e.g. 198.18.0.0/16 or 2001:db8::/32 (names are not resolved)"
        )
    })?;
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => width,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|_| l.bytes().all(|b| b.is_ascii_digit()))
            .filter(|n| *n <= width)
            .ok_or_else(|| format!("prefix length `{l}` is out of range (0..={width})"))?,
    };
    check_prefix(addr, len)?;
    Ok((addr, len))
}

fn parse_ports(word: &str) -> Result<(u16, u16), String> {
    let port = |s: &str| -> Result<u16, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{word}` is not a port or port range: expected e.g. 443 or 1024-65535"));
        }
        s.parse::<u16>().map_err(|_| format!("port {s} is out of range (0..=65535)"))
    };
    let (lo, hi) = match word.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(word)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {lo}-{hi} is reversed: write {hi}-{lo}"));
    }
    Ok((lo, hi))
}

fn parse_flags(word: &str) -> Result<TcpFlags, String> {
    let letters = |s: &str| -> Result<u8, String> {
        s.chars().try_fold(0u8, |acc, c| {
            let bit = FLAG_LETTERS.iter().position(|l| *l == c).ok_or_else(|| {
                format!("unknown TCP flag `{c}` in `{word}`: expected letters of FSRPAUEC, as in S/SA")
            })?;
            Ok(acc | 1 << bit)
        })
    };
    let (value, mask) = match word.split_once('/') {
        Some((v, m)) => (letters(v)?, letters(m)?),
        None => {
            let v = letters(word)?;
            (v, v)
        }
    };
    if mask == 0 {
        return Err(format!("`{word}` has an empty mask: expected e.g. S/SA"));
    }
    if value & !mask != 0 {
        return Err(format!("`{word}`: the value has flags outside the mask"));
    }
    Ok(TcpFlags { value, mask })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::filter::ast::Action::{Accept, Reject};

    fn rule(number: u32, action: Action) -> Rule {
        Rule::new(number, action)
    }

    #[test]
    fn the_example_rule_and_any_field_order() {
        let text = "100 accept tcp src 198.18.0.0/16 dst 198.19.0.0/16 sport 1024-65535 dport 443 flags S/SA dir ingress";
        let r = parse_rule(text).unwrap();
        assert_eq!(
            r,
            Rule {
                direction: Some(mirror_common::direction::INGRESS),
                protocol: Some(6),
                source: Some((Ipv4Addr::new(198, 18, 0, 0).into(), 16)),
                destination: Some((Ipv4Addr::new(198, 19, 0, 0).into(), 16)),
                source_ports: Some((1024, 65535)),
                destination_ports: Some((443, 443)),
                tcp_flags: Some(TcpFlags { value: 0x02, mask: 0x12 }),
                ..rule(100, Accept)
            }
        );
        assert_eq!(r.to_string(), text);
        let shuffled = "100 accept dir ingress flags S/SA dport 443 sport 1024-65535 dst 198.19.0.0/16 \
                        src 198.18.0.0/16 tcp";
        assert_eq!(parse_rule(shuffled).unwrap(), r);
    }

    #[test]
    fn fields_and_their_printed_form() {
        for (text, printed) in [
            ("1 reject", "1 reject"),
            ("7 accept any", "7 accept"),
            ("7 accept proto 47", "7 accept proto 47"),
            ("7 accept proto 17", "7 accept udp"),
            ("7 accept icmp6 src 2001:db8::/32 dir egress", "7 accept icmp6 src 2001:db8::/32 dir egress"),
            ("7 accept src 198.18.0.1", "7 accept src 198.18.0.1/32"),
            ("7 accept dst ::1", "7 accept dst ::1/128"),
            ("7 accept sctp dport 2905", "7 accept sctp dport 2905"),
            ("7 accept flags S", "7 accept flags S"),
            ("7 accept flags /SA", "7 accept flags /SA"),
            ("7 accept flags FSRPAUEC/CEUAPRSF", "7 accept flags FSRPAUEC"),
            ("32766 reject udp sport 0-0", "32766 reject udp sport 0"),
        ] {
            let r = parse_rule(text).unwrap_or_else(|e| panic!("{text}: {}", e.render(text)));
            assert_eq!(r.to_string(), printed, "{text}");
            assert_eq!(parse_rule(printed).unwrap(), r, "{printed}");
        }
        let r = parse_rule("5 accept src 2001:db8::/48").unwrap();
        assert_eq!(r.source, Some((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).into(), 48)));
        assert_eq!(parse_action("accept").unwrap(), Accept);
        assert_eq!(
            parse_action("drop").unwrap_err().message,
            "unknown action `drop`: expected `accept` or `reject`"
        );
    }

    /// Each wrong rule, the column and the message it gets.
    const WRONG: &[(&str, usize, &str)] = &[
        ("", 1, "the rule is empty: expected `NUMBER ACTION ...`"),
        ("accept 100", 1, "a rule starts with its number (1..=32766), not `accept`"),
        ("0 accept", 1, "rule number 0 is out of range (1..=32766)"),
        ("32767 accept", 1, "rule number 32767 is out of range (1..=32766)"),
        ("100", 4, "expected `accept` or `reject` after the rule number"),
        ("100 allow", 5, "unknown action `allow`: expected `accept` or `reject`"),
        ("100 accept tpc", 12, "unknown rule field `tpc` (did you mean `tcp`?)"),
        (
            "100 accept host 1.2.3.4",
            12,
            "unknown rule field `host`: expected a protocol (tcp, udp, sctp, icmp, icmp6, any, proto N), src, dst, \
             sport, dport, flags or dir",
        ),
        ("100 accept tcp udp", 16, "the protocol is given twice"),
        ("100 accept src 1.2.3.0/24 src 1.2.4.0/24", 27, "the source (`src`) is given twice"),
        ("100 accept src", 15, "`src` needs a value: a prefix such as 198.18.0.0/16"),
        (
            "100 accept src example.com",
            16,
            "`example.com` is not a prefix: expected e.g. 198.18.0.0/16 or 2001:db8::/32 (names are not resolved)",
        ),
        (
            "100 accept src 198.18.0.1/16",
            16,
            "198.18.0.1/16 has host bits set (the network is 198.18.0.0/16)",
        ),
        ("100 accept dst 10.0.0.0/33", 16, "prefix length `33` is out of range (0..=32)"),
        (
            "100 accept src 10.0.0.0/8 dst 2001:db8::/32",
            31,
            "source 10.0.0.0 and destination 2001:db8:: are not the same IP version",
        ),
        ("100 accept proto 256", 18, "protocol 256 is out of range (0..=255)"),
        (
            "100 accept proto gre",
            18,
            "unknown protocol `gre`: expected tcp, udp, sctp, icmp, icmp6, any or a number (0..=255)",
        ),
        ("100 accept dport 70000", 18, "port 70000 is out of range (0..=65535)"),
        ("100 accept dport 2000-1000", 18, "port range 2000-1000 is reversed: write 1000-2000"),
        (
            "100 accept dport https",
            18,
            "`https` is not a port or port range: expected e.g. 443 or 1024-65535",
        ),
        ("100 accept icmp dport 80", 23, "ports need protocol tcp, udp or sctp (or none), not icmp"),
        ("100 accept udp flags S", 22, "flags need protocol tcp (or none), not udp"),
        (
            "100 accept flags X/SA",
            18,
            "unknown TCP flag `X` in `X/SA`: expected letters of FSRPAUEC, as in S/SA",
        ),
        ("100 accept flags S/A", 18, "`S/A`: the value has flags outside the mask"),
        ("100 accept flags S/", 18, "`S/` has an empty mask: expected e.g. S/SA"),
        ("100 accept dir both", 16, "unknown direction `both`: expected `ingress` or `egress`"),
    ];

    #[test]
    fn wrong_rules_get_their_message_and_column() {
        for (text, column, message) in WRONG {
            let e = parse_rule(text).expect_err(text);
            assert_eq!((e.span.map(|s| s.column()), e.message.as_str()), (Some(*column), *message), "{text}");
            let _ = e.render(text);
        }
        assert!(WRONG.len() >= 10);
    }

    #[test]
    fn validate_orders_checks_and_makes_flags_tcp() {
        let parse = |t: &str| parse_rule(t).unwrap();
        let set =
            validate(vec![parse("20 reject flags S"), parse("10 accept udp dport 53")], Accept).unwrap();
        assert_eq!(set.rules.iter().map(|r| r.number).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(set.rules[1].protocol, Some(6));
        assert_eq!(set.default_action, Accept);
        assert_eq!(set.to_string(), "10 accept udp dport 53\n20 reject tcp flags S\ndefault accept");
        for line in set.to_string().lines().filter(|l| !l.starts_with("default")) {
            assert!(set.rules.contains(&parse(line)));
        }

        let whole = |rules: Vec<Rule>| validate(rules, Reject).unwrap_err();
        let e = whole(vec![parse("10 accept"), parse("10 reject tcp")]);
        assert_eq!(
            (e.span, e.message.as_str()),
            (None, "two rules are numbered 10: rule numbers must be unique")
        );
        let mut bad = rule(5, Accept);
        bad.source = Some((Ipv4Addr::new(10, 0, 0, 1).into(), 8));
        assert_eq!(
            whole(vec![bad]).message,
            "rule 5: src: 10.0.0.1/8 has host bits set (the network is 10.0.0.0/8)"
        );
        let mut bad = rule(6, Accept);
        bad.protocol = Some(1);
        bad.source_ports = Some((1, 2));
        assert_eq!(
            whole(vec![bad]).message,
            "rule 6: sport: ports need protocol tcp, udp or sctp (or none), not icmp"
        );
        let mut bad = rule(7, Accept);
        bad.tcp_flags = Some(TcpFlags { value: 0, mask: 0 });
        assert_eq!(whole(vec![bad]).message, "rule 7: flags: the flags mask is empty");
        assert_eq!(
            whole(vec![rule(40000, Accept)]).message,
            "rule 40000: number: rule number 40000 is out of range (1..=32766)"
        );
        let mut bad = rule(8, Accept);
        bad.source = Some((Ipv4Addr::new(10, 0, 0, 0).into(), 8));
        bad.destination = Some((Ipv6Addr::LOCALHOST.into(), 128));
        assert_eq!(
            whole(vec![bad]).message,
            "rule 8: dst: source 10.0.0.0 and destination ::1 are not the same IP version"
        );
    }
}
