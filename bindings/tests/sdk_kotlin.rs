//! The SDK scenario through the generated Kotlin bindings (tests/clients/sdk_scenario.kt),
//! compiled with kotlinc (npm `kotlin-compiler`, which ships kotlinx-coroutines) against
//! Debian's JNA, run on the JVM against a live server this test starts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// kotlinc: $KOTLINC, then PATH, then npm's global `kotlin-compiler` package (whose
/// package.json only links kotlinc-js onto PATH).
fn kotlinc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KOTLINC") {
        return Some(PathBuf::from(p));
    }
    if Command::new("kotlinc")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(PathBuf::from("kotlinc"));
    }
    let root = Command::new("npm").args(["root", "-g"]).output().ok()?;
    let p =
        Path::new(String::from_utf8_lossy(&root.stdout).trim()).join("kotlin-compiler/bin/kotlinc");
    p.exists().then_some(p)
}

fn coroutines_jar(kotlinc: &Path) -> Option<PathBuf> {
    let lib = std::fs::canonicalize(kotlinc)
        .ok()?
        .parent()?
        .parent()?
        .join("lib");
    let jar = lib.join("kotlinx-coroutines-core-jvm.jar");
    jar.exists().then_some(jar)
}

#[test]
fn kotlin_bindings_scenario() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let jna = Path::new("/usr/share/java/jna.jar");
    let tools = kotlinc().and_then(|k| coroutines_jar(&k).map(|c| (k, c)));
    let (kotlinc, coroutines) = match tools {
        Some(t) if jna.exists() && common::have_tool("java", "-version") => t,
        _ => {
            assert!(!ci, "kotlinc (npm kotlin-compiler), java and /usr/share/java/jna.jar are required in CI");
            eprintln!(
                "SKIPPED: kotlinc, java or libjna-java missing (scripts/test.sh provisions them)"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    common::generate("kotlin", &src);
    let generated = src.join("io/tidings/sdk/tidings_core.kt");
    assert!(generated.exists(), "no Kotlin sources generated");
    let jar = dir.path().join("scenario.jar");
    let cp = format!("{}:{}", jna.display(), coroutines.display());
    let out = Command::new(&kotlinc)
        .arg(&generated)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/clients/sdk_scenario.kt"
        ))
        .args(["-cp", &cp, "-include-runtime", "-nowarn", "-d"])
        .arg(&jar)
        .output()
        .expect("run kotlinc");
    assert!(
        out.status.success(),
        "kotlinc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib_dir = common::sdk_library().parent().unwrap().to_path_buf();
    let mut server = common::Server::start();
    let mut cmd = Command::new("java");
    cmd.arg(format!("-Djna.library.path={}", lib_dir.display()))
        .arg("-cp")
        .arg(format!("{}:{cp}", jar.display()))
        .arg("Sdk_scenarioKt");
    let broker = server.mqtts();
    let result = common::drive(cmd, &mut server, &broker);
    assert_eq!(result["typed_error"], "invalid");
}
