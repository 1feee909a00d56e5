//! Reads a failed try's error chain (hyper, hyper-util, rustls, fusebox's connector) into one
//! [`AttemptError`]: what failed, whose fault, what was sent, and a line for people. What each
//! kind then means (breaker, retry, local reply, metric) is decided in
//! [`crate::pipeline::attempt`], not here.

use std::error::Error;

use crate::pipeline::attempt::{AttemptError, ErrorKind, Sent};
use crate::upstream::http1::SendError;
use crate::upstream::ConnectError;

/// The [`AttemptError`] of a pooled client's error; `has_body`: the request had a body to send.
pub fn attempt_error(
    error: &hyper_util::client::legacy::Error,
    authority: &str,
    has_body: bool,
) -> AttemptError {
    let connect = error.is_connect();
    let sent = if connect {
        Sent::Nothing
    } else {
        Sent::on_connection(has_body)
    };
    from_chain(error, connect, sent, authority, error.source())
}

/// The [`AttemptError`] of a try on fusebox's own HTTP/1.1 connections.
pub fn http1_error(error: &SendError, authority: &str, has_body: bool) -> AttemptError {
    let on_connection = Sent::on_connection(has_body);
    match error {
        SendError::Connect(connect) => connect_error(connect),
        SendError::Tls(error) => {
            let tls = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>());
            if let Some(known) = tls.and_then(|e| tls_error(e, authority)) {
                return known;
            }
            let cause = match error.get_ref() {
                Some(tls) => format!("TLS handshake with {authority} failed: {tls}"),
                None => format!("TLS handshake with {authority} failed: {error}"),
            };
            AttemptError::new(ErrorKind::Connect, Sent::Nothing, cause)
        }
        // Taken care of by the caller, which sends on hyper's client instead.
        SendError::ChoseHttp2 => {
            let cause = format!("{authority} chose HTTP/2 on fusebox's HTTP/1.1 connection");
            AttemptError::new(ErrorKind::Connect, Sent::Nothing, cause)
        }
        SendError::Io { error, written } => {
            let sent = if *written {
                on_connection
            } else {
                Sent::Nothing
            };
            let cause = format!(
                "{authority} closed or reset the connection before a response head: {error}"
            );
            AttemptError::new(ErrorKind::Reset, sent, cause)
        }
        SendError::Unanswered {
            error,
            reused: true,
        } => {
            let how = error
                .as_ref()
                .map_or("closed".to_owned(), |e| format!("reset ({e})"));
            let cause = format!(
                "{authority} {how} a kept-alive connection as the request went out, before any \
                 answer: it may not have seen the request, which was not sent again (a \
                 request that is not idempotent and has no Idempotency-Key is never sent twice)"
            );
            AttemptError::new(ErrorKind::Reset, on_connection, cause)
        }
        SendError::Unanswered {
            error: Some(error),
            reused: false,
        } if tls_alert(error).is_some() => {
            // TLS 1.3: the upstream checks fusebox's client certificate (or its absence) after
            // fusebox's side of the handshake is done, and its refusal arrives on the first
            // read. The handshake failed; the request was never processed.
            let alert = tls_alert(error).expect("guarded");
            tls_error(alert, authority).unwrap_or_else(|| {
                let cause = format!("TLS handshake with {authority} failed: {alert}");
                AttemptError::new(ErrorKind::Connect, Sent::Nothing, cause)
            })
        }
        SendError::Unanswered { error, .. } => {
            let cause = match error {
                Some(error) => {
                    format!("{authority} reset the connection before any answer: {error}")
                }
                None => format!("{authority} closed the connection before any answer"),
            };
            AttemptError::new(ErrorKind::Reset, on_connection, cause)
        }
        SendError::Closed => {
            let cause = format!("{authority} closed the connection before a response head");
            AttemptError::new(ErrorKind::Reset, on_connection, cause)
        }
        SendError::BadResponse(detail) => bad_response(authority, detail, has_body),
    }
}

/// The [`AttemptError`] of a response head that cannot be forwarded (`detail` says why); the
/// request was sent.
pub fn bad_response(authority: &str, detail: &str, has_body: bool) -> AttemptError {
    let cause = format!("{authority} sent a response head fusebox cannot forward: {detail}");
    AttemptError::new(ErrorKind::BadResponse, Sent::on_connection(has_body), cause)
}

/// The TLS alert the upstream sent, if that is what `error` is.
fn tls_alert(error: &std::io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()?
        .downcast_ref::<rustls::Error>()
        .filter(|tls| matches!(tls, rustls::Error::AlertReceived(_)))
}

/// Walks `error`'s chain for its cause; `connect`: the error is about opening the connection;
/// `shown`: what people read when no cause is recognised.
fn from_chain(
    error: &(dyn Error + 'static),
    connect: bool,
    sent: Sent,
    authority: &str,
    shown: Option<&(dyn Error + 'static)>,
) -> AttemptError {
    let mut source: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(cause) = app_body_error(current) {
            let cause = format!("the app's request body to {authority} broke off: {cause}");
            return AttemptError::new(ErrorKind::AppBody, sent, cause);
        }
        if let Some(parse) = current
            .downcast_ref::<hyper::Error>()
            .filter(|e| e.is_parse())
        {
            // The response head could not be read: the upstream's fault, but not a reset.
            let cause = format!("{authority} sent a response head fusebox cannot forward: {parse}");
            return AttemptError::new(ErrorKind::BadResponse, sent, cause);
        }
        if let Some(connect) = current.downcast_ref::<ConnectError>() {
            return connect_error(connect);
        }
        if let Some(tls) = current
            .downcast_ref::<rustls::Error>()
            .or_else(|| refusal_in_words(current))
        {
            if let Some(known) = tls_error(tls, authority) {
                return known;
            }
            let cause = format!("TLS handshake with {authority} failed: {tls}");
            return AttemptError::new(ErrorKind::Connect, Sent::Nothing, cause);
        }
        // io::Error hides its payload from `source()`; look inside.
        source = match current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => current.source(),
        };
    }
    if connect {
        let cause = format!("connect to {authority} failed: {error}");
        return AttemptError::new(ErrorKind::Connect, Sent::Nothing, cause);
    }
    let cause = match shown {
        Some(cause) => {
            format!("{authority} closed or reset the connection before a response head: {cause}")
        }
        None => format!("{authority} closed or reset the connection before a response head"),
    };
    AttemptError::new(ErrorKind::Reset, sent, cause)
}

