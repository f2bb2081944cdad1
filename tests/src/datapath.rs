//! The source program alone, through BPF_PROG_TEST_RUN: a namespace with
//! two veth pairs (source `d0`, destination `d1`), a private bpffs, and the
//! maps written directly, as the agent would. For the selection tests and
//! the kernel half of the pcap-filter differential.
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use std::os::fd::AsFd as _;

use mirror_agent::{
    dataplane::{native, selection},
    filter::Program,
};
use mirror_common::{
    Counter, DirectionCounters, EntryRef, FilterInsn, SessionConfig, SessionSlot, SourceEntry, SourceKey,
    counter_index, entry_flags, reason, selector_index, source_index,
};

use crate::{run_command, topology::Netns};

/// Where the filter machine's `pc` is in the view, and the mark put there.
const MACHINE_PC: usize = core::mem::offset_of!(mirror_common::view::View, machine)
    + core::mem::offset_of!(mirror_common::vm::Machine, pc);
const POISON: u32 = 0xdead;

/// TC_ACT_UNSPEC as the kernel reports it: the only verdict originals get.
pub const NEXT: u32 = u32::MAX;
/// Offsets in `struct __sk_buff` that test runs may set.
const SKB_MARK: usize = 8;
const SKB_IFINDEX: usize = 40;
const SKB_SIZE: usize = 192;

/// A namespace with `d0` (source) and `d1` (destination), and a bpffs.
#[derive(Debug)]
pub struct Fixture {
    pub ns: Netns,
    bpffs: std::path::PathBuf,
    pub src: u32,
    pub dst: u32,
}

impl Fixture {
    pub fn new(role: &str) -> Self {
        let ns = Netns::new(role);
        for d in ["d0", "d1"] {
            let peer = format!("{d}p");
            ns.ip(&["link", "add", d, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["link", "set", &peer, "up"]);
            ns.ip(&["link", "set", d, "up"]);
        }
        let bpffs = std::env::temp_dir().join(format!("mirror-{role}-{}", std::process::id()));
        std::fs::create_dir_all(&bpffs).unwrap();
        run_command(std::process::Command::new("mount").args(["-t", "bpf", "bpf", bpffs.to_str().unwrap()]));
        let (src, dst) = (ns.ifindex("d0"), ns.ifindex("d1"));
        Self { ns, bpffs, src, dst }
    }

    /// The eBPF object, its maps pinned in the fixture's bpffs, no program
    /// loaded yet.
    pub fn object(&self) -> Ebpf {
        let bytes = std::fs::read(crate::ebpf_object()).expect("eBPF object (cargo xtask build-ebpf)");
        EbpfLoader::new().default_map_pin_directory(&self.bpffs).load(&bytes).expect("load object")
    }

    /// The object with the source and destination programs loaded (call
    /// inside the namespace); filters also run natively, as the agent's do
    /// (unless `MIRROR_AGENT_NATIVE_FILTERS=0`).
    pub fn load(&self) -> Datapath {
        self.load_with(native::enabled())
    }

    /// [`Self::load`], filters also run natively whatever the environment.
    pub fn load_native(&self) -> Datapath {
        self.load_with(true)
    }

    /// [`Self::load`], filters run by the interpreter alone.
    pub fn load_interpreted(&self) -> Datapath {
        self.load_with(false)
    }

    fn load_with(&self, native: bool) -> Datapath {
        let mut ebpf = self.object();
        for name in ["mirror_src_ingress", "mirror_src_egress", "mirror_dst_egress"] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        let mut dp = Datapath { ebpf, src: self.src, dst: self.dst, next_insn: 0, native: None };
        if native {
            let pin = |name: &str| aya::maps::MapData::from_pin(self.bpffs.join(name)).expect("pinned map");
            let (view, array) = (pin("VIEW"), pin("NATIVE_FILTERS"));
            dp.native = Some((view, array));
        }
        dp
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// One session of a hook, as the test wants it.
#[derive(Debug, Clone)]
pub struct TestSession {
    pub id: u32,
    pub config: SessionConfig,
    pub program: Option<Program>,
}

impl TestSession {
    /// Session `id` copying to the fixture's destination; dry run unless
    /// `copies` (a dry run counts exactly what would be copied).
    pub fn new(id: u32) -> Self {
        let mut config = SessionConfig::EMPTY;
        config.name[0] = b's';
        Self { id, config, program: None }
    }

    pub fn dry_run(mut self) -> Self {
        self.config.select_flags |= mirror_common::select_flags::DRY_RUN;
        self
    }

    pub fn with(mut self, f: impl FnOnce(&mut SessionConfig)) -> Self {
        f(&mut self.config);
        self
    }

    pub fn program(mut self, p: Program) -> Self {
        self.config.filter_insns = p.insns.len() as u32;
        self.program = Some(p);
        self
    }
}

/// The loaded programs and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub src: u32,
    pub dst: u32,
    next_insn: u32,
    /// `VIEW` and `NATIVE_FILTERS`, when filters also run natively (as
    /// the agent does unless `MIRROR_AGENT_NATIVE_FILTERS=0`).
    native: Option<(aya::maps::MapData, aya::maps::MapData)>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").field("src", &self.src).finish_non_exhaustive()
    }
}

impl Datapath {
    /// Makes `sessions`, in this order, the ingress slots of the source:
    /// configs, selectors (bank 0) and programs written as the agent does.
    pub fn set_sessions(&mut self, sessions: &[TestSession]) {
        let hook = SourceKey { ifindex: self.src, direction: mirror_common::direction::INGRESS };
        self.set_hook(hook, 0, sessions, self.dst);
    }

