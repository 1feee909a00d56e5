//! gRPC as the pipeline understands it (docs/ARCHITECTURE.md §14): which requests are gRPC
//! calls, the status a response carries (`grpc-status`, in its head for a trailers-only answer
//! or in its trailers), and the deadline an app sends (`grpc-timeout`).
//!
//! Pure functions of headers; nothing here reads a clock or touches a socket. A value that does
//! not parse is treated as absent (a status) or ignored (a timeout): never a panic, never an
//! error for the app.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue};

pub use crate::grpc_code::GrpcCode;

/// Whether a request or response with these headers is gRPC (`content-type: application/grpc`,
/// with or without a `+proto`/`+json` suffix or parameters; not gRPC-Web).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let bytes = value.as_bytes();
    let prefix = b"application/grpc";
    bytes.len() >= prefix.len()
        && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(bytes.get(prefix.len()), None | Some(b'+' | b';'))
}

/// The `grpc-status` in `headers` (a response head, or trailers).
pub fn status(headers: &HeaderMap) -> Option<GrpcCode> {
    GrpcCode::from_header(headers.get("grpc-status")?)
}

/// A `grpc-timeout` value for `left`: milliseconds, rounded up (at least 1), or whole seconds
/// when that needs more than the 8 digits the format allows.
pub fn timeout_value(left: Duration) -> HeaderValue {
    let millis = left.as_nanos().div_ceil(1_000_000).max(1);
    let text = if millis <= 99_999_999 {
        format!("{millis}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit are a valid header value")
}

/// The deadline an app sent with `grpc-timeout` (1 to 8 digits and a unit: `H`, `M`, `S`,
/// `m`, `u`, `n`); `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn codes_have_their_numbers_names_and_labels() {
        for (n, code) in GrpcCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, n);
            assert_eq!(GrpcCode::from_name(code.name()), Some(code));
            assert_eq!(code.label(), format!("grpc-{}", code.name()));
            let number = HeaderValue::from_str(&n.to_string()).unwrap();
            assert_eq!(GrpcCode::from_header(&number), Some(code));
        }
        assert_eq!(
            GrpcCode::from_name("resource-exhausted"),
            Some(GrpcCode::ResourceExhausted)
        );
        assert_eq!(GrpcCode::from_name("UNAVAILABLE"), None);
    }

    #[test]
    fn a_status_outside_the_table_is_unknown_and_garbage_is_none() {
        let value = |v: &'static str| GrpcCode::from_header(&HeaderValue::from_static(v));
        assert_eq!(value("17"), Some(GrpcCode::Unknown));
        assert_eq!(value("99999999999999999999"), None);
        assert_eq!(value("4294967296"), Some(GrpcCode::Unknown));
        for bad in ["", "-1", "1.0", "unavailable", " "] {
            assert_eq!(value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/GRPC;charset=utf-8",
        ] {
            let h = HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static(grpc))]);
            assert!(is_grpc(&h), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            let h = HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static(other))]);
            assert!(!is_grpc(&h), "{other}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn a_timeout_left_is_sent_in_the_grpc_format() {
        let value = |d| timeout_value(d).to_str().unwrap().to_owned();
        assert_eq!(value(Duration::from_millis(1500)), "1500m");
        assert_eq!(value(Duration::from_micros(1)), "1m");
        assert_eq!(value(Duration::ZERO), "1m");
        assert_eq!(value(Duration::from_secs(200_000)), "200000S");
        for left in [Duration::from_millis(7), Duration::from_secs(9_999)] {
            let mut sent = HeaderMap::new();
            sent.insert("grpc-timeout", timeout_value(left));
            assert_eq!(timeout(&sent), Some(left), "{left:?}");
        }
    }

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("10n"), Some(Duration::from_nanos(10)));
        for bad in ["", "m", "123456789m", "10x", "1.5S", "-1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }
}
