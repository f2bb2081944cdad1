//! Waiting for BPF programs that may still read what the agent just changed.
//!
//! tc programs run inside RCU read-side sections, so an RCU grace period
//! (`synchronize_rcu()`) is exactly "every program run that started before
//! has finished". Userspace has no direct call for it; the one the kernel
//! documents for this purpose is an update of a map-of-maps, after which it
//! waits for programs that may hold the old inner map (`maybe_wait_bpf_programs`).
//! It works on every kernel with BPF, nohz_full and PREEMPT_RT included.
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` is the fallback: it does the same
//! except on nohz_full kernels, where it fails.
use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

use crate::dataplane::sys::{BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, MapElemAttr, bpf};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`; the kernel
/// takes a shorter attr than its own and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

fn create_map(attr: &mut MapCreateAttr) -> io::Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One RCU grace period through a map-of-maps update.
fn grace_period_via_map_of_maps() -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let inner = create_map(&mut MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        ..Default::default()
    })?;
    let outer = create_map(&mut MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd: inner.as_raw_fd() as u32,
        ..Default::default()
    })?;
    let key: u32 = 0;
    let value: u32 = inner.as_raw_fd() as u32;
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &mut MapElemAttr {
            map_fd: outer.as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            flags: 0,
        },
    )
    .map(drop)
}

fn grace_period_via_membarrier() -> io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Returns once every BPF program run that started before the call has
/// finished. About 10 ms.
pub fn wait_for_running_programs() -> Result<()> {
    let Err(map_err) = grace_period_via_map_of_maps() else { return Ok(()) };
    tracing::debug!("map-of-maps grace period: {map_err}; trying membarrier");
    if let Err(e) = grace_period_via_membarrier() {
        bail!(
            "cannot wait for running BPF programs to finish (map-of-maps update: {map_err}; \
             membarrier: {e}); refusing to reuse map entries they may still read"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs CAP_BPF (the test suite runs as root).
    #[test]
    fn a_grace_period_is_available_and_takes_time() {
        let start = std::time::Instant::now();
        grace_period_via_map_of_maps().expect("map-of-maps update");
        // synchronize_rcu() blocks for at least a few jiffies-worth of
        // quiescent states; an update that returned at once did not wait.
        assert!(start.elapsed() > std::time::Duration::from_micros(500), "{:?}", start.elapsed());
    }
}