    /// Makes `sessions` the slots of `hook` (published through entry
    /// `number`), copying to `dest`.
    pub fn set_hook(&mut self, hook: SourceKey, number: u32, sessions: &[TestSession], dest: u32) {
        let mut entry = SourceEntry { hook, slot_count: sessions.len() as u32, ..Default::default() };
        for (i, s) in sessions.iter().enumerate() {
            let mut config = s.config;
            config.select_bank = 0;
            config.dest_ifindex = dest;
            let start = self.write_program(s.program.as_ref());
            let mut selector = selection::selector_of(&config, s.program.as_ref(), start);
            let index = selector_index(s.id, false);
            if let (Some((view, array)), Some(p)) = (&self.native, s.program.as_ref()) {
                selector.flags |= native::install(view.fd().as_fd(), array.fd().as_fd(), index, &p.insns)
                    .unwrap_or_else(|e| panic!("native filter of session {}: {e:#}", s.id));
            }
            let mut selectors: Array<_, mirror_common::Selector> =
                Array::try_from(self.ebpf.map_mut("SELECTORS").unwrap()).unwrap();
            selectors.set(selector_index(s.id, false), selector, 0).unwrap();
            let mut configs: Array<_, SessionConfig> =
                Array::try_from(self.ebpf.map_mut("SESSIONS").unwrap()).unwrap();
            configs.set(s.id, config, 0).unwrap();
            let flags = selection::slot_flags_of(&config);
            entry.slots[i] =
                SessionSlot { session_id: s.id, dest_ifindex: dest, snaplen: config.snaplen, flags };
        }
        entry.flags = entry_flags::of(&entry.slots[..sessions.len()]);
        let mut entries: Array<_, SourceEntry> =
            Array::try_from(self.ebpf.map_mut("SOURCE_ENTRIES").unwrap()).unwrap();
        entries.set(number, entry, 0).unwrap();
        let mut index: Array<_, EntryRef> =
            Array::try_from(self.ebpf.map_mut("SOURCE_INDEX").unwrap()).unwrap();
        index.set(source_index::cell(hook.ifindex, hook.direction), EntryRef::from(number) + 1, 0).unwrap();
    }

    fn write_program(&mut self, program: Option<&Program>) -> u32 {
        let Some(p) = program else { return 0 };
        let start = self.next_insn;
        let mut insns: Array<_, FilterInsn> =
            Array::try_from(self.ebpf.map_mut("FILTER_INSNS").unwrap()).unwrap();
        for (i, insn) in p.insns.iter().enumerate() {
            insns.set(start + i as u32, *insn, 0).unwrap();
        }
        self.next_insn += p.insns.len() as u32;
        if self.next_insn + mirror_common::filter::MAX_INSNS > mirror_common::filter::POOL_INSNS {
            self.next_insn = 0;
        }
        start
    }

