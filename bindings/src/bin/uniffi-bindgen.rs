//! `uniffi-bindgen`: generates the Swift, Kotlin and Python sources for the SDK from the
//! built library (library mode). See bindings/README.md and bindings/generate.sh.
fn main() {
    uniffi::uniffi_bindgen_main()
}
