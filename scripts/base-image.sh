#!/usr/bin/env bash
# Build one of ftl's test/demo base images from Debian packages and write it
# as an OCI image layout (one gzip layer, tag "latest").
#
#   scripts/base-image.sh NAME OUTDIR
#
# NAME: an image named in the `case $NAME in` block below. ftl-test-support
# keys each image's cache by this script without the other images' arms.
# OUTDIR must not exist or be empty; it receives oci-layout, index.json and
# blobs/sha256/*.
#
# Needs root (debootstrap, chroot) and: debootstrap, tar, gzip, sha256sum,
# python3. Environment:
#   SOURCE_DATE_EPOCH  mtime of every tar entry and the config's "created"
#                      (default 1704067200 = 2024-01-01T00:00:00Z)
#   FTL_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   TMPDIR             where the rootfs is assembled (needs ~1 GB for java)
#
# The packing is deterministic (sorted names, numeric owners, fixed mtimes,
# gzip -n at a pinned level): the same rootfs always gives the same digests.
# The rootfs itself depends on the mirror's package versions at build time.
#
# ftl-test-support caches the result keyed by the sha256 of this file, so any
# change here (packages, cleanup, config) rebuilds the images.
set -euo pipefail

die() { echo "base-image.sh: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 NAME OUTDIR   (NAME: an image of the case block in this script)"
NAME=$1
OUTDIR=$2

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}
export SOURCE_DATE_EPOCH
MIRROR=${FTL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
GZIP_LEVEL=6
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH=$PATH_ENV:$PATH

SUITE=bookworm
EXTRA_ENV=()
case $NAME in
python)
    PACKAGES="python3 python3-venv python3-pip ca-certificates"
    CMD='["python3"]'
    ;;
python-build)
    # python plus a C toolchain and headers, for sdists with C extensions.
    PACKAGES="python3 python3-venv python3-pip ca-certificates gcc libc6-dev python3-dev"
    CMD='["python3"]'
    ;;
python-trixie)
    SUITE=trixie
    PACKAGES="python3 python3-venv python3-pip ca-certificates"
    CMD='["python3"]'
    ;;
node)
    PACKAGES="nodejs npm ca-certificates"
    CMD='["node"]'
    ;;
node-build)
    # node plus a C/C++ toolchain, for native modules (node-gyp), and yarn
    # (Debian's yarnpkg, yarn 1).
    PACKAGES="nodejs npm ca-certificates g++ make python3 yarnpkg"
    CMD='["node"]'
    ;;
java)
    PACKAGES="openjdk-17-jre-headless ca-certificates"
    CMD='["java","-version"]'
    EXTRA_ENV=("JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64")
    ;;
builder)
    # The base of ftl's builder image (cargo xtask dist): ftl is static and
    # needs no library, but its sandbox runs these: slirp4netns for steps
    # with egress, mkfs.ext4 for size-limited step directories; sh for
    # pipelines that script around ftl (Tekton's `script:`).
    PACKAGES="ca-certificates slirp4netns e2fsprogs"
    CMD='["sh"]'
    ;;
*) die "unknown image name '$NAME' (expected python, python-build, python-trixie, node, node-build, java or builder)" ;;
esac

need() { # need TOOL APT-PACKAGE
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: apt-get install $2"
}
need debootstrap debootstrap
need tar tar
need gzip gzip
need sha256sum coreutils
need python3 python3
need chroot coreutils
need mount mount
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"
[[ -e /usr/share/debootstrap/scripts/$SUITE ]] ||
    die "this debootstrap does not know suite '$SUITE': apt-get install -t bookworm-backports debootstrap (or a newer debootstrap)"

if [[ -e $OUTDIR ]] && [[ -n $(ls -A "$OUTDIR") ]]; then
    die "output directory $OUTDIR exists and is not empty"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ftl-base-image.$NAME.XXXXXX")