    /// Runs the source program `repeat` times on `frame` with `mark`;
    /// returns (verdict, mark after).
    pub fn run(&self, frame: &[u8], mark: u32, repeat: u32) -> (u32, u32) {
        self.try_run(frame, mark, repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of a {}-byte frame: {e}", frame.len()))
    }

    /// [`Self::run`], or the kernel's refusal to test-run `frame` (it
    /// refuses frames with nothing past the Ethernet header, and IP frames
    /// shorter than their header).
    pub fn try_run(&self, frame: &[u8], mark: u32, repeat: u32) -> Result<(u32, u32), String> {
        let p: &SchedClassifier = self.ebpf.program("mirror_src_ingress").unwrap().try_into().unwrap();
        let mut ctx_in = [0u8; SKB_SIZE];
        ctx_in[SKB_MARK..SKB_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        ctx_in[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&self.src.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_SIZE];
        let mut data_out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..TestRunOptions::new()
        };
        let r = p.test_run(opts).map_err(|e| format!("{e:?}"))?;
        Ok((r.return_value, u32::from_ne_bytes(ctx_out[SKB_MARK..SKB_MARK + 4].try_into().unwrap())))
    }

    /// Empties `NATIVE_FILTERS[index]` behind the selector's back (a
    /// program being replaced).
    pub fn clear_native(&self, index: u32) {
        let (_, array) = self.native.as_ref().expect("native filters");
        native::clear(array.fd().as_fd(), index).unwrap();
    }

    /// Whether filters run natively here.
    pub fn native(&self) -> bool {
        self.native.is_some()
    }

    /// Every CPU's `VIEW`, as raw bytes.
    pub fn views(&self) -> Vec<Vec<u8>> {
        let map: PerCpuArray<_, [u8; size_of::<mirror_common::view::View>()]> =
            PerCpuArray::try_from(self.ebpf.map("VIEW").unwrap()).unwrap();
        map.get(&0, 0).unwrap().iter().map(|v| v.to_vec()).collect()
    }

    /// Sets every CPU's `VIEW` to `bytes`.
    pub fn set_views(&mut self, bytes: &[u8]) {
        let mut map: PerCpuArray<_, [u8; size_of::<mirror_common::view::View>()]> =
            PerCpuArray::try_from(self.ebpf.map_mut("VIEW").unwrap()).unwrap();
        let value: [u8; size_of::<mirror_common::view::View>()] = bytes.try_into().unwrap();
        let values = aya::maps::PerCpuValues::try_from(vec![value; aya::util::nr_cpus().unwrap()]).unwrap();
        map.set(0, values, 0).unwrap();
    }

    /// Marks every CPU's filter machine, so that [`Self::interpreted`]
    /// tells whether the interpreter ran since.
    pub fn poison_interpreter(&mut self) {
        let mut v = self.views()[0].clone();
        v[MACHINE_PC..MACHINE_PC + 4].copy_from_slice(&POISON.to_le_bytes());
        self.set_views(&v);
    }

    /// Whether the interpreter ran on some CPU since
    /// [`Self::poison_interpreter`] (it sets the machine's `pc`).
    pub fn interpreted(&self) -> bool {
        self.views()
            .iter()
            .any(|v| u32::from_le_bytes(v[MACHINE_PC..MACHINE_PC + 4].try_into().unwrap()) != POISON)
    }

    /// A session's ingress counter for `reason`, summed over CPUs.
    pub fn counter(&self, session: u32, r: u32) -> Counter {
        let map: PerCpuArray<_, DirectionCounters> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").unwrap()).unwrap();
        map.get(&counter_index(session, mirror_common::direction::INGRESS), 0).unwrap().iter().fold(
            Counter::default(),
            |a, c| {
                let c = c.reasons[r as usize];
                Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes }
            },
        )
    }

    /// Packets counted under `r` for `session`.
    pub fn packets(&self, session: u32, r: u32) -> u64 {
        self.counter(session, r).packets
    }

    /// Whether one run of `frame` is selected by the first slot (a dry-run
    /// session): its `dry_run` counter moves.
    pub fn selects(&self, session: u32, frame: &[u8]) -> bool {
        self.try_selects(session, frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of a {}-byte frame: {e}", frame.len()))
    }

    /// [`Self::selects`], or the kernel's refusal to test-run `frame`.
    pub fn try_selects(&self, session: u32, frame: &[u8]) -> Result<bool, String> {
        let before = self.packets(session, reason::DRY_RUN);
        let (verdict, _) = self.try_run(frame, 0, 1)?;
        assert_eq!(verdict, NEXT, "an original got another verdict than TC_ACT_UNSPEC");
        Ok(self.packets(session, reason::DRY_RUN) != before)
    }
}
