#!/usr/bin/env bash
# Builds the SDK for Android into the Gradle library module bindings/android/:
#   - libtidings_bindings.so for the four Android ABIs, with cargo-ndk, into
#     bindings/android/src/main/jniLibs/<abi>/ (the layout the AAR packs);
#   - the Kotlin bindings (uniffi) into bindings/android/src/main/java/.
# Then `gradle -p bindings/android assembleRelease` (or the app's Gradle build including
# the module) produces the AAR.
#
# Needs: the Android NDK (ANDROID_NDK_HOME or ANDROID_NDK_ROOT, r26+), cargo-ndk
# (`cargo install cargo-ndk`), and the rustup targets below. Checks every input first and
# says exactly which one is missing; it never builds half the ABIs.
#   scripts/build-android.sh [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=release
[ "${1:-}" = "--debug" ] && PROFILE=debug
MODULE=bindings/android
# Android ABI -> Rust target.
ABIS=(arm64-v8a armeabi-v7a x86_64 x86)
TARGETS=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android i686-linux-android)
MIN_SDK=24 # keep equal to minSdk in bindings/android/build.gradle.kts

die() { echo "[build-android] $*" >&2; exit 1; }

NDK="${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}"
[ -n "$NDK" ] || die "no Android NDK: set ANDROID_NDK_HOME (or ANDROID_NDK_ROOT) to an NDK r26+ \
(Android Studio's SDK Manager installs it under \$ANDROID_HOME/ndk/<version>). \
None of crates.io, PyPI, npm or Debian ships one, so this cannot run on the Linux CI host."
[ -f "$NDK/source.properties" ] || die "$NDK is not an NDK (no source.properties)"
command -v cargo-ndk >/dev/null 2>&1 || die "cargo-ndk is missing: cargo install cargo-ndk"
missing=()
installed=$(rustup target list --installed)
for t in "${TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || missing+=("$t")
done
[ ${#missing[@]} -eq 0 ] || die "rustup targets missing: rustup target add ${missing[*]}"
grep -q "minSdk = $MIN_SDK" "$MODULE/build.gradle.kts" \
    || die "minSdk in $MODULE/build.gradle.kts differs from MIN_SDK=$MIN_SDK here"

args=()
for abi in "${ABIS[@]}"; do args+=(-t "$abi"); done
profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)
export ANDROID_NDK_HOME="$NDK"
cargo ndk "${args[@]}" --platform "$MIN_SDK" -o "$MODULE/src/main/jniLibs" \
    build -p tidings-bindings --locked "${profile_flag[@]}"
for abi in "${ABIS[@]}"; do
    [ -f "$MODULE/src/main/jniLibs/$abi/libtidings_bindings.so" ] \
        || die "cargo-ndk produced no $MODULE/src/main/jniLibs/$abi/libtidings_bindings.so"
done

# Kotlin bindings from the host library (uniffi's library mode reads the metadata,
# which is the same for every target).
cargo build -p tidings-bindings --locked "${profile_flag[@]}"
rm -rf "$MODULE/src/main/java/io/tidings/sdk"
"target/$PROFILE/uniffi-bindgen" generate --no-format \
    --library "target/$PROFILE/libtidings_bindings.so" \
    --language kotlin --config uniffi.toml --out-dir "$MODULE/src/main/java"
echo "[build-android] ready: $MODULE (gradle -p $MODULE assembleRelease)" >&2
