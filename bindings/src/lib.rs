//! tidings-bindings: home of the `uniffi-bindgen` binary and the generated Swift and
//! Kotlin sources. Built by the SDK issue; see ARCHITECTURE.md.
