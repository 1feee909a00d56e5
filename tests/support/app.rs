//! HTTP clients: the "app" that sends its calls through fusebox as `HTTP_PROXY` users do, and
//! direct clients for talking to fake upstreams without a proxy.
//!
//! Every client ignores the proxy variables of the test environment, has a 30 s timeout as a
//! safety net (tests set shorter per-request timeouts where they expect one), and does not
//! retry on its own, so upstream hit counts are fusebox's doing alone.

use std::time::Duration;

use reqwest::{Client, ClientBuilder, Proxy};

use super::tls::install_crypto;

fn base() -> ClientBuilder {
    install_crypto();
    Client::builder()
        .timeout(Duration::from_secs(30))
        .retry(reqwest::retry::never())
}

fn via(proxy_url: &str) -> ClientBuilder {
    // An explicit proxy also turns off reqwest's reading of the environment.
    base().proxy(Proxy::all(proxy_url).expect("valid proxy URL"))
}

/// The app: every request (`http://` absolute-form, `https://` via CONNECT) goes to `proxy_url`.
pub fn app_client(proxy_url: &str) -> Client {
    via(proxy_url).build().expect("build app client")
}

/// The app, with its own TLS config for `https://` through a CONNECT tunnel
/// (e.g. `TestPki::client_config()` to trust the TLS fake upstream).
pub fn app_client_with_tls(proxy_url: &str, tls: rustls::ClientConfig) -> Client {
    via(proxy_url)
        .tls_backend_preconfigured(tls)
        .build()
        .expect("build app client")
}

/// A client that connects directly, whatever the environment says.
pub fn direct_client() -> Client {
    base().no_proxy().build().expect("build direct client")
}

/// A direct client with its own TLS config.
pub fn direct_client_with_tls(tls: rustls::ClientConfig) -> Client {
    base()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("build direct client")
}
