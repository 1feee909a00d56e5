//! `fusebox-loadgen`: the open-loop load generator and the fake upstreams of fusebox's
//! resilience benchmarks (`bench/overload.py`, `bench/tail.py`; docs/ARCHITECTURE.md §18).
//!
//! ```text
//! fusebox-loadgen queue-upstream --listen IP:PORT [--concurrency 50] [--service 10ms]
//!                                [--reject-beyond]
//! fusebox-loadgen tail-upstream --listen IP:PORT [--listen IP:PORT ...] [--latency 10ms]
//!                               [--slow-fraction 0.01] [--slow 1s] [--seed 1]
//! fusebox-loadgen load --url http://HOST:PORT/PATH [--proxy IP:PORT]
//!                      --phases RATE:SECS[,RATE:SECS...]
//!                      [--connections 2000] [--preconnect 0] [--timeout 5s]
//!                      [--sample URL --sample-metric NAME[,NAME]]
//! ```
//!
//! Every subcommand also takes `--threads N` (default 1: one current-thread tokio runtime, the
//! cheapest on a 2-core machine shared with fusebox). See each module for what it does.

mod args;
mod load;
mod timer;
mod upstream;

use std::process::ExitCode;

const USAGE: &str = "usage: fusebox-loadgen (queue-upstream | tail-upstream | load) [--flags]
  queue-upstream --listen IP:PORT [--concurrency 50] [--service 10ms] [--reject-beyond]
  tail-upstream  --listen IP:PORT [--listen ...] [--latency 10ms] [--slow-fraction 0.01]
                 [--slow 1s] [--seed 1]
  load           --url http://HOST:PORT/PATH [--proxy IP:PORT] --phases RATE:SECS[,RATE:SECS...]
                 [--connections 2000] [--preconnect 0] [--timeout 5s]
                 [--sample URL --sample-metric NAME[,NAME]]
  all:           [--threads 1]";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let parsed = match args::Args::parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fusebox-loadgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command.as_str() {
        "queue-upstream" => upstream::queue_main(parsed),
        "tail-upstream" => upstream::tail_main(parsed),
        "load" => load::main(parsed),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown subcommand `{other}`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusebox-loadgen {command}: {e}");
            ExitCode::from(2)
        }
    }
}

/// A tokio runtime: one current-thread runtime for `threads == 1`, else a multi-thread one.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    built.map_err(|e| format!("tokio runtime: {e}"))
}
