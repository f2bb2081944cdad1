//! The daemon's config file (YAML, read with `serde_yaml_ng`): the sessions
//! it keeps, and the policy they must stay within.
//!
//! Unknown keys are errors. Every check that can be made without looking at
//! the host runs while the file is parsed, so each error names the file,
//! the line and column, and the field (`sessions[0].sources[1].mac`). A file
//! with any error is rejected whole. Later features add fields to
//! [`SessionDef`]; existing keys are never renamed.
use std::{collections::BTreeSet, fmt, path::Path};

use serde::{Deserialize, Deserializer, de::Error as _};

use crate::{
    cli::commands::{Direction, parse_count},
    daemon::policy::Policy,
    dataplane::{
        selection::{SelectOptions, SelectSpec},
        store,
    },
    filter::{self, ast::Action, rules},
};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub sessions: Vec<SessionDef>,
    /// Absent: everything is allowed.
    #[serde(default)]
    pub policy: Option<Policy>,
}

/// One session, with `attach`'s semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDef {
    pub name: SessionName,
    pub sources: Sources,
    /// Interface the copies are sent out of, bound by name.
    pub dest: IfName,
    pub direction: Direction,
    pub snaplen: Snaplen,
    /// What the session selects, checked and compiled.
    pub select: SelectSpec,
}

/// The keys of a session, as written; [`SessionDef`] once checked together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessionDef {
    name: SessionName,
    sources: Sources,
    dest: IfName,
    #[serde(default)]
    direction: Direction,
    #[serde(default)]
    snaplen: Snaplen,
    /// `attach --filter`.
    #[serde(default)]
    filter: Option<FilterText>,
    /// `attach --rule`, as that text or as a mapping.
    #[serde(default)]
    rules: Vec<RuleDef>,
    #[serde(default)]
    default_action: Option<ActionDef>,
    #[serde(default)]
    sample: Option<Count>,
    #[serde(default)]
    sample_flow: Option<Count>,
    #[serde(default)]
    rate_limit: Option<Count>,
    #[serde(default)]
    rate_limit_bytes: Option<Count>,
    #[serde(default)]
    burst: Option<Count>,
    #[serde(default)]
    burst_bytes: Option<Count>,
    #[serde(default)]
    priority: Option<Count>,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    include_copies: bool,
}

impl<'de> Deserialize<'de> for SessionDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_container(d, false, |raw: RawSessionDef| {
            let options = SelectOptions {
                filter: raw.filter.map(|f| f.0),
                rules: raw.rules.into_iter().map(|r| r.0).collect(),
                default_action: raw.default_action.map(|a| a.0),
                sample: raw.sample.map(|c| c.0),
                sample_flow: raw.sample_flow.map(|c| c.0),
                rate_pps: raw.rate_limit.map(|c| c.0),
                rate_bps: raw.rate_limit_bytes.map(|c| c.0),
                burst_packets: raw.burst.map(|c| c.0),
                burst_bytes: raw.burst_bytes.map(|c| c.0),
                priority: raw.priority.map(|c| c.0),
                exclusive: raw.exclusive,
                dry_run: raw.dry_run,
                include_copies: raw.include_copies,
                config_names: true,
            };
            let select = options.build().map_err(|e| e.to_string())?;
            Ok(Self {
                name: raw.name,
                sources: raw.sources,
                dest: raw.dest,
                direction: raw.direction,
                snaplen: raw.snaplen,
                select,
            })
        })
    }
}

/// A pcap-filter expression, parsed where it is read so that an error
/// points at it (and at the column inside it).
struct FilterText(String);

impl<'de> Deserialize<'de> for FilterText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a pcap-filter expression", |s| {
            filter::parse_expr(s).map_err(|e| e.to_string())?;
            Ok(Self(s.to_owned()))
        })
    }
}

/// A rule, in `--rule`'s syntax or as a mapping of its parts.
struct RuleDef(String);

/// A rule's parts, AWS Traffic Mirroring style.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    number: u32,
    action: ActionDef,
    #[serde(default)]
    protocol: Option<RuleWord>,
    #[serde(default)]
    source: Option<RuleWord>,
    #[serde(default)]
    destination: Option<RuleWord>,
    #[serde(default)]
    source_ports: Option<RuleWord>,
    #[serde(default)]
    destination_ports: Option<RuleWord>,
    #[serde(default)]
    tcp_flags: Option<RuleWord>,
    #[serde(default)]
    direction: Option<RuleWord>,
}

