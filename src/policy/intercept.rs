//! What `intercept = true` needs from the command line: the local CA (`--ca-dir`). `fusebox
//! check`, the start of `fusebox run` and every reload ask the same question, so that `check`
//! refuses exactly what `run` would (docs/ARCHITECTURE.md §3, §13).

use super::keys::Keys;
use super::{PolicyError, PolicySet};

/// One error at each `intercept = true` when fusebox has no CA to intercept with.
pub fn missing_ca(set: &PolicySet, has_ca: bool) -> Vec<PolicyError> {
    if has_ca {
        return Vec::new();
    }
    set.all()
        .filter(|policy| policy.intercept)
        .filter_map(|policy| {
            let keys = Keys::new(std::fs::read_to_string(&policy.file).ok());
            // A value inherited from `default.toml` is reported there, once.
            if !keys.sets("intercept") {
                return None;
            }
            let (line, col) = keys.at("intercept", None);
            Some(PolicyError {
                file: policy.file.clone(),
                line,
                col,
                message: "`intercept = true` needs fusebox's local CA: start fusebox with \
                          --ca-dir DIR (create one with `fusebox ca init --dir DIR`)"
                    .to_owned(),
            })
        })
        .collect()
}
