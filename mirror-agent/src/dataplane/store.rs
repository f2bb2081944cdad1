//! Session state, kept entirely in the pinned maps: bpffs is the single
//! source of truth, so any later invocation sees what an earlier one did.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use mirror_common::{
    Counter, DirectionCounters, EntryRef, FilterInsn, FilterSpec, MAX_SESSIONS, MAX_SESSIONS_PER_SOURCE,
    MAX_SOURCE_HOOKS, NO_ENTRY, RateState, SELECTOR_BANKS, SESSION_NAME_LEN, SOURCE_ENTRY_COUNT, Selector,
    SessionConfig, SessionSlot, SourceEntry, SourceKey, counter_index, direction, entry_flags, names, reason,
    selector_flags, selector_index, session_flags, slot_flags, source_index,
};

use crate::{
    dataplane::{
        bpffs::Layout,
        native,
        selection::{self, InsnPool, SelectSpec},
    },
    error::InputError,
};

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));

/// Loads the eBPF object with its maps pinned under `layout` (reusing the
/// pinned ones when they exist).
pub fn load_object(layout: &Layout) -> Result<aya::Ebpf> {
    if EBPF_OBJECT.is_empty() {
        return Err(InputError::NoEbpfObject.into());
    }
    let maps = layout.maps_dir();
    std::fs::create_dir_all(&maps).with_context(|| format!("creating {}", maps.display()))?;
    EbpfLoader::new().default_map_pin_directory(&maps).load(EBPF_OBJECT).context("loading the eBPF object")
}

/// A session as the agent sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: u32,
    pub config: SessionConfig,
    /// Source ifindexes, in ifindex order.
    pub sources: Vec<u32>,
    /// Every (source, direction) hook the session is fed by.
    pub taps: Vec<SourceKey>,
    /// Some hook's slot for this session carries another destination or
    /// snap length than `config` (an update was interrupted).
    pub stale_slots: bool,
    /// The selection's canonical text ("" = none).
    pub select_text: String,
    /// Its filter also runs as native code (read with the text).
    pub filter_native: bool,
}

impl Session {
    pub fn name(&self) -> &str {
        name_of(&self.config)
    }

    /// Who made the session: the CLI or a daemon's config.
    pub fn owner(&self) -> Owner {
        Owner::of(&self.config)
    }
}

/// Who made a session, recorded in its [`SessionConfig::flags`]. The daemon
/// only ever changes sessions of its own config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Cli,
    Config,
}

impl Owner {
    pub fn of(config: &SessionConfig) -> Self {
        if config.flags & session_flags::OWNER_CONFIG != 0 { Self::Config } else { Self::Cli }
    }

    pub fn flags(self) -> u32 {
        match self {
            Self::Cli => 0,
            Self::Config => session_flags::OWNER_CONFIG,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Config => "config",
        }
    }
}

pub fn name_of(config: &SessionConfig) -> &str {
    let len = config.name.iter().position(|b| *b == 0).unwrap_or(SESSION_NAME_LEN);
    std::str::from_utf8(&config.name[..len]).unwrap_or("<invalid>")
}