/// A scalar of a rule mapping (a port may be a number).
struct RuleWord(String);

impl<'de> Deserialize<'de> for RuleWord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RuleWord;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RuleWord, E> {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(E::custom(format!("{v:?}: one word expected")));
                }
                Ok(RuleWord(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RuleWord, E> {
                Ok(RuleWord(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RuleWord, E> {
                Ok(RuleWord(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl RawRule {
    /// The same rule in `--rule`'s syntax.
    fn text(&self) -> String {
        let mut t = format!("{} {}", self.number, self.action.0);
        for (key, word) in [
            ("", &self.protocol),
            ("src", &self.source),
            ("dst", &self.destination),
            ("sport", &self.source_ports),
            ("dport", &self.destination_ports),
            ("flags", &self.tcp_flags),
            ("dir", &self.direction),
        ] {
            if let Some(w) = word {
                if !key.is_empty() {
                    t.push(' ');
                    t.push_str(key);
                }
                t.push(' ');
                t.push_str(&w.0);
            }
        }
        t
    }
}

impl<'de> Deserialize<'de> for RuleDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RuleDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule (`100 accept tcp dport 443`) or a mapping of its parts")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RuleDef, E> {
                rules::parse_rule(v).map_err(|e| E::custom(e.to_string()))?;
                Ok(RuleDef(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RuleDef, A::Error> {
                let raw = RawRule::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let text = raw.text();
                rules::parse_rule(&text)
                    .map_err(|e| A::Error::custom(format!("rule {}: {}", raw.number, e.message)))?;
                Ok(RuleDef(text))
            }
        }
        d.deserialize_any(V)
    }
}

/// `accept` or `reject`.
struct ActionDef(Action);

impl<'de> Deserialize<'de> for ActionDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "accept or reject", |s| rules::parse_action(s).map(ActionDef).map_err(|e| e.message))
    }
}

/// A count: a number, or a string with an SI suffix (`50k`, `10M`).
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count (e.g. 50000 or \"50k\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Count, E> {
                u64::try_from(v).map(Count).map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Count, E> {
                parse_count(v).map(Count).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a string and checks it inside the visitor, so that an
/// error carries the scalar's own line and column (an error raised after
/// `String::deserialize` returned would point at the enclosing mapping).
pub fn checked_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<F>(F, &'static str);
    impl<T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.1)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check, expecting))
}

/// Deserializes an `R` from a mapping (or a sequence, with `seq`) and
/// converts it inside the visitor, so that an error carries the container's
/// own line and column.
fn checked_container<'de, D, R, T>(
    d: D,
    seq: bool,
    check: impl FnOnce(R) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    struct V<F, R>(F, std::marker::PhantomData<R>);
    impl<'de, T, R: Deserialize<'de>, F: FnOnce(R) -> Result<T, String>> serde::de::Visitor<'de> for V<F, R> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping or a sequence")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            (self.0)(raw).map_err(A::Error::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
            let raw = R::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
            (self.0)(raw).map_err(A::Error::custom)
        }
    }
    let v = V(check, std::marker::PhantomData);
    if seq { d.deserialize_seq(v) } else { d.deserialize_map(v) }
}

/// A valid session name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionName(pub String);

impl<'de> Deserialize<'de> for SessionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a session name", |s| {
            store::pack_name(s).map_err(|e| e.to_string())?;
            Ok(Self(s.to_owned()))
        })
    }
}

/// A snap length in range (0 = whole packet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snaplen(pub u32);

impl<'de> Deserialize<'de> for Snaplen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Snaplen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a snap length in bytes")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Snaplen, E> {
                let (min, max) =
                    (i64::from(mirror_common::SNAPLEN_MIN), i64::from(mirror_common::SNAPLEN_MAX));
                if v != 0 && !(min..=max).contains(&v) {
                    return Err(E::custom(format!(
                        "invalid snaplen {v}: use 0 (whole packet) or {min}..={max} bytes"
                    )));
                }
                Ok(Snaplen(v as u32))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Snaplen, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_i64(V)
    }
}

/// An interface name, as the kernel allows them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IfName(pub String);

