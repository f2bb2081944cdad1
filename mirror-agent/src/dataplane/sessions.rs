//! The one reconcile of sessions, used by `attach`, `detach` and the daemon:
//! given the sessions wanted (fully resolved to ifindexes), compute a plan
//! against what the store holds, then apply it in an order that never lets
//! a copy go anywhere it should not:
//!
//! 1. sources removed (no new copy of what goes away),
//! 2. a grace period, hooks nobody needs detached, sessions removed,
//! 3. sessions created or changed, and the destination hooks they need,
//! 4. sources added, and their hooks.
//!
//! A session whose wanted state equals what is pinned is not touched at
//! all: no map write, no hook change, so its copies never stop.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use mirror_common::{
    MAX_SESSIONS, MAX_SESSIONS_PER_SOURCE, MAX_SOURCE_HOOKS, SessionConfig, SourceKey, filter,
};

use crate::{
    dataplane::{
        bpffs::Layout,
        hooks::{self, AttachMode},
        selection::SelectSpec,
        store::{self, Owner, Session, Store, direction_name},
    },
    error::InputError,
};

/// A session as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub name: String,
    pub owner: Owner,
    /// 0 while the destination does not exist: copies are then counted as
    /// `dest_missing` and the session resumes when it comes back.
    pub dest_ifindex: u32,
    /// The destination's name (for messages).
    pub dest_name: String,
    pub snaplen: u32,
    pub direction_mask: u32,
    /// (source ifindex, direction) hooks, each with the name it had when
    /// resolved (for messages).
    pub taps: BTreeMap<SourceKey, String>,
    /// What the session selects (filter, sampling, rate limit, priority...).
    pub select: SelectSpec,
}

impl SessionSpec {
    fn config(&self, created_unix_secs: u64) -> Result<SessionConfig> {
        let mut config = SessionConfig {
            name: store::pack_name(&self.name)?,
            dest_ifindex: self.dest_ifindex,
            snaplen: self.snaplen,
            direction_mask: self.direction_mask,
            flags: self.owner.flags(),
            created_unix_secs,
            ..SessionConfig::EMPTY
        };
        self.select.apply_to(&mut config);
        Ok(config)
    }

    /// True if `s` is already this session, exactly.
    fn matches_config(&self, s: &Session) -> bool {
        s.config.dest_ifindex == self.dest_ifindex
            && s.config.snaplen == self.snaplen
            && s.config.direction_mask == self.direction_mask
            && s.owner() == self.owner
            && self.select.matches(&s.config, &s.select_text)
    }
}

/// One step of a plan.
#[derive(Debug, Clone)]
pub enum Change {
    Create(SessionSpec),
    Update {
        id: u32,
        spec: SessionSpec,
        /// Destination, snap length or direction changed.
        config_changed: bool,
        add: Vec<SourceKey>,
        remove: Vec<SourceKey>,
    },
    Remove {
        id: u32,
        name: String,
    },
    /// Wanted and already exactly so.
    Unchanged {
        name: String,
    },
    /// Wanted, but it cannot be made so; nothing of it is touched.
    Refused {
        name: String,
        why: String,
    },
}

impl Change {
    pub fn name(&self) -> &str {
        match self {
            Self::Create(spec) | Self::Update { spec, .. } => &spec.name,
            Self::Remove { name, .. } | Self::Unchanged { name } | Self::Refused { name, .. } => name,
        }
    }

    /// True if applying it writes anything.
    pub fn is_effective(&self) -> bool {
        matches!(self, Self::Create(_) | Self::Update { .. } | Self::Remove { .. })
    }
}

