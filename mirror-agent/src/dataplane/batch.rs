//! `BPF_MAP_LOOKUP_BATCH` over the per-CPU `COUNTERS` array: a scrape of
//! 4095 sessions reads all 8192 per-CPU elements in a handful of syscalls
//! instead of one each, and `SESSIONS` likewise. aya 0.14 has no batch
//! API; this is the one call.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use mirror_common::Counter;

use crate::dataplane::sys::bpf;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Values buffer per syscall: 2 MiB, however large a value (a per-CPU
/// value is one per possible CPU).
const BUFFER_BYTES: usize = 2 << 20;

/// Reads elements `0..entries` of an array map whose values are
/// `value_bytes` long (for per-CPU maps: CPUs × the 8-byte-rounded value),
/// in key order.
fn array_batch(map: BorrowedFd<'_>, entries: u32, value_bytes: usize) -> io::Result<Vec<u8>> {
    let chunk = (BUFFER_BYTES / value_bytes.max(1)).clamp(1, 8192) as u32;
    let mut out = Vec::with_capacity(entries as usize * value_bytes);
    let mut keys = vec![0u32; chunk as usize];
    let mut values = vec![0u8; chunk as usize * value_bytes];
    let mut next: u32 = 0;
    let mut first = true;
    let mut read = 0u32;
    while read < entries {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { std::ptr::from_ref(&next) as u64 },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk.min(entries - read),
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // `in_batch` and `out_batch` may point to the same token: the
        // kernel reads the former before it writes the latter.
        // Every pointer in `attr` refers to a live buffer sized for `count`
        // keys and `count` values.
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => true,
            Err(err) => return Err(err),
        };
        for (i, key) in keys.iter().enumerate().take(attr.count as usize) {
            if *key != read {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "batch lookup returned keys out of order",
                ));
            }
            out.extend_from_slice(&values[i * value_bytes..(i + 1) * value_bytes]);
            read += 1;
        }
        first = false;
        if done || attr.count == 0 {
            break;
        }
    }
    Ok(out)
}

/// A batch that ended early (a smaller map): the caller falls back.
fn short_read(got: usize, want: usize) -> io::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("batch lookup read {got} of {want} bytes")))
    }
}

/// Reads elements `0..entries` of a per-CPU array whose values are `width`
/// [`Counter`]s, summed over `cpus` CPUs (the map's possible CPUs), as one
/// flat list (element by element, then counter by counter).
pub fn per_cpu_counters(
    map: BorrowedFd<'_>,
    entries: u32,
    cpus: usize,
    width: usize,
) -> io::Result<Vec<Counter>> {
    let value = width * size_of::<Counter>();
    let raw = array_batch(map, entries, cpus * value)?;
    short_read(raw.len(), entries as usize * cpus * value)?;
    let mut out = vec![Counter::default(); entries as usize * width];
    for (key, sums) in raw.chunks_exact(cpus * value).zip(out.chunks_exact_mut(width)) {
        for cpu in key.chunks_exact(value) {
            for (sum, c) in sums.iter_mut().zip(cpu.chunks_exact(size_of::<Counter>())) {
                // SAFETY: `c` holds exactly one Counter's bytes (plain integers).
                let c: Counter = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
        }
    }
    Ok(out)
}

/// Reads elements `0..entries` of an array map of `T`.
pub fn array_values<T: aya::Pod>(map: BorrowedFd<'_>, entries: u32) -> io::Result<Vec<T>> {
    let raw = array_batch(map, entries, size_of::<T>())?;
    short_read(raw.len(), entries as usize * size_of::<T>())?;
    Ok(raw
        .chunks_exact(size_of::<T>())
        // SAFETY: `T: Pod`: any bytes of its size are a valid `T`.
        .map(|v| unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

    use super::*;
    use crate::dataplane::sys::{BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, MapElemAttr};

    /// Needs CAP_BPF (the test suite runs as root).
    #[test]
    fn batch_lookup_sums_every_cpu_of_every_key_in_order() {
        #[repr(C)]
        struct Create {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        const PERCPU_ARRAY: u32 = 6;
        const ENTRIES: u32 = 20_000; // more than one chunk
        let fd = bpf(
            BPF_MAP_CREATE,
            &mut Create { map_type: PERCPU_ARRAY, key_size: 4, value_size: 16, max_entries: ENTRIES },
        )
        .expect("BPF_MAP_CREATE");
        // SAFETY: a fresh fd nothing else owns.
        let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let cpus = aya::util::nr_cpus().expect("cpus");
        for key in [0u32, 1, 8191, 8192, 19_999] {
            let values: Vec<Counter> =
                (0..cpus as u64).map(|c| Counter { packets: u64::from(key) + c, bytes: 1 }).collect();
            bpf(
                BPF_MAP_UPDATE_ELEM,
                &mut MapElemAttr {
                    map_fd: map.as_raw_fd() as u32,
                    _pad: 0,
                    key: std::ptr::from_ref(&key) as u64,
                    value: values.as_ptr() as u64,
                    flags: 0,
                },
            )
            .expect("BPF_MAP_UPDATE_ELEM");
        }
        let got = per_cpu_counters(map.as_fd(), ENTRIES, cpus, 1).expect("batch lookup");
        assert_eq!(got.len(), ENTRIES as usize);
        let n = cpus as u64;
        for key in [0u32, 1, 8191, 8192, 19_999] {
            let want = Counter { packets: u64::from(key) * n + n * (n - 1) / 2, bytes: n };
            assert_eq!(got[key as usize], want, "key {key}");
        }
        assert_eq!(got[2], Counter::default());
    }
}
