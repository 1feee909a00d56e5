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
