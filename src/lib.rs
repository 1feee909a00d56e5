//! fusebox: a resilience-focused egress agent.
//!
//! Data flows one way through the modules:
//! [`policy`] (TOML → validated types) → [`upstream`] (how to reach an upstream: guard, TLS,
//! pooled client) → [`registry`] (policy × destination → state) → [`proxy`] (listeners,
//! forwarding, tunnels: the request path) — with [`telemetry`] and [`admin`] observing.
//! [`agent`] wires them together; [`cli`] is the command line.

pub mod address;
pub mod admin;
pub mod agent;
pub mod ca;
pub mod ca_cli;
pub mod ca_dir;
pub mod check;
pub mod cli;
#[doc(hidden)]
pub mod fleet;
pub mod fuzz;
pub mod grpc_code;
pub mod guard;
pub mod histogram;
pub mod live_stats;
pub mod logging;
pub mod outcome;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod status;
pub mod telemetry;
pub mod upstream;
