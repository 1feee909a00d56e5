//! Hot reload (docs/ARCHITECTURE.md §7): a change under `--policies` (file watch, debounced),
//! `SIGHUP`, or `POST /reload` loads the whole directory, validates it, and swaps it in only if all
//! of it is valid. Policies that did not change keep their state; route listeners are opened and
//! closed to match. An invalid edit logs every error with `file:line:col`, counts
//! `fusebox_config_reloads_total{result="failure"}`, and the old policies keep serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ca::LocalCa;
use crate::ca_dir::CaDir;
use crate::policy::intercept::missing_ca;
use crate::policy::listeners::{listener_conflicts, FixedListener};
use crate::policy::{load_dir, PolicySet};
use crate::proxy::listener::{self, ServerLimits};
use crate::proxy::ProxyContext;
use crate::registry::Registry;

/// Why a reload was refused; the old policies keep serving.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .errors.join("\n"))]
pub struct ReloadError {
    /// One line per problem, e.g. `policies/a.toml:3:7: unknown key ...`.
    pub errors: Vec<String>,
}

impl ReloadError {
    fn one(message: String) -> ReloadError {
        ReloadError {
            errors: vec![message],
        }
    }
}

/// Loads the policies directory into the registry and keeps the route listeners in step.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    registry: Arc<Registry>,
    /// The route listeners; the lock also makes reloads run one at a time.
    routes: tokio::sync::Mutex<RouteListeners>,
    /// The egress and admin listeners, which never move.
    fixed: Vec<FixedListener>,
    /// The local CA (`--ca-dir`), which `intercept = true` needs; read again on every reload.
    ca: Option<Arc<CaDir>>,
    /// The route listeners' bound addresses, readable without waiting for a reload.
    route_addrs: std::sync::Mutex<Vec<(String, SocketAddr)>>,
}

impl Reloader {
    /// Binds the route listeners of the registry's current policies and serves them.
    pub async fn start(
        dir: PathBuf,
        ctx: Arc<ProxyContext>,
        limits: ServerLimits,
        shutdown: CancellationToken,
        fixed: Vec<FixedListener>,
    ) -> Result<Reloader, ReloadError> {
        let registry = Arc::clone(&ctx.registry);
        let ca = ctx.ca.clone();
        let mut routes = RouteListeners {
            ctx,
            limits,
            shutdown,
            running: BTreeMap::new(),
        };
        let policies = registry.load().policies.clone();
        let fresh = routes.bind_missing(&policies).await?;
        routes.commit(&policies, fresh);
        let reloader = Reloader {
            dir,
            registry,
            fixed,
            ca,
            route_addrs: std::sync::Mutex::default(),
            routes: tokio::sync::Mutex::new(routes),
        };
        reloader.publish_addrs(&*reloader.routes.lock().await);
        Ok(reloader)
    }

