//! `mirror-agent`: copy selected packets of any interface to a monitoring
//! destination with eBPF/tc. Sessions are pinned in bpffs and keep running
//! after the process that made them exits.
//!
//! A library plus a binary, so that the test suite and `xtask` use the same
//! namespace and netlink helpers as the agent:
//! - [`dataplane`]: the pinned maps, the hooks, bpffs, RCU, and the one
//!   reconcile both the CLI and the daemon use ([`dataplane::sessions`]);
//! - [`net`]: network namespaces, interface facts, netlink;
//! - [`daemon`]: `run`, its config, policy, watches and metrics;
//! - [`cli`]: the verbs.
pub mod caps;
pub mod cli;
pub mod daemon;
pub mod dataplane;
pub mod error;
pub mod filter;
pub mod net;
