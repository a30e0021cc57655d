#!/usr/bin/env bash
# Compares vsky-nbd's server with `nbdkit file` and `qemu-nbd` on the same
# 1 GiB file: nbdcopy (1 GiB read to null:, 1 GiB write from a file, with its
# default connections and with 4) and fio's nbd engine (seq 1 MiB read/write,
# random 4 KiB read/write, iodepth 32; one job, and 4 jobs on 4 connections).
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
# BENCH_BASELINE=path/to/an/older/serve adds it as a fourth server, so a
# change can be shown before/after in the same run and under the same load.
baseline=${BENCH_BASELINE:-}
if [ -n "$baseline" ]; then
  "$baseline" 127.0.0.1:10914 bench "$disk" 2>"$work/baseline.log" & pids+=($!)
fi
sleep 1

declare -A uri=(
  [ours]="nbd://127.0.0.1:$port_ours/bench"
  [nbdkit]="nbd://127.0.0.1:$port_nbdkit/bench"
  [qemu-nbd]="nbd://127.0.0.1:$port_qemu/bench"
)
declare -A pid=([ours]=${pids[0]} [nbdkit]=${pids[1]} [qemu-nbd]=${pids[2]})
servers=(ours nbdkit qemu-nbd)
if [ -n "$baseline" ]; then
  uri[baseline]="nbd://127.0.0.1:10914/bench"
  pid[baseline]=${pids[3]}
  servers+=(baseline)
fi
results="$work/results.txt"
: > "$results"

# CPU time (user + system, in clock ticks) a server has used so far. The
# machine is shared, so throughput is noisy; CPU per GiB is the steadier
# measure of the server's own efficiency.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Warm the page cache once so the first server measured is not penalised.
cat "$disk" "$source" > /dev/null

# Each result line: workload server MiB/s cpu-seconds-per-GiB
# CPU is read once the kernel has written back what the run left dirty
# (`sync`): our server makes a connection's unflushed writes durable after
# it closes the socket, so without the wait that work would go unbilled.
measure_nbdcopy() { # name server args...
  local name=$1 server=$2; shift 2
  local c0 c1 t0 t1
  c0=$(cpu_ticks "${pid[$server]}"); t0=$(date +%s.%N)
  nbdcopy "$@"
  t1=$(date +%s.%N)
  sync; sleep 0.1; c1=$(cpu_ticks "${pid[$server]}")
  python3 -c "
hz = $(getconf CLK_TCK); gib = $size_mib / 1024
print('$name $server', $size_mib / ($t1 - $t0), ($c1 - $c0) / hz / gib)" >> "$results"
}

measure_fio() { # name rw bs server jobs
  local c0 c1 json
  c0=$(cpu_ticks "${pid[$4]}")
  # Several jobs are several connections, each on its own slice of the file.
  json=$(fio --name="$1" --ioengine=nbd --uri="${uri[$4]}" --rw="$2" --bs="$3" \
      --iodepth=32 --numjobs="$5" --size="$((size_mib / $5))M" \
      --offset_increment="$((size_mib / $5))M" --group_reporting \
      --time_based --runtime="$runtime" --output-format=json 2>/dev/null)
  sync; sleep 0.1; c1=$(cpu_ticks "${pid[$4]}")
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
: > "$work/load.txt"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/load.txt"
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
  # nbdcopy opens min(4, threads) connections and its threads default to
  # the core count, so on 2 cores the rows above use 2; these force 4.
  for server in "${order[@]}"; do
    sync
    measure_nbdcopy nbdcopy-read-c4 "$server" -C 4 -T 4 "${uri[$server]}" null:
  done
  for server in "${order[@]}"; do
    sync
    measure_nbdcopy nbdcopy-write-c4 "$server" -C 4 -T 4 --flush "$source" "${uri[$server]}"
  done
  # 1 MiB requests and no --flush: the client's disconnect is the end of
  # the copy (issue #17 measured us at 0.60x nbdkit here).
  for server in "${order[@]}"; do
    sync
    measure_nbdcopy nbdcopy-write-1m "$server" --request-size=1048576 "$source" "${uri[$server]}"
  done
  for job in "fio-seq-read read 1M 1" "fio-seq-write write 1M 1" \
      "fio-rand-read randread 4k 1" "fio-rand-write randwrite 4k 1" \
      "fio-seq-read-j4 read 1M 4" "fio-seq-write-j4 write 1M 4" \
      "fio-rand-read-j4 randread 4k 4" "fio-rand-write-j4 randwrite 4k 4"; do
    read -r name rw bs jobs <<<"$job"
    for server in "${order[@]}"; do
      sync
      measure_fio "$name" "$rw" "$bs" "$server" "$jobs"
    done
  done
  echo "load average after round $round: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/load.txt"
done
cat "$work/load.txt"

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
others = ["nbdkit", "qemu-nbd"] + (["baseline"] if all("baseline" in r for r in rows.values()) else [])
head = f"{'workload':18} {'vsky-nbd':>9}" + "".join(f" {s:>9}" for s in others)
head += "".join(f" {'vs ' + s:>12}" for s in others)
ratio = lambda a, b: f"{a/b:.2f}" if b > 0 else "n/a"
for title, i, fmt in (
    ("Throughput in MiB/s (median of rounds); ratio > 1 means vsky-nbd is faster.", 0, "9.0f"),
    ("Server CPU seconds per GiB moved (median); ratio < 1 means vsky-nbd uses less CPU.", 1, "9.2f"),
):
    print(title)
    print(head)
    for name in order:
        o = med(rows[name]["ours"], i)
        theirs = [med(rows[name][s], i) for s in others]
        line = f"{name:18} {o:{fmt}}" + "".join(f" {t:{fmt}}" for t in theirs)
        print(line + "".join(f" {ratio(o, t):>12}" for t in theirs))
    print()
PY