fn key_label(key: &SourceKey, names: &BTreeMap<SourceKey, String>) -> String {
    let name = names.get(key).cloned().unwrap_or_else(|| format!("#{}", key.ifindex));
    format!("{name} ({})", direction_name(key.direction))
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dest = |spec: &SessionSpec| {
            if spec.dest_ifindex == 0 {
                format!("{} (missing)", spec.dest_name)
            } else {
                format!("{} (#{})", spec.dest_name, spec.dest_ifindex)
            }
        };
        match self {
            Self::Create(spec) => {
                let taps: Vec<String> = spec.taps.keys().map(|k| key_label(k, &spec.taps)).collect();
                write!(
                    f,
                    "attach {}: dest {}, snaplen {}, sources [{}]",
                    spec.name,
                    dest(spec),
                    spec.snaplen,
                    taps.join(", ")
                )?;
                if !spec.select.text.is_empty() {
                    write!(f, ", filter {:?}", spec.select.text)?;
                }
                Ok(())
            }
            Self::Update { spec, config_changed, add, remove, .. } => {
                write!(f, "update {}:", spec.name)?;
                if *config_changed {
                    write!(f, " dest {}, snaplen {};", dest(spec), spec.snaplen)?;
                    if !spec.select.text.is_empty() {
                        write!(f, " filter {:?};", spec.select.text)?;
                    }
                }
                let add: Vec<String> = add.iter().map(|k| key_label(k, &spec.taps)).collect();
                let remove: Vec<String> = remove
                    .iter()
                    .map(|k| format!("#{} ({})", k.ifindex, direction_name(k.direction)))
                    .collect();
                if !add.is_empty() {
                    write!(f, " + [{}]", add.join(", "))?;
                }
                if !remove.is_empty() {
                    write!(f, " - [{}]", remove.join(", "))?;
                }
                Ok(())
            }
            Self::Remove { name, .. } => write!(f, "detach {name}"),
            Self::Unchanged { name } => write!(f, "unchanged {name}"),
            Self::Refused { name, why } => write!(f, "refuse {name}: {why}"),
        }
    }
}

/// What each hook would hold, to check capacity across a whole plan.
#[derive(Clone)]
struct Capacity {
    fan_out: BTreeMap<SourceKey, usize>,
    hooks: usize,
    /// `FILTER_INSNS` the plan's programs would hold.
    insns: u32,
}

impl Capacity {
    fn new(store: Option<&Store>, sessions: &[Session]) -> Self {
        let mut fan_out = BTreeMap::new();
        for s in sessions {
            for key in &s.taps {
                *fan_out.entry(*key).or_insert(0) += 1;
            }
        }
        let hooks = store.map_or(0, Store::hook_count);
        Self { fan_out, hooks, insns: Store::filter_insns_in_use(sessions) }
    }

    /// Takes a program of `len` instructions in (a changed one is written
    /// next to the old), or explains why not.
    fn take_program(&mut self, len: u32) -> Result<(), String> {
        if self.insns + len > filter::POOL_INSNS {
            return Err(format!(
                "its filter ({len} instructions) does not fit: the filters of this namespace hold {} of the {} \
                 instructions the datapath has",
                self.insns,
                filter::POOL_INSNS
            ));
        }
        self.insns += len;
        Ok(())
    }

    /// Takes `add` in, or explains why not (and takes nothing).
    fn take(&mut self, add: &[SourceKey], names: &BTreeMap<SourceKey, String>) -> Result<(), String> {
        let mut new_hooks = 0;
        for key in add {
            match self.fan_out.get(key).copied().unwrap_or(0) {
                0 => new_hooks += 1,
                n if n >= MAX_SESSIONS_PER_SOURCE => {
                    return Err(InputError::SourceFull {
                        source_name: names.get(key).cloned().unwrap_or_default(),
                        direction: direction_name(key.direction),
                    }
                    .to_string());
                }
                _ => {}
            }
        }
        if self.hooks + new_hooks > MAX_SOURCE_HOOKS as usize {
            return Err(InputError::TooManySourceHooks { existing: self.hooks, new: new_hooks }.to_string());
        }
        self.hooks += new_hooks;
        for key in add {
            *self.fan_out.entry(*key).or_insert(0) += 1;
        }
        Ok(())
    }

    fn release(&mut self, remove: &[SourceKey]) {
        for key in remove {
            if let Some(n) = self.fan_out.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.fan_out.remove(key);
                    self.hooks -= 1;
                }
            }
        }
    }
}

