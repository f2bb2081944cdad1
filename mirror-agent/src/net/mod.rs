//! The host's network: namespaces, interface facts, netlink.
pub mod iface;
pub mod links;
pub mod netns;
pub mod tc_netlink;
