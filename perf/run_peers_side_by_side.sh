#!/usr/bin/env bash
# run_peers_side_by_side.sh - collx beside Open MPI, MPICH and Gloo, measured in ONE run.
#
#   perf/run_peers_side_by_side.sh [OPS] [--np N] [--sizes SPEC] [--budget S] [--batches N]
#                                  [--rounds R] [--limits] [--out DIR] [-- collx-bench args]
#
#   OPS        'all' (default) or a comma list: allreduce,broadcast,allgather,reducescatter,alltoall
#   --np N     ranks (default 2)
#   --sizes    passed to every benchmark: '8,1M,16M' or 'MIN:MAX' (x4); default 8 B..256 MiB
#   --budget, --batches   passed to every benchmark (bench_common.measure's knobs)
#   --rounds R run the whole sequence R times (compare.py takes the median per row)
#   --limits   also run the 'limits' peer (memcpy, np.add, loopback tcp, iperf3)
#   --out DIR  results directory (default perf/out/<timestamp>)
#   after --   extra arguments for collx-bench only (e.g. -- -d float -o sum)
#
# Examples:
#   perf/run_peers_side_by_side.sh allreduce --sizes 8,1K,1M,16M,256M
#   perf/run_peers_side_by_side.sh all --sizes 8:256M --rounds 2
#   PEERS="mpi-openmpi" TRANSPORTS=shm perf/run_peers_side_by_side.sh allreduce --sizes 8,1M
#
# One round runs, in this order: collx over shm, each peer, collx over forced TCP
# (COLLX_TRANSPORT=tcp). Peers go through /work/shared/peers/run.sh, which waits for a quiet
# machine ($COLLX_MAX_LOAD, default 1.0); collx runs wait the same way, so all share one
# measurement method (bench_common.measure) and similar load. Output, under perf/out/<ts>/:
#   <peer>-np<N>.jsonl   JSON lines per (peer, op, size) (collx-shm-np2.jsonl, collx-tcp-np2...)
#   *.log                each benchmark's stderr (collx-bench's nccl-tests tables are here)
#   table.txt / table.md compare.py's side-by-side table, --vs collx-shm (> 1.00: collx wins)
#   meta.txt             the command, date, load, CPU
#
# Needs: the C extension built (python setup.py build_ext --inplace) and the peers' venvs
# (/work/shared/peers/setup.sh -> $COLLX_PEERS_DIR, default /tmp/collx-peers). A peer whose
# venv is missing or that fails is logged and skipped; the others still run.
# Env: PEERS (default "mpi-openmpi mpi-mpich torch-gloo"), TRANSPORTS (default "shm tcp"),
#      PEERS_HOME (default /work/shared/peers), PYTHON (default python3), TMO (s per run, 1800).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PEERS_HOME="${PEERS_HOME:-/work/shared/peers}"
PEERS="${PEERS:-mpi-openmpi mpi-mpich torch-gloo}"
TRANSPORTS="${TRANSPORTS:-shm tcp}"
PY="${PYTHON:-python3}"
TMO="${TMO:-1800}"

OPS=all
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OPS="$1"; shift; fi
NP=2; ROUNDS=1; LIMITS=0; OUT=""; COMMON=(); COLLX_EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --np) NP="$2"; shift 2 ;;
    --sizes|--budget|--batches) COMMON+=("$1" "$2"); shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --limits) LIMITS=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --) shift; COLLX_EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$HERE/out/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

if ! PYTHONPATH="$REPO" "$PY" -c "import collx._C" 2>/dev/null; then
  echo "collx._C is not built: cd $REPO && python setup.py build_ext --inplace -q" >&2; exit 1
fi

log() { echo "[side-by-side] $*" >&2; }

# the same wait as the peers' run.sh, so collx is not measured under a heavier load
wait_for_quiet() {
  local max="${COLLX_MAX_LOAD:-1.0}" tries="${COLLX_LOAD_TRIES:-6}" l i
  for ((i = 0; ; i++)); do
    l="$(cut -d' ' -f1 /proc/loadavg)"
    awk -v l="$l" -v m="$max" 'BEGIN{exit !(l <= m)}' && return
    [ "$i" -ge "$tries" ] && break
    log "load1=$l > $max, waiting 30 s ($((i + 1))/$tries)"; sleep 30
  done
  log "WARNING: load1=$l > $max; measuring anyway (numbers noisy)"
}

run_collx() {  # $1 = transport (shm | tcp)
  local t="$1" f="$OUT/collx-$1-np$NP.jsonl" env=()
  [ "$t" = shm ] || env=(COLLX_TRANSPORT="$t")
  wait_for_quiet
  log "collx-$t np=$NP $OPS -> $f"
  env "${env[@]}" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
    timeout --kill-after=15 "$TMO" "$PY" -m collx.runner -np "$NP" --no-prefix \
    "$PY" -m collx.bench "$OPS" --json --out "$f" "${COMMON[@]}" "${COLLX_EXTRA[@]}" \
    > /dev/null 2>> "$OUT/collx-$t-np$NP.log" \
    || log "collx-$t exited rc=$? (partial results kept; see $OUT/collx-$t-np$NP.log)"
}

run_peer() {  # $1 = peer name for run.sh
  local p="$1" f="$OUT/$1-np$NP.jsonl"
  log "$p np=$NP $OPS -> $f"
  "$PEERS_HOME/run.sh" "$p" "$OPS" --np "$NP" --timeout "$TMO" --out "$f" "${COMMON[@]}" \
    > /dev/null 2>> "$OUT/$p-np$NP.log" \
    || log "$p exited rc=$? (partial results kept; see $OUT/$p-np$NP.log)"
}

{
  echo "command: $0 $OPS --np $NP ${COMMON[*]} --rounds $ROUNDS -- ${COLLX_EXTRA[*]}"
  echo "date: $(date -Is)  host: $(hostname)  nproc: $(nproc)  load: $(cat /proc/loadavg)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "peers: $PEERS  transports: $TRANSPORTS  rounds: $ROUNDS"
} > "$OUT/meta.txt"

[ "$LIMITS" = 1 ] && { "$PEERS_HOME/run.sh" limits all --out "$OUT/limits.jsonl" > /dev/null \
                       2>> "$OUT/limits.log" || log "limits exited rc=$?"; }
first="${TRANSPORTS%% *}"; rest="${TRANSPORTS#"$first"}"
for ((round = 1; round <= ROUNDS; round++)); do
  log "round $round/$ROUNDS"
  [ -n "$first" ] && run_collx "$first"
  for p in $PEERS; do run_peer "$p"; done
  for t in $rest; do run_collx "$t"; done
done

vs="collx-$first"
python3 "$PEERS_HOME/compare.py" "$OUT"/*.jsonl --vs "$vs" | tee "$OUT/table.txt"
python3 "$PEERS_HOME/compare.py" "$OUT"/*.jsonl --vs "$vs" --markdown > "$OUT/table.md"
log "results in $OUT (table.txt, table.md, *.jsonl, *.log)"
