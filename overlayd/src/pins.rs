//! Which identity key each node ID is known by. A node ID is pinned to the key of the first
//! validly signed lease seen with it; from then on a lease with that node ID is a peer only
//! when that key signed it, so a node with store access cannot write leases in another
//! node's name. Pins are kept in the state directory (`pins.json`) so a restart remembers
//! them; only the operator changes one (`overlayctl identity forget NODE`, when a node was
//! reinstalled with a new key but its old node ID).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::identity::PublicKey;

/// The file in the state directory.
pub const FILE: &str = "pins.json";

/// Node ID → identity key.
#[derive(Debug, Default)]
pub struct Pins {
    path: Option<PathBuf>,
    map: BTreeMap<String, PublicKey>,
}

/// Shared between the watcher (which pins) and the API (which shows and forgets).
pub type SharedPins = Arc<RwLock<Pins>>;

impl Pins {
    /// Pins kept in memory only (tests, tools).
    pub fn in_memory() -> Self {
        Pins::default()
    }

    /// Loads `<state_dir>/pins.json`; a missing file is no pins, a damaged one is logged and
    /// replaced at the next pin (refusing every peer would be worse).
    pub fn load(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join(FILE);
        let map = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, String>>(&bytes) {
                Ok(m) => m.into_iter().filter_map(|(n, k)| Some((n, PublicKey::parse(&k)?))).collect(),
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "pinned identities unreadable; starting over");
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        Pins { path: Some(path), map }
    }

    /// Shared.
    pub fn shared(self) -> SharedPins {
        Arc::new(RwLock::new(self))
    }

    /// The key `node` is pinned to.
    pub fn get(&self, node: &str) -> Option<PublicKey> {
        self.map.get(node).copied()
    }

    /// Every pin.
    pub fn all(&self) -> impl Iterator<Item = (&String, &PublicKey)> {
        self.map.iter()
    }

    /// Pins `node` to `key` (first sight); saved at once.
    pub fn pin(&mut self, node: &str, key: PublicKey) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.map.entry(node.to_string()) {
            v.insert(key);
            tracing::info!(node, identity = %key, "pinned a node's identity");
            self.save();
        }
    }

    /// Forgets `node`'s pin (operator command); `true` if there was one.
    pub fn forget(&mut self, node: &str) -> bool {
        let had = self.map.remove(node).is_some();
        if had {
            self.save();
        }
        had
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let m: BTreeMap<&String, String> = self.map.iter().map(|(n, k)| (n, k.to_string())).collect();
        let bytes = serde_json::to_vec_pretty(&m).expect("pins serialize");
        if let Err(e) = crate::state::write_atomic(path, &bytes, 0o600) {
            tracing::error!(file = %path.display(), error = %e, "saving pinned identities");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn pins_survive_a_restart_and_only_forget_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap().public();
        let b = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap().public();
        assert_ne!(a, b);
        let mut p = Pins::load(dir.path());
        p.pin("n1", a);
        p.pin("n1", b); // a second sight never moves a pin: the caller refuses b
        assert_eq!(Pins::load(dir.path()).get("n1"), Some(a));
        assert!(p.forget("n1"));
        assert_eq!(Pins::load(dir.path()).get("n1"), None);
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert_eq!(Pins::load(dir.path()).all().count(), 0);
    }
}