/// Checks a session name and packs it for the map.
pub fn pack_name(name: &str) -> Result<[u8; SESSION_NAME_LEN], InputError> {
    let invalid = |why| InputError::InvalidSessionName { name: name.to_owned(), why };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > SESSION_NAME_LEN {
        return Err(invalid("longer than 32 bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || !name.as_bytes()[0].is_ascii_alphanumeric()
    {
        return Err(invalid("use letters, digits, '.', '_' and '-', starting with a letter or digit"));
    }
    let mut out = [0; SESSION_NAME_LEN];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// Packets and bytes per reason for one session and direction.
pub type ReasonCounters = [Counter; reason::COUNT as usize];

/// `SOURCE_INDEX`, mapped into this process (the map is `BPF_F_MMAPABLE`):
/// a cell is published with one atomic store, so a program reading it
/// concurrently sees the old or the new reference, never a mix.
struct IndexMapping {
    cells: NonNull<AtomicU64>,
    /// Keeps the map (and so the mapping's backing) open.
    _map: MapData,
}

const INDEX_BYTES: usize = source_index::CELLS as usize * size_of::<AtomicU64>();

impl IndexMapping {
    fn new(map: MapData) -> Result<Self> {
        let info = map.info().context("reading SOURCE_INDEX's definition")?;
        if info.max_entries() != source_index::CELLS
            || info.value_size() as usize != size_of::<EntryRef>()
            || info.map_flags() & source_index::MAP_FLAGS == 0
        {
            anyhow::bail!(
                "the pinned {} is not this build's ({} entries of {} bytes, flags {:#x}; expected {} mmapable \
                 entries of 8 bytes): run `detach --all` with the build that created it",
                names::SOURCE_INDEX,
                info.max_entries(),
                info.value_size(),
                info.map_flags(),
                source_index::CELLS
            );
        }
        // SAFETY: a fresh shared mapping of the map's fd; no pointer of ours
        // is passed in. An mmapable array's elements are 8 bytes apart,
        // from offset 0, as `EntryRef` is.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                INDEX_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {} into memory", names::SOURCE_INDEX));
        }
        let cells = NonNull::new(ptr.cast::<AtomicU64>()).context("mmap returned NULL")?;
        Ok(Self { cells, _map: map })
    }

    fn cell(&self, cell: u32) -> &AtomicU64 {
        assert!(cell < source_index::CELLS, "index cell {cell} out of range");
        // SAFETY: in bounds of the mapping (checked above), which lives as
        // long as `self`; the kernel side only reads it.
        unsafe { &*self.cells.as_ptr().add(cell as usize) }
    }
}

impl Drop for IndexMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference to it
        // outlives `self`.
        unsafe { libc::munmap(self.cells.as_ptr().cast(), INDEX_BYTES) };
    }
}

/// Where a hook's entry is published.
#[derive(Debug, Clone, Copy)]
struct Hook {
    /// Its `SOURCE_INDEX` cell: the direct one, or an overflow cell (then
    /// `SOURCE_OVERFLOW` maps the hook to it).
    cell: u32,
    /// Number of its `SOURCE_ENTRIES` element.
    entry: u32,
    /// What that element holds: the agent is its only writer (under the
    /// lock), so reads need no syscall.
    sessions: SourceEntry,
}

impl Hook {
    fn in_overflow(&self) -> bool {
        self.cell >= source_index::OVERFLOW_BASE
    }
}

/// Which `SOURCE_ENTRIES` elements may be written: busy ones are published,
/// or were unpublished since the last grace period (programs that started
/// before may still read them).
#[derive(Debug)]
struct EntryPool {
    busy: Vec<bool>,
}

impl EntryPool {
    /// At open: an earlier invocation may just have unpublished any entry.
    fn all_busy() -> Self {
        Self { busy: vec![true; SOURCE_ENTRY_COUNT as usize] }
    }

    /// A writable entry, now busy; `None` until the next grace period.
    fn take(&mut self) -> Option<u32> {
        let free = self.busy.iter().position(|b| !b)?;
        self.busy[free] = true;
        Some(free as u32)
    }

    /// After a grace period: only what is still referenced stays busy.
    fn settle(&mut self, referenced: impl Iterator<Item = u32>) {
        self.busy.fill(false);
        for entry in referenced {
            self.busy[entry as usize] = true;
        }
    }
}

fn entry_ref(entry: u32) -> EntryRef {
    EntryRef::from(entry) + 1
}

/// Typed handles on the pinned maps.
///
/// A hook's entry is never rewritten in place: a change writes a free
/// `SOURCE_ENTRIES` element and then publishes it (one atomic store), so
/// programs read a whole old or a whole new entry. An element unpublished
/// (and a session id freed) may still be read by a program that started
/// before; it is written again only after an RCU grace period. Entries being
/// twice as many as hooks, a batch of changes needs at most one such wait.
pub struct Store {
    index: IndexMapping,
    overflow: HashMap<MapData, SourceKey, u32>,
    entries: Array<MapData, SourceEntry>,
    sessions: Array<MapData, SessionConfig>,
    counters: PerCpuArray<MapData, DirectionCounters>,
    selectors: Array<MapData, Selector>,
    insns: Array<MapData, FilterInsn>,
    specs: HashMap<MapData, u32, FilterSpec>,
    rate: Array<MapData, RateState>,
    /// `VIEW` and `NATIVE_FILTERS`, when native filters are on and the
    /// pinned maps have them.
    native: Option<(MapData, MapData)>,
    /// `NATIVE_FILTERS` while native filters are switched off.
    switched_off: Option<MapData>,
    /// The pinned VIEW is not this build's: why, if so.
    view_layout: Option<String>,
    /// `FILTER_INSNS` ranges in use; read from the selectors when first needed.
    pool: Option<InsnPool>,
    /// Selector banks unpublished since the last grace period (programs may
    /// still read them); until the first one, every bank counts as such.
    retired_banks: BTreeSet<u32>,
    banks_quiet: bool,
    /// Program ranges of removed sessions, free after the next grace period.
    pending_release: Vec<(u32, u32)>,
    /// Every hook, as published.
    hooks: BTreeMap<SourceKey, Hook>,
    /// Entries that stray references (not ours to clear) still point to.
    stray: Vec<u32>,
    entries_pool: EntryPool,
    /// A session slot may have been freed since the last grace period.
    freed_since_grace_period: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("hooks", &self.hooks.len()).finish_non_exhaustive()
    }
}

fn open_pinned(layout: &Layout, name: &str) -> Result<Option<MapData>> {
    match MapData::from_pin(layout.map(name)) {
        Ok(m) => Ok(Some(m)),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening pinned map {name}")),
    }
}

