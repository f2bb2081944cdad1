//! What may be monitored and where copies may go. Absent lists allow
//! everything; a present list allows only what it names.
//!
//! Sources: `GLOB` (interface names), `bridge:GLOB` (ports of matching
//! bridges), `netns:GLOB` (interfaces found through a `netns:` selector of a
//! matching namespace). Destinations: interface-name globs.
use serde::{Deserialize, Deserializer};

use crate::daemon::config::{Glob, checked_str};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub sources: Option<Vec<SourceRule>>,
    #[serde(default)]
    pub destinations: Option<Vec<Glob>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRule {
    Interface(Glob),
    Bridge(Glob),
    Netns(Glob),
}

impl<'de> Deserialize<'de> for SourceRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "GLOB, bridge:GLOB or netns:GLOB", |s| {
            Ok(if let Some(b) = s.strip_prefix("bridge:") {
                Self::Bridge(Glob::parse(b)?)
            } else if let Some(n) = s.strip_prefix("netns:") {
                Self::Netns(Glob::parse(n)?)
            } else {
                Self::Interface(Glob::parse(s)?)
            })
        })
    }
}

/// How a source was reached, for the policy's decision.
#[derive(Debug, Clone, Copy)]
pub struct SourceFacts<'a> {
    pub name: &'a str,
    /// Name of the bridge it is a port of.
    pub bridge: Option<&'a str>,
    /// Namespace it was found through (`netns:` selectors).
    pub netns: Option<&'a str>,
}

impl Policy {
    /// May copies go out of `dest`?
    pub fn allows_destination(&self, dest: &str) -> bool {
        self.destinations.as_ref().is_none_or(|globs| globs.iter().any(|g| g.matches(dest)))
    }

    /// May `source` be monitored?
    pub fn allows_source(&self, f: SourceFacts<'_>) -> bool {
        let Some(rules) = &self.sources else { return true };
        rules.iter().any(|r| match r {
            SourceRule::Interface(g) => f.netns.is_none() && g.matches(f.name),
            SourceRule::Bridge(g) => f.bridge.is_some_and(|b| g.matches(b)),
            SourceRule::Netns(g) => f.netns.is_some_and(|n| g.matches(n)),
        })
    }

    /// May a `bridge:` selector name this bridge? (Only if its ports are
    /// allowed as ports of it.)
    pub fn allows_bridge(&self, bridge: &str) -> bool {
        let Some(rules) = &self.sources else { return true };
        rules.iter().any(|r| matches!(r, SourceRule::Bridge(g) if g.matches(bridge)))
    }

    /// May a `netns:` selector reach into this namespace?
    pub fn allows_netns(&self, netns: &str) -> bool {
        let Some(rules) = &self.sources else { return true };
        rules.iter().any(|r| matches!(r, SourceRule::Netns(g) if g.matches(netns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        serde_yaml_ng::from_str(
            "sources: [\"vnet*\", \"bridge:br0\", \"netns:pod-*\"]\ndestinations: [\"vnet0\", \"mon*\"]\n",
        )
        .expect("valid")
    }

    #[test]
    fn sources_are_allowed_by_name_bridge_or_namespace() {
        let p = policy();
        let plain = |name| SourceFacts { name, bridge: None, netns: None };
        assert!(p.allows_source(plain("vnet3")));
        assert!(!p.allows_source(plain("eth0")));
        assert!(p.allows_source(SourceFacts { name: "tap9", bridge: Some("br0"), netns: None }));
        assert!(!p.allows_source(SourceFacts { name: "tap9", bridge: Some("br1"), netns: None }));
        assert!(p.allows_source(SourceFacts { name: "veth1", bridge: None, netns: Some("pod-a") }));
        assert!(!p.allows_source(SourceFacts { name: "vnet1", bridge: None, netns: Some("other") }));
        assert!(p.allows_bridge("br0") && !p.allows_bridge("br1"));
        assert!(p.allows_netns("pod-x") && !p.allows_netns("kube-system"));
    }

    #[test]
    fn destinations_are_globs_and_absent_lists_allow_all() {
        let p = policy();
        assert!(p.allows_destination("mon3") && p.allows_destination("vnet0"));
        assert!(!p.allows_destination("vnet1"));
        let open = Policy { sources: None, destinations: None };
        assert!(open.allows_destination("anything"));
        assert!(open.allows_source(SourceFacts { name: "x", bridge: None, netns: Some("y") }));
    }
}
