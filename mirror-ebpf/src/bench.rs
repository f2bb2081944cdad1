//! Programs of `cargo xtask bench`, never loaded by the agent:
//! - `bench_sink`: at tcx/ingress of the benchmark's sink and collector,
//!   counts and drops every packet as early as the stack allows, so that
//!   disposing of packets does not swamp what is measured;
//! - `bench_softirq_entry`/`_exit`: on the raw tracepoints
//!   `irq:softirq_entry`/`softirq_exit`, add up the time each CPU spends in
//!   NET_RX softirq, exactly (the VM has no PMU; /proc/stat is tick-sampled);
//! - `bench_clone_floor`: the least a BPF mirror can do, one
//!   `bpf_clone_redirect` to a load-time constant: the floor of the mechanism,
//!   against which the agent's own program cost is read.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
        helpers::generated::{bpf_clone_redirect, bpf_ktime_get_ns},
        macros::{classifier, map, raw_tracepoint},
        maps::PerCpuArray,
        programs::{RawTracePointContext, TcContext},
    };

    /// `NET_RX_SOFTIRQ` in `enum softirq_nr`.
    const NET_RX_SOFTIRQ: u32 = 3;

    /// Packets dropped by this sink, per CPU.
    #[map]
    static SINK_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
    /// Nanoseconds spent in NET_RX softirq, per CPU.
    #[map]
    static NET_RX_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
    /// When the current NET_RX softirq started on this CPU (0 = not in one).
    #[map]
    static NET_RX_START: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    #[classifier]
    pub fn bench_sink(_ctx: TcContext) -> i32 {
        if let Some(n) = SINK_PACKETS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, this CPU only.
            unsafe { *n += 1 };
        }
        TC_ACT_SHOT
    }

    /// Destination of `bench_clone_floor`, set at load time.
    #[unsafe(no_mangle)]
    static FLOOR_DEST_IFINDEX: u32 = 0;

    #[classifier]
    pub fn bench_clone_floor(ctx: TcContext) -> i32 {
        // SAFETY: a load-time constant; the volatile read keeps the compiler
        // from folding the placeholder 0.
        let dest = unsafe { core::ptr::read_volatile(&FLOOR_DEST_IFINDEX) };
        // SAFETY: helper call with the program's own context.
        unsafe { bpf_clone_redirect(ctx.skb.skb, dest, 0) };
        TC_ACT_UNSPEC
    }

    #[raw_tracepoint(tracepoint = "softirq_entry")]
    pub fn bench_softirq_entry(ctx: RawTracePointContext) -> i32 {
        let vec: u64 = ctx.arg(0);
        if vec as u32 == NET_RX_SOFTIRQ
            && let Some(start) = NET_RX_START.get_ptr_mut(0)
        {
            // SAFETY: per-CPU slot; helper without arguments.
            unsafe { *start = bpf_ktime_get_ns() };
        }
        0
    }

    #[raw_tracepoint(tracepoint = "softirq_exit")]
    pub fn bench_softirq_exit(ctx: RawTracePointContext) -> i32 {
        let vec: u64 = ctx.arg(0);
        if vec as u32 != NET_RX_SOFTIRQ {
            return 0;
        }
        if let (Some(start), Some(total)) = (NET_RX_START.get_ptr_mut(0), NET_RX_NS.get_ptr_mut(0)) {
            // SAFETY: per-CPU slots of this CPU; softirqs do not nest on one CPU.
            unsafe {
                if *start != 0 {
                    *total += bpf_ktime_get_ns() - *start;
                    *start = 0;
                }
            }
        }
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