impl Store {
    /// Opens the namespace's maps; `None` if no session was ever created there.
    pub fn open(layout: &Layout) -> Result<Option<Self>> {
        if layout.map(names::LEGACY_SOURCES).exists() {
            return Err(InputError::LegacyState { dir: layout.dir.display().to_string() }.into());
        }
        let mut maps = Vec::new();
        for name in [
            names::SOURCE_INDEX,
            names::SOURCE_OVERFLOW,
            names::SOURCE_ENTRIES,
            names::SESSIONS,
            names::COUNTERS,
        ] {
            match open_pinned(layout, name)? {
                Some(m) => maps.push(m),
                None => return Ok(None),
            }
        }
        let [index, overflow, entries, sessions, counters] =
            <[MapData; 5]>::try_from(maps).expect("five maps");
        let dir = layout.dir.display().to_string();
        // Earlier builds kept one 16-byte counter per reason in COUNTERS.
        let counter_bytes = value_size(names::COUNTERS, &counters)?;
        if counter_bytes == 16 {
            return Err(InputError::CounterLayout { dir, value_size: counter_bytes }.into());
        }
        check_value_size(&dir, names::COUNTERS, &counters, size_of::<DirectionCounters>())?;
        check_value_size(&dir, names::SESSIONS, &sessions, size_of::<SessionConfig>())?;
        let mut selection_maps = Vec::new();
        for name in [names::SELECTORS, names::FILTER_INSNS, names::FILTER_SPECS, names::RATE_STATE] {
            match open_pinned(layout, name)? {
                Some(m) => selection_maps.push(m),
                None => {
                    return Err(InputError::StateLayout {
                        dir,
                        what: format!("it has no {name} map (it was made by a build without filters)"),
                    }
                    .into());
                }
            }
        }
        let [selectors, insns, specs, rate] = <[MapData; 4]>::try_from(selection_maps).expect("four maps");
        check_value_size(&dir, names::SELECTORS, &selectors, size_of::<Selector>())?;
        check_value_size(&dir, names::FILTER_INSNS, &insns, size_of::<FilterInsn>())?;
        // This build's programs read the view at its offsets (an earlier
        // build's VIEW had no chain of native filters): with another one,
        // what exists can be listed and detached, but nothing attached.
        let mut view = open_pinned(layout, names::VIEW)?;
        let want = size_of::<mirror_common::view::View>();
        let view_layout = match &view {
            Some(v) => {
                let have = value_size(names::VIEW, v)?;
                (have != want).then(|| {
                    format!(
                        "{dir}: its VIEW map has {have}-byte values, this build's programs read {want}: it was \
                         made by an earlier build, whose sessions this build can list and detach but not \
                         change; `detach --all` (or `gc`), then attach again"
                    )
                })
            }
            None => None,
        };
        if view_layout.is_some() {
            view = None;
        }
        // Switched off, the array is kept only to be emptied before a change.
        let (native_array, switched_off) = match open_pinned(layout, names::NATIVE_FILTERS)? {
            Some(array) if !native::enabled() => (None, Some(array)),
            array => (array, None),
        };
        let mut store = Self {
            index: IndexMapping::new(index)?,
            overflow: HashMap::try_from(Map::HashMap(overflow))?,
            entries: Array::try_from(Map::Array(entries))?,
            sessions: Array::try_from(Map::Array(sessions))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(counters))?,
            selectors: Array::try_from(Map::Array(selectors))?,
            insns: Array::try_from(Map::Array(insns))?,
            specs: HashMap::try_from(Map::HashMap(specs))?,
            rate: Array::try_from(Map::Array(rate))?,
            native: view.and_then(|view| native_array.map(|array| (view, array))),
            switched_off,
            view_layout,
            pool: None,
            retired_banks: BTreeSet::new(),
            banks_quiet: false,
            pending_release: Vec::new(),
            hooks: BTreeMap::new(),
            stray: Vec::new(),
            entries_pool: EntryPool::all_busy(),
            freed_since_grace_period: true,
        };
        store.load_hooks()?;
        Ok(Some(store))
    }

    /// Reads back which hooks are published where.
    fn load_hooks(&mut self) -> Result<()> {
        let entry_of = |r: EntryRef| -> Option<u32> {
            (r != NO_ENTRY && r <= EntryRef::from(SOURCE_ENTRY_COUNT)).then(|| (r - 1) as u32)
        };
        let mut overflow_cells = BTreeMap::new();
        for item in self.overflow.iter() {
            let (key, cell) = item.context("reading SOURCE_OVERFLOW")?;
            overflow_cells.insert(cell, key);
        }
        for cell in 0..source_index::CELLS {
            let Some(entry) = entry_of(self.index.cell(cell).load(Ordering::Acquire)) else { continue };
            let sessions = self.entries.get(&entry, 0).context("reading SOURCE_ENTRIES")?;
            let hook = sessions.hook;
            // Programs ignore an entry that is not the cell's hook's; so do
            // we, but it stays busy: programs may still reach it.
            let owned = if cell < source_index::OVERFLOW_BASE {
                source_index::cell(hook.ifindex, hook.direction) == cell
            } else {
                overflow_cells.get(&cell) == Some(&hook)
            };
            if owned {
                self.hooks.insert(hook, Hook { cell, entry, sessions });
            } else {
                tracing::warn!(cell, entry, "index cell refers to another hook's entry; ignored");
                self.stray.push(entry);
            }
        }
        Ok(())
    }

    /// Waits for every program run that may still use what was just removed
    /// (e.g. a copy being cut by a destination hook about to be detached).
    pub fn wait_for_readers(&mut self) -> Result<()> {
        crate::dataplane::rcu::wait_for_running_programs()?;
        self.freed_since_grace_period = false;
        self.banks_quiet = true;
        if let Some(pool) = &mut self.pool {
            for (start, len) in self.pending_release.drain(..) {
                pool.release(start, len);
            }
        }
        // A bank given up before this grace period, that no published slot
        // names any more, is free: its program's range goes back to the pool
        // (else every session that ever changed would hold two).
        let in_use = self.banks_in_use();
        for index in std::mem::take(&mut self.retired_banks) {
            if in_use.contains(&index) {
                self.retired_banks.insert(index);
                continue;
            }
            let old = self.selectors.get(&index, 0).context("reading SELECTORS")?;
            if old != Selector::default() {
                if let Some(pool) = &mut self.pool {
                    pool.release(old.prog_start, old.prog_len);
                }
                self.selectors.set(index, Selector::default(), 0).context("writing SELECTORS")?;
                self.clear_native(index)?;
            }
        }
        self.entries_pool.settle(self.hooks.values().map(|h| h.entry).chain(self.stray.iter().copied()));
        Ok(())
    }

    /// The `SELECTORS` banks published slots name.
    fn banks_in_use(&self) -> BTreeSet<u32> {
        self.hooks
            .values()
            .flat_map(|h| h.sessions.slots[..h.sessions.slot_count as usize].iter())
            .filter(|slot| slot.flags & slot_flags::NEEDS_SELECTOR != 0)
            .map(|slot| selector_index(slot.session_id, slot.flags & slot_flags::BANK1 != 0))
            .collect()
    }

    /// Call before any write that fills a session slot.
    fn before_fill(&mut self) -> Result<()> {
        if self.freed_since_grace_period {
            self.wait_for_readers()?;
        }
        Ok(())
    }

    /// A `SOURCE_ENTRIES` element no program can be reading.
    fn free_entry(&mut self) -> Result<u32> {
        if let Some(entry) = self.entries_pool.take() {
            return Ok(entry);
        }
        self.wait_for_readers()?;
        self.entries_pool.take().context("SOURCE_ENTRIES is full")
    }

    /// Publishes `entry` as the sessions of `key` (a new hook or a change).
    fn set_hook(&mut self, key: SourceKey, mut entry: SourceEntry) -> Result<()> {
        entry.hook = key;
        self.order_slots(&mut entry)?;
        entry.flags = entry_flags::of(&entry.slots[..entry.slot_count as usize]);
        let number = self.free_entry()?;
        self.entries.set(number, entry, 0).context("writing SOURCE_ENTRIES")?;
        let existing = self.hooks.get(&key).map(|h| h.cell);
        let cell = match existing {
            Some(cell) => cell,
            None => {
                let direct = source_index::cell(key.ifindex, key.direction);
                if self.index.cell(direct).load(Ordering::Acquire) == NO_ENTRY {
                    direct
                } else {
                    self.free_overflow_cell()?
                }
            }
        };
        let hook = Hook { cell, entry: number, sessions: entry };
        // Entry first, then the reference to it, then (new overflow hooks)
        // the way to the reference.
        self.index.cell(cell).store(entry_ref(number), Ordering::Release);
        if existing.is_none() && hook.in_overflow() {
            self.overflow.insert(key, cell, 0).context("writing SOURCE_OVERFLOW")?;
        }
        // A previous entry stays busy until the next grace period.
        self.hooks.insert(key, hook);
        Ok(())
    }

    /// Puts a hook's slots in the order the datapath serves them: by the
    /// sessions' priority (lower first), then by session id.
    fn order_slots(&self, entry: &mut SourceEntry) -> Result<()> {
        let n = entry.slot_count as usize;
        let mut keyed = Vec::with_capacity(n);
        for slot in &entry.slots[..n] {
            let priority = self.sessions.get(&slot.session_id, 0).context("reading SESSIONS")?.priority;
            keyed.push(((priority, slot.session_id), *slot));
        }
        keyed.sort_by_key(|(k, _)| *k);
        for (i, (_, slot)) in keyed.into_iter().enumerate() {
            entry.slots[i] = slot;
        }
        Ok(())
    }

    /// An unused overflow cell. One freed a moment ago is fine: a program
    /// that still reaches it through a stale `SOURCE_OVERFLOW` value finds
    /// another hook's entry there, and ignores it.
    fn free_overflow_cell(&self) -> Result<u32> {
        (source_index::OVERFLOW_BASE..source_index::CELLS)
            .find(|&c| self.index.cell(c).load(Ordering::Acquire) == NO_ENTRY)
            .context("no free overflow cell in SOURCE_INDEX")
    }

    /// Unpublishes hook `key`.
    fn remove_hook(&mut self, key: SourceKey) -> Result<()> {
        let Some(hook) = self.hooks.remove(&key) else { return Ok(()) };
        if hook.in_overflow() {
            self.overflow.remove(&key).context("deleting from SOURCE_OVERFLOW")?;
        }
        self.index.cell(hook.cell).store(NO_ENTRY, Ordering::Release);
        Ok(())
    }

    fn hook_entry(&self, key: &SourceKey) -> Option<SourceEntry> {
        self.hooks.get(key).map(|h| h.sessions)
    }

    /// Opens the maps, creating and pinning them first if needed.
    pub fn open_or_create(layout: &Layout) -> Result<Self> {
        if let Some(store) = Self::open(layout)? {
            return Ok(store);
        }
        drop(load_object(layout)?);
        Self::open(layout)?.context("maps missing right after pinning them")
    }

    /// Every session, by id, with its sources.
    pub fn sessions(&self) -> Result<Vec<Session>> {
        self.read_sessions(true)
    }

    /// [`Self::sessions`] without the selections' text (`select_text` is
    /// empty): for readers that only count, such as a metrics scrape (a text
    /// is up to 4 KiB a session, one lookup each).
    pub fn sessions_without_text(&self) -> Result<Vec<Session>> {
        self.read_sessions(false)
    }

    fn read_sessions(&self, with_text: bool) -> Result<Vec<Session>> {
        use aya::maps::IterableMap as _;
        let mut by_id: BTreeMap<u32, Session> = BTreeMap::new();
        // One batch read of the whole table; one lookup per id if the
        // kernel cannot batch.
        let configs =
            match super::batch::array_values::<SessionConfig>(self.sessions.map().fd().as_fd(), MAX_SESSIONS)
            {
                Ok(all) if all.len() == MAX_SESSIONS as usize => all,
                _ => (0..MAX_SESSIONS)
                    .map(|id| self.sessions.get(&id, 0).context("reading SESSIONS"))
                    .collect::<Result<Vec<_>>>()?,
            };
        for (id, config) in configs.into_iter().enumerate().skip(1) {
            let id = id as u32;
            if !config.is_free() {
                let select_text = if with_text { self.select_text(id, &config)? } else { String::new() };
                let filter_native = with_text
                    && config.filter_insns != 0
                    && self
                        .selectors
                        .get(&selector_index(id, config.select_bank != 0), 0)
                        .context("reading SELECTORS")?
                        .flags
                        & selector_flags::NATIVE
                        != 0;
                by_id.insert(
                    id,
                    Session {
                        id,
                        config,
                        sources: Vec::new(),
                        taps: Vec::new(),
                        stale_slots: false,
                        select_text,
                        filter_native,
                    },
                );
            }
        }
        for (key, entry) in self.source_hooks() {
            for slot in &entry.slots[..entry.slot_count as usize] {
                if let Some(s) = by_id.get_mut(&slot.session_id) {
                    s.taps.push(key);
                    s.stale_slots |= *slot != slot_of(s.id, &s.config);
                    if !s.sources.contains(&key.ifindex) {
                        s.sources.push(key.ifindex);
                    }
                }
            }
        }
        Ok(by_id.into_values().collect())
    }

    /// Every (source, direction) hook with its entry.
    pub fn source_hooks(&self) -> Vec<(SourceKey, SourceEntry)> {
        self.hooks.iter().map(|(key, h)| (*key, h.sessions)).collect()
    }

    /// The stored text of the selection `config` uses ("" = none).
    pub fn select_text(&self, id: u32, config: &SessionConfig) -> Result<String> {
        if config.filter_insns == 0 {
            return Ok(String::new());
        }
        match self.specs.get(&selector_index(id, config.select_bank == 1), 0) {
            Ok(spec) => Ok(selection::unpack_text(&spec)),
            Err(MapError::KeyNotFound) => Ok(String::new()),
            Err(e) => Err(e).context("reading FILTER_SPECS"),
        }
    }

    /// `FILTER_INSNS` ranges in use, read from every session's selectors the
    /// first time they are needed.
    fn pool(&mut self) -> Result<&mut InsnPool> {
        if self.pool.is_none() {
            let mut pool = InsnPool::default();
            for id in 1..MAX_SESSIONS {
                if self.sessions.get(&id, 0).context("reading SESSIONS")?.is_free() {
                    continue;
                }
                for bank in [false, true] {
                    let s = self.selectors.get(&selector_index(id, bank), 0).context("reading SELECTORS")?;
                    pool.mark_used(s.prog_start, s.prog_len);
                }
            }
            for (start, len) in &self.pending_release {
                pool.mark_used(*start, *len);
            }
            self.pool = Some(pool);
        }
        Ok(self.pool.as_mut().expect("just set"))
    }

    /// Writes `select` into the bank of session `id` that no slot uses (bank
    /// 0 for a new session) and points `config` at it; slots follow when
    /// republished ([`Self::refresh_slots`], [`Self::add_taps`]).
    pub fn write_selection(
        &mut self,
        id: u32,
        config: &mut SessionConfig,
        select: &SelectSpec,
        fresh: bool,
    ) -> Result<()> {
        let bank1 = !fresh && config.select_bank == 0;
        let index = selector_index(id, bank1);
        if !fresh && self.banks_in_use().contains(&index) {
            // An update was interrupted: some slots still name the bank this
            // one would write. Point them at the current bank first.
            self.refresh_slots(id)?;
            self.wait_for_readers()?;
        }
        if !self.banks_quiet || self.retired_banks.contains(&index) {
            self.wait_for_readers()?;
        }
        let old = self.selectors.get(&index, 0).context("reading SELECTORS")?;
        let program = select.program.as_ref();
        let want = program.map_or(0, |p| p.insns.len() as u32);
        let mut start = {
            let pool = self.pool()?;
            pool.release(old.prog_start, old.prog_len);
            if want == 0 { Ok(0) } else { pool.take(want) }
        };
        if start.is_err() && (!self.retired_banks.is_empty() || !self.pending_release.is_empty()) {
            // Ranges given up but not yet past a grace period: wait, retry.
            self.wait_for_readers()?;
            start = self.pool()?.take(want);
        }
        let start = start?;
        if let Some(p) = program {
            for (i, insn) in p.insns.iter().enumerate() {
                self.insns.set(start + i as u32, *insn, 0).context("writing FILTER_INSNS")?;
            }
        }
        select.apply_to(config);
        config.select_bank = u32::from(bank1);
        let mut selector = selection::selector_of(config, program, start);
        selector.flags |= self.install_native(index, program.map(|p| p.insns.as_slice()));
        self.selectors.set(index, selector, 0).context("writing SELECTORS")?;
        if select.text.is_empty() {
            self.remove_spec(index)?;
        } else {
            self.specs
                .insert(index, selection::pack_text(&select.text)?, 0)
                .context("writing FILTER_SPECS")?;
        }
        if !fresh {
            // The bank in use until now: readers may remain until a grace period.
            self.retired_banks.insert(selector_index(id, !bank1));
        }
        Ok(())
    }

    /// Puts the native code of `program` (none: no program) at `index` of
    /// `NATIVE_FILTERS`, before the selector that says so is written, and
    /// returns the flags that selector takes (0: no native code). A program
    /// the kernel does not take is left to the interpreter, with a
    /// warning; the selection stands.
    fn install_native(&self, index: u32, program: Option<&[FilterInsn]>) -> u32 {
        let Some((view, array)) = &self.native else { return 0 };
        let Some(insns) = program else {
            if let Err(e) = native::clear(array.fd().as_fd(), index) {
                tracing::warn!(selector = index, "{e:#}");
            }
            return 0;
        };
        native::install(view.fd().as_fd(), array.fd().as_fd(), index, insns).unwrap_or_else(|e| {
            tracing::warn!(selector = index, "filter left to the interpreter: {e:#}");
            // Nor keep an earlier filter's code here.
            let _ = native::clear(array.fd().as_fd(), index);
            0
        })
    }

    /// Whether this build can change what the maps hold; the reconcile
    /// asks before any change.
    pub fn check_layout(&self) -> Result<()> {
        match &self.view_layout {
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => Ok(()),
        }
    }

    /// With native filters turned off (`MIRROR_AGENT_NATIVE_FILTERS=0`),
    /// before a change: the selectors that name native code stop naming it
    /// and the array empties, so that every filter is interpreted from now
    /// on (until written again without the switch). Safe at any moment: a
    /// hook that still finds the flag finds no program, and interprets.
    pub fn turn_native_off_if_disabled(&mut self) -> Result<()> {
        let Some(array) = self.switched_off.take() else { return Ok(()) };
        let mut cleared = 0;
        for index in 0..SELECTOR_BANKS {
            let mut selector = self.selectors.get(&index, 0).context("reading SELECTORS")?;
            if selector.flags & selector_flags::NATIVE != 0 {
                selector.flags &= !selector_flags::NATIVE;
                self.selectors.set(index, selector, 0).context("writing SELECTORS")?;
                native::clear(array.fd().as_fd(), index)?;
                cleared += 1;
            }
        }
        if cleared != 0 {
            tracing::info!(selectors = cleared, "native filters off: every filter is interpreted");
        }
        Ok(())
    }

    /// Empties `NATIVE_FILTERS[index]` (the selector no longer names it).
    fn clear_native(&self, index: u32) -> Result<()> {
        match &self.native {
            Some((_, array)) => native::clear(array.fd().as_fd(), index),
            None => Ok(()),
        }
    }

    /// Deletes a bank's text; an absent one is fine.
    fn remove_spec(&mut self, index: u32) -> Result<()> {
        match self.specs.remove(&index) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("deleting from FILTER_SPECS"),
        }
    }

    /// The configuration of session `id`.
    pub fn session_config(&self, id: u32) -> Result<SessionConfig> {
        self.sessions.get(&id, 0).context("reading SESSIONS")
    }

    /// The session named `name` (without its selection's text).
    pub fn find(&self, name: &str) -> Result<Option<Session>> {
        Ok(self.sessions_without_text()?.into_iter().find(|s| s.name() == name))
    }

    fn free_id(&self) -> Result<u32> {
        for id in 1..MAX_SESSIONS {
            if self.sessions.get(&id, 0).context("reading SESSIONS")?.is_free() {
                return Ok(id);
            }
        }
        Err(InputError::SessionTableFull.into())
    }

    /// Checks that every (source, direction) can take one more session, and
    /// the namespace the hooks that would be new. `taps` name their source.
    pub fn check_capacity(&self, taps: &[(String, SourceKey)]) -> Result<()> {
        let mut new_hooks = 0;
        for (name, key) in taps {
            match self.hook_entry(key) {
                Some(entry) if entry.slot_count as usize >= MAX_SESSIONS_PER_SOURCE => {
                    return Err(InputError::SourceFull {
                        source_name: name.clone(),
                        direction: direction_name(key.direction),
                    }
                    .into());
                }
                Some(_) => {}
                None => new_hooks += 1,
            }
        }
        check_hook_count(self.hooks.len(), new_hooks)
    }

    /// Number of (source, direction) hooks in use.
    pub fn hook_count(&self) -> usize {
        self.hooks.len()
    }

    /// Writes the session's configuration and selection (with fresh
    /// counters and rate buckets) and returns its id. Sources are added
    /// separately, once the destination is ready.
    pub fn insert_session(&mut self, config: &SessionConfig, select: &SelectSpec) -> Result<u32> {
        let id = self.free_id()?;
        // Copies of a detached session with this id may still be in flight.
        self.before_fill()?;
        let mut config = *config;
        self.write_selection(id, &mut config, select, true)?;
        let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        for dir in [direction::INGRESS, direction::EGRESS] {
            let zero = PerCpuValues::try_from(vec![DirectionCounters::default(); cpus])?;
            self.counters.set(counter_index(id, dir), zero, 0)?;
        }
        self.rate.set(id, RateState::default(), 0).context("writing RATE_STATE")?;
        self.sessions.set(id, config, 0).context("writing SESSIONS")?;
        Ok(id)
    }

    /// Appends the session to each hook of `taps`.
    pub fn add_taps(&mut self, id: u32, config: &SessionConfig, taps: &[SourceKey]) -> Result<()> {
        for &key in taps {
            let mut entry = self.hook_entry(&key).unwrap_or_default();
            let n = entry.slot_count as usize;
            if entry.slots[..n].iter().any(|s| s.session_id == id) {
                continue;
            }
            anyhow::ensure!(n < MAX_SESSIONS_PER_SOURCE, "source {} is full", key.ifindex);
            entry.slots[n] = slot_of(id, config);
            entry.slot_count += 1;
            self.set_hook(key, entry)?;
        }
        Ok(())
    }

    /// Takes the session off every source hook (deleting hooks left empty).
    pub fn remove_sources(&mut self, id: u32) -> Result<()> {
        self.remove_taps_where(id, |_| true)
    }

    /// Takes the session off the hooks of `taps`.
    pub fn remove_taps(&mut self, id: u32, taps: &[SourceKey]) -> Result<()> {
        self.remove_taps_where(id, |k| taps.contains(k))
    }

    fn remove_taps_where(&mut self, id: u32, which: impl Fn(&SourceKey) -> bool) -> Result<()> {
        for (key, entry) in self.source_hooks() {
            if !which(&key) {
                continue;
            }
            let kept: Vec<SessionSlot> = entry.slots[..entry.slot_count as usize]
                .iter()
                .copied()
                .filter(|s| s.session_id != id)
                .collect();
            if kept.len() == entry.slot_count as usize {
                continue;
            }
            if kept.is_empty() {
                self.remove_hook(key)?;
            } else {
                let mut new = SourceEntry { slot_count: kept.len() as u32, ..Default::default() };
                new.slots[..kept.len()].copy_from_slice(&kept);
                self.set_hook(key, new)?;
            }
        }
        Ok(())
    }

    /// Rewrites a live session's configuration (its destination, snap
    /// length…). Its hooks keep the old copy until [`Self::refresh_slots`]:
    /// the caller attaches what the new configuration needs in between.
    ///
    /// A changed selection (`select`) is written into the bank the slots do
    /// not use; `config` is pointed at it.
    ///
    /// Returns whether the rate limit changed: the caller then restarts its
    /// buckets ([`Self::reset_rate`]) once no slot of the old rate runs.
    pub fn update_session(
        &mut self,
        id: u32,
        config: &SessionConfig,
        select: Option<&SelectSpec>,
    ) -> Result<bool> {
        let mut config = *config;
        let old = self.sessions.get(&id, 0).context("reading SESSIONS")?;
        if let Some(select) = select {
            self.write_selection(id, &mut config, select, false)?;
        }
        let rate = |c: &SessionConfig| (c.rate_limit_pps, c.rate_limit_bps, c.burst_packets, c.burst_bytes);
        self.sessions.set(id, config, 0).context("writing SESSIONS")?;
        Ok(rate(&old) != rate(&config))
    }

    /// Restarts session `id`'s rate buckets full. A bucket filled under an
    /// old rate may run far ahead of now (a large burst at a low rate); call
    /// after the slots of the new rate are published and a grace period
    /// passed, so no copy at the old rate charges the fresh bucket.
    pub fn reset_rate(&mut self, id: u32) -> Result<()> {
        self.rate.set(id, RateState::default(), 0).context("writing RATE_STATE")
    }

    /// Instructions the sessions' current programs hold in `FILTER_INSNS`.
    pub fn filter_insns_in_use(sessions: &[Session]) -> u32 {
        sessions.iter().map(|s| s.config.filter_insns).sum()
    }

    /// Makes every hook feeding session `id` carry its current configuration.
    pub fn refresh_slots(&mut self, id: u32) -> Result<()> {
        let config = self.sessions.get(&id, 0).context("reading SESSIONS")?;
        let want = slot_of(id, &config);
        for (key, mut entry) in self.source_hooks() {
            let n = entry.slot_count as usize;
            let Some(slot) = entry.slots[..n].iter_mut().find(|s| s.session_id == id) else { continue };
            let changed = *slot != want;
            *slot = want;
            // A changed priority moves the slot even if its bytes stay.
            let mut ordered = entry;
            self.order_slots(&mut ordered)?;
            if changed || ordered.slots != entry.slots {
                self.set_hook(key, entry)?;
            }
        }
        Ok(())
    }

    pub fn clear_session(&mut self, id: u32) -> Result<()> {
        self.sessions.set(id, SessionConfig::EMPTY, 0).context("writing SESSIONS")?;
        for bank in [false, true] {
            let index = selector_index(id, bank);
            let old = self.selectors.get(&index, 0).context("reading SELECTORS")?;
            if old != Selector::default() {
                self.pending_release.push((old.prog_start, old.prog_len));
                self.selectors.set(index, Selector::default(), 0).context("writing SELECTORS")?;
            }
            self.clear_native(index)?;
            self.remove_spec(index)?;
            self.retired_banks.insert(index);
        }
        self.freed_since_grace_period = true;
        Ok(())
    }

    /// Counters of every session id (by id, then direction), read with a
    /// few batch lookups; falls back to one lookup per counter on kernels
    /// without batch support for per-CPU arrays.
    pub fn all_counters(&self) -> Result<Vec<[ReasonCounters; 2]>> {
        use aya::maps::IterableMap as _;
        let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let slots = mirror_common::COUNTER_SLOTS as usize * reason::COUNT as usize;
        let flat = match super::batch::per_cpu_counters(
            self.counters.map().fd().as_fd(),
            mirror_common::COUNTER_SLOTS,
            cpus,
            reason::COUNT as usize,
        ) {
            Ok(flat) if flat.len() == slots => flat,
            other => {
                if let Err(e) = other {
                    tracing::debug!("batch lookup of COUNTERS: {e}; reading one by one");
                }
                let mut all = Vec::with_capacity(MAX_SESSIONS as usize);
                for id in 0..MAX_SESSIONS {
                    all.push([self.counters(id, direction::INGRESS)?, self.counters(id, direction::EGRESS)?]);
                }
                return Ok(all);
            }
        };
        let per = reason::COUNT as usize;
        Ok(flat
            .chunks_exact(per * 2)
            .map(|c| {
                let mut pair = [[Counter::default(); reason::COUNT as usize]; 2];
                for (d, slot) in pair.iter_mut().enumerate() {
                    slot.copy_from_slice(&c[d * per..(d + 1) * per]);
                    slot[reason::MATCHED as usize] = matched(slot);
                }
                pair
            })
            .collect())
    }

    /// Counters of one session (or [`mirror_common::GLOBAL_SESSION_ID`]) and
    /// direction, summed over CPUs, with `matched` derived from the outcomes.
    pub fn counters(&self, id: u32, dir: u32) -> Result<ReasonCounters> {
        let mut out = [Counter::default(); reason::COUNT as usize];
        for cpu in self.counters.get(&counter_index(id, dir), 0)?.iter() {
            for (slot, c) in out.iter_mut().zip(&cpu.reasons) {
                slot.packets += c.packets;
                slot.bytes += c.bytes;
            }
        }
        out[reason::MATCHED as usize] = matched(&out);
        Ok(out)
    }
}

