//! What failed on the way to an upstream, and what it means: each client or connect error maps
//! to one local-reply reason, one attempt result (none when fusebox itself refused, so the
//! upstream is not blamed) and a line for people.

use crate::outcome::Reason;
use crate::telemetry::AttemptResult;
use crate::upstream::ConnectError;

/// Maps a client error to the local reply, the attempt result and a line for people.
pub fn classify_error(
    error: &hyper_util::client::legacy::Error,
    authority: &str,
) -> (Reason, Option<AttemptResult>, String) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(cause) = app_body_error(current) {
            return (
                Reason::BadRequest,
                None,
                format!("the app's request body to {authority} broke off: {cause}"),
            );
        }
        if let Some(parse) = current
            .downcast_ref::<hyper::Error>()
            .filter(|e| e.is_parse())
        {
            // The response head could not be read: the upstream's fault, but not a reset.
            return (
                Reason::BadResponse,
                Some(AttemptResult::Failure),
                format!("{authority} sent a response head fusebox cannot forward: {parse}"),
            );
        }
        if let Some(connect) = current.downcast_ref::<ConnectError>() {
            return classify_connect_error(connect);
        }
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return (
                Reason::ConnectFailed,
                Some(AttemptResult::ConnectFailed),
                format!("TLS handshake with {authority} failed: {tls}"),
            );
        }
        // io::Error hides its payload from `source()`; look inside.
        source = match current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    if error.is_connect() {
        (
            Reason::ConnectFailed,
            Some(AttemptResult::ConnectFailed),
            format!("connect to {authority} failed: {error}"),
        )
    } else {
        let detail = match std::error::Error::source(error) {
            Some(cause) => format!(
                "{authority} closed or reset the connection before a response head: {cause}"
            ),
            None => format!("{authority} closed or reset the connection before a response head"),
        };
        (Reason::UpstreamReset, Some(AttemptResult::Reset), detail)
    }
}

/// The app's side of a failed try: hyper reports the request body's stream failing as a "user"
/// error whose cause is the error of the app connection's body (a malformed chunk, an aborted
/// upload). That is the app's fault: a 400, and nothing recorded against the upstream.
fn app_body_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a hyper::Error> {
    let hyper_error = error.downcast_ref::<hyper::Error>()?;
    if !hyper_error.is_user() {
        return None;
    }
    std::error::Error::source(hyper_error)?.downcast_ref::<hyper::Error>()
}

/// Maps a connect failure to the local reply, the attempt result (none when fusebox refused
/// before trying) and a line for people.
pub fn classify_connect_error(error: &ConnectError) -> (Reason, Option<AttemptResult>, String) {
    let (reason, attempt) = match error {
        ConnectError::Denied(_) => (Reason::Denied, None),
        ConnectError::Loop(_) => (Reason::Loop, None),
        ConnectError::Timeout { .. } => (Reason::Timeout, Some(AttemptResult::Timeout)),
        ConnectError::Resolve { .. }
        | ConnectError::NoAddress { .. }
        | ConnectError::Io { .. }
        | ConnectError::MissingHost => (Reason::ConnectFailed, Some(AttemptResult::ConnectFailed)),
    };
    (reason, attempt, error.to_string())
}
