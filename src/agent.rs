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
use crate::ca::CaError;
use crate::ca_dir::CaDir;
use crate::fleet::FleetRedis;
use crate::policy::intercept::missing_ca;
use crate::policy::lint::fleet_without_redis;
use crate::policy::listeners::{listener_conflicts, FixedListener};
use crate::policy::{load_dir, PolicyErrors};
use crate::proxy::listener::{self, ServerLimits};
use crate::proxy::ProxyContext;
use crate::registry::{Registry, Settings};
use crate::reload::{self, ReloadError, Reloader};
use crate::telemetry::Telemetry;
use crate::upstream::resolve::Resolver;
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
    /// Reload when the policies directory changes (SIGHUP and `POST /reload` always work).
    pub watch: bool,
    /// The bearer token that mutating admin endpoints require (`--admin-token`).
    pub admin_token: Option<String>,
    /// Names the admin serves besides loopback names and IP addresses (`--admin-host`).
    pub admin_hosts: Vec<String>,
    /// How long an app may take to send a request head, from its first byte.
    pub header_timeout: Duration,
    /// How long an app connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long an idle HTTP/1.1 app connection keeps its buffers before it rests with only its
    /// socket (1 s; not a flag: tests set it to zero to rest after every request).
    pub rest_after: Duration,
    /// The local CA for `intercept = true` policies (`--ca-dir`).
    pub ca_dir: Option<PathBuf>,
    /// The Redis of fleet-wide rate limits (`--redis`, `redis://` or `rediss://`).
    pub redis: Option<String>,
    /// The DNS server endpoint sets ask (`--dns-server`); the system's configuration if `None`.
    pub dns_server: Option<std::net::SocketAddr>,
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
            watch: true,
            admin_token: None,
            admin_hosts: Vec::new(),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            rest_after: REST_AFTER,
            ca_dir: None,
            redis: None,
            dns_server: None,
        }
    }
}

/// How long an idle HTTP/1.1 app connection keeps its buffers before it rests.
pub const REST_AFTER: Duration = Duration::from_secs(1);

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
    #[error("cannot use the local CA (--ca-dir): {0}")]
    Ca(CaError),
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    egress: SocketAddr,
    admin: SocketAddr,
    admin_state: Arc<AdminState>,
    reloader: Arc<Reloader>,
    ctx: Arc<ProxyContext>,
    /// Stops the proxy listeners (and the reload triggers).
    shutdown: CancellationToken,
    /// Stops the admin server and upkeep, after the drain.
    stop_observers: CancellationToken,
    observers: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    crate::proxy::listener::bind(addr).map_err(|source| StartError::Bind {
        what: what.to_owned(),
        addr,
        source,
    })
}

