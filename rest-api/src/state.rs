use std::sync::Arc;

use tidings_auth::TokenKeys;
use tidings_store::{EventSink, Store};

/// Shared handles every handler may use. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keys: Arc<TokenKeys>,
    /// Publishes events the API stores (e.g. a new conversation) to the members'
    /// inboxes live; the broker provides it.
    pub sink: Arc<dyn EventSink>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, keys: Arc<TokenKeys>, sink: Arc<dyn EventSink>) -> Self {
        AppState { store, keys, sink }
    }
}
