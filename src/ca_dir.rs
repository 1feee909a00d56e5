//! The local CA of `--ca-dir`, as the running agent holds it (docs/ARCHITECTURE.md §7, §13):
//! loaded at start, and read again on every reload (`SIGHUP`, `POST /reload`, a change in the
//! directory when it is watched). A CA whose certificate changed (`fusebox ca init --force`,
//! or a rotated Secret) is swapped in, compared by content, not by path: new intercepted
//! connections present leaves of the new CA at once, connections already open keep theirs.
//! A CA that no longer loads (a half-written file, a key that does not match) is refused and
//! the one in use keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::ca::{CaError, LocalCa};

/// The CA directory and the CA loaded from it.
#[derive(Debug)]
pub struct CaDir {
    dir: PathBuf,
    current: ArcSwap<LocalCa>,
}

impl CaDir {
    pub fn load(dir: &Path) -> Result<CaDir, CaError> {
        let ca = LocalCa::load(dir)?;
        Ok(CaDir {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(ca),
        })
    }

    /// The CA to mint leaves from now.
    pub fn current(&self) -> Arc<LocalCa> {
        self.current.load_full()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the directory again: `Some` CA when it differs from the one in use (to be put in
    /// its place with [`CaDir::install`] once the rest of a reload succeeded), `None` when it is
    /// the same.
    pub fn read_if_changed(&self) -> Result<Option<LocalCa>, CaError> {
        let loaded = LocalCa::load(&self.dir)?;
        let same = loaded.certificate_pem() == self.current.load().certificate_pem();
        Ok((!same).then_some(loaded))
    }

    /// Puts `ca` in place of the CA in use.
    pub fn install(&self, ca: LocalCa) {
        self.current.store(Arc::new(ca));
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::ca::KEY_FILE;

    /// What a reload does with the directory: `Ok(true)` when a changed CA took the place of
    /// the one in use.
    fn reload(ca_dir: &CaDir) -> Result<bool, CaError> {
        let changed = ca_dir.read_if_changed()?;
        let swapped = changed.is_some();
        if let Some(ca) = changed {
            ca_dir.install(ca);
        }
        Ok(swapped)
    }

    #[test]
    fn a_rotated_ca_is_swapped_in_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::init(dir.path(), false, SystemTime::now()).unwrap();
        let ca_dir = CaDir::load(dir.path()).unwrap();
        let first = ca_dir.current().certificate_pem().to_owned();
        assert!(!reload(&ca_dir).unwrap(), "the same content: unchanged");
        LocalCa::init(dir.path(), true, SystemTime::now()).unwrap();
        assert!(reload(&ca_dir).unwrap(), "a new CA");
        let second = ca_dir.current().certificate_pem().to_owned();
        assert_ne!(first, second);
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        assert!(reload(&ca_dir).is_err());
        assert_eq!(
            ca_dir.current().certificate_pem(),
            second,
            "the one in use stays"
        );
    }
}
