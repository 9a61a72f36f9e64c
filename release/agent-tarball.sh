#!/usr/bin/env bash
# Builds the agent's binary release for Linux: dist/meterd-<version>-<target>.tar.gz holding
#   meterd            the binary (stripped); it links only glibc, dynamically (TLS is rustls + aws-lc, static)
#   README.md, LICENSE, CHANGELOG.md, operations.md
#   meterd.toml       the example config (examples/meterd.toml)
#   systemd/          meterd.service + meterd.env (examples/systemd)
#   BUILD-INFO        version, commit, target, the oldest glibc it runs on, the toolchain that built it
# usage: release/agent-tarball.sh [--out DIR] [--bin PATH]
#   --bin PATH packs an already built binary instead of running `cargo build --release --locked -p meterd`
#   (the tests pack target/debug/meterd this way).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/dist
bin=
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$(realpath -m "${2:?--out needs a directory}"); shift 2 ;;
    --bin) bin=$(realpath "${2:?--bin needs a path}"); shift 2 ;;
    *) echo "agent-tarball.sh: unknown argument '$1' (usage: [--out DIR] [--bin PATH])" >&2; exit 2 ;;
  esac
done
for tool in objdump strip tar; do
  command -v $tool >/dev/null || { echo "agent-tarball.sh: $tool not found (binutils, tar)" >&2; exit 2; }
done

if [ -z "$bin" ]; then
  (cd "$repo" && cargo build --release --locked -p meterd)
  bin=${CARGO_TARGET_DIR:-$repo/target}/release/meterd
fi
# "meterd 0.1.0 (commit 0123456789ab)"
read -r name version _ commit_word < <("$bin" --version)
commit=${commit_word%)}
[ "$name" = meterd ] || { echo "agent-tarball.sh: $bin --version printed '$name $version'" >&2; exit 1; }
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
target=${target:-$(uname -m)-unknown-linux-gnu}

# Only the C library may be a shared dependency: anything else would have to be installed on the host.
needed=$(objdump -p "$bin" | awk '/NEEDED/ {print $2}' | sort | tr '\n' ' ')
for lib in $needed; do
  case $lib in
    libc.so.*|libm.so.*|libgcc_s.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;
    *) echo "agent-tarball.sh: $bin needs $lib, which is not part of glibc" >&2; exit 1 ;;
  esac
done
# The newest glibc symbol version the binary asks for is the oldest glibc it runs on.
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)

pkg=meterd-$version-$target
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir=$stage/$pkg
mkdir -p "$dir/systemd"
strip -o "$dir/meterd" "$bin"
cp "$repo/README.md" "$repo/LICENSE" "$repo/CHANGELOG.md" "$repo/docs/operations.md" "$dir/"
cp "$repo/examples/meterd.toml" "$dir/meterd.toml"
cp "$repo/examples/systemd/meterd.service" "$repo/examples/systemd/meterd.env" "$dir/systemd/"
cat > "$dir/BUILD-INFO" <<INFO
meterd $version
commit $commit
target $target
glibc >= $glibc (dynamically linked: ${needed% }; everything else is static)
built with $(rustc -V 2>/dev/null || echo "rustc (unknown)") on $(ldd --version 2>/dev/null | head -1 | sed 's/^ldd (\(.*\)) .*/\1/')
INFO
mkdir -p "$out"
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$pkg.tar.gz" "$pkg"
echo "$out/$pkg.tar.gz"
cat "$dir/BUILD-INFO"
