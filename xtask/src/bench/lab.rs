//! The benchmark's namespaces and the BPF that observes them.
//!
//! ```text
//!  mbench-gen           mbench-host (routes, ip_forward)          mbench-sink
//!  eth0 198.18.0.1 ── src0 198.18.0.254   dst0 198.18.2.254 ── eth0 198.18.2.2
//!  (AF_PACKET gen)    │ the mirrored source                       bench_sink: count+drop
//!                     mon0 (mirror destination) ── eth0  mbench-col   bench_sink: count+drop
//!                     198.18.3.1 (MTU 9000)           198.18.3.2
//!                     vx0: VXLAN 100 → 198.18.3.2 over mon0 (the remote-collector destination)
//! ```
//! Static neighbours, IPv6 off, fixed MACs: the only frames are the generator's.
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{RawTracePoint, SchedClassifier, TcAttachType},
};

pub const GEN: &str = "mbench-gen";
pub const HOST: &str = "mbench-host";
pub const SINK: &str = "mbench-sink";
pub const COL: &str = "mbench-col";

pub const GEN_IP: [u8; 4] = [198, 18, 0, 1];
pub const SINK_IP: [u8; 4] = [198, 18, 2, 2];
pub const GEN_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x12, 0, 0x01];
pub const SRC0_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x12, 0, 0xfe];
const DST0_MAC: &str = "02:00:c6:12:02:fe";
pub const SINK_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x12, 0x02, 0x02];
/// No interface has it: sent to src0, a frame is dropped as "other host" by
/// `ip_rcv` right after the source's hooks (the rate mode's originals).
pub const NOBODY_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x12, 0, 0xee];
const COL_MAC: &str = "02:00:c6:12:03:02";

/// How the host namespace moves packets from src0 to dst0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Forwarding {
    /// IPv4 routing: the forwarding path writes the packet (TTL), so a
    /// cloned original must be made private somewhere.
    Routed,
    /// A Linux bridge: the original is never written.
    Bridged,
}

/// Runs `cmd`, failing with its stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(["-n", ns]).args(args))
}

