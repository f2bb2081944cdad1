//! Everything that lives in the kernel and bpffs: the pinned maps (the
//! store), the tc hooks, the bpffs layout, RCU waits, and the reconcile
//! that makes them match the sessions wanted.
pub mod batch;
pub mod bpffs;
pub mod hooks;
pub mod native;
pub mod rcu;
pub mod selection;
pub mod sessions;
pub mod store;
pub mod sys;
