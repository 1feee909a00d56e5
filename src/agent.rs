//! The agent: loads the policies, binds every listener, wires registry, proxy and admin
//! together, and stops them gracefully. Tests start it in-process on port 0.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::policy::{load_dir, PolicyErrors};
use crate::proxy::listener::{self, ServerLimits};
use crate::proxy::ProxyContext;
use crate::registry::Registry;
use crate::telemetry::Telemetry;
use crate::upstream::{tls, SelfAddrs};

/// How to run: the `fusebox run` flags.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub policies: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after a stop signal.
    pub drain_timeout: Duration,
    /// Randomise breaker open periods and retry backoff (off in tests, for exact timings).
    pub jitter: bool,
}

impl RunConfig {
    /// Defaults for tests and embedding: both listeners on 127.0.0.1, port 0.
    pub fn new(policies: impl Into<PathBuf>) -> RunConfig {
        RunConfig {
            policies: policies.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(10),
            jitter: true,
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid policies:\n{0}")]
    Policies(PolicyErrors),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("{0}")]
    Upstream(String),
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    egress: SocketAddr,
    admin: SocketAddr,
    routes: Vec<(String, SocketAddr)>,
    admin_state: Arc<AdminState>,
    ctx: Arc<ProxyContext>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound TCP listener has an address")
}

impl Agent {
    pub async fn start(config: RunConfig) -> Result<Agent, StartError> {
        tls::install_crypto_provider();
        let policies = load_dir(&config.policies).map_err(StartError::Policies)?;

        let egress_listener = bind("egress listener", config.listen).await?;
        let admin_listener = bind("admin", config.admin).await?;
        let mut route_listeners = Vec::new();
        for policy in policies.routes() {
            let addr = policy.listen.expect("routes() yields policies with listen");
            let listener = bind(&format!("route listener of policy {}", policy.name), addr).await?;
            route_listeners.push((policy.name.clone(), listener));
        }
        let egress = local_addr(&egress_listener);
        let admin = local_addr(&admin_listener);
        let routes: Vec<(String, SocketAddr)> = route_listeners
            .iter()
            .map(|(name, l)| (name.clone(), local_addr(l)))
            .collect();

        let self_addrs = Arc::new(SelfAddrs::default());
        self_addrs.set(
            [egress, admin]
                .into_iter()
                .chain(routes.iter().map(|(_, a)| *a))
                .collect(),
        );
        let telemetry = Telemetry::new();
        let registry = Arc::new(
            Registry::new(policies, Arc::clone(&telemetry), self_addrs, config.jitter)
                .map_err(StartError::Upstream)?,
        );
        let ctx = Arc::new(ProxyContext::new(Arc::clone(&registry)));
        let limits = ServerLimits {
            max_header_bytes: config.max_header_bytes,
            header_read_timeout: Duration::from_secs(30),
        };
        let shutdown = CancellationToken::new();

        let mut tasks = vec![tokio::spawn(listener::serve(
            egress_listener,
            Arc::clone(&ctx),
            None,
            limits,
            shutdown.clone(),
        ))];
        for (name, listener) in route_listeners {
            let route = Some(Arc::from(name.as_str()));
            tasks.push(tokio::spawn(listener::serve(
                listener,
                Arc::clone(&ctx),
                route,
                limits,
                shutdown.clone(),
            )));
        }
        let admin_state = Arc::new(AdminState {
            registry,
            ready: false.into(),
        });
        tasks.push(tokio::spawn(admin::serve(
            admin_listener,
            Arc::clone(&admin_state),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(upkeep(telemetry, shutdown.clone())));

        admin_state.ready.store(true, Ordering::Release);
        info!(%egress, %admin, routes = ?routes, "fusebox is ready");
        Ok(Agent {
            egress,
            admin,
            routes,
            admin_state,
            ctx,
            shutdown,
            tasks,
            drain_timeout: config.drain_timeout,
        })
    }

    pub fn egress_addr(&self) -> SocketAddr {
        self.egress
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The bound address of a policy's route listener.
    pub fn route_addr(&self, policy: &str) -> Option<SocketAddr> {
        self.routes
            .iter()
            .find(|(name, _)| name == policy)
            .map(|(_, addr)| *addr)
    }

    /// Stops accepting, lets in-flight requests finish within the drain timeout, and returns.
    pub async fn shutdown(self) {
        self.admin_state.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.ctx.tasks.close();
        if tokio::time::timeout(self.drain_timeout, self.ctx.tasks.wait())
            .await
            .is_err()
        {
            warn!(drain_timeout = ?self.drain_timeout, "drain timeout over; closing what is still in flight");
        }
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully. Install `signals` before
    /// [`Agent::start`], so that a signal arriving while the agent starts is not lost.
    pub async fn run_until_signal(self, mut signals: StopSignals) -> io::Result<()> {
        signals.recv().await;
        info!("stop signal received; draining");
        self.shutdown().await;
        info!("stopped");
        Ok(())
    }
}

/// SIGTERM and SIGINT, caught from the moment this value exists.
#[derive(Debug)]
pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; needs a running tokio runtime.
    pub fn install() -> io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Drains histogram samples periodically so memory stays bounded between scrapes.
async fn upkeep(telemetry: Arc<Telemetry>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => telemetry.run_upkeep(),
        }
    }
}
