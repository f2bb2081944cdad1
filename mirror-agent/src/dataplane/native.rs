//! Native filter programs: loads the code [`crate::filter::native`]
//! generates, and keeps `NATIVE_FILTERS` (the program array the hooks
//! tail-call) in step with the selectors.
//!
//! aya loads the programs of our object; these come from no object, so they
//! go through `bpf(2)` directly.
use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use mirror_common::{FilterInsn, selector_flags};

use crate::{
    dataplane::sys::{BPF_MAP_DELETE_ELEM, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD, MapElemAttr, bpf},
    filter::native::{self, BpfInsn, Maps, Source},
};

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The environment variable that turns native filters off when `0`.
pub const SWITCH: &str = "MIRROR_AGENT_NATIVE_FILTERS";

/// Whether selections get native programs: on, unless the environment
/// says `MIRROR_AGENT_NATIVE_FILTERS=0` (the interpreter then runs every
/// filter; an escape hatch, and how tests hold both paths to tcpdump).
pub fn enabled() -> bool {
    std::env::var_os(SWITCH).is_none_or(|v| v != "0")
}

/// `bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads `insns` as a tc program named `name`; the verifier's log is in
/// the error.
pub fn load(insns: &[BpfInsn], name: &str) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new file descriptor that we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(first) => {
            // Again with the log, to say why.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf(BPF_PROG_LOAD, &mut attr);
            if let Ok(fd) = again {
                // SAFETY: as above.
                drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the verifier rejected native filter {name}: {first}\n{}", tail.join("\n"))
        }
    }
}

fn elem(cmd: libc::c_long, map: BorrowedFd<'_>, index: u32, value: Option<u32>) -> std::io::Result<()> {
    let value = value.unwrap_or(0);
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: (&raw const index) as u64,
        value: if cmd == BPF_MAP_UPDATE_ELEM { (&raw const value) as u64 } else { 0 },
        flags: 0,
    };
    bpf(cmd, &mut attr).map(drop)
}

/// Points `NATIVE_FILTERS[index]` at `program`.
pub fn set(array: BorrowedFd<'_>, index: u32, program: BorrowedFd<'_>) -> Result<()> {
    elem(BPF_MAP_UPDATE_ELEM, array, index, Some(program.as_raw_fd() as u32))
        .with_context(|| format!("writing NATIVE_FILTERS[{index}]"))
}

/// Empties `NATIVE_FILTERS[index]` (an empty one is fine).
pub fn clear(array: BorrowedFd<'_>, index: u32) -> Result<()> {
    match elem(BPF_MAP_DELETE_ELEM, array, index, None) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
            Err(e).with_context(|| format!("clearing NATIVE_FILTERS[{index}]"))
        }
        _ => Ok(()),
    }
}

/// Generates and loads the native program of `program` (the filter of
/// selector `index`) and puts it at `index` of the array. Returns the
/// flags the selector then takes: `NATIVE`, and `FIELDS` if the code reads
/// the view (which the hook then fills and parses before the chain runs).
pub fn install(
    view: BorrowedFd<'_>,
    array: BorrowedFd<'_>,
    index: u32,
    program: &[FilterInsn],
) -> Result<u32> {
    let maps = Maps { view: view.as_raw_fd(), native: array.as_raw_fd() };
    let insns = native::generate(program, maps);
    let fd = load(&insns, &format!("mirror_nf_{index}"))?;
    // The array holds its own reference: our descriptor closes here.
    set(array, index, fd.as_fd())?;
    Ok(match Source::of(program) {
        Source::View => selector_flags::NATIVE | selector_flags::FIELDS,
        Source::Packet => selector_flags::NATIVE,
    })
}
