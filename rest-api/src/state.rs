use std::sync::Arc;

use tidings_auth::TokenKeys;
use tidings_store::{EventSink, Store};

use crate::uploads::{BlobStore, UploadsConfig};

/// Shared handles every handler may use. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keys: Arc<TokenKeys>,
    /// Publishes events the API stores (e.g. a new conversation) to the members'
    /// inboxes live; the broker provides it.
    pub sink: Arc<dyn EventSink>,
    /// Where attachment bytes live.
    pub blobs: Arc<dyn BlobStore>,
    pub uploads: Arc<UploadsConfig>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<TokenKeys>,
        sink: Arc<dyn EventSink>,
        blobs: Arc<dyn BlobStore>,
        uploads: UploadsConfig,
    ) -> Self {
        AppState { store, keys, sink, blobs, uploads: Arc::new(uploads) }
    }
}
