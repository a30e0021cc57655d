#!/usr/bin/env bash
# Compares vsky-nbd's server with `nbdkit file` and `qemu-nbd` on the same
# 1 GiB file: nbdcopy (1 GiB read to null:, 1 GiB write from a file) and fio's
# nbd engine (seq 1 MiB read/write, random 4 KiB read/write, iodepth 32).
# Prints one table with ratios (ours / other; > 1 means we are faster).
# See bench/README.md. Needs: nbdkit, qemu-nbd, nbdcopy, fio (scripts/install-deps).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
workspace=$(cd "$here/../../.." && pwd)
work=${BENCH_DIR:-/tmp/vsky-nbd-bench}
size_mib=${BENCH_SIZE_MIB:-1024}
runtime=${BENCH_RUNTIME_S:-10}
repeat=${BENCH_REPEAT:-3}
target=${CARGO_TARGET_DIR:-$workspace/target}

for tool in nbdkit qemu-nbd nbdcopy fio python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine" >&2; exit 1; }

(cd "$workspace" && cargo build --release -p vsky-nbd --example serve >&2)
serve_bin="$target/release/examples/serve"

mkdir -p "$work"
disk="$work/disk.img"
source="$work/source.img"
# Real data, not sparse files: reads of holes would flatter every server alike.
for f in "$disk" "$source"; do
  if [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" != $((size_mib * 1024 * 1024)) ]; then
    echo "creating $f ($size_mib MiB)" >&2
    head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$f"
  fi
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port_ours=10911 port_nbdkit=10912 port_qemu=10913
"$serve_bin" 127.0.0.1:$port_ours bench "$disk" 2>"$work/ours.log" & pids+=($!)
nbdkit -f -i 127.0.0.1 -p $port_nbdkit file "$disk" 2>"$work/nbdkit.log" & pids+=($!)
# --shared lets nbdcopy open its several connections; writeback cache is
# qemu-nbd's default and matches the other two (page cache, fdatasync on flush).
qemu-nbd -f raw -x bench -b 127.0.0.1 -p $port_qemu --persistent --shared=16 "$disk" 2>"$work/qemu.log" & pids+=($!)
sleep 1

declare -A uri=(
  [ours]="nbd://127.0.0.1:$port_ours/bench"
  [nbdkit]="nbd://127.0.0.1:$port_nbdkit/bench"
  [qemu-nbd]="nbd://127.0.0.1:$port_qemu/bench"
)
declare -A pid=([ours]=${pids[0]} [nbdkit]=${pids[1]} [qemu-nbd]=${pids[2]})
servers=(ours nbdkit qemu-nbd)
results="$work/results.txt"
: > "$results"

# CPU time (user + system, in clock ticks) a server has used so far. The
# machine is shared, so throughput is noisy; CPU per GiB is the steadier
# measure of the server's own efficiency.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Warm the page cache once so the first server measured is not penalised.
cat "$disk" "$source" > /dev/null

# Each result line: workload server MiB/s cpu-seconds-per-GiB
measure_nbdcopy() { # name server args...
  local name=$1 server=$2; shift 2
  local c0 c1 t0 t1
  c0=$(cpu_ticks "${pid[$server]}"); t0=$(date +%s.%N)
  nbdcopy "$@"
  t1=$(date +%s.%N); c1=$(cpu_ticks "${pid[$server]}")
  python3 -c "
hz = $(getconf CLK_TCK); gib = $size_mib / 1024
print('$name $server', $size_mib / ($t1 - $t0), ($c1 - $c0) / hz / gib)" >> "$results"
}

measure_fio() { # name rw bs server
  local c0 c1 json
  c0=$(cpu_ticks "${pid[$4]}")
  json=$(fio --name="$1" --ioengine=nbd --uri="${uri[$4]}" --rw="$2" --bs="$3" \
      --iodepth=32 --size="${size_mib}M" --time_based --runtime="$runtime" \
      --output-format=json 2>/dev/null)
  c1=$(cpu_ticks "${pid[$4]}")
  python3 -c '
import json, sys
text = sys.stdin.read()
# fio prints "fio: connected to NBD server" on stdout before the JSON.
job = json.loads(text[text.index("{"):])["jobs"][0]
side = "write" if sys.argv[2] in ("write", "randwrite") else "read"
gib = job[side]["io_bytes"] / 2**30
ticks = int(sys.argv[4]) - int(sys.argv[3])
print(sys.argv[1], sys.argv[5], job[side]["bw"] / 1024, ticks / int(sys.argv[6]) / gib)' \
    "$1" "$2" "$c0" "$c1" "$4" "$(getconf CLK_TCK)" <<<"$json" >> "$results"
}

# Servers interleave within each round, so a burst of load from other users
# of the machine hits all three alike, and the order rotates between rounds
# so none is always first; the report takes the median round. `sync` before
# each measurement keeps the writeback of the previous write job from
# landing on the next one.
for round in $(seq "$repeat"); do
  echo "round $round/$repeat" >&2
  shift_by=$(( (round - 1) % ${#servers[@]} ))
  order=("${servers[@]:shift_by}" "${servers[@]:0:shift_by}")
  for server in "${order[@]}"; do
    sync
    measure_nbdcopy nbdcopy-read "$server" "${uri[$server]}" null:
  done
  for server in "${order[@]}"; do
    sync
    measure_nbdcopy nbdcopy-write "$server" --flush "$source" "${uri[$server]}"
  done
  for job in "fio-seq-read read 1M" "fio-seq-write write 1M" "fio-rand-read randread 4k" "fio-rand-write randwrite 4k"; do
    read -r name rw bs <<<"$job"
    for server in "${order[@]}"; do
      sync
      measure_fio "$name" "$rw" "$bs" "$server"
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    name, server, mibs, cpu = line.split()
    if name not in rows:
        rows[name] = {}
        order.append(name)
    rows[name].setdefault(server, []).append((float(mibs), float(cpu)))
med = lambda runs, i: statistics.median(r[i] for r in runs)
print("Throughput in MiB/s (median of rounds); ratio > 1 means vsky-nbd is faster.")
print(f"{'workload':15} {'vsky-nbd':>9} {'nbdkit':>9} {'qemu-nbd':>9} {'vs nbdkit':>10} {'vs qemu-nbd':>12}")
for name in order:
    o, k, q = (med(rows[name][s], 0) for s in ("ours", "nbdkit", "qemu-nbd"))
    print(f"{name:15} {o:9.0f} {k:9.0f} {q:9.0f} {o/k:10.2f} {o/q:12.2f}")
print()
print("Server CPU seconds per GiB moved (median); ratio < 1 means vsky-nbd uses less CPU.")
print(f"{'workload':15} {'vsky-nbd':>9} {'nbdkit':>9} {'qemu-nbd':>9} {'vs nbdkit':>10} {'vs qemu-nbd':>12}")
for name in order:
    o, k, q = (med(rows[name][s], 1) for s in ("ours", "nbdkit", "qemu-nbd"))
    ratio = lambda a, b: f"{a/b:.2f}" if b > 0 else "n/a"
    print(f"{name:15} {o:9.2f} {k:9.2f} {q:9.2f} {ratio(o, k):>10} {ratio(o, q):>12}")
PY
