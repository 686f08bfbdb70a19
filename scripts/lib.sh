# Shared by scripts/test, scripts/demo and scripts/bench: toolchain setup, extension install and
# throwaway clusters. Source it; it sets -euo pipefail.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGRX_VERSION=0.18.0
PG_MAJOR=15
PG_CONFIG=/usr/bin/pg_config
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Installs what is missing: Debian packages, cargo-pgrx, pgrx's configuration. Quiet when
# everything is already there.
setup_toolchain() {
    local missing=() pkg
    # python3 writes SpiffWorkflow's task data (json.dumps) and the tests' reference values; git
    # is what backfill-sync-models' hook is tested with.
    for pkg in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang pkg-config sudo python3 git; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup first" >&2; exit 1; }
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        say "installing cargo-pgrx $PGRX_VERSION (takes about 4 minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
    fi
    if ! grep -qs "^pg$PG_MAJOR = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
    fi
}

# Builds and installs the extension into the system PostgreSQL. Extra arguments go to
# `cargo pgrx install` (e.g. --release).
install_extension() {
    local sudo_flag=()
    [[ $EUID -eq 0 ]] || sudo_flag=(--sudo)
    mkdir -p "$REPO/target"
    local log="$REPO/target/install.log"
    if ! (cd "$REPO" && cargo pgrx install --pg-config "$PG_CONFIG" "${sudo_flag[@]}" "$@") >"$log" 2>&1; then
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

PGBIN=$($PG_CONFIG --bindir 2>/dev/null || echo /usr/lib/postgresql/$PG_MAJOR/bin)

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