/// The changes that make the store hold `wanted`. With `prune`, sessions
/// of `owner` that are not wanted are removed; sessions of another owner
/// are never touched (a wanted name they hold is refused).
pub fn plan(store: Option<&Store>, wanted: &[SessionSpec], owner: Owner, prune: bool) -> Result<Vec<Change>> {
    let existing = match store {
        Some(s) => s.sessions()?,
        None => Vec::new(),
    };
    let by_name: BTreeMap<&str, &Session> = existing.iter().map(|s| (s.name(), s)).collect();
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|s| s.name.as_str()).collect();
    let mut capacity = Capacity::new(store, &existing);
    let mut changes = Vec::new();
    // Removals first: what they free is available to the rest.
    if prune {
        for s in &existing {
            if s.owner() == owner && !wanted_names.contains(s.name()) {
                capacity.release(&s.taps);
                changes.push(Change::Remove { id: s.id, name: s.name().to_owned() });
            }
        }
    }
    let removed = changes.len();
    let mut occupied = existing.len() - removed;
    for spec in wanted {
        match by_name.get(spec.name.as_str()) {
            Some(s) if s.owner() != spec.owner => changes.push(Change::Refused {
                name: spec.name.clone(),
                why: format!(
                    "a session of that name was made by the {}; it is left alone",
                    s.owner().as_str()
                ),
            }),
            Some(s) => {
                let have: BTreeSet<SourceKey> = s.taps.iter().copied().collect();
                let want: BTreeSet<SourceKey> = spec.taps.keys().copied().collect();
                let add: Vec<SourceKey> = want.difference(&have).copied().collect();
                let remove: Vec<SourceKey> = have.difference(&want).copied().collect();
                // Slots still carrying an older configuration (an update
                // that was interrupted) count as a change: it heals.
                let config_changed = !spec.matches_config(s) || s.stale_slots;
                if add.is_empty() && remove.is_empty() && !config_changed {
                    changes.push(Change::Unchanged { name: spec.name.clone() });
                    continue;
                }
                let mut trial = capacity.clone();
                trial.release(&remove);
                let new_program =
                    if spec.select.matches(&s.config, &s.select_text) { 0 } else { program_len(spec) };
                if let Err(why) = trial.take_program(new_program) {
                    changes.push(Change::Refused { name: spec.name.clone(), why });
                    continue;
                }
                if let Err(why) = trial.take(&add, &spec.taps) {
                    // The additions are refused; removals and the new
                    // configuration need no hook capacity, and still apply
                    // (its program was found to fit above).
                    if !remove.is_empty() || config_changed {
                        capacity.release(&remove);
                        capacity.insns += new_program;
                        changes.push(Change::Update {
                            id: s.id,
                            spec: spec.clone(),
                            config_changed,
                            add: Vec::new(),
                            remove,
                        });
                    }
                    changes.push(Change::Refused {
                        name: spec.name.clone(),
                        why: format!("cannot add sources: {why}"),
                    });
                    continue;
                }
                capacity = trial;
                changes.push(Change::Update { id: s.id, spec: spec.clone(), config_changed, add, remove });
            }
            None => {
                let add: Vec<SourceKey> = spec.taps.keys().copied().collect();
                if occupied + 1 >= MAX_SESSIONS as usize {
                    changes.push(Change::Refused {
                        name: spec.name.clone(),
                        why: InputError::SessionTableFull.to_string(),
                    });
                    continue;
                }
                let mut trial = capacity.clone();
                match trial.take_program(program_len(spec)).and_then(|()| trial.take(&add, &spec.taps)) {
                    Ok(()) => {
                        capacity = trial;
                        occupied += 1;
                        changes.push(Change::Create(spec.clone()));
                    }
                    Err(why) => changes.push(Change::Refused { name: spec.name.clone(), why }),
                }
            }
        }
    }
    Ok(changes)
}

fn program_len(spec: &SessionSpec) -> u32 {
    spec.select.program.as_ref().map_or(0, |p| p.insns.len() as u32)
}

