#!/usr/bin/env bash
# Benchmark of the Java plugin on testdata/java/hello-maven: cold build,
# no-op rebuild, app change, dependency change; median wall time of N runs
# and bytes uploaded, as a table.
#
#   scripts/bench-java.sh [RUNS]        (default 5)
#   JAVA_WARM=off scripts/bench-java.sh  (Maven for every build: the
#                                         reference for the warm compiler)
#
# Uses a local docker-registry on loopback and the `java` test base image
# (Debian's JRE; scripts/base-image.sh, cached under
# ${FTL_TEST_CACHE:-~/.cache/ftl-test}, built here as root when missing).
# Maven and the JDK come from the host (--set java.builder=host) and resolve
# offline through testdata/java/settings-offline.xml (Debian's
# /usr/share/maven-repo; scripts/ensure-deps.sh installs it). Builds ftl in
# release mode unless FTL_BIN points at a binary.
#
# Scenarios (each run its own measurement, push to the same repository):
#   cold        empty local cache (so an empty local Maven repository too),
#               no registry cache, a new repository
#   no-op       the same app again
#   app change  one class changed (Greeting.java): compiled by the warm
#               compiler (a resident javac the warm-up build started; see
#               languages/java/src/warm.rs), Maven when it is not up yet
#   dep change  one more dependency in pom.xml, one not seen before in the
#               run (a real miss: Maven resolves it)
# "build step" is the engine's build phase: the Maven run in the sandbox
# plus writing the layers it produced.
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "bench-java.sh: $*" >&2; exit 1; }
command -v docker-registry >/dev/null || die "docker-registry not found: apt-get install docker-registry"
command -v skopeo >/dev/null || die "skopeo not found: apt-get install skopeo"
command -v mvn >/dev/null || die "mvn not found: scripts/ensure-deps.sh"
command -v jq >/dev/null || die "jq not found: apt-get install jq"

if [[ -z ${FTL_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release -q -p ftl-cli) || die "cargo build --release failed"
    FTL_BIN=$ROOT/target/release/ftl
fi

WORK=$(mktemp -d /tmp/ftl-bench-java.XXXXXX)
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
BASE_DIR=$(cd "$ROOT" && cargo xtask base-image java) || die "cannot build the java base image"
skopeo copy --quiet --dest-tls-verify=false --dest-no-creds "oci:$BASE_DIR:latest" "docker://$HOST/base/java:latest"
BASE=$HOST/base/java:latest

# 3. runs ----------------------------------------------------------------------
APP=$WORK/app
cp -a "$ROOT/testdata/java/hello-maven" "$APP"
rm -rf "$APP/target"
ORIG_POM=$(cat "$APP/pom.xml")
GREETING=$APP/src/main/java/com/example/hello/Greeting.java
ORIG_GREETING=$(cat "$GREETING")
SETTINGS=(--set "java.maven_settings=$ROOT/testdata/java/settings-offline.xml" --set java.builder=host
          --set "java.warm_compiler=${JAVA_WARM:-on}")

# ftl CACHE IMAGE [extra args] -> "millis bytes_uploaded layers_built build_step_millis"
run() {
    local cache=$1 image=$2
    shift 2
    local t0 t1 out
    t0=$(date +%s%N)
    out=$(FTL_CACHE_DIR=$cache "$FTL_BIN" build "$APP" --base "$BASE" --image "$image" --json "${SETTINGS[@]}" "$@" 2>"$WORK/last.err") ||
        die "ftl build failed: $(tail -20 "$WORK/last.err")"
    t1=$(date +%s%N)
    echo "$(((t1 - t0) / 1000000)) $(jq -r .bytes_uploaded <<<"$out") $(jq -r .layers_built <<<"$out") $(jq -r '[.timings[] | select(.phase == "build") | .ms] | add // 0' <<<"$out")"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

declare -A MS BYTES BUILT STEP
record() { # scenario "ms bytes built step_ms"
    local s=$1 ms bytes built step
    read -r ms bytes built step <<<"$2"
    MS[$s]+="$ms "
    BYTES[$s]+="$bytes "
    BUILT[$s]+="$built "
    STEP[$s]+="$step "
    echo "  $s: ${ms} ms (build step ${step} ms), ${bytes} bytes uploaded, ${built} layers built" >&2
}

CACHE=$WORK/cache
for i in $(seq "$RUNS"); do
    echo "run $i/$RUNS" >&2
    rm -rf "$WORK/cold-cache"
    record cold "$(run "$WORK/cold-cache" "$HOST/bench/cold-$i:latest" --no-registry-cache)"
done

IMAGE=$HOST/bench/hello:latest
rm -rf "$CACHE"
run "$CACHE" "$IMAGE" >/dev/null
for i in $(seq "$RUNS"); do
    record no-op "$(run "$CACHE" "$IMAGE")"
done
for i in $(seq "$RUNS"); do
    printf '%s\n' "${ORIG_GREETING/ from ftl/ from ftl, edit $i}" >"$GREETING"
    record "app change" "$(run "$CACHE" "$IMAGE")"
done
# Dependency changes: each run adds an artifact not used before (versions
# Debian ships, so that the offline mirror serves them).
# The first six come with Debian's maven package itself.
DEPS=(commons-cli:commons-cli:1.5.0 commons-io:commons-io:2.11.0 javax.inject:javax.inject:1
      aopalliance:aopalliance:1.0 org.slf4j:slf4j-api:1.7.32 com.google.guava:guava:31.1-jre
      org.apache.commons:commons-text:1.10.0 org.ow2.asm:asm:9.4 org.apache.commons:commons-collections4:4.2)
[[ $RUNS -le ${#DEPS[@]} ]] || die "at most ${#DEPS[@]} runs for the dependency change"
for i in $(seq "$RUNS"); do
    IFS=: read -r g a v <<<"${DEPS[$((i - 1))]}"
    dep="<dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
    printf '%s\n' "${ORIG_POM/<dependencies>/<dependencies>$dep}" >"$APP/pom.xml"
    record "dep change" "$(run "$CACHE" "$IMAGE")"
done

# 4. table ----------------------------------------------------------------------
echo
echo "ftl build testdata/java/hello-maven (base: Debian bookworm JRE 17; Maven 3.8.7 + JDK 17 of the host; warm compiler ${JAVA_WARM:-on}), $RUNS runs each, medians"
printf '| %-11s | %9s | %19s | %14s | %13s |\n' scenario "time (ms)" "build step (ms)" "bytes uploaded" "layers built"
printf '|-%-11s-|-%9s-|-%19s-|-%14s-|-%13s-|\n' ----------- --------- ------------------- -------------- -------------
for s in cold no-op "app change" "dep change"; do
    ms=$(tr ' ' '\n' <<<"${MS[$s]}" | grep . | median)
    bytes=$(tr ' ' '\n' <<<"${BYTES[$s]}" | grep . | median)
    built=$(tr ' ' '\n' <<<"${BUILT[$s]}" | grep . | median)
    step=$(tr ' ' '\n' <<<"${STEP[$s]}" | grep . | median)
    printf '| %-11s | %9s | %19s | %14s | %13s |\n' "$s" "$ms" "$step" "$bytes" "$built"
done
