#!/usr/bin/env bash
# Install the peers that `python -m bench.report` compares aurora with, from Debian's packages,
# and the Python packages its harness uses (the `bench` extra of pyproject.toml).
#
#   bash bench/install_peers.sh          # as root (or with sudo on PATH)
#
# PostgreSQL 15 (initdb, pg_ctl, pg_basebackup under /usr/lib/postgresql/15/bin) and etcd
# (etcd-server for the daemon, etcd-client for etcdctl).  Nothing is started here: the
# harness in bench/peers/ starts every peer in a temporary directory on 127.0.0.1 and stops
# it at the end.  Safe to run again; it does nothing when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_peers: not root and no sudo; install postgresql-15 etcd-server etcd-client yourself" >&2
    fi
fi

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
if [ "${#need[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -q
        # --no-install-recommends: no cluster is created or started by the packages' scripts
        # beyond Debian's default; the harness never uses a system cluster.
        $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
        # Debian starts the packaged services; the benchmark runs its own, so stop them.
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
        fi
    else
        echo "install_peers: apt-get not found; install ${need[*]} with your package manager" >&2
    fi
fi

python3 -m pip install -q ".[bench]" 2>/dev/null || python3 -m pip install -q "psycopg[binary]>=3.1" "matplotlib>=3.6" "psutil>=5.9" "requests>=2.28"
echo "install_peers: postgres $(/usr/lib/postgresql/15/bin/postgres --version 2>/dev/null || echo missing);" \
     "etcd $(etcd --version 2>/dev/null | head -1 || echo missing)"
