#!/usr/bin/env bash
# 2-party PSI, SIZE × SIZE keys with 50 % overlap: fedmesh (the whole protocol over the network,
# two node processes and governance) and OpenMined's PSI library, one after the other on this
# machine. Needs pip (installs openmined.psi if absent). Usage: scripts/psi-vs-openmined.sh [SIZE]
set -euo pipefail
size=${1:-1000000}
cd "$(dirname "$0")/.."
python3 -c "import private_set_intersection.python" 2>/dev/null || pip install -q openmined.psi
cargo build --release -q
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/fedmesh bench psi --parties 2 --size "$size" --overlap 0.5 2>/dev/null
python3 scripts/openmined_psi.py "$size" 0.5
