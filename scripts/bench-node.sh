#!/usr/bin/env bash
# Benchmark of the Node.js plugin on testdata/node/express: cold build,
# no-op rebuild, app change, dependency change; median wall time of N runs
# and bytes uploaded, as a table.
#
#   scripts/bench-node.sh [RUNS]        (default 5)
#
# Uses a local docker-registry on loopback and the `node` test base image
# (scripts/base-image.sh; cached under ${FTL_TEST_CACHE:-~/.cache/ftl-test},
# built here as root when missing). Builds ftl in release mode unless
# FTL_BIN points at a binary. Dependency changes need the npm registry (and
# host npm, outside the timed part, to write each run's lockfile).
#
# Scenarios (each run its own measurement, push to the same repository):
#   cold        empty local cache, no registry cache, a new repository
#   no-op       the same app again
#   app change  one source file changed
#   dep change  package.json + package-lock.json with one more dependency,
#               a version not seen before in the run (a real miss)
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "bench-node.sh: $*" >&2; exit 1; }
command -v docker-registry >/dev/null || die "docker-registry not found: apt-get install docker-registry"
command -v skopeo >/dev/null || die "skopeo not found: apt-get install skopeo"
command -v npm >/dev/null || die "npm not found (needed to write lockfiles): apt-get install npm"
command -v jq >/dev/null || die "jq not found: apt-get install jq"

if [[ -z ${FTL_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release -q -p ftl-cli) || die "cargo build --release failed"
    FTL_BIN=$ROOT/target/release/ftl
fi

WORK=$(mktemp -d /tmp/ftl-bench-node.XXXXXX)
REG_PID=
cleanup() {
    if [[ -n $REG_PID ]]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. registry ----------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/storage"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
  secret: ftl-bench-$PORT
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null || die "registry did not start: $(cat "$WORK/registry.log")"
HOST=127.0.0.1:$PORT

# 2. base image ----------------------------------------------------------------
HASH=$(sha256sum "$ROOT/scripts/base-image.sh" | cut -c1-16)
BASE_DIR=${FTL_TEST_CACHE:-$HOME/.cache/ftl-test}/base-images/node-$HASH
if [[ ! -f $BASE_DIR/index.json ]]; then
    echo "building the node base image into $BASE_DIR ..." >&2
    mkdir -p "$(dirname "$BASE_DIR")"
    bash "$ROOT/scripts/base-image.sh" node "$BASE_DIR.tmp.$$" >/dev/null && mv "$BASE_DIR.tmp.$$" "$BASE_DIR"
fi
skopeo copy --quiet --dest-tls-verify=false --dest-no-creds "oci:$BASE_DIR:latest" "docker://$HOST/base/node:latest"
BASE=$HOST/base/node:latest

# 3. runs ----------------------------------------------------------------------
APP=$WORK/app
cp -a "$ROOT/testdata/node/express" "$APP"
rm -rf "$APP/node_modules"
ORIG_PKG=$(cat "$APP/package.json")
ORIG_LOCK=$(cat "$APP/package-lock.json")

# ftl CACHE IMAGE [extra args] -> "millis bytes_uploaded layers_built"
run() {
    local cache=$1 image=$2
    shift 2
    local t0 t1 out
    t0=$(date +%s%N)
    out=$(FTL_CACHE_DIR=$cache "$FTL_BIN" build "$APP" --base "$BASE" --image "$image" --json "$@" 2>"$WORK/last.err") ||
        die "ftl build failed: $(tail -20 "$WORK/last.err")"
    t1=$(date +%s%N)
    echo "$(((t1 - t0) / 1000000)) $(jq -r .bytes_uploaded <<<"$out") $(jq -r .layers_built <<<"$out")"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

declare -A MS BYTES BUILT
record() { # scenario "ms bytes built"
    local s=$1 ms bytes built
    read -r ms bytes built <<<"$2"
    MS[$s]+="$ms "
    BYTES[$s]+="$bytes "
    BUILT[$s]+="$built "
    echo "  $s: ${ms} ms, ${bytes} bytes uploaded, ${built} layers built" >&2
}

CACHE=$WORK/cache
for i in $(seq "$RUNS"); do
    echo "run $i/$RUNS" >&2
    printf '%s\n' "$ORIG_PKG" >"$APP/package.json"
    printf '%s\n' "$ORIG_LOCK" >"$APP/package-lock.json"
    rm -rf "$WORK/cold-cache"
    record cold "$(run "$WORK/cold-cache" "$HOST/bench/cold-$i:latest" --no-registry-cache)"
done

IMAGE=$HOST/bench/express:latest
rm -rf "$CACHE"
run "$CACHE" "$IMAGE" >/dev/null
for i in $(seq "$RUNS"); do
    record no-op "$(run "$CACHE" "$IMAGE")"
done
for i in $(seq "$RUNS"); do
    echo "exports.message = () => \"Hello from Express on ftl, edit $i\";" >"$APP/lib/message.js"
    record "app change" "$(run "$CACHE" "$IMAGE")"
done
# Dependency changes: each run adds a version of is-number not used before.
VERSIONS=(7.0.0 6.0.0 5.0.0 4.0.0 3.0.0 2.1.0 2.0.2 1.1.2 1.0.0)
[[ $RUNS -le ${#VERSIONS[@]} ]] || die "at most ${#VERSIONS[@]} runs for the dependency change"
for i in $(seq "$RUNS"); do
    v=${VERSIONS[$((i - 1))]}
    printf '%s\n' "$ORIG_PKG" >"$APP/package.json"
    printf '%s\n' "$ORIG_LOCK" >"$APP/package-lock.json"
    (cd "$APP" && npm pkg set "dependencies.is-number=$v" >/dev/null &&
        npm install --package-lock-only --ignore-scripts --omit-lockfile-registry-resolved=false --no-audit --no-fund >/dev/null 2>&1) ||
        die "npm could not write the lockfile for is-number@$v"
    record "dep change" "$(run "$CACHE" "$IMAGE")"
done

# 4. table ----------------------------------------------------------------------
echo
echo "ftl build testdata/node/express (base: Debian bookworm node 18 / npm 9), $RUNS runs each, medians"
printf '| %-11s | %9s | %14s | %13s |\n' scenario "time (ms)" "bytes uploaded" "layers built"
printf '|-%-11s-|-%9s-|-%14s-|-%13s-|\n' ----------- --------- -------------- -------------
for s in cold no-op "app change" "dep change"; do
    ms=$(tr ' ' '\n' <<<"${MS[$s]}" | grep . | median)
    bytes=$(tr ' ' '\n' <<<"${BYTES[$s]}" | grep . | median)
    built=$(tr ' ' '\n' <<<"${BUILT[$s]}" | grep . | median)
    printf '| %-11s | %9s | %14s | %13s |\n' "$s" "$ms" "$bytes" "$built"
done
