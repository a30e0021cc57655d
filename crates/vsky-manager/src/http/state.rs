//! [`AppState`]: what every handler and middleware of the API shares.
//!
//! It sits in its own module, below the router (`http/mod.rs`) and the
//! handlers, so that handlers import it from here and never from the
//! module that routes to them.

use std::sync::Arc;

use crate::auth::Tokens;
use crate::events::NewEvent;
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::recovery::Recovery;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
    pub recovery: Arc<Recovery>,
}

impl AppState {
    /// Records an event in the log behind `/api/v1/events` (it is also
    /// written to the manager's log).
    pub fn event(&self, e: NewEvent) {
        self.recovery.events.record(e);
    }
}