    /// Loads, validates and swaps in the whole directory; returns the active generation.
    /// A directory identical to the active policies changes nothing.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let mut routes = self.routes.lock().await;
        let telemetry = Arc::clone(self.registry.telemetry());
        match self.reload_locked(&mut routes).await {
            Ok(Some(generation)) => {
                telemetry.reloads_success.increment(1);
                info!(generation, dir = %self.dir.display(), "policies reloaded");
                Ok(generation)
            }
            Ok(None) => {
                telemetry.reloads_unchanged.increment(1);
                let generation = self.registry.load().generation;
                info!(generation, dir = %self.dir.display(), "policies unchanged; nothing reloaded");
                Ok(generation)
            }
            Err(failure) => {
                telemetry.reloads_failure.increment(1);
                for line in &failure.errors {
                    error!("{line}");
                }
                warn!(dir = %self.dir.display(), "reload refused; the previous policies keep serving");
                Err(failure)
            }
        }
    }

    /// `Ok(None)`: nothing changed. The local CA is read with the policies and put in place
    /// only if the whole reload succeeds.
    async fn reload_locked(&self, routes: &mut RouteListeners) -> Result<Option<u64>, ReloadError> {
        let dir = self.dir.clone();
        let policies = tokio::task::spawn_blocking(move || load_dir(&dir))
            .await
            .map_err(|e| ReloadError::one(format!("policy loading stopped: {e}")))?
            .map_err(|errors| ReloadError {
                errors: errors.iter().map(ToString::to_string).collect(),
            })?;
        let ca = self.read_ca()?;
        if same_policies(&self.registry.load().policies, &policies) {
            return Ok(self.install_ca(ca).then(|| self.registry.load().generation));
        }
        let mut conflicts = listener_conflicts(&policies, &self.fixed);
        conflicts.extend(missing_ca(&policies, self.ca.is_some()));
        if !conflicts.is_empty() {
            return Err(ReloadError {
                errors: conflicts.iter().map(ToString::to_string).collect(),
            });
        }
        let fresh = routes.bind_missing(&policies).await?;
        // Building a snapshot (clients, TLS configurations) is CPU work: off the request
        // workers, so that a reload of many policies never stalls live traffic.
        let registry = Arc::clone(&self.registry);
        let prepared = policies.clone();
        let next = tokio::task::spawn_blocking(move || registry.prepare(prepared))
            .await
            .map_err(|e| ReloadError::one(format!("building the policies stopped: {e}")))?
            .map_err(ReloadError::one)?;
        let (generation, previous) = self.registry.swap(next);
        tokio::task::spawn_blocking(move || drop(previous));
        routes.commit(&policies, fresh);
        self.publish_addrs(routes);
        self.install_ca(ca);
        Ok(Some(generation))
    }

    /// The local CA of `--ca-dir` when it changed since it was loaded (compared by content).
    fn read_ca(&self) -> Result<Option<LocalCa>, ReloadError> {
        let Some(ca_dir) = &self.ca else {
            return Ok(None);
        };
        ca_dir
            .read_if_changed()
            .map_err(|e| ReloadError::one(format!("the local CA (--ca-dir): {e}")))
    }

    /// Puts a changed local CA in place; whether there was one.
    fn install_ca(&self, ca: Option<LocalCa>) -> bool {
        let (Some(ca_dir), Some(ca)) = (&self.ca, ca) else {
            return false;
        };
        ca_dir.install(ca);
        info!(dir = %ca_dir.dir().display(), "local CA reloaded: new intercepted connections present its certificates");
        true
    }

    /// The bound address of each route listener, by policy name.
    pub fn route_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.route_addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn publish_addrs(&self, routes: &RouteListeners) {
        let bound = routes.bound();
        let all = self
            .fixed
            .iter()
            .map(|f| f.addr)
            .chain(bound.iter().map(|(_, addr)| *addr));
        self.registry.self_addrs().set(all.collect());
        *self
            .route_addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = bound;
    }
}

fn same_policies(a: &PolicySet, b: &PolicySet) -> bool {
    a.default == b.default && a.others == b.others
}

/// One running route listener.
#[derive(Debug)]
struct RunningRoute {
    /// The policy it serves; swapped in place when a reload renames the policy but keeps its
    /// `listen` address, so the port is handed over without closing it.
    policy: Arc<ArcSwap<String>>,
    bound: SocketAddr,
    stop: CancellationToken,
}

/// What identifies a route listener across reloads: its configured address. Port 0 ("any
/// free port", used in tests) cannot be shared, so those are told apart by policy as well.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum RouteKey {
    Addr(SocketAddr),
    AnyPort(SocketAddr, String),
}

impl RouteKey {
    fn of(policy: &str, listen: SocketAddr) -> RouteKey {
        if listen.port() == 0 {
            RouteKey::AnyPort(listen, policy.to_owned())
        } else {
            RouteKey::Addr(listen)
        }
    }
}

/// The route listeners of `policies`, by key, with the policy each serves.
fn wanted_routes(policies: &PolicySet) -> BTreeMap<RouteKey, &str> {
    policies
        .routes()
        .filter_map(|p| Some((RouteKey::of(&p.name, p.listen?), p.name.as_str())))
        .collect()
}

/// The route listeners of the active policies.
#[derive(Debug)]
struct RouteListeners {
    ctx: Arc<ProxyContext>,
    limits: ServerLimits,
    shutdown: CancellationToken,
    running: BTreeMap<RouteKey, RunningRoute>,
}

impl RouteListeners {
    /// Binds every route listener of `policies` that is not already running at the same
    /// address. Nothing is served or stopped yet, so a failure changes nothing.
    async fn bind_missing(
        &self,
        policies: &PolicySet,
    ) -> Result<Vec<(RouteKey, String, TcpListener)>, ReloadError> {
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        for policy in policies.routes() {
            let Some(listen) = policy.listen else {
                continue;
            };
            let key = RouteKey::of(&policy.name, listen);
            if self.running.contains_key(&key) {
                continue;
            }
            match crate::proxy::listener::bind(listen) {
                Ok(listener) => fresh.push((key, policy.name.clone(), listener)),
                Err(e) => errors.push(format!(
                    "{}: cannot listen on {listen} (route listener of policy {}): {e}",
                    policy.file.display(),
                    policy.name
                )),
            }
        }
        if errors.is_empty() {
            Ok(fresh)
        } else {
            Err(ReloadError { errors })
        }
    }