/// The upstream's refusal of fusebox's client certificate when `error` is only its words: the
/// HTTP/2 client (h2) keeps an I/O error as its kind and text, so the rustls alert that ended
/// the connection reaches fusebox as `received fatal alert: CertificateRequired`, no longer a
/// `rustls::Error`. Compared with rustls's own words for each refusal alert.
fn refusal_in_words(error: &(dyn Error + 'static)) -> Option<&'static rustls::Error> {
    use rustls::AlertDescription as Alert;
    static REFUSALS: std::sync::LazyLock<[rustls::Error; 8]> = std::sync::LazyLock::new(|| {
        [
            Alert::CertificateRequired,
            Alert::BadCertificate,
            Alert::UnknownCA,
            Alert::CertificateUnknown,
            Alert::CertificateExpired,
            Alert::CertificateRevoked,
            Alert::UnsupportedCertificate,
            Alert::AccessDenied,
        ]
        .map(rustls::Error::AlertReceived)
    });
    if error.source().is_some() {
        return None;
    }
    let words = error.to_string();
    REFUSALS.iter().find(|refusal| refusal.to_string() == words)
}

/// The app's side of a failed try: hyper reports the request body's stream failing as a "user"
/// error whose cause is the error of the app connection's body (a malformed chunk, an aborted
/// upload). That is the app's fault: a 400, and nothing recorded against the upstream.
fn app_body_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a hyper::Error> {
    let hyper_error = error.downcast_ref::<hyper::Error>()?;
    if !hyper_error.is_user() {
        return None;
    }
    hyper_error.source()?.downcast_ref::<hyper::Error>()
}

/// The [`AttemptError`] of a TLS failure that is a trust problem, if `error` is one: the
/// upstream's certificate did not verify, or the upstream refused fusebox's client
/// certificate; the rustls cause and what to do about it.
fn tls_error(error: &rustls::Error, authority: &str) -> Option<AttemptError> {
    use rustls::AlertDescription as Alert;
    let why = match error {
        rustls::Error::InvalidCertificate(why) => why,
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        ) => {
            let cause = format!(
                "TLS handshake with {authority} failed: {error}: the upstream refused fusebox's \
                 client certificate (or its absence); check the policy's client_cert and \
                 client_key"
            );
            return Some(AttemptError::new(
                ErrorKind::ClientCertRefused,
                Sent::Nothing,
                cause,
            ));
        }
        _ => return None,
    };
    let cause = format!(
        "the TLS certificate of {authority} did not verify: {why}; if the upstream's CA is a \
         private or corporate one, name its PEM file in the policy's ca_file (a wrong name: \
         check the policy's sni)"
    );
    Some(AttemptError::new(
        ErrorKind::TlsVerify,
        Sent::Nothing,
        cause,
    ))
}

/// The [`AttemptError`] of a connect failure: nothing was sent.
pub fn connect_error(error: &ConnectError) -> AttemptError {
    let kind = match error {
        ConnectError::Denied(_) => ErrorKind::Denied,
        ConnectError::Loop(_) => ErrorKind::Loop,
        ConnectError::Timeout { .. } => ErrorKind::ConnectTimeout,
        ConnectError::MissingHost => ErrorKind::MissingHost,
        ConnectError::Resolve { .. } | ConnectError::NoAddress { .. } | ConnectError::Io { .. } => {
            ErrorKind::Connect
        }
    };
    AttemptError::new(kind, Sent::Nothing, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that says `words` and has `source` as its cause, as hyper's do.
    #[derive(Debug)]
    struct Wrapper(&'static str, std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.1)
        }
    }

    fn h2_kept(words: &str) -> Wrapper {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, words.to_owned());
        Wrapper("connection error", io)
    }

    #[test]
    fn a_refusal_h2_kept_as_words_is_the_policy_s() {
        let words = "received fatal alert: CertificateRequired";
        let error = from_chain(&h2_kept(words), false, Sent::Nothing, "api:443", None);
        assert_eq!(error.kind, ErrorKind::ClientCertRefused, "{error:?}");
        assert!(
            error.cause.contains("client_cert and client_key"),
            "{error:?}"
        );
        let unknown_ca = "received fatal alert: UnknownCA";
        let error = from_chain(&h2_kept(unknown_ca), false, Sent::Nothing, "api:443", None);
        assert_eq!(error.kind, ErrorKind::ClientCertRefused, "{error:?}");
    }

    #[test]
    fn other_words_stay_a_reset() {
        for words in [
            "received fatal alert: HandshakeFailure",
            "connection reset",
            "xreceived fatal alert: CertificateRequired",
        ] {
            let error = from_chain(&h2_kept(words), false, Sent::Nothing, "api:443", None);
            assert_eq!(error.kind, ErrorKind::Reset, "{words}: {error:?}");
        }
    }
}
