//! Host-side library target: lets `mirror-agent` declare a build-dependency
//! on this crate so cargo rebuilds the agent when the programs change.
#![no_std]