ROOTFS=$WORK/rootfs
cleanup() {
    # Never leave a mounted /proc behind, and never rm -rf through a mount.
    if mountpoint -q "$ROOTFS/proc" 2>/dev/null; then umount -l "$ROOTFS/proc" || true; fi
    if mountpoint -q "$ROOTFS/sys" 2>/dev/null; then umount -l "$ROOTFS/sys" || true; fi
    if ! grep -q " $ROOTFS/" /proc/mounts; then rm -rf "$WORK"; else
        echo "base-image.sh: leaving $WORK (still has mounts)" >&2; fi
}
trap cleanup EXIT

log() { echo "base-image.sh[$NAME]: $*" >&2; }

# 1. minbase rootfs -----------------------------------------------------------
log "debootstrap --variant=minbase $SUITE from $MIRROR"
if ! debootstrap --variant=minbase --merged-usr "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    if [[ -f $ROOTFS/debootstrap/debootstrap.log ]]; then tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2; fi
    die "debootstrap of $SUITE failed (see above)"
fi

# 2. keep it lean: no docs, man pages, locales; no recommends ----------------
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-ftl-lean" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/01-ftl-lean" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
# No daemons started inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
echo "deb $MIRROR $SUITE main" >"$ROOTFS/etc/apt/sources.list"

