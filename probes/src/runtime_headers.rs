//! Headers added to chosen probes' HTTP requests while the probes run, without restarting
//! them: a fault drill marks its own probes of the primary (`x-failoverd-drill: <run id>`)
//! for the length of the run, so only they take the fault route.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Extra request headers by probe id (`ProbeSpec::id`), shared between the scheduler and
/// whoever sets them. Cloning shares the same set. Non-HTTP probes ignore them.
#[derive(Clone, Debug, Default)]
pub struct RuntimeHeaders(Arc<RwLock<HashMap<usize, Headers>>>);

/// Header name and value pairs, sent in this order.
pub type Headers = Vec<(String, String)>;

impl RuntimeHeaders {
    /// Sends `headers` (replacing any set before) with every later attempt of probe `id`.
    pub fn set(&self, id: usize, headers: Vec<(String, String)>) {
        if let Ok(mut m) = self.0.write() {
            m.insert(id, headers);
        }
    }

    /// Stops sending extra headers with probe `id`.
    pub fn clear(&self, id: usize) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&id);
        }
    }

    /// The headers set for probe `id` (empty when none).
    pub fn get(&self, id: usize) -> Vec<(String, String)> {
        self.0
            .read()
            .ok()
            .and_then(|m| m.get(&id).cloned())
            .unwrap_or_default()
    }
}
