//! tc programs of the mirror agent.
//!
//! Three entry points, named by place and direction:
//! - `mirror_src_ingress`: tcx/ingress of a source interface;
//! - `mirror_src_egress`:  tcx/egress of a source interface;
//! - `mirror_dst_egress`:  tcx/egress of a destination whose sessions cut
//!   copies to a snap length (later: where copies get encapsulated).
//!
//! The contract is fail-open: every entry point returns `TC_ACT_UNSPEC`
//! (`TCX_NEXT`: run the next program or classic filter) for every original
//! packet, whatever happens. Failures are counted, never acted upon.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod datapath;
#[cfg(target_arch = "bpf")]
mod select;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