/// The listeners that never move, as bound: route listeners must not collide with them.
fn fixed_listeners(egress: SocketAddr, admin: SocketAddr) -> Vec<FixedListener> {
    vec![FixedListener::egress(egress), FixedListener::admin(admin)]
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
        let egress = local_addr(&egress_listener);
        let admin = local_addr(&admin_listener);
        let ca = match &config.ca_dir {
            Some(dir) => Some(Arc::new(CaDir::load(dir).map_err(StartError::Ca)?)),
            None => None,
        };
        let mut conflicts = listener_conflicts(&policies, &fixed_listeners(egress, admin));
        conflicts.extend(missing_ca(&policies, ca.is_some()));
        if !conflicts.is_empty() {
            return Err(StartError::Policies(PolicyErrors(conflicts)));
        }

        let fleet = match &config.redis {
            Some(url) => Some(FleetRedis::new(url).map_err(StartError::Upstream)?),
            None => {
                for warning in fleet_without_redis(&policies) {
                    warn!("{warning}");
                }
                None
            }
        };
        let resolver = Resolver::new(config.dns_server).map_err(StartError::Upstream)?;
        let settings = Settings {
            jitter: config.jitter,
            fleet,
            resolver: Some(Arc::new(resolver)),
        };
        let telemetry = Telemetry::new();
        let self_addrs = Arc::new(SelfAddrs::default());
        let registry = Arc::new(
            Registry::new(policies, Arc::clone(&telemetry), self_addrs, settings)
                .map_err(StartError::Upstream)?,
        );
        let limits = ServerLimits {
            max_header_bytes: config.max_header_bytes,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            rest_after: config.rest_after,
        };
        let ctx = Arc::new(ProxyContext::new(Arc::clone(&registry), ca, limits));
        let shutdown = ctx.draining.clone();
        let stop_observers = CancellationToken::new();

        let reloader = Reloader::start(
            config.policies.clone(),
            Arc::clone(&ctx),
            limits,
            shutdown.clone(),
            fixed_listeners(egress, admin),
        )
        .await
        .map_err(|e| StartError::Upstream(e.to_string()))?;
        let reloader = Arc::new(reloader);
        // SIGHUP reloads whether or not the directory is watched (see `RunConfig::watch`).
        reload::spawn_triggers(Arc::clone(&reloader), config.watch, shutdown.clone()).map_err(
            |e| {
                StartError::Upstream(format!(
                    "cannot set up reloads of {}: {e}",
                    config.policies.display()
                ))
            },
        )?;
        ctx.tasks.spawn(listener::serve(
            egress_listener,
            Arc::clone(&ctx),
            None,
            limits,
            shutdown.clone(),
        ));

        let admin_state = Arc::new(AdminState {
            registry,
            ready: false.into(),
            reloader: Arc::clone(&reloader),
            admin_token: config.admin_token.clone(),
            admin_hosts: config.admin_hosts.clone(),
            feed: admin::feed::Feed::default(),
            watchers: admin::events::Watchers::default(),
        });
        let observers = vec![
            tokio::spawn(admin::serve(
                admin_listener,
                Arc::clone(&admin_state),
                config.header_timeout,
                stop_observers.clone(),
            )),
            tokio::spawn(upkeep(
                telemetry,
                Arc::clone(&admin_state.registry),
                stop_observers.clone(),
            )),
        ];

        admin_state.ready.store(true, Ordering::Release);
        info!(%egress, %admin, routes = ?reloader.route_addrs(), "fusebox is ready");
        Ok(Agent {
            egress,
            admin,
            admin_state,
            reloader,
            ctx,
            shutdown,
            stop_observers,
            observers,
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
        self.reloader
            .route_addrs()
            .into_iter()
            .find(|(name, _)| name == policy)
            .map(|(_, addr)| addr)
    }

    /// Closes the upstream connections that have rested for their policy's `pool_idle_timeout`
    /// as of `now` (what the upkeep does every 5 s with the current time).
    pub fn close_idle_connections(&self, now: tokio::time::Instant) {
        self.admin_state.registry.close_idle_connections(now);
    }

    /// Reloads the policies directory now (what `SIGHUP` and `POST /reload` do).
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        self.reloader.reload().await
    }

    /// Drains: `/readyz` turns 503, listeners stop accepting, in-flight requests and tunnels
    /// finish within the drain timeout; then the admin server stops too.
    pub async fn shutdown(self) {
        self.admin_state.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        self.ctx.tasks.close();
        if tokio::time::timeout(self.drain_timeout, self.ctx.tasks.wait())
            .await
            .is_err()
        {
            warn!(drain_timeout = ?self.drain_timeout, "drain timeout over; closing what is still in flight");
            self.ctx.hard_stop.cancel();
            // Closing is immediate; the bound only guards against a task that ignores it.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.ctx.tasks.wait()).await;
        }
        self.stop_observers.cancel();
        for task in self.observers {
            let _ = task.await;
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

/// Every 5 s: drains histogram samples so memory stays bounded between scrapes, and closes
/// upstream connections that rested for their policy's `pool_idle_timeout`.
async fn upkeep(telemetry: Arc<Telemetry>, registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                telemetry.run_upkeep();
                registry.close_idle_connections(tokio::time::Instant::now());
            }
        }
    }
}