/// What a hook needs of a session to copy for it.
fn slot_of(id: u32, config: &SessionConfig) -> SessionSlot {
    SessionSlot {
        session_id: id,
        dest_ifindex: config.dest_ifindex,
        snaplen: config.snaplen,
        flags: selection::slot_flags_of(config),
    }
}

/// Refuses state whose map `name` has another value size than this build's.
/// Bytes of `map`'s values, as the kernel has it.
fn value_size(name: &str, map: &MapData) -> Result<usize> {
    Ok(map.info().with_context(|| format!("reading {name}'s definition"))?.value_size() as usize)
}

fn check_value_size(dir: &str, name: &str, map: &MapData, want: usize) -> Result<()> {
    let have = value_size(name, map)?;
    if have != want {
        return Err(InputError::StateLayout {
            dir: dir.to_owned(),
            what: format!("its {name} has {have}-byte values (this build's have {want})"),
        }
        .into());
    }
    Ok(())
}

/// Packets selected by a session: each was counted under exactly one outcome;
/// its bytes are the outcome's plus what was cut off.
pub fn matched(counters: &ReasonCounters) -> Counter {
    let mut m = counters[reason::TRUNCATED as usize];
    m.packets = 0;
    for r in reason::OUTCOMES {
        m.packets += counters[r as usize].packets;
        m.bytes += counters[r as usize].bytes;
    }
    m
}

