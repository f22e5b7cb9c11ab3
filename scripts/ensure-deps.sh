#!/usr/bin/env bash
# Installs the Debian packages ftl's test suite needs, if any is missing.
# Idempotent and quick when everything is present (only `dpkg -s`); runs
# `apt-get update` only when something must be installed.
#
#   scripts/ensure-deps.sh            install what is missing (needs root)
#   scripts/ensure-deps.sh --check    only report what is missing (exit 1 if any)
set -euo pipefail

PACKAGES=(
    # registries, image tools, base images
    docker-registry skopeo umoci debootstrap
    # OCI runtimes the sandbox is compared with / drives
    runc crun runsc busybox-static
    # the containment tests compile a static probe and attach loop devices;
    # steps' size-limited directories are ext4 made with mkfs.ext4
    gcc libc6-dev mount e2fsprogs
    # the static ftl binary (cargo xtask dist, cli/tests/dist.rs): musl-gcc
    # compiles its C parts (SQLite, ring) for the musl target
    musl-tools
    # user-mode network stacks of egress steps (slirp4netns is the default)
    slirp4netns passt
    # htpasswd for basic-auth registries, certificates for TLS ones
    apache2-utils openssl ca-certificates curl
    # Java plugin tests: Maven, a JDK, and what testdata/java resolves
    # offline from /usr/share/maven-repo (the plugins its poms pin)
    maven default-jdk-headless libcommons-lang3-java libcommons-cli-java
    libmaven-resources-plugin-java libmaven-compiler-plugin-java
    libmaven-jar-plugin-java libmaven-dependency-plugin-java libsurefire-java
)

check_only=false
if [[ ${1:-} == --check ]]; then check_only=true; fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "ensure-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi

echo "ensure-deps: missing: ${missing[*]}"
if $check_only; then exit 1; fi

if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
        echo "ensure-deps: must run as root to install: apt-get install ${missing[*]}" >&2
        exit 1
    fi
else
    SUDO=()
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "ensure-deps: installed ${missing[*]}"
# Note: where systemd runs, Debian's docker-registry package also starts a
# registry on :5000. The tests start their own on free ports and ignore it.
