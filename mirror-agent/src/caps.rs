//! The capabilities a verb needs, checked before it does anything, so that
//! a command run without them fails at once with a message naming the
//! missing one instead of a raw `EPERM` half-way through a change.
//!
//! The check reads the effective set; it cannot see an LSM that denies
//! what the set allows, so every probe still tells "absent" from "could not
//! check" on its own (see `dataplane::hooks`).
use std::{fmt, fs, io};

/// A Linux capability the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    NetAdmin,
    SysAdmin,
    Bpf,
}

impl Cap {
    const fn bit(self) -> u32 {
        match self {
            Self::NetAdmin => 12,
            Self::SysAdmin => 21,
            Self::Bpf => 39,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::SysAdmin => "CAP_SYS_ADMIN",
            Self::Bpf => "CAP_BPF",
        }
    }

    /// What the agent does with it, for the error message.
    const fn used_for(self) -> &'static str {
        match self {
            Self::NetAdmin => "attach, query and detach tc hooks",
            Self::SysAdmin => "enter another network namespace",
            Self::Bpf => "load programs and open the pinned maps",
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The calling thread's effective capability set.
#[derive(Debug, Clone, Copy)]
pub struct Effective(u64);

impl Effective {
    pub fn current() -> io::Result<Self> {
        let status = fs::read_to_string("/proc/thread-self/status")?;
        Self::parse(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"))
    }

    fn parse(status: &str) -> Option<Self> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
        u64::from_str_radix(hex, 16).ok().map(Self)
    }

    pub fn has(self, cap: Cap) -> bool {
        self.0 & (1 << cap.bit()) != 0
    }

    /// CAP_BPF, or CAP_SYS_ADMIN which the kernel accepts in its place.
    fn has_bpf(self) -> bool {
        self.has(Cap::Bpf) || self.has(Cap::SysAdmin)
    }
}

/// `verb` needs `caps`.
#[derive(Debug, thiserror::Error)]
#[error("{verb} needs {missing} to {used_for}; this process does not have it (effective set {have:#x})", missing = .missing.name(), used_for = .missing.used_for())]
pub struct MissingCapability {
    pub verb: &'static str,
    pub missing: Cap,
    pub have: u64,
}

/// Set to 1 to skip the up-front check (tests use it to exercise what
/// happens when the kernel refuses anyway, as an LSM would).
pub const SKIP_CHECK_ENV: &str = "MIRROR_AGENT_SKIP_CAPABILITY_CHECK";

/// Fails naming the first capability of `caps` this process lacks.
pub fn require(verb: &'static str, caps: &[Cap]) -> Result<(), MissingCapability> {
    if std::env::var_os(SKIP_CHECK_ENV).is_some_and(|v| v == "1") {
        return Ok(());
    }
    // Unreadable status (no procfs): let the kernel decide.
    let Ok(eff) = Effective::current() else { return Ok(()) };
    for &cap in caps {
        let ok = if cap == Cap::Bpf { eff.has_bpf() } else { eff.has(cap) };
        if !ok {
            return Err(MissingCapability { verb, missing: cap, have: eff.0 });
        }
    }
    Ok(())
}

/// True if `err`'s chain holds an `EPERM`/`EACCES` from the kernel.
pub fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|c| c == libc::EPERM || c == libc::EACCES)
            || e.to_string().contains("Operation not permitted")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_set_is_read_from_status() {
        let eff = Effective::parse("Name:\tx\nCapEff:\t000001ffffffffff\n").expect("parsed");
        assert!(eff.has(Cap::Bpf) && eff.has(Cap::NetAdmin));
        let no_bpf = Effective::parse("CapEff:\t0000000000001000\n").expect("parsed");
        assert!(no_bpf.has(Cap::NetAdmin) && !no_bpf.has_bpf());
        let sys_admin = Effective::parse("CapEff:\t0000000000200000\n").expect("parsed");
        assert!(sys_admin.has_bpf(), "CAP_SYS_ADMIN stands in for CAP_BPF");
    }

    #[test]
    fn the_message_names_the_capability_and_why() {
        let e = MissingCapability { verb: "attach", missing: Cap::NetAdmin, have: 0 };
        let msg = e.to_string();
        assert!(msg.starts_with("attach needs CAP_NET_ADMIN to attach"), "{msg}");
    }
}
