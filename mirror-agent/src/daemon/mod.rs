//! `mirror-agent run`: a declared set of sessions kept true against a host
//! whose interfaces come and go.
pub mod audit;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod resolve;
pub mod run;
pub mod watch;
