use std::sync::Arc;

use tidings_auth::TokenKeys;
use tidings_store::Store;

/// Shared handles every handler may use. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keys: Arc<TokenKeys>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, keys: TokenKeys) -> Self {
        AppState {
            store,
            keys: Arc::new(keys),
        }
    }
}
