#!/usr/bin/env bash
# The packages people install, built and installed the way they would be: builds the Python wheel + sdist
# (sdk-python/build.sh) and the npm tarballs (sdk-node/scripts/pack.js) once, in release mode; installs each into
# a fresh environment whose PATH has no cargo or rustc; records usage through it against a real agent
# ($METERD_BIN run --simulate) and reads it back from the report (smoke.py, smoke.cjs, smoke.mjs); type-checks a
# TypeScript file against the installed package. Prints the install times and the wheel's manylinux policy.
# Called by tests/run after the SDK steps (it uses .venv's maturin/auditwheel and sdk-node's node_modules).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tests/packages
dist=${METERD_DIST:-$repo/dist}
venv=${METERD_VENV:-$repo/.venv}
meterd_bin=${METERD_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/meterd}
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
export METERD_VERSION=$version

fail() { echo "packages: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

work=$(mktemp -d)
agent_pid=
cleanup() {
  if [ -n "$agent_pid" ]; then kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- build, once, release ---------------------------------------------------------------------------------
rm -rf "$dist/python" "$dist/node"
t0=$(now)
MATURIN="$venv/bin/maturin" "$repo/sdk-python/build.sh" "$dist/python" >"$work/build-python.log" 2>&1 ||
  { cat "$work/build-python.log"; fail "sdk-python/build.sh failed"; }
t1=$(now)
(cd "$repo/sdk-node" && node scripts/pack.js --out "$dist/node") >"$work/build-node.log" 2>&1 ||
  { cat "$work/build-node.log"; fail "sdk-node/scripts/pack.js failed"; }
t2=$(now)
echo "built in $(secs "$t0" "$t1") s (wheel + sdist) and $(secs "$t1" "$t2") s (npm tarballs):"
ls -1 "$dist"/python "$dist"/node | sed 's/^/  /'

wheels=("$dist"/python/meterd-"$version"-cp39-abi3-*.whl)
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || fail "expected one abi3 (cp39-abi3) wheel for $version in $dist/python"
wheel=${wheels[0]}
case $wheel in *manylinux_2_*_x86_64.whl) ;; *) fail "$wheel is not tagged manylinux_2_*_x86_64" ;; esac
policy=$("$venv/bin/auditwheel" show "$wheel" | tr '\n' ' ' | grep -o 'consistent with the following platform tag: "[^"]*"' |
  sed 's/.*: "\(.*\)"/\1/') || true
[ -n "$policy" ] || { "$venv/bin/auditwheel" show "$wheel"; fail "auditwheel found no manylinux policy for $wheel"; }
case $wheel in *"$policy"*) ;; *) fail "$wheel is tagged differently from auditwheel's policy $policy" ;; esac
echo "auditwheel: $(basename "$wheel") is consistent with $policy"
sdist=$dist/python/meterd-$version.tar.gz
[ -f "$sdist" ] || fail "no sdist $sdist"
tar -tzf "$sdist" >"$work/sdist.txt"
for want in Cargo.lock pyproject.toml LICENSE proto/meterd/v1/metering.proto proto/build.rs sdk-python/src/lib.rs; do
  grep -q "^meterd-$version/\(.*/\)\?$want\$" "$work/sdist.txt" || fail "the sdist has no $want"
done

main_tgz=$dist/node/meterd-$version.tgz
platform_tgz=$dist/node/meterd-meterd-linux-x64-gnu-$version.tgz
[ -f "$main_tgz" ] && [ -f "$platform_tgz" ] || fail "expected $main_tgz and $platform_tgz"
tar -xzOf "$main_tgz" package/package.json >"$work/main-package.json"
node -e '
  const p = require(process.argv[1]);
  const scripts = Object.keys(p.scripts || {});
  if (scripts.length) throw new Error(`the published package has scripts: ${scripts}`);
  const want = `@meterd/meterd-linux-x64-gnu`;
  if (p.optionalDependencies?.[want] !== p.version) throw new Error(`no optionalDependency ${want}@${p.version}`);
' "$work/main-package.json"
tar -tzf "$main_tgz" | grep -q '\.node$' && fail "the main npm package carries a native addon; it belongs in the platform packages"

# --- fresh environments without cargo ---------------------------------------------------------------------
nocargo=
IFS=: read -ra entries <<<"$PATH"
for d in "${entries[@]}"; do
  [ -n "$d" ] && [ ! -e "$d/cargo" ] && [ ! -e "$d/rustc" ] && nocargo=${nocargo:+$nocargo:}$d
done
bare() { env -u CARGO -u RUSTC -u RUSTUP_TOOLCHAIN -u CARGO_TARGET_DIR PATH="$nocargo" "$@"; }
bare sh -c 'command -v cargo || command -v rustc' && fail "cargo is still on the PATH for the install test"

cat >"$work/meterd.toml" <<EOF
[server]
listen = "127.0.0.1:0"

[storage]
data_dir = "$work/data"

[products.demo]
identity = "license"
dimensions = ["api_calls"]
EOF
METERD_LOG=warn "$meterd_bin" run --simulate --speed 1 --config "$work/meterd.toml" >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 600); do
  grep -q '^meterd ready' "$work/agent.out" && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; fail "the agent exited"; }
  sleep 0.1
done
target=$(grep -o 'tcp=[^ ]*' "$work/agent.out" | head -1 | cut -d= -f2)
[ -n "$target" ] || { cat "$work/agent.log"; fail "the agent did not print its ready line"; }
export METERD_TARGET=$target

# Python: a new virtualenv, the wheel alone, no index (nothing else to fetch, nothing to compile).
python3 -m venv "$work/py"
t0=$(now)
bare "$work/py/bin/python" -m pip install -q --disable-pip-version-check --no-index "$wheel"
t1=$(now)
py_install=$(secs "$t0" "$t1")
(cd "$work" && bare "$work/py/bin/python" "$here/smoke.py")

# Node: a new project, both tarballs, --offline: the platform package must come from its tarball, not npm.
mkdir "$work/node"
echo '{"name": "meterd-smoke", "version": "1.0.0", "private": true}' >"$work/node/package.json"
cp "$here"/smoke.cjs "$here"/smoke.mjs "$here"/smoke-types.mts "$work/node/"
t0=$(now)
(cd "$work/node" && bare npm install --offline --no-audit --no-fund --loglevel=error "$platform_tgz" "$main_tgz")
t1=$(now)
node_install=$(secs "$t0" "$t1")
[ -e "$work/node/node_modules/meterd/meterd.node" ] && fail "npm install built an addon in the main package"
(cd "$work/node" && bare node smoke.cjs && bare node smoke.mjs)
(cd "$work/node" && bare node "$repo/sdk-node/node_modules/typescript/bin/tsc" --noEmit --strict \
  --module nodenext --moduleResolution nodenext --target es2022 smoke-types.mts) ||
  fail "the installed package's types do not check"
echo "node (types): smoke-types.mts type-checks against the installed package"

echo "installed without cargo: wheel in $py_install s (pip install --no-index), npm tarballs in $node_install s (npm install --offline)"
