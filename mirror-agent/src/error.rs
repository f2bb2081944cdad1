//! Errors an operator can act on. Each names the thing that is wrong; all of
//! them are raised before anything is changed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("unknown interface {name:?} (network namespace {netns})")]
    UnknownInterface { name: String, netns: String },
    #[error("destination {0:?} is also a source of this session: every copy would be copied again")]
    DestinationIsSource(String),
    #[error("destination {0:?} is a loopback device: copies would be fed back into this host's own stack")]
    DestinationIsLoopback(String),
    #[error("source {0:?} is given twice")]
    DuplicateSource(String),
    #[error("invalid snaplen {0}: use 0 (whole packet) or {min}..={max} bytes", min = mirror_common::SNAPLEN_MIN, max = mirror_common::SNAPLEN_MAX)]
    SnaplenOutOfRange(u64),
    #[error("invalid session name {name:?}: {why}")]
    InvalidSessionName { name: String, why: &'static str },
    #[error("a session named {0:?} already exists (attach --replace changes it in place)")]
    DuplicateSession(String),
    #[error("no session named {0:?}")]
    UnknownSession(String),
    #[error(
        "session {0:?} belongs to a daemon's config: remove it from the config (the daemon would \
         re-create it), or stop the daemon with --on-exit remove; `detach --all` removes everything"
    )]
    OwnedByConfig(String),
    #[error("source {source_name:?} ({direction}) already feeds {max} sessions, the most one source can feed", max = mirror_common::MAX_SESSIONS_PER_SOURCE)]
    SourceFull { source_name: String, direction: &'static str },
    #[error("this session would add {new} source hooks to the {existing} in use; a network namespace holds at most {max}", max = mirror_common::MAX_SOURCE_HOOKS)]
    TooManySourceHooks { existing: usize, new: usize },
    #[error("all {} session slots are in use", mirror_common::MAX_SESSIONS - 1)]
    SessionTableFull,
    #[error(
        "this process runs in a private mount namespace where {bpffs} is not a bpffs \
         (typically `ip netns exec`, which remounts /sys): pinned sessions would vanish \
         when the command exits. Run `mirror-agent --netns NAME ...` instead"
    )]
    PrivateMountNamespace { bpffs: String },
    #[error(
        "no bpffs at {bpffs}, and this process runs in a container: a bpffs mounted here would vanish \
         with the container. Mount the host's bpffs there (e.g. a hostPath volume of /sys/fs/bpf) \
         or pass --bpffs"
    )]
    NoHostBpffs { bpffs: String },
    #[error(
        "{dir} holds sessions in the layout of mirror-agent 0.1.0 (a SOURCES map), which this build \
         cannot read: run `detach --all` with that build first"
    )]
    LegacyState { dir: String },
    #[error(
        "{dir} holds sessions whose COUNTERS has {value_size}-byte values (one counter per reason, \
         the layout before per-direction counters), which this build cannot read: run `detach --all` \
         with that build first"
    )]
    CounterLayout { dir: String, value_size: usize },
    #[error(
        "{dir} holds sessions of another mirror-agent build ({what}), which this build cannot read: \
         run `detach --all` with the build that made them first"
    )]
    StateLayout { dir: String, what: String },
    #[error("invalid {what}: {rendered}")]
    InvalidFilter { what: String, rendered: String },
    #[error("{what} {value} is out of range: use {min}..={max}")]
    OutOfRange { what: String, value: u64, min: u64, max: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("the agent was built without its eBPF object (AYA_BUILD_SKIP); rebuild it normally")]
    NoEbpfObject,
}