pub fn ns_exec(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Moves the calling thread into namespace `ns` (the agent's own helper).
pub fn enter(ns: &str) -> Result<()> {
    crate::netns::enter(ns)
}

/// Runs `f` on a thread inside `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The lab; torn down on drop.
pub struct Lab {
    object: Vec<u8>,
    sink: Option<Ebpf>,
    col: Ebpf,
    /// NET_RX accounting: attached only while the fixed mode runs; in the max
    /// mode the generator shares the CPU and the tracepoints fire per packet.
    softirq: Option<Ebpf>,
    /// `bench_clone_floor` on the source, while the clone-floor variant runs.
    clone_floor: Option<Ebpf>,
    /// `bench_sink` at tcx/egress of mon0, while the rate mode runs: copies
    /// are counted and dropped as the destination takes them.
    dest_sink: Option<Ebpf>,
    /// Destination MAC of the generator's frames.
    pub first_hop: [u8; 6],
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").finish_non_exhaustive()
    }
}

fn delete_namespaces() {
    for ns in [GEN, HOST, SINK, COL] {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
}

/// Drops `ebpf` (detaching its programs) inside `ns`: detaching must happen
/// where the interfaces live.
fn detach_in(ns: &str, ebpf: Option<Ebpf>) -> Result<()> {
    in_ns(ns, move || {
        drop(ebpf);
        Ok(())
    })
}

fn load_sink(object: &[u8], ns: &str) -> Result<Ebpf> {
    in_ns(ns, || {
        let mut ebpf = Ebpf::load(object).context("loading the bench object")?;
        let prog: &mut SchedClassifier = ebpf.program_mut("bench_sink").context("bench_sink")?.try_into()?;
        prog.load()?;
        prog.attach("eth0", TcAttachType::Ingress)?;
        Ok(ebpf)
    })
}

impl Lab {
    pub fn create(object: Vec<u8>, forwarding: Forwarding) -> Result<Self> {
        delete_namespaces();
        for ns in [GEN, HOST, SINK, COL] {
            sh(Command::new("ip").args(["netns", "add", ns]))?;
            sh(&mut ns_exec(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]))?;
            sh(&mut ns_exec(ns, &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]))?;
            ip(ns, &["link", "set", "lo", "up"])?;
        }
        ip(HOST, &["link", "add", "src0", "type", "veth", "peer", "name", "eth0", "netns", GEN])?;
        ip(HOST, &["link", "add", "dst0", "type", "veth", "peer", "name", "eth0", "netns", SINK])?;
        ip(HOST, &["link", "add", "mon0", "type", "veth", "peer", "name", "eth0", "netns", COL])?;
        ip(GEN, &["link", "set", "eth0", "address", &mac(GEN_MAC)])?;
        ip(HOST, &["link", "set", "src0", "address", &mac(SRC0_MAC)])?;
        ip(HOST, &["link", "set", "dst0", "address", DST0_MAC])?;
        ip(SINK, &["link", "set", "eth0", "address", &mac(SINK_MAC)])?;
        ip(GEN, &["addr", "add", "198.18.0.1/24", "dev", "eth0"])?;
        ip(HOST, &["addr", "add", "198.18.0.254/24", "dev", "src0"])?;
        ip(HOST, &["addr", "add", "198.18.2.254/24", "dev", "dst0"])?;
        ip(SINK, &["addr", "add", "198.18.2.2/24", "dev", "eth0"])?;
        for (ns, dev) in
            [(GEN, "eth0"), (SINK, "eth0"), (COL, "eth0"), (HOST, "src0"), (HOST, "dst0"), (HOST, "mon0")]
        {
            ip(ns, &["link", "set", dev, "up"])?;
        }
        // The remote-collector destination: VXLAN over mon0, on a jumbo
        // underlay so that no 1500-byte copy is fragmented. The collector
        // drops the encapsulated copies at tcx ingress, before any decap.
        ip(HOST, &["link", "set", "mon0", "mtu", "9000"])?;
        ip(COL, &["link", "set", "eth0", "mtu", "9000"])?;
        ip(HOST, &["addr", "add", "198.18.3.1/24", "dev", "mon0"])?;
        ip(COL, &["addr", "add", "198.18.3.2/24", "dev", "eth0"])?;
        ip(COL, &["link", "set", "eth0", "address", COL_MAC])?;
        ip(HOST, &["neigh", "add", "198.18.3.2", "lladdr", COL_MAC, "dev", "mon0", "nud", "permanent"])?;
        ip(
            HOST,
            &[
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "100",
                "local",
                "198.18.3.1",
                "remote",
                "198.18.3.2",
                "dev",
                "mon0",
                "dstport",
                "4789",
            ],
        )?;
        ip(HOST, &["link", "set", "vx0", "up"])?;
        sh(&mut ns_exec(HOST, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        sh(&mut ns_exec(HOST, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]))?;
        ip(
            HOST,
            &["neigh", "add", "198.18.2.2", "lladdr", &mac(SINK_MAC), "dev", "dst0", "nud", "permanent"],
        )?;
        ip(
            HOST,
            &["neigh", "add", "198.18.0.1", "lladdr", &mac(GEN_MAC), "dev", "src0", "nud", "permanent"],
        )?;
        ip(
            GEN,
            &["neigh", "add", "198.18.0.254", "lladdr", &mac(SRC0_MAC), "dev", "eth0", "nud", "permanent"],
        )?;
        ip(SINK, &["neigh", "add", "198.18.2.254", "lladdr", DST0_MAC, "dev", "eth0", "nud", "permanent"])?;
        ip(GEN, &["route", "add", "198.18.2.0/24", "via", "198.18.0.254"])?;
        ip(SINK, &["route", "add", "198.18.0.0/24", "via", "198.18.2.254"])?;
        if forwarding == Forwarding::Bridged {
            // The generator addresses the sink directly; a static FDB entry
            // keeps the bridge from flooding (the sink never talks back).
            ip(HOST, &["link", "add", "br0", "type", "bridge"])?;
            ip(HOST, &["link", "set", "br0", "multicast", "off", "up"])?;
            ip(HOST, &["link", "set", "src0", "master", "br0"])?;
            ip(HOST, &["link", "set", "dst0", "master", "br0"])?;
            sh(&mut ns_exec(
                HOST,
                &["bridge", "fdb", "add", &mac(SINK_MAC), "dev", "dst0", "master", "static"],
            ))?;
        }

        let sink = Some(load_sink(&object, SINK)?);
        let col = load_sink(&object, COL)?;
        let first_hop = if forwarding == Forwarding::Bridged { SINK_MAC } else { SRC0_MAC };
        Ok(Self { object, sink, col, softirq: None, clone_floor: None, dest_sink: None, first_hop })
    }

    pub fn set_net_rx_accounting(&mut self, on: bool) -> Result<()> {
        match (on, self.softirq.is_some()) {
            (true, false) => {
                let mut ebpf = Ebpf::load(&self.object)?;
                for (prog, tp) in
                    [("bench_softirq_entry", "softirq_entry"), ("bench_softirq_exit", "softirq_exit")]
                {
                    let p: &mut RawTracePoint = ebpf.program_mut(prog).context(prog)?.try_into()?;
                    p.load()?;
                    p.attach(tp)?;
                }
                self.softirq = Some(ebpf);
            }
            (false, true) => self.softirq = None,
            _ => {}
        }
        Ok(())
    }

    /// Attaches (or detaches) `bench_clone_floor` at tcx/ingress and egress of
    /// `source`, cloning to `dest`.
    pub fn set_clone_floor(&mut self, on: Option<(&str, &str)>) -> Result<()> {
        detach_in(HOST, self.clone_floor.take())?;
        let Some((source, dest)) = on else { return Ok(()) };
        let object = &self.object;
        self.clone_floor = Some(in_ns(HOST, || {
            let name = std::ffi::CString::new(dest)?;
            // SAFETY: a NUL-terminated name we own.
            let dest_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if dest_ifindex == 0 {
                bail!("no interface {dest} in {HOST}");
            }
            let mut ebpf = EbpfLoader::new()
                .override_global("FLOOR_DEST_IFINDEX", &dest_ifindex, true)
                .load(object)
                .context("loading the bench object")?;
            let prog: &mut SchedClassifier =
                ebpf.program_mut("bench_clone_floor").context("bench_clone_floor")?.try_into()?;
            prog.load()?;
            prog.attach(source, TcAttachType::Ingress)?;
            prog.attach(source, TcAttachType::Egress)?;
            Ok(ebpf)
        })?);
        Ok(())
    }

    /// Attaches (or detaches) `bench_sink` at tcx/egress of `dest`, first in
    /// its chain: copies then cost the source's CPU only the clone and the
    /// redirect, and [`Self::dest_copies`] counts them.
    pub fn set_dest_sink(&mut self, dest: Option<&str>) -> Result<()> {
        detach_in(HOST, self.dest_sink.take())?;
        let Some(dest) = dest else { return Ok(()) };
        let object = &self.object;
        self.dest_sink = Some(in_ns(HOST, || {
            let mut ebpf = Ebpf::load(object).context("loading the bench object")?;
            let prog: &mut SchedClassifier =
                ebpf.program_mut("bench_sink").context("bench_sink")?.try_into()?;
            prog.load()?;
            prog.attach(dest, TcAttachType::Egress)?;
            Ok(ebpf)
        })?);
        Ok(())
    }

    /// Copies counted at the destination's egress ([`Self::set_dest_sink`]).
    pub fn dest_copies(&self) -> Result<u64> {
        Self::sum(self.dest_sink.as_ref().context("destination sink detached")?, "SINK_PACKETS")
    }

    /// The sink drops in every mode but TCP, where it must answer.
    pub fn set_sink_drop(&mut self, dropping: bool) -> Result<()> {
        match (dropping, self.sink.is_some()) {
            (true, false) => self.sink = Some(load_sink(&self.object, SINK)?),
            (false, true) => detach_in(SINK, self.sink.take())?,
            _ => {}
        }
        Ok(())
    }

    fn sum(ebpf: &Ebpf, map: &'static str) -> Result<u64> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(map).context(map)?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// Packets the sink has dropped (forwarded by the host).
    pub fn sink_packets(&self) -> Result<u64> {
        Self::sum(self.sink.as_ref().context("sink program detached")?, "SINK_PACKETS")
    }

    /// Copies the collector has received.
    pub fn copies(&self) -> Result<u64> {
        Self::sum(&self.col, "SINK_PACKETS")
    }

    /// A reader of the packets `src0` has received.
    pub fn source_rx(&self) -> Result<RxCounter> {
        in_ns(HOST, || Ok(RxCounter(std::fs::File::open("/proc/thread-self/net/dev")?)))
    }

    /// Nanoseconds `cpu` has spent in NET_RX softirq.
    pub fn net_rx_ns(&self, cpu: usize) -> Result<u64> {
        let ebpf = self.softirq.as_ref().context("NET_RX accounting is off")?;
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map("NET_RX_NS").context("NET_RX_NS")?)?;
        Ok(m.get(&0, 0)?.get(cpu).copied().unwrap_or(0))
    }

    /// Steers src0's receive processing (RPS) to the CPUs in `mask` (0 = off).
    pub fn set_rps(&self, mask: u32) -> Result<()> {
        // /sys must be the host namespace's own: `ip netns exec` remounts it.
        sh(&mut ns_exec(
            HOST,
            &["sh", "-c", &format!("echo {mask:x} > /sys/class/net/src0/queues/rx-0/rps_cpus")],
        ))
        .map(drop)
    }
}

/// Packets `src0` has received: the kernel's counter, which every packet
/// that reaches the source's hooks passes first. `/proc/net/dev` opened in
/// the host namespace once, re-read from the start: cheap enough to sample
/// every few milliseconds.
#[derive(Debug)]
pub struct RxCounter(std::fs::File);

impl RxCounter {
    pub fn read(&mut self) -> Result<u64> {
        use std::io::{Read as _, Seek as _};
        self.0.rewind()?;
        let mut text = String::new();
        self.0.read_to_string(&mut text)?;
        let line = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("src0:"))
            .context("src0 in /proc/net/dev")?;
        Ok(line.split_whitespace().nth(1).context("/proc/net/dev columns")?.parse()?)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        delete_namespaces();
    }
}

/// The agent's program at tcx/ingress of `iface` (call in its namespace).
pub fn source_program(iface: &str) -> Result<aya::programs::ProgramFd> {
    let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
        .with_context(|| format!("querying tcx/ingress of {iface}"))?;
    // Program names are cut to 15 bytes.
    let ours = programs
        .iter()
        .find(|p| p.name_as_str() == Some("mirror_src_ingr"))
        .with_context(|| format!("no agent program at tcx/ingress of {iface}"))?;
    Ok(ours.fd()?)
}

/// `iface`'s index (call in its namespace).
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {iface}");
    }
    Ok(index)
}

/// Nanoseconds per run of `program` on `frame` arriving at `ifindex`, over
/// `repeat` runs, as the kernel times BPF_PROG_TEST_RUN.
pub fn test_run(program: &aya::programs::ProgramFd, frame: &[u8], ifindex: u32, repeat: u32) -> Result<f64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// `bpf_attr` for BPF_PROG_TEST_RUN.
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // `struct __sk_buff`, and where its `ifindex` is.
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = TestRunAttr {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix; its pointers outlive the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, size_of::<TestRunAttr>()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN");
    }
    // The kernel's mean per run, in whole nanoseconds.
    Ok(f64::from(attr.duration))
}