fn now_unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Applies `changes` (from [`plan`] on this store). Returns the ids of the
/// sessions created, by name.
pub fn apply(
    store: &mut Store,
    layout: &Layout,
    mode: AttachMode,
    changes: &[Change],
) -> Result<BTreeMap<String, u32>> {
    let mut created = BTreeMap::new();
    if !changes.iter().any(Change::is_effective) {
        return Ok(created);
    }
    store.check_layout()?;
    store.turn_native_off_if_disabled()?;
    // 1. Sources that go away.
    let mut removed_any = false;
    for change in changes {
        match change {
            Change::Remove { id, name } => {
                store.remove_sources(*id).with_context(|| format!("detaching session {name}"))?;
                removed_any = true;
            }
            Change::Update { id, spec, remove, .. } if !remove.is_empty() => {
                store.remove_taps(*id, remove).with_context(|| format!("updating session {}", spec.name))?;
                removed_any = true;
            }
            _ => {}
        }
    }
    // 2. No program still running may be sending a copy through a hook
    // about to go, or reading a session slot about to be reused.
    // Hooks the new and changed sessions will need stay attached.
    let keep: BTreeSet<hooks::Hook> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Create(spec) | Change::Update { spec, .. } => Some(spec),
            _ => None,
        })
        .flat_map(|spec| hooks::needed_by(spec.taps.keys().copied(), spec.dest_ifindex, spec.snaplen))
        .collect();
    if removed_any {
        store.wait_for_readers()?;
        hooks::detach_unneeded_keeping(store, layout, &keep)?;
    }
    let mut cleared_any = false;
    for change in changes {
        if let Change::Remove { id, .. } = change {
            store.clear_session(*id)?;
            cleared_any = true;
        }
    }
    if cleared_any {
        hooks::detach_unneeded_keeping(store, layout, &keep)?;
    }
    if !changes.iter().any(|c| matches!(c, Change::Create(_) | Change::Update { .. })) {
        // Only removals: nothing to attach, so nothing to probe.
        return Ok(created);
    }
    // 3. New sessions' configurations (no slot refers to them yet), then
    // every hook the plan needs, attached before any slot or changed
    // configuration points at it; nothing is detached yet, so a changed
    // destination's old hook keeps cutting what is still sent there.
    let mut fill = Vec::new();
    for change in changes {
        match change {
            Change::Create(spec) => {
                let config = spec.config(now_unix_secs())?;
                let id = store
                    .insert_session(&config, &spec.select)
                    .with_context(|| format!("attaching session {}", spec.name))?;
                created.insert(spec.name.clone(), id);
                fill.push((id, config, spec, spec.taps.keys().copied().collect::<Vec<_>>(), false));
            }
            Change::Update { id, spec, config_changed, add, .. } if *config_changed || !add.is_empty() => {
                let old = store.session_config(*id)?;
                let mut config = spec.config(old.created_unix_secs)?;
                config.select_bank = old.select_bank;
                fill.push((*id, config, spec, add.clone(), *config_changed));
            }
            _ => {}
        }
    }
    let failures = hooks::reconcile_keeping(store, layout, mode, &keep)?;
    let failed: BTreeSet<hooks::Hook> = failures.iter().map(|(h, _)| *h).collect();
    // 4. Configurations and slots, then new sources, session by session:
    // a session whose destination cannot cut its copies is left as it was
    // (copies are never sent longer than allowed).
    let mut reconfigured = false;
    let mut rates_changed = Vec::new();
    let mut refused = None;
    for (id, config, spec, add, changed) in &fill {
        if let Some(hook) = hooks::cut_hook(spec.dest_ifindex, spec.snaplen)
            && failed.contains(&hook)
        {
            tracing::warn!(session = spec.name, "left unchanged: its destination's cut hook is not attached");
            refused.get_or_insert_with(|| {
                anyhow::anyhow!(
                    "session {}: cannot attach {} (copies would go uncut)",
                    spec.name,
                    hook.describe()
                )
            });
            continue;
        }
        if *changed {
            let old = store.session_config(*id)?;
            let text = store.select_text(*id, &old)?;
            let select = (!spec.select.matches(&old, &text)).then_some(&spec.select);
            if store.update_session(*id, config, select)? {
                rates_changed.push(*id);
            }
            reconfigured = true;
        }
        store.refresh_slots(*id)?;
        let config = store.session_config(*id)?;
        store
            .add_taps(*id, &config, add)
            .with_context(|| format!("adding sources to session {}", spec.name))?;
    }
    // 5. Copies already on their way to an old destination are through
    // before its hook goes.
    if reconfigured {
        store.wait_for_readers()?;
    }
    for id in rates_changed {
        store.reset_rate(id)?;
    }
    hooks::reconcile(store, layout, mode)?;
    if let Some(e) = refused.or_else(|| failures.into_iter().next().map(|(_, e)| e)) {
        return Err(e);
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_refused_once_the_namespace_pool_is_full() {
        let mut c = Capacity { fan_out: BTreeMap::new(), hooks: 0, insns: filter::POOL_INSNS - 300 };
        assert_eq!(c.take_program(256), Ok(()));
        let err = c.take_program(100).unwrap_err();
        assert_eq!(
            err,
            "its filter (100 instructions) does not fit: the filters of this namespace hold 65492 of the 65536 \
             instructions the datapath has"
        );
        assert_eq!(c.insns, filter::POOL_INSNS - 44, "a refused program takes nothing");
        assert_eq!(c.take_program(44), Ok(()));
    }
}
