//! The per-destination resilience pipeline: the pieces an attempt passes through between the
//! policy lookup and the upstream client (docs/ARCHITECTURE.md §1).
//!
//! Each file owns one idea and is pure where possible: state machines take `now` instead of
//! reading a clock, so tests step time explicitly and the proxy (the I/O) stays elsewhere.

pub mod adaptive;
pub mod attempt;
pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod ejection;
pub mod gate;
pub mod grpc;
pub mod hedge;
pub mod limiter;
pub mod p2c;
pub mod peak_ewma;
pub mod retry;
pub mod throttle;