    /// Stops the listeners that `policies` no longer has (their connections finish what is in
    /// flight), points kept ones at their (possibly renamed) policy, and serves the freshly
    /// bound ones.
    fn commit(&mut self, policies: &PolicySet, fresh: Vec<(RouteKey, String, TcpListener)>) {
        let wanted = wanted_routes(policies);
        self.running.retain(|key, route| match wanted.get(key) {
            Some(name) => {
                if route.policy.load().as_str() != *name {
                    info!(policy = %name, addr = %route.bound, "route listener handed over");
                    route.policy.store(Arc::new((*name).to_owned()));
                }
                true
            }
            None => {
                info!(policy = %route.policy.load(), addr = %route.bound, "route listener closed");
                route.stop.cancel();
                false
            }
        });
        for (key, name, listener) in fresh {
            let Ok(bound) = listener.local_addr() else {
                continue;
            };
            let stop = self.shutdown.child_token();
            let policy = Arc::new(ArcSwap::from_pointee(name));
            let serving = listener::serve(
                listener,
                Arc::clone(&self.ctx),
                Some(Arc::clone(&policy)),
                self.limits,
                stop.clone(),
            );
            self.ctx.tasks.spawn(serving);
            info!(policy = %policy.load(), addr = %bound, "route listener open");
            self.running.insert(
                key,
                RunningRoute {
                    policy,
                    bound,
                    stop,
                },
            );
        }
    }

    fn bound(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .values()
            .map(|r| (r.policy.load().as_ref().clone(), r.bound))
            .collect()
    }
}

/// Whether a change to `path`, in the policies directory, can change the policies: a policy
/// file (`*.toml`), a CA file or client certificate or key a policy may name (`*.pem`,
/// `*.crt`, `*.key`: Kubernetes TLS Secrets hold `tls.crt` and `tls.key`), or the entries of a
/// Kubernetes ConfigMap volume's atomic swap (`..data`, `..2026_12_07...`). A log or any other
/// file written there does not reload.
fn concerns_policies(path: &std::path::Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with("..")
        || [".toml", ".pem", ".crt", ".key"]
            .iter()
            .any(|ext| name.len() > ext.len() && name.to_ascii_lowercase().ends_with(ext))
}

/// How long the directory must be quiet before a watched change is loaded: editors and
/// ConfigMap updates write several files and renames in a burst.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Reloads on `SIGHUP` and, with `watch`, on every change under the policies directory
/// (debounced), until `shutdown`. The directory itself is watched, not its files, so that
/// editors that write a temporary file and rename it, and Kubernetes ConfigMap volumes that
/// swap a `..data` symlink, are both seen.
pub fn spawn_triggers(
    reloader: Arc<Reloader>,
    watch: bool,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let changed = Arc::new(Notify::new());
    let watcher = if watch {
        Some(watch_dirs(&reloader, Arc::clone(&changed))?)
    } else {
        None
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;

    tokio::spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = changed.notified() => {
                    // Wait for the burst to end: every further event restarts the quiet period.
                    loop {
                        tokio::select! {
                            () = changed.notified() => {}
                            () = tokio::time::sleep(DEBOUNCE) => break,
                        }
                    }
                    info!("policies directory changed; reloading");
                }
                _ = hangup.recv() => info!("SIGHUP received; reloading"),
            }
            // Failures are logged and counted by `reload` itself.
            let _ = reloader.reload().await;
        }
    });
    Ok(())
}

/// Watches the policies directory and, with `--ca-dir`, the CA directory (its `ca.pem` and
/// `ca-key.pem` are PEM files as far as [`concerns_policies`] is concerned); `changed` is told of
/// every change that can change what a reload loads.
fn watch_dirs(
    reloader: &Reloader,
    changed: Arc<Notify>,
) -> std::io::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| concerns_policies(p)))
        {
            changed.notify_one();
        }
    })
    .map_err(std::io::Error::other)?;
    watcher
        .watch(&reloader.dir, RecursiveMode::NonRecursive)
        .map_err(std::io::Error::other)?;
    if let Some(ca) = &reloader.ca {
        if ca.dir() != reloader.dir {
            watcher
                .watch(ca.dir(), RecursiveMode::NonRecursive)
                .map_err(std::io::Error::other)?;
        }
    }
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn only_changes_that_can_change_the_policies_reload() {
        for path in [
            "/p/api.toml",
            "/p/API.TOML",
            "/p/ca.pem",
            "/p/corp.crt",
            "/p/tls.key",
            "/p/..data",
            "/p/..2026_12_07_05_00_00.123",
        ] {
            assert!(concerns_policies(Path::new(path)), "{path}");
        }
        for path in [
            "/p/fusebox.log",
            "/p/.api.toml.swp",
            "/p/notes.txt",
            "/p/.toml",
            "/p",
        ] {
            assert!(!concerns_policies(Path::new(path)), "{path}");
        }
    }
}
