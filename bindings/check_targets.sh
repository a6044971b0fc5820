#!/usr/bin/env bash
# `cargo check` of the SDK library for iOS and Android targets (a target rustup cannot add fails the run).
# There is no Xcode or Android NDK on the Linux CI host, so C sources of dependencies
# (the bundled SQLite of rusqlite) are not compiled for the target here: a stub compiler
# (and a stub xcrun) hands cc-rs an empty object. The Rust code of the SDK and of every
# dependency is type-checked for the target, which is what this guards; the real device
# builds (bindings/README.md) compile the C parts with the platform's clang. Exits
# non-zero when any target fails to check or cannot be added.
#   bindings/check_targets.sh [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(aarch64-apple-ios aarch64-linux-android)
STUB=$(mktemp -d /tmp/tidings-stubcc.XXXXXX)
trap 'rm -rf "$STUB"' EXIT
cat >"$STUB/stub-cc" <<'SH'
#!/bin/sh
# Writes an empty host object wherever -o (or -Fo) points; ignores everything else. Preprocessing
# (cc-rs's compiler-family probe) is left to the host compiler.
for a in "$@"; do [ "$a" = "-E" ] && exec cc "$@"; done
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out="$2"; shift ;;
        -o*) out="${1#-o}" ;;
        -Fo*) out="${1#-Fo}" ;; # cc-rs may take the stub for MSVC

    esac
    shift
done
[ -n "$out" ] && exec cc -c -x c /dev/null -o "$out"
exit 0
SH
cat >"$STUB/xcrun" <<'SH'
#!/bin/sh
# Just enough of xcrun for cc-rs: an SDK path that is never used.
echo /nonexistent-sdk
SH
chmod +x "$STUB/stub-cc" "$STUB/xcrun"
# A target that cannot be added is a failure, not a skip: a green run must mean every
# listed target was type-checked (CI provisions them with rustup; offline, install them
# beforehand with `rustup target add`).
failed=()
for t in "${TARGETS[@]}"; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$t" \
        && ! rustup target add "$t" >/dev/null 2>&1; then
        echo "[check_targets] rustup cannot add $t here: NOT CHECKED" >&2
        failed+=("$t (target unavailable)")
        continue
    fi
    v=${t//-/_}
    echo "[check_targets] cargo check --target $t" >&2
    if ! env PATH="$STUB:$PATH" "CC_$v=$STUB/stub-cc" "AR_$v=ar" \
        cargo check -p tidings-bindings --lib --locked --target "$t"; then
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "[check_targets] failed: ${failed[*]}" >&2
    exit 1
fi