/// Checks that `new` more hooks fit next to `existing` ones.
pub fn check_hook_count(existing: usize, new: usize) -> Result<()> {
    if existing + new > MAX_SOURCE_HOOKS as usize {
        return Err(InputError::TooManySourceHooks { existing, new }.into());
    }
    Ok(())
}

/// The directions set in a session's direction mask.
pub fn directions(mask: u32) -> impl Iterator<Item = u32> {
    [direction::INGRESS, direction::EGRESS].into_iter().filter(move |d| mask & (1 << d) != 0)
}

pub fn direction_name(dir: u32) -> &'static str {
    if dir == direction::INGRESS { "ingress" } else { "egress" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_is_every_outcome_once_with_the_cut_bytes() {
        let mut c = [Counter::default(); reason::COUNT as usize];
        c[reason::MIRRORED as usize] = Counter { packets: 3, bytes: 3 * 64 };
        c[reason::TRUNCATED as usize] = Counter { packets: 2, bytes: 2 * 936 };
        c[reason::DEST_CONGESTED as usize] = Counter { packets: 1, bytes: 100 };
        c[reason::SNAP_FAILED as usize] = Counter { packets: 1, bytes: 1000 };
        c[reason::COPY_NOT_REMIRRORED as usize] = Counter { packets: 9, bytes: 9 };
        assert_eq!(matched(&c), Counter { packets: 5, bytes: 192 + 1872 + 100 + 1000 });
    }

    #[test]
    fn entries_are_reused_only_after_a_grace_period() {
        let mut pool = EntryPool::all_busy();
        assert_eq!(pool.take(), None, "at open, an earlier invocation may have just unpublished any");
        pool.settle([1].into_iter());
        assert_eq!(pool.take(), Some(0));
        assert_eq!(pool.take(), Some(2), "entry 1 is published");
        // Entry 0 replaced by entry 2: 0 stays busy until the next settle.
        assert_eq!(pool.take(), Some(3));
        pool.settle([1, 2].into_iter());
        assert_eq!(pool.take(), Some(0));
        assert_eq!(pool.take(), Some(3));
    }

    #[test]
    fn hook_count_is_capped_with_a_message_naming_both_figures() {
        assert!(check_hook_count(MAX_SOURCE_HOOKS as usize - 2, 2).is_ok());
        let err = check_hook_count(MAX_SOURCE_HOOKS as usize - 2, 3).unwrap_err().to_string();
        assert!(err.contains("add 3 source hooks") && err.contains("16382"), "{err}");
    }

    #[test]
    fn session_names_are_checked() {
        assert!(pack_name("mon-1.a_b").is_ok());
        for bad in ["", "-x", "a b", "é", &"x".repeat(33)] {
            assert!(pack_name(bad).is_err(), "{bad:?}");
        }
    }
}
