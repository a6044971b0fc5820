#!/usr/bin/env bash
# Builds bindings/apple/TidingsSDKFFI.xcframework (device iOS, simulator iOS arm64 +
# x86_64, macOS arm64 + x86_64) and the generated Swift for the Swift package in
# Package.swift. Runs on macOS with Xcode only; elsewhere it checks what it can (that
# Package.swift names the paths written here, that uniffi.toml names the FFI module)
# and exits non-zero saying why it cannot build.
#   scripts/build-xcframework.sh [--check]   (--check: only the input checks, any OS)
set -euo pipefail
cd "$(dirname "$0")/.."
XCF=bindings/apple/TidingsSDKFFI.xcframework
SWIFT_DIR=bindings/apple/Sources/TidingsSDK
FFI_MODULE=TidingsSDKFFI
IOS=(aarch64-apple-ios)
SIM=(aarch64-apple-ios-sim x86_64-apple-ios)
MAC=(aarch64-apple-darwin x86_64-apple-darwin)

die() { echo "[build-xcframework] $*" >&2; exit 1; }

# Inputs that can be checked anywhere.
grep -q "path: \"$XCF\"" Package.swift || die "Package.swift's binaryTarget path is not $XCF"
grep -q "path: \"$SWIFT_DIR\"" Package.swift || die "Package.swift's TidingsSDK path is not $SWIFT_DIR"
grep -q "binaryTarget(name: \"$FFI_MODULE\"" Package.swift \
    || die "Package.swift's binaryTarget is not named $FFI_MODULE (the Swift file imports it)"
grep -q "ffi_module_name = \"$FFI_MODULE\"" uniffi.toml \
    || die "uniffi.toml does not name the FFI module $FFI_MODULE"
[ "${1:-}" = "--check" ] && { echo "[build-xcframework] inputs consistent" >&2; exit 0; }

[ "$(uname -s)" = Darwin ] || die "needs macOS with Xcode (xcodebuild, lipo, the Apple SDKs); \
this host is $(uname -s): nothing was built"
command -v xcodebuild >/dev/null 2>&1 || die "xcodebuild missing: install Xcode and run xcode-select"
installed=$(rustup target list --installed)
missing=()
for t in "${IOS[@]}" "${SIM[@]}" "${MAC[@]}"; do grep -qx "$t" <<<"$installed" || missing+=("$t"); done
[ ${#missing[@]} -eq 0 ] || die "rustup targets missing: rustup target add ${missing[*]}"

for t in "${IOS[@]}" "${SIM[@]}" "${MAC[@]}"; do
    cargo build -p tidings-bindings --lib --release --locked --target "$t"
done
lib=libtidings_bindings.a
mkdir -p target/apple
lipo -create target/aarch64-apple-ios-sim/release/$lib target/x86_64-apple-ios/release/$lib \
    -output target/apple/libtidings_bindings_sim.a
lipo -create target/aarch64-apple-darwin/release/$lib target/x86_64-apple-darwin/release/$lib \
    -output target/apple/libtidings_bindings_macos.a

# Swift, header and modulemap from the host library (library mode).
cargo build -p tidings-bindings --release --locked
out=target/apple/swift
rm -rf "$out" && mkdir -p "$out"
target/release/uniffi-bindgen generate --no-format --library target/release/libtidings_bindings.dylib \
    --language swift --config uniffi.toml --out-dir "$out"
headers=target/apple/headers
rm -rf "$headers" && mkdir -p "$headers"
cp "$out/$FFI_MODULE.h" "$headers/"
cp "$out/$FFI_MODULE.modulemap" "$headers/module.modulemap"

rm -rf "$XCF"
xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/$lib -headers "$headers" \
    -library target/apple/libtidings_bindings_sim.a -headers "$headers" \
    -library target/apple/libtidings_bindings_macos.a -headers "$headers" \
    -output "$XCF"
mkdir -p "$SWIFT_DIR"
cp "$out/TidingsSDK.swift" "$SWIFT_DIR/"
echo "[build-xcframework] ready: $XCF and $SWIFT_DIR/TidingsSDK.swift (swift build)" >&2
