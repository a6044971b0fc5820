#!/usr/bin/env bash
# Builds the SDK library and generates its Swift, Kotlin and Python bindings into
# bindings/generated/{swift,kotlin,python} (gitignored), in uniffi library mode with the
# root uniffi.toml (uniffi 0.32 reads only its global `[crates.<crate>...]` format, and
# only when passed with --config).
#   bindings/generate.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=debug
ARGS=()
if [ "${1:-}" = "--release" ]; then PROFILE=release; ARGS=(--release); fi
cargo build -p tidings-bindings --locked "${ARGS[@]}"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
case "$(uname)" in Darwin) LIB=libtidings_bindings.dylib ;; *) LIB=libtidings_bindings.so ;; esac
LIBRARY="$TARGET_DIR/$PROFILE/$LIB"
for lang in swift kotlin python; do
    out="bindings/generated/$lang"
    rm -rf "$out"
    "$TARGET_DIR/$PROFILE/uniffi-bindgen" generate --no-format --library "$LIBRARY" \
        --language "$lang" --config uniffi.toml --out-dir "$out"
done
cp "$LIBRARY" bindings/generated/python/
echo "generated bindings in bindings/generated/ from $LIBRARY"
