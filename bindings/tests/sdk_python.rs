//! The SDK scenario through the generated Python bindings (tests/clients/sdk_scenario.py),
//! against a live server this test starts, over TLS (HTTPS + wss:// through the
//! harness's proxy, its CA pinned). Also a Python `SecretStore` (the foreign keystore
//! trait): tokens only there, a throwing keystore a typed error, `wipe()` complete.
//! Generates the bindings from the library cargo just built, so a broken export fails
//! here.

mod common;

use std::process::Command;

#[test]
fn python_bindings_scenario() {
    if !common::have_tool("python3", "--version") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    common::generate("python", out.path());
    std::fs::copy(
        common::sdk_library(),
        out.path().join(common::sdk_library().file_name().unwrap()),
    )
    .unwrap();
    let mut server = common::Server::start();
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/clients/sdk_scenario.py"
    ))
    .env("TIDINGS_BINDINGS_DIR", out.path());
    let broker = server.wss();
    let result = common::drive(cmd, &mut server, &broker);
    assert!(result["typed_error"]
        .as_str()
        .is_some_and(|e| e.contains("invalid")));
    // The foreign keystore's own exception came back as the typed error.
    assert!(result["keystore_error"]
        .as_str()
        .is_some_and(|e| e.contains("locked")));
}
