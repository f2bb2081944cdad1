//! `gc`: the state of network namespaces that no longer exist. Their
//! interfaces are gone (so their hooks with them), but the pins of their
//! maps and links stay in bpffs until someone removes them.
//!
//! A namespace is alive while anything refers to it: a task, a bind mount
//! (/run/netns), or an open file. All three are enumerated; a directory is
//! removed only if its cookie belongs to none of them. Anything that cannot
//! be read aborts gc with nothing removed.
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::{
    dataplane::bpffs::{self, DirLock},
    net::netns,
};

/// Every file that refers to a live network namespace, one per namespace.
fn namespace_files() -> Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    let mut consider = |path: PathBuf| {
        if let Ok(m) = fs::metadata(&path)
            && seen.insert((m.dev(), m.ino()))
        {
            files.push(path);
        }
    };
    for name in netns::named() {
        consider(netns::path_of(&name));
    }
    for entry in fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let pid = entry.path();
        // Tasks vanish while we look: skip what is gone.
        if let Ok(tasks) = fs::read_dir(pid.join("task")) {
            for t in tasks.flatten() {
                consider(t.path().join("ns/net"));
            }
        }
        if let Ok(fds) = fs::read_dir(pid.join("fd")) {
            for fd in fds.flatten() {
                if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().starts_with("net:[")) {
                    consider(fd.path());
                }
            }
        }
    }
    Ok(files)
}

/// The cookies of every live network namespace.
fn live_cookies() -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for file in namespace_files()? {
        let path = file.display().to_string();
        match netns::run_in(&path, netns::current_id) {
            Ok(Ok(id)) => {
                out.insert(id);
            }
            // A task that exited since we listed it.
            Err(_) if !file.exists() => {}
            Ok(Err(e)) | Err(e) => {
                return Err(e).with_context(|| format!("identifying the namespace of {path}"));
            }
        }
    }
    Ok(out)
}

fn remove_state(dir: &Path) -> Result<()> {
    let links = dir.join("links");
    if let Ok(entries) = fs::read_dir(&links) {
        for e in entries.flatten() {
            // A TCX link pin: unpinning frees the (already detached) link;
            // a program pin of the clsact fallback: its filter died with
            // the interface.
            fs::remove_file(e.path()).with_context(|| format!("unpinning {}", e.path().display()))?;
        }
    }
    let maps = dir.join("maps");
    if let Ok(entries) = fs::read_dir(&maps) {
        for e in entries.flatten() {
            fs::remove_file(e.path()).with_context(|| format!("unpinning {}", e.path().display()))?;
        }
    }
    for d in [links, maps, dir.to_owned()] {
        match fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", d.display())),
        }
    }
    Ok(())
}

/// Why a state directory must not be collected although no live namespace
/// has its cookie: a TCX link still attached to an interface (so its
/// namespace lives somewhere gc cannot see).
fn still_attached(dir: &Path) -> Result<Option<String>> {
    let Ok(entries) = fs::read_dir(dir.join("links")) else { return Ok(None) };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        // A clsact-mode pin is the program, not the filter: unpinning it
        // never detaches a live filter, so it is no evidence either way.
        if name.starts_with("tc-") {
            continue;
        }
        if crate::dataplane::hooks::tcx_link_attached(&e.path())? {
            return Ok(Some(format!("link {name} is still attached to an interface")));
        }
    }
    Ok(None)
}

pub fn run(bpffs_root: &Path) -> Result<()> {
    let own_mounts = matches!(
        (fs::read_link("/proc/self/ns/mnt"), fs::read_link("/proc/1/ns/mnt")),
        (Ok(ours), Ok(init)) if ours != init
    );
    if bpffs::in_container() || own_mounts {
        anyhow::bail!(
            "gc runs on the host only: from a container's PID or mount namespace it cannot see every \
             task and /run/netns entry that keeps a network namespace alive"
        );
    }
    if !bpffs::is_bpffs(bpffs_root) {
        println!("no bpffs at {}: nothing to collect", bpffs_root.display());
        return Ok(());
    }
    let _lock = DirLock::acquire(bpffs_root, true)?;
    let agent_dir = bpffs_root.join("mirror-agent");
    let Ok(entries) = fs::read_dir(&agent_dir) else {
        println!("no agent state under {}", agent_dir.display());
        return Ok(());
    };
    let live = live_cookies()?;
    let mut removed = 0;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("netns-") else { continue };
        if !id.starts_with("cookie-") {
            tracing::warn!("{name}: identified by inode (no netns cookie), which can be reused; left alone");
            continue;
        }
        if live.contains(id) {
            continue;
        }
        // Belt and braces: a namespace held only by something gc cannot see
        // (a bind mount in another mount namespace) still has attached links.
        match still_attached(&e.path()) {
            Ok(None) => {}
            Ok(Some(why)) => {
                tracing::warn!("{name}: {why}; left alone");
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("checking {}", e.path().display())),
        }
        remove_state(&e.path())?;
        crate::daemon::audit::record("cli", "gc", "-", &format!("removed {}", e.path().display()));
        println!("removed {} (its network namespace no longer exists)", e.path().display());
        removed += 1;
    }
    let _ = fs::remove_dir(&agent_dir);
    if removed == 0 {
        println!("nothing to collect: every namespace with state is alive");
    }
    Ok(())
}