# 3. the language runtime -----------------------------------------------------
log "apt-get install $PACKAGES"
mount -t proc proc "$ROOTFS/proc"
chroot_env=(env -i PATH=$PATH_ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
    SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" HOME=/root)
if ! { chroot "$ROOTFS" "${chroot_env[@]}" apt-get update -q &&
    # shellcheck disable=SC2086
    chroot "$ROOTFS" "${chroot_env[@]}" apt-get install -y -q --no-install-recommends $PACKAGES; } \
    >"$WORK/apt.log" 2>&1; then
    tail -n 40 "$WORK/apt.log" >&2
    die "installing '$PACKAGES' into the $SUITE rootfs failed (see above)"
fi
chroot "$ROOTFS" "${chroot_env[@]}" apt-get clean
# ca-certificates-java writes the JDK trust store as PKCS12 with a random salt
# and MAC: different bytes on every build. Rewrite it without encryption and
# MAC (trusted certificates are public; the JDK reads it the same), which is
# a pure function of the certificates.
if [[ -f $ROOTFS/etc/ssl/certs/java/cacerts ]] && [[ -x $ROOTFS/usr/bin/keytool ]]; then
    log "rewriting the Java trust store deterministically"
    if ! chroot "$ROOTFS" "${chroot_env[@]}" keytool -importkeystore -noprompt \
        -srckeystore /etc/ssl/certs/java/cacerts -srcstorepass changeit \
        -destkeystore /tmp/cacerts -deststoretype PKCS12 -deststorepass changeit \
        -J-Dkeystore.pkcs12.certProtectionAlgorithm=NONE \
        -J-Dkeystore.pkcs12.macAlgorithm=NONE >"$WORK/keytool.log" 2>&1; then
        tail -n 20 "$WORK/keytool.log" >&2
        die "rewriting /etc/ssl/certs/java/cacerts failed (see above)"
    fi
    cat "$ROOTFS/tmp/cacerts" >"$ROOTFS/etc/ssl/certs/java/cacerts"
fi
umount "$ROOTFS/proc"

# 4. strip what a base image does not need and what varies run to run ---------
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/var/cache/ldconfig/aux-cache \
    "$ROOTFS"/debootstrap "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* "$ROOTFS"/root/.cache
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
# Logs carry timestamps; keep the files (some tools expect them) but empty.
find "$ROOTFS/var/log" -type f -exec truncate -s 0 {} +
: >"$ROOTFS/etc/machine-id" 2>/dev/null || true
# /dev, /proc, /sys, /run are the runtime's business: keep them empty.
for d in dev proc sys run; do
    mkdir -p "$ROOTFS/$d"
    find "$ROOTFS/$d" -mindepth 1 -delete 2>/dev/null || rm -rf "${ROOTFS:?}/$d"/*
done

# 5. the layer: sorted, numeric owners, fixed mtimes, no gzip name/time --------
log "packing layer"
mkdir -p "$OUTDIR/blobs/sha256"
BLOBS=$OUTDIR/blobs/sha256
mapfile -t TOP < <(cd "$ROOTFS" && LC_ALL=C ls -A | LC_ALL=C sort)
LAYER_TMP=$WORK/layer.tar.gz
LC_ALL=C tar -C "$ROOTFS" --create --format=gnu --sort=name --numeric-owner \
    --mtime="@$SOURCE_DATE_EPOCH" --no-acls --no-xattrs --no-selinux \
    -- "${TOP[@]}" | gzip -n "-$GZIP_LEVEL" >"$LAYER_TMP"
DIFF_ID=$(gzip -dc "$LAYER_TMP" | sha256sum | cut -d' ' -f1)
LAYER_DIGEST=$(sha256sum "$LAYER_TMP" | cut -d' ' -f1)
LAYER_SIZE=$(stat -c %s "$LAYER_TMP")
mv "$LAYER_TMP" "$BLOBS/$LAYER_DIGEST"

# 6. config, manifest, index (python3 for JSON) --------------------------------
PKG_VERSIONS=$(chroot "$ROOTFS" dpkg-query -W -f='${Package}=${Version}\n' $PACKAGES 2>/dev/null | tr '\n' ' ' || true)
NAME=$NAME SUITE=$SUITE PACKAGES=$PACKAGES CMD=$CMD PATH_ENV=$PATH_ENV \
    EXTRA_ENV="${EXTRA_ENV[*]:-}" DIFF_ID=$DIFF_ID LAYER_DIGEST=$LAYER_DIGEST \
    LAYER_SIZE=$LAYER_SIZE PKG_VERSIONS=$PKG_VERSIONS OUTDIR=$OUTDIR MIRROR=$MIRROR \
    python3 - <<'EOF'
import datetime, hashlib, json, os

e = os.environ
created = datetime.datetime.fromtimestamp(
    int(e["SOURCE_DATE_EPOCH"]), datetime.timezone.utc
).strftime("%Y-%m-%dT%H:%M:%SZ")
env = ["PATH=" + e["PATH_ENV"], "LANG=C.UTF-8"] + e["EXTRA_ENV"].split()
config = {
    "created": created,
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": env,
        "Cmd": json.loads(e["CMD"]),
        "Labels": {
            "dev.ftl.test.base-image": e["NAME"],
            "dev.ftl.test.debian-suite": e["SUITE"],
            "dev.ftl.test.packages": e["PKG_VERSIONS"].strip(),
        },
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + e["DIFF_ID"]]},
    "history": [
        {
            "created": created,
            "created_by": "scripts/base-image.sh %s: debootstrap --variant=minbase %s + apt-get install %s"
            % (e["NAME"], e["SUITE"], e["PACKAGES"]),
            "comment": "ftl test base image",
        }
    ],
}

blobs = os.path.join(e["OUTDIR"], "blobs", "sha256")

def put(obj):
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return digest, len(data)

cfg_digest, cfg_size = put(config)
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:" + cfg_digest,
        "size": cfg_size,
    },
    "layers": [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:" + e["LAYER_DIGEST"],
            "size": int(e["LAYER_SIZE"]),
        }
    ],
}
man_digest, man_size = put(manifest)
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + man_digest,
            "size": man_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
            "platform": {"architecture": "amd64", "os": "linux"},
        }
    ],
}
with open(os.path.join(e["OUTDIR"], "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True, separators=(",", ":"))
with open(os.path.join(e["OUTDIR"], "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print("sha256:" + man_digest)
EOF
log "done: layer sha256:$LAYER_DIGEST ($LAYER_SIZE bytes)"
