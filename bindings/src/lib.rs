//! tidings-bindings: the library apps load (cdylib for Android/Python, staticlib for
//! iOS) and the `uniffi-bindgen` binary. The SDK itself lives in tidings-core (feature
//! "sdk"); this crate only re-exports its uniffi scaffolding so the symbols end up in
//! the shared library.

tidings_core::uniffi_reexport_scaffolding!();

pub use tidings_core::sdk;
