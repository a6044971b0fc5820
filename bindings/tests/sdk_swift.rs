//! Swift: the bindings are generated from the built library, and their C header is
//! compiled and linked against it by bindings/check_swift_header.py with a program that
//! references every declared symbol (a missing export fails the link). There is no
//! Swift toolchain on Linux CI, so the Swift source itself is only checked to exist.

mod common;

use std::process::Command;

#[test]
fn swift_header_links_against_the_library() {
    if !common::have_tool("python3", "--version") || !common::have_tool("cc", "--version") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    common::generate("swift", out.path());
    for f in [
        "TidingsSDK.swift",
        "TidingsSDKFFI.h",
        "TidingsSDKFFI.modulemap",
    ] {
        assert!(out.path().join(f).exists(), "{f} not generated");
    }
    let swift = std::fs::read_to_string(out.path().join("TidingsSDK.swift")).unwrap();
    assert!(swift.contains("func sendText(") && swift.contains("async throws"));
    // What Package.swift's binaryTarget provides is the module the Swift file imports,
    // and the modulemap declares.
    assert!(swift.contains("import TidingsSDKFFI"));
    let modulemap = std::fs::read_to_string(out.path().join("TidingsSDKFFI.modulemap")).unwrap();
    assert!(modulemap.contains("module TidingsSDKFFI"), "{modulemap}");
    // The foreign keystore trait is exported.
    assert!(
        swift.contains("protocol SecretStoreProtocol") || swift.contains("protocol SecretStore")
    );
    let lib = common::sdk_library();
    let res = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/check_swift_header.py"
        ))
        .arg(out.path().join("TidingsSDKFFI.h"))
        .arg(lib.parent().unwrap())
        .output()
        .expect("run check_swift_header.py");
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "header check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let n: usize = stdout.split_whitespace().next().unwrap().parse().unwrap();
    assert!(n > 50, "only {n} symbols");
}

/// Package.swift, uniffi.toml and scripts/build-xcframework.sh agree on the paths and the
/// FFI module name (the script's `--check`, which runs on any OS; the build needs Xcode).
#[test]
fn the_swift_package_inputs_are_consistent() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/build-xcframework.sh"
    );
    let res = Command::new("bash")
        .arg(script)
        .arg("--check")
        .output()
        .expect("run build-xcframework.sh");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}