fn check_ifname(s: &str, glob: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty interface name".to_owned());
    }
    if s.len() > 15 {
        return Err(format!("interface name {s:?} is longer than 15 bytes"));
    }
    if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    if !glob && s.contains(['*', '?']) {
        return Err(format!("{s:?}: a glob is not allowed here, name one interface"));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "an interface name", |s| {
            check_ifname(s, false)?;
            Ok(Self(s.to_owned()))
        })
    }
}

/// A name pattern: `*` matches any run of characters, `?` one character.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Glob(pub String);

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Glob {
    pub fn parse(s: &str) -> Result<Self, String> {
        check_ifname(s, true)?;
        Ok(Self(s.to_owned()))
    }

    pub fn is_literal(&self) -> bool {
        !self.0.contains(['*', '?'])
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "an interface name or glob", Self::parse)
    }
}

/// Iterative `*`/`?` matching with one backtrack point: linear in practice.
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A MAC address `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (want six hex bytes like 52:54:00:12:34:56)");
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a MAC address", str::parse)
    }
}

/// What a selector picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Interfaces whose name matches.
    Name(Glob),
    /// Every port of the bridge.
    Bridge(IfName),
    /// The interface that owns the address, and the bridge ports where a
    /// bridge's FDB has learned it.
    Mac(Mac),
    /// `interface` inside network namespace `netns`, tapped at its veth
    /// peer in the agent's namespace.
    Netns { netns: String, interface: IfName },
}

/// A selector with what it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDef {
    pub selector: Selector,
    pub exclude: Vec<Glob>,
}

/// The fields a selector may have; exactly one kind of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Option<Glob>,
    bridge: Option<IfName>,
    mac: Option<Mac>,
    netns: Option<String>,
    interface: Option<IfName>,
    #[serde(default)]
    exclude: Vec<Glob>,
}

impl<'de> Deserialize<'de> for SourceDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_container(d, false, SourceDef::from_raw)
    }
}

impl SourceDef {
    fn from_raw(raw: RawSource) -> Result<Self, String> {
        let kinds = [raw.name.is_some(), raw.bridge.is_some(), raw.mac.is_some(), raw.netns.is_some()];
        let count = kinds.iter().filter(|k| **k).count();
        if count != 1 {
            return Err(format!(
                "a source needs exactly one of `name`, `bridge`, `mac` or `netns` (found {count})"
            ));
        }
        if raw.interface.is_some() && raw.netns.is_none() {
            return Err("`interface` goes with `netns`".to_owned());
        }
        let selector = match (raw.name, raw.bridge, raw.mac, raw.netns) {
            (Some(g), ..) => Selector::Name(g),
            (_, Some(b), ..) => Selector::Bridge(b),
            (_, _, Some(m), _) => Selector::Mac(m),
            (_, _, _, Some(netns)) => {
                if netns.is_empty() || netns.contains('/') || netns == "." || netns == ".." {
                    return Err(format!(
                        "{netns:?} is not a network namespace name (an entry of /run/netns)"
                    ));
                }
                let interface = raw.interface.ok_or("`netns` needs `interface`")?;
                Selector::Netns { netns, interface }
            }
            _ => unreachable!("exactly one kind was counted"),
        };
        if !raw.exclude.is_empty() && matches!(selector, Selector::Mac(_) | Selector::Netns { .. }) {
            return Err("`exclude` goes with `name` or `bridge`".to_owned());
        }
        Ok(Self { selector, exclude: raw.exclude })
    }
}

/// A session's sources: at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(pub Vec<SourceDef>);

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_container(d, true, |v: Vec<SourceDef>| {
            if v.is_empty() {
                return Err("a session needs at least one source".to_owned());
            }
            Ok(Self(v))
        })
    }
}

/// A config file that could not be used; the message says where and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parses `text` (read from `file`, for messages).
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let config: Config = serde_yaml_ng::from_str(text).map_err(|e| {
        let msg = e.to_string();
        match e.location() {
            Some(loc) => {
                let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                let msg = msg.replace(&suffix, "");
                ConfigError(format!("{file}:{}:{}: {msg}", loc.line(), loc.column()))
            }
            None => ConfigError(format!("{file}: {msg}")),
        }
    })?;
    let mut seen = BTreeSet::new();
    for (i, s) in config.sessions.iter().enumerate() {
        if !seen.insert(&s.name.0) {
            let line = line_of_nth_name(text, &s.name.0).map_or(String::new(), |l| format!("{l}:"));
            return Err(ConfigError(format!(
                "{file}:{line} sessions[{i}].name: session {:?} is defined twice",
                s.name.0
            )));
        }
    }
    Ok(config)
}

/// Line of the second `name: <name>` key: where a duplicate was declared.
fn line_of_nth_name(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start().trim_start_matches("- ").trim_start();
            l.strip_prefix("name:").is_some_and(|v| v.trim().trim_matches(['"', '\'']) == name)
        })
        .nth(1)
        .map(|(i, _)| i + 1)
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{file}: cannot read: {e}")))?;
    parse(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
sessions:
  - name: blue
    sources:
      - bridge: br0
      - name: "vnet*"
        exclude: ["vnet0"]
      - mac: "52:54:00:12:34:56"
      - netns: pod-a
        interface: eth0
    dest: vnet0
    direction: both        # ingress | egress | both
    snaplen: 0
policy:
  sources: ["vnet*", "bridge:br0", "netns:pod-*"]
  destinations: ["vnet0", "mon*"]
"#;

    #[test]
    fn the_issue_example_parses() {
        let c = parse("c.yaml", EXAMPLE).expect("valid");
        assert_eq!(c.sessions.len(), 1);
        let s = &c.sessions[0];
        assert_eq!(s.sources.0.len(), 4);
        assert_eq!(s.sources.0[1].exclude, vec![Glob("vnet0".into())]);
        assert!(matches!(s.sources.0[2].selector, Selector::Mac(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]))));
        assert!(c.policy.is_some());
    }

    /// Each bad file, and the exact message it gets.
    pub const CATALOGUE: &[(&str, &str)] = &[
        ("sessions: []\nextra: 1\n", "c.yaml:2:1: unknown field `extra`, expected `sessions` or `policy`"),
        ("policy: {}\n", "c.yaml:1:1: missing field `sessions`"),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    snaplne: 9\n",
            "c.yaml:5:5: sessions[0]: unknown field `snaplne`, expected one of `name`, `sources`, `dest`, `direction`, `snaplen`, `filter`, `rules`, `default_action`, `sample`, `sample_flow`, `rate_limit`, `rate_limit_bytes`, `burst`, `burst_bytes`, `priority`, `exclusive`, `dry_run`, `include_copies`",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    snaplen: 10\n",
            "c.yaml:5:14: sessions[0].snaplen: invalid snaplen 10: use 0 (whole packet) or 64..=65535 bytes",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    snaplen: 70000\n",
            "c.yaml:5:14: sessions[0].snaplen: invalid snaplen 70000: use 0 (whole packet) or 64..=65535 bytes",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    direction: sideways\n",
            "c.yaml:5:16: sessions[0].direction: unknown variant `sideways`, expected one of `ingress`, `egress`, `both`",
        ),
        (
            "sessions:\n  - name: \"a b\"\n    sources: [{name: x}]\n    dest: d\n",
            "c.yaml:2:11: sessions[0].name: invalid session name \"a b\": use letters, digits, '.', '_' and '-', starting with a letter or digit",
        ),
        (
            "sessions:\n  - name: a\n    sources: []\n    dest: d\n",
            "c.yaml:3:14: sessions[0].sources: a session needs at least one source",
        ),
        (
            "sessions:\n  - name: a\n    sources:\n      - mac: \"52:54:00:12:34\"\n    dest: d\n",
            "c.yaml:4:14: sessions[0].sources[0].mac: \"52:54:00:12:34\" is not a MAC address (want six hex bytes like 52:54:00:12:34:56)",
        ),
        (
            "sessions:\n  - name: a\n    sources:\n      - name: x\n        bridge: br0\n    dest: d\n",
            "c.yaml:4:9: sessions[0].sources[0]: a source needs exactly one of `name`, `bridge`, `mac` or `netns` (found 2)",
        ),
        (
            "sessions:\n  - name: a\n    sources:\n      - netns: pod\n    dest: d\n",
            "c.yaml:4:9: sessions[0].sources[0]: `netns` needs `interface`",
        ),
        (
            "sessions:\n  - name: a\n    sources:\n      - name: x\n        interface: eth0\n    dest: d\n",
            "c.yaml:4:9: sessions[0].sources[0]: `interface` goes with `netns`",
        ),
        (
            "sessions:\n  - name: a\n    sources:\n      - mac: \"52:54:00:12:34:56\"\n        exclude: [x]\n    dest: d\n",
            "c.yaml:4:9: sessions[0].sources[0]: `exclude` goes with `name` or `bridge`",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: \"mon*\"\n",
            "c.yaml:4:11: sessions[0].dest: \"mon*\": a glob is not allowed here, name one interface",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: averyveryverylongname}]\n    dest: d\n",
            "c.yaml:3:22: sessions[0].sources[0].name: interface name \"averyveryverylongname\" is longer than 15 bytes",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{nmae: x}]\n    dest: d\n",
            "c.yaml:3:16: sessions[0].sources[0]: unknown field `nmae`, expected one of `name`, `bridge`, `mac`, `netns`, `interface`, `exclude`",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n  - name: a\n    sources: [{name: y}]\n    dest: d\n",
            "c.yaml:5: sessions[1].name: session \"a\" is defined twice",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\npolicy:\n  sources: [\"bridge:\"]\n",
            "c.yaml:6:13: policy.sources[0]: empty interface name",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\npolicy:\n  collectors: []\n",
            "c.yaml:6:3: policy: unknown field `collectors`, expected `sources` or `destinations`",
        ),
        ("sessions: [\n", "c.yaml:2:1: did not find expected node content, while parsing a flow node"),
        ("sessions: {a: 1}\n", "c.yaml:1:11: sessions: invalid type: map, expected a sequence"),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    filter: \"tcp port 99999\"\n",
            "c.yaml:5:13: sessions[0].filter: column 10: port 99999 is out of range (0..=65535)",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    filter: \"tcp prot 80\"\n",
            "c.yaml:5:13: sessions[0].filter: column 5: expected `and` or `or` before `prot`",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    rules: [\"100 accept tcp dport 70000\"]\n",
            "c.yaml:5:13: sessions[0].rules[0]: column 22: port 70000 is out of range (0..=65535)",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    rules:\n      - number: 100\n        action: drop\n",
            "c.yaml:7:17: sessions[0].rules[0].action: unknown action `drop`: expected `accept` or `reject`",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    rules:\n      - number: 100\n        action: accept\n        source: 198.18.0.1/16\n",
            "c.yaml:6:9: sessions[0].rules[0]: rule 100: 198.18.0.1/16 has host bits set (the network is 198.18.0.0/16)",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    rules: [\"100 accept\", \"100 reject\"]\n",
            "c.yaml:2:5: sessions[0]: invalid rules: two rules are numbered 100: rule numbers must be unique",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    burst: 10\n",
            "c.yaml:2:5: sessions[0]: burst needs rate_limit",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    sample: 0\n",
            "c.yaml:2:5: sessions[0]: sample 0 is out of range: use 1..=16777216",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    sample: 10\n    sample_flow: 10\n",
            "c.yaml:2:5: sessions[0]: sample and sample_flow exclude each other",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    rate_limit: fast\n",
            "c.yaml:5:17: sessions[0].rate_limit: \"fast\" is not a count (digits, optionally with a fraction and k, M or G)",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    priority: 70000\n",
            "c.yaml:2:5: sessions[0]: priority 70000 is out of range: use 0..=65535",
        ),
        (
            "sessions:\n  - name: a\n    sources: [{name: x}]\n    dest: d\n    default_action: accept\n",
            "c.yaml:2:5: sessions[0]: default_action needs at least one rule",
        ),
    ];

    #[test]
    fn every_bad_config_gets_its_exact_message() {
        let mut wrong = Vec::new();
        for (text, want) in CATALOGUE {
            let got = parse("c.yaml", text).expect_err(text).to_string();
            if got != *want {
                wrong.push(format!("for:\n{text}\n  got:  {got}\n  want: {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(CATALOGUE.len() >= 15);
    }

    #[test]
    fn globs_match_like_the_shell() {
        let g = |p: &str, n: &str| glob_match(p.as_bytes(), n.as_bytes());
        assert!(g("vnet*", "vnet12") && g("vnet*", "vnet") && !g("vnet*", "vne"));
        assert!(g("*", "") && g("v?c", "vxc") && !g("v?c", "vc"));
        assert!(g("a*b*c", "aXXbYYc") && !g("a*b*c", "aXXbYY"));
        assert!(g("tap*-0", "tap1-2-0") && !g("tap*-0", "tap1-0x"));
    }
}
