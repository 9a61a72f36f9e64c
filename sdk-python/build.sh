#!/usr/bin/env bash
# Builds the Python distributions into <repo>/dist/python (or $1): an abi3 manylinux wheel for CPython >= 3.9
# (release profile; Cargo.toml strips the library's debug info; maturin checks the manylinux policy against the
# symbols the library uses and tags the wheel with the oldest one it meets) and the sdist (Rust sources of this
# crate and the protocol crate it depends on, with Cargo.lock: `pip install meterd-*.tar.gz` builds from source,
# needing cargo).
# Needs maturin (`pip install 'maturin>=1.9,<2'`; $MATURIN names another one) and cargo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/../dist/python}")
maturin=${MATURIN:-maturin}
command -v "$maturin" >/dev/null || { echo "build.sh: $maturin not found: pip install 'maturin>=1.9,<2'" >&2; exit 2; }
mkdir -p "$out"
cd "$here"
# An explicit --target, as `napi build` passes: both SDK builds then share target/<triple>/release.
target=${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
"$maturin" build --release --locked --target "$target" --out "$out"
"$maturin" sdist --out "$out"
ls -1 "$out"/meterd-*
