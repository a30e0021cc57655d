#!/bin/busybox sh
# Cluster scenarios of the VM lab: the real binaries (vsky-manager,
# vsky-agent, vsky) on the real kernel datapath (NBD + dm-raid raid1).
#
#   sh cluster.sh cluster-attach | cluster-kill-server | cluster-agent-restart |
#                 cluster-rebuild | cluster-disk-rebuild | cluster-drain |
#                 cluster-return | cluster-scrub | cluster-ha-rebuild |
#                 cluster-xapi | cluster-bench | demo
#
# Run by lab/init inside the VM. Prints progress, one `LAB-DETAIL <text>` line
# on success (lab/init turns it into `LAB PASS`), and `LAB-WHY <reason>` plus
# the daemons' log tails on failure; exits non-zero on failure.
#
# Topology (all inside the VM):
#   - the manager in the root network namespace, on 0.0.0.0:8080 (the admin
#     CLI and the head use 127.0.0.1; storage agents reach it over their veth);
#   - storage server sN: its own network namespace, held open by a `sleep`
#     started under `unshare -n`, joined to the root namespace by a veth pair
#     on a /30 of 10.99.0.0/24 (root side 10.99.0.(4N+1), server side
#     10.99.0.(4N+2)), whose default route is the root side: the root
#     namespace forwards between servers. Its agent runs there (`nsenter
#     -n`), storage-only, serving one file-backed disk ($DISKS with DISKS
#     set) on the ext4-over-loop /srv (tmpfs has no O_DIRECT). Killing the agent leaves the namespace (and link) in place, so
#     the head sees exactly what a crashed storage daemon looks like;
#   - the head: an agent (not storage-only, no disks) in the root namespace,
#     which assembles attached volumes as /dev/mapper/vsky-<volume>.
# Every scenario builds a fresh cluster (new manager store, new disks) and
# tears it down, so scenarios are independent. Volume names differ per
# scenario so that a leftover kernel device from a failed scenario can never
# be adopted by the next one (NBD devices are adopted by backend identifier,
# which holds the volume name).

B=/lab/bin                   # vsky, vsky-agent, vsky-manager, dmsetup
W=/tmp/cluster               # per-scenario state: tokens, store, logs, pids
SRV=${VSKY_LAB_DIR:-/srv}    # ext4 on loop: the storage servers' disk files
CHUNK=8MiB
export PATH=$B:$PATH
export VSKY_MANAGER=http://127.0.0.1:8080 VSKY_TOKEN_FILE=$W/admin.token
# dmsetup is only used to read status here; there is no udev in the VM.
export DM_DISABLE_UDEV=1

scenario=$1
case $scenario in
  demo) P=demo ;;
  *) P=cluster ;;
esac

# --- small helpers ---------------------------------------------------------

say() { echo "$P: $*"; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v s="$1" '{printf "%.1f", $1 - s}' /proc/uptime; }

# Prints the last lines of every daemon log, the kernel's view and the
# volume, so a failure can be diagnosed from the console alone.
dump() {
  echo "---- diagnostics"
  grep -q 'vsky\.debug=1' /proc/cmdline && DUMP_LINES=${DUMP_LINES:-60}
  grep -h -A3 panicked "$W"/*.log 2>/dev/null | head -20
  for f in "$W"/*.log; do
    [ -f "$f" ] || continue
    echo "---- tail $f"; tail -"${DUMP_LINES:-15}" "$f" | sed 's/\x1b\[[0-9;]*m//g'
  done
  echo "---- volumes"; vsky volume list 2>&1
  echo "---- dmsetup status"; dmsetup status 2>&1
  echo "---- nbd connected: $(nbd_connected)"
  echo "---- kernel"; dmesg | tail -15
}

fail() {
  echo "LAB-WHY $*"
  say "FAIL: $*"
  dump
  cluster_down
  exit 1
}

# wait_for SECONDS WHAT COMMAND…: polls COMMAND every 0.2 s; fails the
# scenario if it never succeeds. Bounded waits keep a hung datapath from
# hanging the lab (lab/run has its own hard timeout as the last resort).
wait_for() {
  local limit=$1 what=$2 start
  shift 2
  start=$(now)
  while ! "$@" >/dev/null 2>&1; do
    if awk -v s="$start" -v l="$limit" '{exit !($1 - s > l)}' /proc/uptime; then
      fail "timed out after ${limit}s waiting for: $what"
    fi
    sleep 0.2
  done
}

dm_count() { ls /sys/block | grep -c '^dm-'; }
# An NBD device has a backend identifier in sysfs only while connected.
nbd_connected() { ls /sys/block/nbd*/backend 2>/dev/null | wc -l; }
nbd_backends() { cat /sys/block/nbd*/backend 2>/dev/null | sort; }
servers_online() { [ "$(vsky server list | grep -c ' online ')" -ge "$1" ]; }
is_block() { [ -b "$1" ]; }
is_gone() { [ ! -e "$1" ]; }
# sha256 of the first N MiB of a device, read with O_DIRECT (no page cache:
# the bytes come from the legs).
dev_sum() { dd if="$1" bs=1M count="$2" skip="${3:-0}" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }
file_sum() { sha256sum "$1" | cut -d' ' -f1; }
# "mdisk leg server state disk_id" per leg, from the manager's JSON.
legs() {
  vsky --json volume show "$1" | awk -F'"' '
    /"index":/ { md = $0; gsub(/[^0-9]/, "", md); leg = -1 }
    /"server":/ { srv = $4; leg++ }
    /"disk_id":/ { did = $3; gsub(/[^0-9]/, "", did) }
    /"state":/ { print md, leg, srv, $4, did }'
}
# backend_disk FILE: the disk id in an NBD import's backend id
# (vsky:<volume>:<k>:[<slot>:]<disk>:<index>).
backend_disk() { awk -F: '{print $(NF-1)}' "$1" 2>/dev/null; }
# Every raid1 mirror in the kernel (one volume per scenario) is in sync with
# every leg alive: health all `A`, sync action `idle`.
mirrors_in_sync() {
  local s
  s=$(dmsetup status | grep " raid raid1 ")
  [ -n "$s" ] || return 1
  ! echo "$s" | grep -v " idle " | grep -q .  || return 1
  ! echo "$s" | awk '{print $7}' | grep -q '[^A]'
}
# mirrors_in_sync_with N: in sync, and every mirror has exactly N legs.
mirrors_in_sync_with() {
  mirrors_in_sync && [ -z "$(dmsetup status | awk -v n="$1" '$4 == "raid" && $6 != n')" ]
}

# --- the cluster -----------------------------------------------------------

# ns_up N: a network namespace for storage server sN with a veth link.
ns_up() {
  local i=$1 pid peer idx d host=10.99.0.$((4 * $1 + 1)) srv=10.99.0.$((4 * $1 + 2))
  # The namespace lives as long as this sleep; agents join it with nsenter,
  # so an agent can die and restart without the link going away.
  unshare -n sleep 100000 &
  pid=$!
  echo "$pid" >"$W/ns$i.pid"
  # unshare(2) happens after fork: wait until the process really has its own
  # namespace, or the link would be "moved" into the root namespace.
  wait_for 5 "namespace of s$i" ns_differs "$pid"
  # A pair left by an earlier scenario would make the add fail.
  [ -e "/sys/class/net/vh$i" ] && ip link del "vh$i"
  ip link add "vh$i" type veth peer name "vp$i" || fail "ip link add veth for s$i failed"
  # busybox ignores the peer name: find the peer by the ifindex vh$i links to.
  idx=$(cat "/sys/class/net/vh$i/iflink")
  peer=
  for d in /sys/class/net/*; do
    [ "$(cat "$d/ifindex")" = "$idx" ] && peer=${d##*/}
  done
  [ -n "$peer" ] || fail "cannot find the veth peer of vh$i"
  ip link set "$peer" netns "$pid" || fail "cannot move $peer into the namespace of s$i"
  ip addr add "$host/30" dev "vh$i"
  ip link set "vh$i" up
  # The root namespace routes between the servers (as a switch would), so
  # storage agents reach each other: a detached volume's new leg is copied
  # server-to-server.
  echo 1 >/proc/sys/net/ipv4/ip_forward
  nsenter -t "$pid" -n sh -c "ip link set lo up && ip link set $peer name eth0 &&
    ip addr add $srv/30 dev eth0 && ip link set eth0 up && ip route add default via $host" \
    || fail "cannot configure the network of s$i"
}
ns_differs() { [ "$(readlink "/proc/$1/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }

# agent_start N: storage agent of sN inside its namespace.
agent_start() {
  local i=$1
  echo "=== start $(now)" >>"$W/s$i.log"
  # shellcheck disable=SC2046 # one --disk FILE pair per disk image
  nsenter -t "$(cat "$W/ns$i.pid")" -n vsky-agent --manager "$(manager_urls "$i")" \
    --token-file "$W/agent.token" --server-name "s$i" --listen "10.99.0.$((4 * i + 2)):10809" \
    $(disk_args "$i") --storage-only --heartbeat-interval 1 >>"$W/s$i.log" 2>&1 &
  echo $! >"$W/s$i.pid"
}

# head_start: the head agent in the root namespace. Short NBD timeouts bound
# how long a write waits on a dead server before md fails the leg. With
# HEAD_API=1 it also serves its local API (127.0.0.1:10810, the default) for
# the datapath plugin, with the token in $W/agent-api.token, as in dom0.
head_start() {
  local api=
  [ "${HEAD_API:-0}" = 1 ] && api="--api-token-file $W/agent-api.token"
  echo "=== start $(now)" >>"$W/head.log"
  # shellcheck disable=SC2086 # $api is empty or two words
  vsky-agent --manager "${VSKY_MANAGER}" --token-file "$W/agent.token" \
    --server-name head --listen 127.0.0.1:10809 --heartbeat-interval 1 \
    --nbd-timeout 5 --dead-connection-timeout 2 --log info,vsky_agent=debug $api >>"$W/head.log" 2>&1 &
  echo $! >"$W/head.pid"
}
# How often the head has (re)assembled volumes: grows by one per apply.
assembled_count() { grep -c 'volume assembled' "$W/head.log"; }

# manager_start ID PORT ARGS…: a manager on 0.0.0.0:PORT (pid in
# $W/managerID.pid). A short grace period: a silent server's legs are
# replaced after ${GRACE:-10s} (production default 60s); RESYNC_RATE sets
# the per-resync rate limit. The manager's scrubs of detached volumes are
# off unless MANAGER_SCRUB_INTERVAL is set, so they do not disturb the
# scenarios' timings (their loopback test is vsky-agent/tests/scrub.rs).
manager_start() {
  local id=$1 port=$2
  shift 2
  # shellcheck disable=SC2086 # RESYNC_RATE may add two words
  vsky-manager --listen "0.0.0.0:$port" --token-file "$W/admin.token" \
    --agent-token-file "$W/agent.token" --chunk-size $CHUNK --server-grace "${GRACE:-10s}" \
    --scrub-interval "${MANAGER_SCRUB_INTERVAL:-0}" \
    ${RESYNC_RATE:+--resync-rate $RESYNC_RATE} "$@" >"$W/manager$id.out" 2>>"$W/manager$id.log" &
  echo $! >"$W/manager$id.pid"
}
# The manager URLs a storage server reaches from its namespace.
manager_urls() { # N
  local host=10.99.0.$((4 * $1 + 1))
  if [ "${HA:-0}" = 1 ]; then echo "http://$host:8080,http://$host:8081"; else echo "http://$host:8080"; fi
}
etcd_up() {
  etcd --name lab --data-dir "$W/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster lab=http://127.0.0.1:2380 \
    >"$W/etcd.log" 2>&1 &
  echo $! >"$W/etcd.pid"
  wait_for 60 "etcd to answer" etcd_ok
}
etcd_ok() { wget -q -O /dev/null http://127.0.0.1:2379/health; }
# role_of PORT: the role the manager on PORT reports (leader, standby, single).
role_of() { wget -q -O - "http://127.0.0.1:$1/api/v1/health" 2>/dev/null | sed -n 's/.*"role":"\([a-z]*\)".*/\1/p'; }

# cluster_up SERVERS DISK_MIB: manager(s), storage servers, head; waits
# until every agent has registered. With HA=1, two managers on etcd.
cluster_up() {
  local n=$1 mib=$2 i start
  start=$(now)
  rm -rf "$W"
  mkdir -p "$W"
  echo lab-admin-token-0123456789 >"$W/admin.token"
  echo lab-agent-token-0123456789 >"$W/agent.token"
  echo lab-agent-api-token-0123456789 >"$W/agent-api.token"
  if [ "${HA:-0}" = 1 ]; then
    # Two managers sharing a one-member etcd: one leads, one stands by.
    etcd_up
    manager_start 1 8080 --store etcd://127.0.0.1:2379 --advertise-url http://127.0.0.1:8080 --lease-ttl 3
    manager_start 2 8081 --store etcd://127.0.0.1:2379 --advertise-url http://127.0.0.1:8081 --lease-ttl 3
    export VSKY_MANAGER=http://127.0.0.1:8080,http://127.0.0.1:8081
  else
    manager_start "" 8080 --data-dir "$W/store"
  fi
  for i in $(seq 1 "$n"); do
    ns_up "$i"
    # Fresh, blank disks: an image left by an earlier scenario carries that
    # cluster's disk label, which this new cluster would refuse.
    for f in $(disk_files "$i"); do rm -f "$f"; truncate -s "${mib}M" "$f"; done
    agent_start "$i"
  done
  head_start
  wait_for 60 "manager and $((n + 1)) agents online" servers_online $((n + 1))
  say "cluster up in $(since "$start")s: manager, $n storage servers (s1..s$n, one netns + veth + ${DISKS:-1} × ${mib} MiB disk each), head"
}

# disk_files N: the disk images of storage server sN: one, or $DISKS.
disk_files() {
  local j
  if [ "${DISKS:-1}" = 1 ]; then echo "$SRV/s$1.img"; return; fi
  for j in $(seq 1 "$DISKS"); do echo "$SRV/s$1-d$j.img"; done
}
disk_args() { local f; for f in $(disk_files "$1"); do echo "--disk $f"; done; }

kill_pid_file() { # FILE [SIGNAL]
  [ -f "$1" ] || return 0
  kill "-${2:-TERM}" "$(cat "$1")" 2>/dev/null
  rm -f "$1"
}

# cluster_down: detaches volumes (the head tears down its devices), then
# stops every process this scenario started. Safe to call twice.
cluster_down() {
  local v i
  [ -d "$W" ] || return 0
  grep -q vsky- /proc/mounts && umount /mnt/vol 2>/dev/null
  if [ -f "$W/head.pid" ] && ls "$W"/manager*.pid >/dev/null 2>&1; then
    # Top devices are vsky-<volume>; internal ones carry a '+'.
    for v in $(ls /dev/mapper | grep '^vsky-' | grep -v '+' | sed 's/^vsky-//'); do
      vsky volume detach "$v" --wait-timeout 20s >/dev/null 2>&1
    done
    for i in $(seq 1 50); do
      ls /dev/mapper | grep -q '^vsky-' || break
      sleep 0.2
    done
  fi
  for f in "$W"/s*.pid "$W/head.pid" "$W"/manager*.pid "$W"/etcd.pid "$W"/ns*.pid; do
    kill_pid_file "$f" KILL
  done
  # A dead namespace's veth pairs are destroyed asynchronously (netns
  # cleanup runs in a kernel workqueue): delete the root ends now, so the
  # next scenario can create vhN again at once.
  for d in /sys/class/net/vh*; do
    [ -e "$d" ] && ip link del "${d##*/}" 2>/dev/null
  done
  sleep 0.5
  if ls /dev/mapper | grep -q '^vsky-'; then
    say "cleanup: devices left after detach: $(ls /dev/mapper | grep '^vsky-' | tr '\n' ' ')"
  fi
}

# attach_wait VOLUME: attach to the head and wait for the agent to create
# the device node and for the mirrors' initial resync.
attach_wait() {
  local start
  start=$(now)
  vsky volume attach "$1" head >/dev/null || fail "vsky volume attach $1 head failed"
  wait_for 60 "/dev/mapper/vsky-$1 as a block device" is_block "/dev/mapper/vsky-$1"
  say "attached: /dev/mapper/vsky-$1 appeared after $(since "$start")s"
  wait_for 60 "mirrors of $1 in sync" mirrors_in_sync
  say "mirrors in sync after $(since "$start")s ($(dmsetup status | grep -c ' raid raid1 ') raid1 mirrors, all legs A)"
}

detach_wait() {
  local start
  start=$(now)
  vsky volume detach "$1" >/dev/null || fail "vsky volume detach $1 failed"
  wait_for 60 "/dev/mapper/vsky-$1 to vanish" is_gone "/dev/mapper/vsky-$1"
  wait_for 30 "every dm device and NBD connection of $1 to go" nothing_assembled
  say "detached: device, mirrors and NBD connections gone after $(since "$start")s"
}
nothing_assembled() { [ "$(dm_count)" = 0 ] && [ "$(nbd_connected)" = 0 ]; }

# kill_server_during_write VOLUME MIB SERVER [kill|link-down]: writes MIB
# MiB of /tmp/pat with O_DIRECT and, while the write runs, kill -9s SERVER's
# agent (its sockets close: the head sees a reset at once) or takes SERVER's
# veth link down (silence: only the head's NBD request timeout notices).
# Fails the scenario if the writer sees an error, or if the write was over
# before the failure (then nothing was proven).
kill_server_during_write() {
  local v=$1 mib=$2 victim=$3 how=${4:-kill} dev=/dev/mapper/vsky-$1 writer start rc
  record_slots "$v" "$victim"
  start=$(now)
  # 64 KiB requests: many round trips, so the write is still running when
  # the server dies.
  (dd if=/tmp/pat of="$dev" bs=64k oflag=direct 2>"$W/dd.err"; echo $? >"$W/dd.rc") &
  writer=$!
  # Half a second in: the write is well under way (it takes several seconds
  # even on an idle host under TCG) and far from done.
  sleep 0.5
  kill -0 "$writer" 2>/dev/null || fail "the write of $mib MiB ended within 0.5s, before the failure; make it bigger"
  if [ "$how" = link-down ]; then
    ip link set "vh${victim#s}" down || fail "cannot take the link of $victim down"
    say "took the veth link of $victim down at $(since "$start")s into the write"
  else
    kill -9 "$(cat "$W/$victim.pid")"
    rm -f "$W/$victim.pid"
    say "kill -9 the agent of $victim at $(since "$start")s into the write"
  fi
  wait "$writer"
  rc=$(cat "$W/dd.rc")
  [ "$rc" = 0 ] || fail "writer failed (exit $rc): $(tail -2 "$W/dd.err" | tr '\n' ' ')"
  ! grep -qi error "$W/dd.err" || fail "writer reported: $(cat "$W/dd.err")"
  say "writer finished after $(since "$start")s: exit 0, no I/O error ($(tail -1 "$W/dd.err"))"
}

# record_slots VOLUME SERVER: remembers the (mirrored disk, leg) slots that
# SERVER holds, before it is made to fail.
record_slots() {
  legs "$1" | awk -v s="$2" '$3 == s {print $1, $2}' >"$W/slots"
  [ -s "$W/slots" ] || fail "$2 holds no leg of $1"
}
# legs_failed_of VOLUME SERVER: every recorded slot of SERVER is now failed,
# and no other leg is. (Once the manager repairs failed legs, a slot may
# instead hold a replacement on another server: that also proves the
# failure was reported, so it is accepted; a slot still active on SERVER is
# not.)
legs_failed_of() {
  legs "$1" >"$W/legs" || return 1
  [ -s "$W/legs" ] || return 1
  awk -v s="$2" '
    NR == FNR { slot[$1 " " $2] = 1; want++; next }
    ($1 " " $2) in slot {
      seen++
      if (!(($3 == s && $4 == "failed") || ($3 != s && $4 != "failed"))) bad = 1
      next
    }
    $4 == "failed" { bad = 1 }
    END { exit bad || seen != want }' "$W/slots" "$W/legs"
}

# --- scenarios -------------------------------------------------------------

# cluster-attach: a volume assembled by the head survives detach/reattach
# byte for byte, both raw data and an ext4 filesystem on it.
scenario_attach() {
  local v=va dev=/dev/mapper/vsky-va sums raw raw2
  cluster_up 2 64
  vsky volume create $v --size 48MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  # The node must be a real block device made by the agent: a write to a
  # missing /dev/mapper path would silently create a regular file.
  [ -b $dev ] || fail "$dev is not a block device"
  # Raw pattern in the last 16 MiB, ext4 in the first 32 MiB.
  dd if=/dev/urandom of=/tmp/raw bs=1M count=16 2>/dev/null
  dd if=/tmp/raw of=$dev bs=1M seek=32 oflag=direct 2>"$W/dd.err" || fail "O_DIRECT write failed: $(cat "$W/dd.err")"
  raw=$(file_sum /tmp/raw)
  [ "$(dev_sum $dev 16 32)" = "$raw" ] || fail "raw read-back differs right after the write"
  mkfs.ext4 -q -F $dev 32M || fail "mkfs.ext4 on $dev failed"
  mkdir -p /mnt/vol
  mount -t ext4 $dev /mnt/vol || fail "mount of $dev failed"
  dd if=/dev/urandom of=/mnt/vol/random.bin bs=1M count=6 2>/dev/null
  cp /bin/busybox /mnt/vol/busybox.bin
  seq 1 20000 >/mnt/vol/numbers.txt
  (cd /mnt/vol && sha256sum random.bin busybox.bin numbers.txt >/tmp/sums) || fail "sha256sum of the files failed"
  umount /mnt/vol || fail "umount failed"
  say "wrote 16 MiB raw (O_DIRECT) + ext4 with 3 files; sha256 recorded"
  detach_wait $v
  attach_wait $v
  raw2=$(dev_sum $dev 16 32)
  [ "$raw2" = "$raw" ] || fail "raw data differs after reattach ($raw2 != $raw)"
  mount -t ext4 $dev /mnt/vol || fail "mount after reattach failed"
  sums=$(cd /mnt/vol && sha256sum -c /tmp/sums 2>&1) || fail "file checksums differ after reattach: $sums"
  umount /mnt/vol
  detach_wait $v
  echo "LAB-DETAIL attach → O_DIRECT pattern + ext4 files → detach (devices and NBD gone) → reattach: raw sha256 and 3 file checksums match"
}

# cluster-kill-server: a storage server dies during a write; the writer sees
# no error, the head reports that server's legs failed, the data is intact.
# Then the degraded volume is detached, deleted and created again under the
# same name, and a server falls silent (link down) under a write: the new
# volume's legs are reported failed too, although they sit in the same
# (mirrored disk, leg) slots as the first volume's failed legs.
scenario_kill_server() {
  local v=vk dev=/dev/mapper/vsky-vk victim start n took victim2 n2 took2
  # Long enough that the failed legs are held, not replaced, however slow
  # the write (replacing them is cluster-rebuild's business).
  GRACE=60s
  cluster_up 3 64
  vsky volume create $v --size 48MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=48 2>/dev/null
  victim=$(legs $v | awk '$1 == 0 && $2 == 1 {print $3}')
  [ -n "$victim" ] || fail "cannot read the volume layout"
  n=$(legs $v | awk -v s="$victim" '$3 == s' | wc -l)
  kill_server_during_write $v 48 "$victim"
  start=$(now)
  wait_for 30 "the manager to show the $n legs on $victim failed (and only those)" legs_failed_of $v "$victim"
  took=$(since "$start")
  say "manager shows $n legs of $victim failed ${took}s after the write ended; other legs active"
  # The kernel agrees: dm-raid marked the written legs dead (D), and the
  # head drops every failed leg from its mirror's table ("- -", shown as
  # -) once the manager lists it failed; which of the two a leg shows
  # depends on timing, so wait for each of the n mirrors to show either.
  wait_for 30 "the kernel to show the $n mirrors with a leg on $victim out of service (D or -)" \
    mirrors_with_leg_out "$n"
  [ "$(dev_sum $dev 48)" = "$(file_sum /tmp/pat)" ] || fail "data read back differs from what was written"
  say "all 48 MiB read back (O_DIRECT) with the written sha256"

  # Phase 2. A degraded volume (dead NBD connections underneath) detaches
  # cleanly.
  detach_wait $v
  vsky volume delete $v >/dev/null || fail "vsky volume delete $v failed"
  # The victim comes back: its agent wipes the deleted volume's chunks.
  agent_start "${victim#s}"
  wait_for 60 "the deleted volume's chunks to be wiped and freed" nothing_releasing
  vsky volume create $v --size 24MiB --replicas 2 >/dev/null || fail "re-creating $v failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=24 2>/dev/null
  # The server in the slot that failed first: its legs' slots overlap the
  # slots already reported for the old volume of the same name.
  victim2=$(legs $v | awk '$1 == 0 && $2 == 1 {print $3}')
  n2=$(legs $v | awk -v s="$victim2" '$3 == s' | wc -l)
  kill_server_during_write $v 24 "$victim2" link-down
  start=$(now)
  wait_for 30 "the manager to show the $n2 legs of the re-created $v on $victim2 failed" legs_failed_of $v "$victim2"
  took2=$(since "$start")
  say "re-created $v: manager shows $n2 legs of $victim2 failed ${took2}s after the write ended"
  [ "$(dev_sum $dev 24)" = "$(file_sum /tmp/pat)" ] || fail "data of the re-created volume differs"
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL kill -9 of $victim during a 48 MiB O_DIRECT write: writer exit 0 without I/O error; its $n legs failed in the manager ${took}s later; data sha256 matches; degraded volume detached, re-created under the same name, link of $victim2 down mid-write: no I/O error, its $n2 legs failed ${took2}s later, data intact"
}
nothing_releasing() { vsky cluster status | grep -q '^Releasing: *0 B'; }
# mirrors_with_leg_out N: exactly N raid1 mirrors have a leg out of service,
# dead (D) or left out of the table (-).
mirrors_with_leg_out() {
  [ "$(dmsetup status | awk '$4 == "raid" && $7 ~ /[D-]/' | wc -l)" = "$1" ]
}

# The kernel state an agent restart must leave alone.
snapshot() {
  {
    echo "dm: $(dm_count)"
    echo "nbd: $(nbd_connected)"
    ls /dev/mapper | grep '^vsky-' | sort
    nbd_backends
    ls -l /dev/mapper/vsky-vr | awk '{print $5, $6}'
  } >"$1"
}

# restart_head SIGNAL [degraded]: stops the head agent with SIGNAL while a
# writer runs, checks the datapath keeps serving without it, restarts it and
# waits until it has reconciled again (adopting, not recreating, the
# devices). With `degraded`, mirrors are expected to keep their dead legs.
restart_head() {
  local sig=$1 mode=${2:-healthy} dev=/dev/mapper/vsky-vr before writer rc start
  snapshot "$W/before"
  before=$(assembled_count)
  # A writer runs across the whole restart: I/O never goes through the agent.
  (dd if=/tmp/pat of=$dev bs=64k oflag=direct 2>"$W/dd.err"; echo $? >"$W/dd.rc") &
  writer=$!
  start=$(now)
  kill "-$sig" "$(cat "$W/head.pid")"
  wait_for 15 "the head agent to exit after SIG$sig" head_gone
  say "head agent stopped with SIG$sig; $(ls /dev/mapper | grep -c '^vsky-') vsky dm devices still present"
  [ -b $dev ] || fail "$dev vanished when the agent stopped (SIG$sig)"
  head_start
  wait_for 60 "the restarted head to reconcile" assembled_more "$before"
  say "head agent restarted and reconciled after $(since "$start")s"
  wait "$writer"
  rc=$(cat "$W/dd.rc")
  [ "$rc" = 0 ] || fail "writer across the SIG$sig restart failed (exit $rc): $(cat "$W/dd.err")"
  snapshot "$W/after"
  cmp -s "$W/before" "$W/after" || fail "kernel state changed across the SIG$sig restart: $(diff "$W/before" "$W/after" | grep '^[-+][^-+]' | tr '\n' ' ')"
  if [ "$mode" = healthy ]; then
    mirrors_in_sync || fail "mirrors not all in sync after the SIG$sig restart: $(dmsetup status | grep raid1)"
  else
    # The dead legs stay dead and the live ones in sync: the restart neither
    # resurrected nor dropped anything.
    [ "$(dmsetup status | awk '$4 == "raid"' | grep -vc ' idle ')" = 0 ] \
      || fail "degraded mirrors not idle after the SIG$sig restart: $(dmsetup status | grep raid1)"
  fi
  [ "$(dev_sum $dev 40)" = "$(file_sum /tmp/pat)" ] || fail "data differs after the SIG$sig restart"
  say "SIG$sig ($mode): same $(head -1 "$W/after") / $(sed -n 2p "$W/after") connected, same names and device numbers; writer exit 0; sha256 matches"
}
head_gone() { ! kill -0 "$(cat "$W/head.pid")" 2>/dev/null; }
assembled_more() { [ "$(assembled_count)" -gt "$1" ]; }

# cluster-agent-restart: the head agent stopped (SIGTERM) or killed (SIGKILL)
# and restarted adopts the running devices: nothing recreated, nothing
# duplicated, I/O uninterrupted. Then once more with the volume degraded (a
# storage server dead, its legs failed in the manager): the restarted agent
# adopts mirrors that still hold the dead legs.
scenario_agent_restart() {
  local v=vr dev=/dev/mapper/vsky-vr victim
  cluster_up 2 64
  vsky volume create $v --size 40MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=40 2>/dev/null
  restart_head TERM
  # A new pattern, so the second check cannot pass on the first one's data.
  dd if=/dev/urandom of=/tmp/pat bs=1M count=40 2>/dev/null
  restart_head KILL
  # Degrade the volume: kill a storage server and wait for its legs to be
  # failed in the manager, so the restarted head gets a layout with failed
  # legs while the kernel mirrors still list them (dead).
  victim=$(legs $v | awk '$1 == 0 && $2 == 1 {print $3}')
  dd if=/dev/urandom of=/tmp/pat bs=1M count=40 2>/dev/null
  kill_server_during_write $v 40 "$victim"
  wait_for 30 "the manager to show $victim's legs failed" legs_failed_of $v "$victim"
  dd if=/dev/urandom of=/tmp/pat bs=1M count=40 2>/dev/null
  restart_head KILL degraded
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL head agent SIGTERM and SIGKILL + restart, each during an O_DIRECT write, and SIGKILL + restart of a degraded volume ($victim dead): same dm names/numbers ($(head -1 "$W/after" | cut -d' ' -f2) dm), same NBD backends ($(sed -n 2p "$W/after" | cut -d' ' -f2) connected), no duplicates, writer exit 0, sha256 matches"
}

# all_active_without VOLUME SERVER: every leg of VOLUME is active and none
# sits on SERVER (its legs were replaced and resynced).
all_active_without() {
  legs "$1" >"$W/legs" || return 1
  [ -s "$W/legs" ] || return 1
  awk -v s="$2" '$4 != "active" || $3 == s {bad = 1} END {exit bad}' "$W/legs"
}

# sample_rebuilds: in the background, records the disks of every running
# rebuild twice a second, one line per sample: "<sample> <disk> <disk> …"
# (source and target disk ids). Stopped by killing $sampler.
sample_rebuilds() {
  (i=0; while :; do
    i=$((i + 1))
    vsky rebuild list 2>/dev/null | awk -v i="$i" '
      $4 == "running" { split($5, f, "[:#]"); split($6, t, "[:#]"); d = d " " f[2] " " t[2] }
      END { print i d }'
    sleep 0.5
  done >"$W/rebuild-samples") &
  sampler=$!
}
# No sample shows a disk in two running rebuilds (the per-disk limit k=1).
no_disk_twice() {
  awk '{ delete seen; for (j = 2; j <= NF; j++) { if (seen[$j]++) { print "sample " $1 ": disk " $j " twice"; bad = 1 } } }
    END { exit bad }' "$W/rebuild-samples"
}
# The most rebuilds seen running at once.
peak_running() { awk '{ n = (NF - 1) / 2; if (n > m) m = n } END { print m + 0 }' "$W/rebuild-samples"; }

# cluster-rebuild: a storage server is killed under write load; after the
# grace period its legs get new chunks from the pool and the head resyncs
# them into the running mirrors (dm-raid, online), one resync per disk at a
# time, while the volume keeps serving. Then the server holding the
# surviving original leg of mirrored disk 0 is killed too: only the rebuilt
# copy is left there, and the data must still read back intact.
scenario_rebuild() {
  local v=vb dev=/dev/mapper/vsky-vb victim survivor n start took jobs peak sampler
  cluster_up 4 64
  vsky volume create $v --size 48MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=48 2>/dev/null
  victim=$(legs $v | awk '$1 == 0 && $2 == 1 {print $3}')
  survivor=$(legs $v | awk '$1 == 0 && $2 == 0 {print $3}')
  n=$(legs $v | awk -v s="$victim" '$3 == s' | wc -l)
  sample_rebuilds
  kill_server_during_write $v 48 "$victim"
  start=$(now)
  wait_for 180 "the $n legs of $victim to be replaced and resynced (every leg active, none on $victim)" \
    all_active_without $v "$victim"
  took=$(since "$start")
  kill "$sampler"
  say "all $n legs of $victim rebuilt elsewhere ${took}s after the write ended"
  vsky rebuild list --all | sed "s/^/$P:   /"
  no_disk_twice || fail "a disk took part in two rebuilds at once: $(no_disk_twice | head -3 | tr '\n' ' ')"
  peak=$(peak_running)
  [ "$peak" -ge 1 ] || fail "no running rebuild was ever sampled"
  jobs=$(vsky rebuild list --all | awk '$4 == "done"' | wc -l)
  [ "$jobs" -ge "$n" ] || fail "$jobs rebuilds done, expected at least $n"
  vsky events | grep -q ' rebuild_done ' || fail "no rebuild_done event: $(vsky events | tail -5 | tr '\n' ' ')"
  wait_for 30 "the kernel mirrors to be in sync on every leg" mirrors_in_sync
  [ "$(dev_sum $dev 48)" = "$(file_sum /tmp/pat)" ] || fail "data read back after the rebuild differs"
  say "mirrors in sync (all legs A); 48 MiB read back with the written sha256"
  # The rebuilt copy alone: kill the server of mirrored disk 0's surviving
  # original leg. Reads of what it held must come from the rebuilt legs.
  kill -9 "$(cat "$W/$survivor.pid")"
  rm -f "$W/$survivor.pid"
  [ "$(dev_sum $dev 48)" = "$(file_sum /tmp/pat)" ] || fail "with $survivor dead too, the rebuilt copies do not carry the data"
  say "killed $survivor (mirrored disk 0's original copy): 48 MiB still read back intact from the rebuilt legs"
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL kill -9 of $victim during a 48 MiB O_DIRECT write (no I/O error) → its $n legs replaced from the pool and resynced online by the head in ${took}s, at most $peak at a time, no disk in two rebuilds (k=1), rebuild_done events; mirrors all A; then $survivor (the original surviving copy) killed too: sha256 of all 48 MiB still matches"
}

# victim_written_mib VOLUME SERVER: MiB written so far to the head's NBD
# imports of SERVER's legs of VOLUME (from /sys/block/nbdN/stat).
victim_written_mib() {
  local f dev sectors=0 n
  legs "$1" | awk -v s="$2" '$3 == s {print $5}' >"$W/victim-disks"
  for f in /sys/block/nbd*/backend; do
    dev=$(dirname "$f")
    [ "$(cut -d: -f2 "$f" 2>/dev/null)" = "$1" ] || continue
    grep -qx "$(backend_disk "$f")" "$W/victim-disks" || continue
    n=$(awk '{print $7}' "$dev/stat")
    sectors=$((sectors + n))
  done
  awk -v s="$sectors" 'BEGIN {printf "%.1f", s / 2048}'
}
# md_leg_failed VOLUME MD SERVER: SERVER's leg of mirrored disk MD is failed.
md_leg_failed() {
  legs "$1" | awk -v m="$2" -v s="$3" '$1 == m && $3 == s && $4 == "failed" {f = 1} END {exit !f}'
}
# legs_on_failed VOLUME SERVER N: the manager lists N legs of VOLUME on
# SERVER failed.
legs_on_failed() {
  [ "$(legs "$1" | awk -v s="$2" '$3 == s && $4 == "failed"' | wc -l)" -eq "$3" ]
}
# legs_on_active VOLUME SERVER: SERVER still holds its recorded slots and
# every leg of VOLUME is active (nothing was replaced).
legs_on_active() {
  legs "$1" >"$W/legs" || return 1
  awk -v s="$2" '
    NR == FNR { slot[$1 " " $2] = 1; next }
    $4 != "active" { bad = 1 }
    ($1 " " $2) in slot && $3 != s { bad = 1 }
    END { exit bad }' "$W/slots" "$W/legs"
}

# cluster-return: a storage server's link goes down under write load and
# comes back within the grace period. Its legs are held (not replaced),
# then brought back: the head reconnects their NBD imports in place and
# dm-raid catches up from its write-intent bitmap. Proven by the bytes the
# head writes to that server's legs during the catch-up (a few regions,
# not whole legs), no rebuild job, and the data read back after the other
# copy's server is killed.
scenario_return() {
  local v=vc dev=/dev/mapper/vsky-vc victim other n start took w0 w1 caught full
  GRACE=60s
  cluster_up 3 64
  vsky volume create $v --size 48MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=48 2>/dev/null
  dd if=/tmp/pat of=$dev bs=1M oflag=direct 2>"$W/dd.err" || fail "initial write failed: $(cat "$W/dd.err")"
  # The 4 MiB written while the victim is away (at 8 MiB) land in mirrored
  # disk 1 (7 MiB of data each): its leg on the victim fails first. The
  # degraded mirror makes the head reload its tables, and every mirror
  # writes its superblock, so each of the victim's legs fails in turn, one
  # NBD timeout after the other.
  victim=$(legs $v | awk '$1 == 1 && $2 == 1 {print $3}')
  other=$(legs $v | awk '$1 == 1 && $2 == 0 {print $3}')
  n=$(legs $v | awk -v s="$victim" '$3 == s' | wc -l)
  record_slots $v "$victim"
  dd if=/dev/urandom of=/tmp/delta bs=1M count=4 2>/dev/null
  dd if=/tmp/delta of=/tmp/pat bs=1M seek=8 conv=notrunc 2>/dev/null
  ip link set "vh${victim#s}" down || fail "cannot take the link of $victim down"
  start=$(now)
  dd if=/tmp/delta of=$dev bs=64k seek=128 oflag=direct 2>"$W/dd.err" || fail "write with $victim away failed: $(cat "$W/dd.err")"
  ! grep -qi error "$W/dd.err" || fail "writer reported: $(cat "$W/dd.err")"
  say "link of $victim down; 4 MiB written without I/O error in $(since "$start")s"
  wait_for 30 "the manager to show mirrored disk 1's leg on $victim failed" md_leg_failed $v 1 "$victim"
  # The link comes back only once every leg on the victim has failed and
  # the manager holds it: a failure reported after the victim speaks again
  # is a live server's leg failing, which is replaced at once.
  wait_for 60 "the manager to show all $n legs on $victim failed" legs_on_failed $v "$victim" "$n"
  [ -z "$(vsky rebuild list --all | awk '$4 == "queued" || $4 == "running"')" ] \
    || fail "legs of $victim were replaced within its grace period: $(vsky rebuild list | tr '\n' ' ')"
  say "mirrored disk 1's leg on $victim failed in the manager and held: no rebuild during the grace period"
  w0=$(victim_written_mib $v "$victim")
  ip link set "vh${victim#s}" up || fail "cannot bring the link of $victim back"
  start=$(now)
  wait_for 60 "the legs of $victim to be active again, in place" legs_on_active $v "$victim"
  wait_for 60 "the mirrors to catch up (all legs A, idle)" mirrors_in_sync
  took=$(since "$start")
  w1=$(victim_written_mib $v "$victim")
  caught=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.1f", b - a}')
  full=$((n * 7))
  say "link of $victim back: legs active in place, mirrors in sync after ${took}s; catch-up wrote ${caught} MiB to its $n legs (a full resync writes ${full} MiB)"
  awk -v c="$caught" -v f="$full" 'BEGIN {exit !(c <= 8 && c < f / 2)}' \
    || fail "catch-up wrote ${caught} MiB to $victim's legs: not a bitmap catch-up (4 MiB changed, full ${full} MiB)"
  [ -z "$(vsky rebuild list --all | awk 'NR > 1 && $1 ~ /^[0-9]+$/')" ] \
    || fail "a rebuild ran although $victim came back in time: $(vsky rebuild list --all | tr '\n' ' ')"
  vsky events | grep -q ' legs_returned ' || fail "no legs_returned event: $(vsky events | tail -5 | tr '\n' ' ')"
  [ "$(dev_sum $dev 48)" = "$(file_sum /tmp/pat)" ] || fail "data read back after the catch-up differs"
  # Only the caught-up copy of mirrored disk 1 is left once $other dies.
  kill -9 "$(cat "$W/$other.pid")"
  rm -f "$W/$other.pid"
  [ "$(dev_sum $dev 48)" = "$(file_sum /tmp/pat)" ] \
    || fail "with $other dead, the caught-up legs of $victim do not carry the data"
  say "killed $other: all 48 MiB (with the 4 MiB written while $victim was away) read back from the caught-up legs"
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL link of $victim down during a 4 MiB O_DIRECT write (no I/O error): its written leg failed, held (no rebuild) in the grace period; link back: legs active in place after ${took}s, catch-up wrote ${caught} MiB to them instead of ${full} MiB, no rebuild job, legs_returned event; $other then killed: sha256 of all 48 MiB matches"
}

event_seen() { vsky events | grep -q " $1 "; }
# event_by_seen KIND AGENT: an event of KIND reported by AGENT ("… by AGENT:").
event_by_seen() { vsky events | grep " $1 " | grep -q " by $2: "; }
# leg_location VOLUME MD LEG: "disk_path offset_bytes" of one leg.
leg_location() {
  vsky --json volume show "$1" | awk -F'"' -v m="$2" -v l="$3" '
    /"index":/ { md = $0; gsub(/[^0-9]/, "", md); leg = -1 }
    /"server":/ { leg++ }
    md == m && leg == l && /"disk_path":/ { path = $4 }
    md == m && leg == l && /"offset_bytes":/ { off = $3; gsub(/[^0-9]/, "", off) }
    END { print path, off }'
}

# cluster-scrub: the manager's scrub patrol asks the head to check the
# mirrors of an attached volume (dm-raid `check`); a clean mirror is
# reported clean, and after 64 KiB of one leg's data are overwritten behind
# the mirror's back, the next scrub reports the mismatch (event and metric).
# Then a rebuild that needs the check's disks preempts it: the head
# interrupts the running check (dm-raid `idle`), the mirror stays whole.
# Checks and copies run at 1 MiB/s here, so a check lasts about 7 s.
scenario_scrub() {
  local v=vs dev=/dev/mapper/vsky-vs loc path off mism p=vp mine z
  MANAGER_SCRUB_INTERVAL=3s
  RESYNC_RATE=1MiB
  cluster_up 3 64
  vsky volume create $v --size 7MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=7 2>/dev/null
  dd if=/tmp/pat of=$dev bs=1M oflag=direct 2>"$W/dd.err" || fail "write failed: $(cat "$W/dd.err")"
  # (While detached right after its creation, the volume may have been
  # compared by a storage agent: wait for the head's own verdict.)
  wait_for 60 "a clean dm-raid check of $v by the head" event_by_seen scrub_done head
  ! event_seen scrub_mismatch || fail "a scrub of identical legs reported mismatches: $(vsky events | grep scrub_)"
  vsky events | grep ' scrub_started ' | grep -q "on head: its head runs dm-raid's check" \
    || fail "the manager did not ask the head for a dm-raid check: $(vsky events | grep scrub_)"
  say "patrol: the manager asked the head for dm-raid checks of $v: clean ($(vsky events | grep -c ' scrub_done ') scrubs so far)"
  loc=$(leg_location $v 0 1)
  path=${loc% *}
  off=${loc#* }
  [ -f "$path" ] && [ -n "$off" ] || fail "cannot find leg 0/1 of $v on disk ($loc)"
  # 1 MiB into the leg's data area (past its 1 MiB metadata area).
  dd if=/dev/urandom of="$path" bs=64k count=1 seek=$(((off + 2097152) / 65536)) conv=notrunc 2>/dev/null \
    || fail "cannot overwrite part of $path"
  say "overwrote 64 KiB of leg 0/1's data in $path behind the mirror's back"
  wait_for 60 "the head's next check to report the mismatch" event_by_seen scrub_mismatch head
  mism=$(vsky events | grep ' scrub_mismatch ' | tail -1)
  say "$(echo "$mism" | cut -c1-200)"
  wget -q -O - --header "Authorization: Bearer $(cat "$W/admin.token")" http://127.0.0.1:8080/metrics \
    | grep -q '^vsky_scrub_mismatches [1-9]' || fail "the scrub_mismatches metric did not count it"

  # A detached volume on the third disk and one of $v's: a repair of its
  # leg on the third disk reads and writes exactly $v's two disks.
  vsky volume create $p --size 7MiB --replicas 2 >/dev/null || fail "vsky volume create $p failed"
  mine=" $(legs $v | awk '{print $5}' | tr '\n' ' ')"
  z=$(legs $p | awk -v mine="$mine" 'index(mine, " " $5 " ") == 0 {print $5}')
  [ -n "$z" ] || fail "$p has no leg off $v's disks ($(legs $p | tr '\n' ';')): cannot set up the preemption"
  legs $v >"$W/legs-before"
  wait_for 60 "a dm-raid check of $v to run" mirror_checking
  vsky disk fail "$z" >/dev/null || fail "vsky disk fail $z failed"
  say "disk $z (a leg of $p) failed while the head checked $v: its repair needs $v's disks"
  wait_for 20 "the head to interrupt the check" grep -q "scrub interrupted" "$W/head.log"
  wait_for 20 "$v's mirror to be idle with both legs in sync" mirrors_in_sync
  wait_for 120 "the repair of $p" no_rebuild_active
  # Preempted, not degraded: $v kept its legs, and nothing rebuilt them.
  legs $v | cmp -s - "$W/legs-before" || fail "$v's legs changed: $(legs $v | tr '\n' ';')"
  ! vsky rebuild list --all | grep -q " $v " || fail "$v was rebuilt: $(vsky rebuild list --all | grep " $v ")"
  say "the check of $v was interrupted for $p's repair (dm-raid idle), $v stayed in sync, $p was repaired"
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL scrub patrol (manager --scrub-interval 3s, under the per-disk limit): the head ran dm-raid checks when the manager asked; identical legs reported clean; after 64 KiB of one leg were overwritten on its disk, the next scrub reported the mismatch (event scrub_mismatch, metric vsky_scrub_mismatches); a repair needing the checked mirror's disks preempted the running check (dm-raid idle), the mirror stayed in sync"
}
mirror_checking() { dmsetup status | grep " raid raid1 " | grep -q " check "; }
no_rebuild_active() { vsky rebuild list | grep -q '^No rebuilds'; }

leads() { [ "$(role_of "$1")" = leader ]; }
rebuild_running() { vsky rebuild list | awk '$4 == "running" {f = 1} END {exit !f}'; }

# cluster-ha-rebuild: two managers on etcd; a storage server dies, its legs
# are being rebuilt (rate-limited so the rebuild takes a while), and the
# leading manager is killed -9 in the middle. The standby takes over, the
# rebuild completes under it, and the data is intact.
scenario_ha_rebuild() {
  local v=vh dev=/dev/mapper/vsky-vh victim n start took leader port standby done
  HA=1
  RESYNC_RATE=1MiB
  cluster_up 4 64
  vsky volume create $v --size 48MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=48 2>/dev/null
  victim=$(legs $v | awk '$1 == 0 && $2 == 1 {print $3}')
  n=$(legs $v | awk -v s="$victim" '$3 == s' | wc -l)
  kill_server_during_write $v 48 "$victim"
  wait_for 120 "a rebuild of $victim's legs to run" rebuild_running
  leader=
  for port in 8080 8081; do
    [ "$(role_of $port)" = leader ] && leader=$port
  done
  [ -n "$leader" ] || fail "no manager reports itself leader: 8080 $(role_of 8080), 8081 $(role_of 8081)"
  if [ "$leader" = 8080 ]; then standby=8081; kill -9 "$(cat "$W/manager1.pid")"; rm -f "$W/manager1.pid"
  else standby=8080; kill -9 "$(cat "$W/manager2.pid")"; rm -f "$W/manager2.pid"; fi
  start=$(now)
  say "a rebuild is running; killed -9 the leading manager (:$leader)"
  wait_for 30 "the standby (:$standby) to lead" leads "$standby"
  say "manager :$standby leads $(since "$start")s after the kill"
  wait_for 180 "the $n legs of $victim to be rebuilt under the new leader" all_active_without $v "$victim"
  took=$(since "$start")
  wait_for 60 "the mirrors to be in sync" mirrors_in_sync
  vsky rebuild list --all | sed "s/^/$P:   /"
  done=$(vsky rebuild list --all | awk '$4 == "done"' | wc -l)
  [ "$done" = "$n" ] || fail "$done rebuilds done for $n lost legs (a rebuild was lost or run twice)"
  [ "$(dev_sum $dev 48)" = "$(file_sum /tmp/pat)" ] || fail "data read back after the failover differs"
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL two managers on etcd; $victim killed under write load (no I/O error); leader :$leader killed -9 during the rebuild; :$standby took over and the $n rebuilds completed (${took}s after the kill), exactly $n done, mirrors in sync, sha256 of 48 MiB matches"
}

# demo: the README's main job, with human-readable progress.
scenario_demo() {
  local v=demo dev=/dev/mapper/vsky-demo victim n sum start
  # Kernel messages would interleave with the progress lines.
  echo 1 >/proc/sys/kernel/printk
  say "starting a local VastSky cluster: manager, 4 storage servers (each in its own network namespace), 1 head"
  cluster_up 4 64
  vsky server list | sed "s/^/$P:   /"
  say "creating a 2-way mirrored volume of 64 MiB (${CHUNK%MiB} MiB chunks, legs on different servers)"
  vsky volume create $v --size 64MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  vsky volume show $v | sed "s/^/$P:   /"
  say "attaching it to the head: the head's agent imports every leg over NBD and builds dm-raid raid1 mirrors + linear"
  attach_wait $v
  dmsetup ls | awk '$1 == "vsky-demo"' | sed "s/^/$P:   kernel device: /"
  dd if=/dev/urandom of=/tmp/pat bs=1M count=64 2>/dev/null
  sum=$(file_sum /tmp/pat)
  say "writing 64 MiB of random data (O_DIRECT) to $dev"
  start=$(now)
  dd if=/tmp/pat of=$dev bs=1M oflag=direct 2>/dev/null || fail "write failed"
  say "written in $(since "$start")s; reading it back (O_DIRECT)"
  [ "$(dev_sum $dev 64)" = "$sum" ] || fail "read-back differs"
  say "read back: sha256 $(echo "$sum" | cut -c1-12)… matches"
  dd if=/dev/urandom of=/tmp/pat bs=1M count=64 2>/dev/null
  sum=$(file_sum /tmp/pat)
  victim=$(legs $v | awk '$1 == 0 && $2 == 0 {print $3}')
  n=$(legs $v | awk -v s="$victim" '$3 == s' | wc -l)
  say "rewriting 64 MiB and killing storage server $victim (kill -9; it holds $n legs) in the middle of it"
  kill_server_during_write $v 64 "$victim"
  wait_for 30 "the manager to show $victim's legs failed" legs_failed_of $v "$victim"
  say "the head reported $victim's legs dead; the volume is degraded but serving:"
  vsky volume show $v | sed "s/^/$P:   /"
  [ "$(dev_sum $dev 64)" = "$sum" ] || fail "data read back after the failure differs"
  say "read back after the failure: sha256 $(echo "$sum" | cut -c1-12)… matches"
  say "after the grace period (${GRACE:-10s} here) the manager replaces $victim's legs from the pool; the head resyncs them online:"
  start=$(now)
  wait_for 180 "the legs of $victim to be rebuilt elsewhere" all_active_without $v "$victim"
  wait_for 30 "the mirrors to be in sync" mirrors_in_sync
  say "redundancy restored $(since "$start")s after the failure was reported:"
  vsky rebuild list --all | sed "s/^/$P:   /"
  vsky events | tail -8 | sed "s/^/$P:   /"
  [ "$(dev_sum $dev 64)" = "$sum" ] || fail "data read back after the rebuild differs"
  say "read back after the rebuild: sha256 $(echo "$sum" | cut -c1-12)… matches"
  cluster_down
  echo "LAB-DETAIL 4 servers + head; 64 MiB 2-way volume attached, written, verified; $victim killed mid-write without I/O error; its legs rebuilt elsewhere online; data intact throughout"
}

# cluster-xapi: the SMAPIv3 plugins as xapi drives them, on the real kernel.
# scripts/install-plugins put them under /usr/libexec/xapi-storage-script at
# initramfs build time; xapi-tests (crates/xapi-tests) plays xapi: SR.create
# + SR.attach, Volume.create, then VM start (Datapath.open, attach, activate
# twice) and checks the answered /dev/mapper device is a block device of the
# volume's size; writes and reads back 1 MiB patterns at three offsets; VM
# shutdown (deactivate twice, detach, close) must leave no device and the
# volume unattached; with the volume attached to another head (other-head,
# added by the admin with no agent running: the storage servers run
# --storage-only and may hold no attachment), activate here must fail with
# Activated_on_another_host and deactivate/detach here must leave that
# attachment alone; a second start reads the patterns back.
# This script checks around it what xapi-tests cannot see: the kernel state.
scenario_xapi() {
  local start out dm0 nbd0 rc took n sampler mirrors plugins=/usr/libexec/xapi-storage-script
  HEAD_API=1
  cluster_up 2 128
  # The head's local API answers before the plugin is pointed at it.
  wait_for 30 "the head agent's local API on 127.0.0.1:10810" head_api_up
  # As packaging/etc/vsky/datapath.json, with the lab's token file.
  printf '{"agent_url": "http://127.0.0.1:10810", "token_file": "%s"}\n' "$W/agent-api.token" >"$W/datapath.json"
  [ -x $plugins/datapath/vsky/Datapath.activate ] || fail "the datapath plugin is not installed under $plugins (scripts/install-plugins)"
  vsky server add other-head --address 127.0.0.1:9 >/dev/null || fail "vsky server add other-head failed"
  dm0=$(dm_count)
  nbd0=$(nbd_connected)
  start=$(now)
  # What the kernel holds while xapi-tests runs: proves the device was the
  # head's real dm-raid assembly, not just a path in an answer.
  (while :; do
    echo "$(dmsetup status 2>/dev/null | grep -c ' raid raid1 ') $(ls /dev/mapper | grep -c '^vsky-[^+]*$')"
    sleep 0.3
  done >"$W/seen") &
  sampler=$!
  # 32 MiB at 2 replicas over two 128 MiB disks (8 MiB chunks, less the
  # dm-raid metadata each: 5 mirrors). Bounded like every wait here: each
  # plugin call may take up to 150 s, a hung datapath must not use up the
  # lab's own timeout.
  timeout 300 xapi-tests datapath --plugins $plugins --state-dir "$W/sr" \
    --manager http://127.0.0.1:8080 --token-file "$W/admin.token" \
    --datapath-config "$W/datapath.json" --size $((32 << 20)) --other-server other-head >"$W/xapi-tests.out" 2>&1
  rc=$?
  kill "$sampler"
  sed "s/^/$P:   xapi-tests: /" "$W/xapi-tests.out"
  [ "$rc" = 0 ] || fail "xapi-tests datapath failed (exit $rc; 143 = killed after 300 s): $(grep -v ': ok ' "$W/xapi-tests.out" | head -3 | tr '\n' ' ')"
  out=$(grep -c ': ok ' "$W/xapi-tests.out")
  [ "$out" = 2 ] || fail "xapi-tests datapath exited 0 but reported $out of 2 steps ok"
  took=$(since "$start")
  mirrors=$(awk '$1 > m {m = $1} END {print m + 0}' "$W/seen")
  [ "$mirrors" -gt 0 ] && awk '$2 > 0 {f = 1} END {exit !f}' "$W/seen" \
    || fail "no dm-raid mirror or /dev/mapper/vsky- device was ever seen while xapi-tests ran"
  # Every start was undone by its shutdown: nothing assembled, nothing
  # connected, no vsky device node, no volume left attached in the manager.
  [ "$(dm_count)" = "$dm0" ] && [ "$(nbd_connected)" = "$nbd0" ] \
    || fail "kernel devices left after xapi-tests: $(dm_count) dm (was $dm0), $(nbd_connected) NBD connected (was $nbd0)"
  ! ls /dev/mapper | grep -q '^vsky-' || fail "device nodes left: $(ls /dev/mapper | grep '^vsky-' | tr '\n' ' ')"
  [ "$(vsky --json volume list | tr -d ' \n')" = "[]" ] || fail "xapi-tests left volumes behind: $(vsky volume list | tr '\n' ' ')"
  # The head really assembled through its local API, at least once per VM
  # start (a later reconcile may log it again).
  n=$(grep -c 'volume assembled' "$W/head.log")
  [ "$n" -ge 2 ] || fail "the head assembled the volume $n times; expected one per VM start (2)"
  cluster_down
  echo "LAB-DETAIL xapi-tests datapath through the installed plugins in ${took}s: VM start (open/attach/activate) → $mirrors dm-raid raid1 mirrors under block device /dev/mapper/vsky-<vdi> of 32 MiB, 3 MiB written and read back; VM shutdown (deactivate ×2, detach, close) → device, dm and NBD gone; activate refused (Activated_on_another_host) while other-head holds it, other-head kept it; restart → data intact; nothing left attached"
}
head_api_up() { wget -q -O /dev/null http://127.0.0.1:10810/v1/health; }

# cluster-busy-detach (issue #14 item 1): the head agent's
# local API (the datapath plugin's deactivate) detaches in two phases on the
# real kernel. A device held open is refused (HTTP 409 busy) and nothing
# changes in the manager; once closed, the detach answers only after the
# devices are gone and the manager has released the volume (so another
# host could attach at once), and dm-raid's last superblock writes land:
# no "super_written gets error", no leg failed.
api_post() { # attach|detach VOLUME: the head agent's local API
  wget -O "$W/api.out" --header "Authorization: Bearer $(cat "$W/agent-api.token")" \
    --post-data '' "http://127.0.0.1:10810/v1/volumes/$2/$1" 2>"$W/api.err"
}
attachment_of() { # VOLUME: "head attached", "head releasing" or "-"
  vsky --json volume show "$1" | tr -d ' \n' | sed -n \
    -e 's/.*"attached_to":"\([^"]*\)".*"attachment_state":"\([a-z]*\)".*/\1 \2/p' \
    -e 's/.*"attached_to":null.*/-/p'
}
scenario_busy_detach() {
  local v=vq dev=/dev/mapper/vsky-vq holder start took errs0 errs
  HEAD_API=1
  cluster_up 2 64
  wait_for 30 "the head agent's local API on 127.0.0.1:10810" head_api_up
  vsky volume create $v --size 24MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  api_post attach $v || fail "local attach of $v failed: $(cat "$W/api.err")"
  [ -b $dev ] || fail "$dev is not a block device after the local attach answered"
  wait_for 60 "mirrors of $v in sync" mirrors_in_sync
  dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
  dd if=/tmp/pat of=$dev bs=1M oflag=direct 2>"$W/dd.err" || fail "O_DIRECT write failed: $(cat "$W/dd.err")"
  errs0=$(dmesg | grep -c 'super_written gets error')
  # A process holds the device open, as a VM's blkback would.
  sleep 600 <$dev &
  holder=$!
  if api_post detach $v; then fail "the detach of a device held open succeeded"; fi
  grep -q 409 "$W/api.err" || fail "the busy detach did not answer 409: $(cat "$W/api.err")"
  [ "$(attachment_of $v)" = "head attached" ] || fail "a refused detach changed the manager: $(attachment_of $v)"
  [ -b $dev ] || fail "a refused detach tore the device down"
  kill $holder; wait $holder 2>/dev/null
  start=$(now)
  api_post detach $v || fail "the detach failed once the device was closed: $(cat "$W/api.err")"
  took=$(since "$start")
  # Answered only once released: nothing left to wait for.
  is_gone $dev || fail "the detach answered while $dev still exists"
  [ "$(attachment_of $v)" = "-" ] || fail "the detach answered before the manager released $v: $(attachment_of $v)"
  wait_for 10 "every dm device and NBD connection of $v to go" nothing_assembled
  errs=$(dmesg | grep -c 'super_written gets error')
  [ "$errs" = "$errs0" ] || fail "dm-raid's superblock writes failed during the teardown ($((errs - errs0)) errors): the legs were cut before the head let go"
  ! legs $v | awk '$4 != "active"' | grep -q . || fail "legs not active after the detach: $(legs $v | awk '$4 != "active"' | tr '\n' ' ')"
  # The data is intact under the new names.
  vsky volume attach $v head >/dev/null || fail "reattach failed"
  wait_for 60 "/dev/mapper/vsky-$v as a block device" is_block $dev
  [ "$(dev_sum $dev 8)" = "$(file_sum /tmp/pat)" ] || fail "data read back after the two-phase detach differs"
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL local-API detach of a device held open: 409 busy, manager unchanged, device kept; once closed, detach answered in ${took}s with devices gone and the volume released in the manager; no dm-raid superblock write error, all legs active, data intact after reattach"
}

# cluster-bench (a benchmark, not a test; only when named): sequential
# O_DIRECT throughput of a mirrored volume against one raw leg, same chunk
# sizes, same run. The raw leg is one mirror's /dev/nbdN, read through its
# data area; for writes a second, sacrificial volume's leg is used (writing
# under a live mirror desynchronises it, so that volume is deleted after).
rate_mib_s() { # MIB SECONDS
  awk -v m="$1" -v s="$2" 'BEGIN { if (s <= 0) s = 0.01; printf "%.1f", m / s }'
}
timed_dd() { # IF OF BS COUNT SKIP SEEK FLAGS -> seconds
  local start
  start=$(now)
  dd if="$1" of="$2" bs="$3" count="$4" skip="$5" seek="$6" $7 2>"$W/dd.err" || fail "dd $1 → $2 failed: $(cat "$W/dd.err")"
  since "$start"
}
leg_device() { # VOLUME: the /dev/nbdN of leg 0 of mirrored disk 0
  local f disk
  disk=$(legs "$1" | awk '$1 == 0 && $2 == 0 {print $5}')
  for f in /sys/block/nbd*/backend; do
    case "$(cat "$f" 2>/dev/null)" in
      "vsky:$1:0:"*) [ "$(backend_disk "$f")" = "$disk" ] && { echo "/dev/$(basename "$(dirname "$f")")"; return 0; } ;;
    esac
  done
  return 1
}
scenario_bench() {
  local rounds=24 mib=7 i t mw mr rw rr raw_w raw_r
  cluster_up 2 256
  vsky volume create vb --size 7MiB --replicas 2 >/dev/null || fail "create vb failed"
  vsky volume create vr --size 7MiB --replicas 2 >/dev/null || fail "create vr failed"
  attach_wait vb
  attach_wait vr
  raw_r=$(leg_device vb) || fail "no NBD device for vb's first leg"
  raw_w=$(leg_device vr) || fail "no NBD device for vr's first leg"
  # Each volume is one mirrored disk of 7 MiB of data; the raw leg's data
  # area starts 1 MiB into the chunk (after the dm-raid metadata area).
  t=0; for i in $(seq 1 $rounds); do t=$(awk -v a="$t" -v b="$(timed_dd /dev/zero /dev/mapper/vsky-vb 1M $mib 0 0 oflag=direct)" 'BEGIN{print a+b}'); done
  mw=$(rate_mib_s $((rounds * mib)) "$t")
  t=0; for i in $(seq 1 $rounds); do t=$(awk -v a="$t" -v b="$(timed_dd /dev/zero "$raw_w" 1M $mib 0 1 oflag=direct)" 'BEGIN{print a+b}'); done
  rw=$(rate_mib_s $((rounds * mib)) "$t")
  t=0; for i in $(seq 1 $rounds); do t=$(awk -v a="$t" -v b="$(timed_dd /dev/mapper/vsky-vb /dev/null 1M $mib 0 0 iflag=direct)" 'BEGIN{print a+b}'); done
  mr=$(rate_mib_s $((rounds * mib)) "$t")
  t=0; for i in $(seq 1 $rounds); do t=$(awk -v a="$t" -v b="$(timed_dd "$raw_r" /dev/null 1M $mib 1 0 iflag=direct)" 'BEGIN{print a+b}'); done
  rr=$(rate_mib_s $((rounds * mib)) "$t")
  # vb stays attached meanwhile, so wait only for vr's own device.
  vsky volume detach vr >/dev/null || fail "detach vr failed"
  wait_for 60 "/dev/mapper/vsky-vr to vanish" is_gone /dev/mapper/vsky-vr
  vsky volume delete vr >/dev/null || fail "delete vr failed"
  detach_wait vb
  echo "LAB-DETAIL bench (1 MiB O_DIRECT, ${rounds}×${mib} MiB): write mirror ${mw} MiB/s vs raw leg ${rw} MiB/s (ratio $(awk -v a="$mw" -v b="$rw" 'BEGIN{printf "%.2f", a/b}')); read mirror ${mr} MiB/s vs raw leg ${rr} MiB/s (ratio $(awk -v a="$mr" -v b="$rr" 'BEGIN{printf "%.2f", a/b}'))"
}

# job_log: replays the manager's event log (rebuild_started, then
# rebuild_done or rebuild_failed per job) and checks that no disk ever took
# part in two running resyncs (as source or target). Prints "JOBS PEAK"
# (jobs started, most running at once); fails on a disk in two.
job_log() {
  vsky events --limit 1000 | awk '
    function release(j,   d) {
      if (!(j in disks)) return
      split(disks[j], d, " "); delete busy[d[1]]; if (d[2] != "") delete busy[d[2]]
      delete disks[j]; running--
    }
    $5 == "rebuild_started" {
      j = $6; release(j); n = 0; t = ""; src = ""
      for (i = 7; i <= NF; i++) if ($i ~ /:disk#[0-9]+#[0-9]+,?$/) {
        n++; split($i, p, "#"); if (n == 2) t = p[2]; if (n == 3) src = p[2]
      }
      if (t in busy) { print "disk " t " in " busy[t] " and " j > "/dev/stderr"; bad = 1 }
      if (src != "" && src in busy) { print "disk " src " in " busy[src] " and " j > "/dev/stderr"; bad = 1 }
      busy[t] = j; if (src != "") busy[src] = j; disks[j] = t " " src
      started++; if (++running > peak) peak = running
    }
    $5 == "rebuild_done" || $5 == "rebuild_failed" { release($6) }
    END { print started + 0, peak + 0; exit bad }'
}
# legs_by_disk VOLUME: "count disk_id" per disk holding legs, most first.
legs_by_disk() { legs "$1" | awk '{print $5}' | sort | uniq -c | sort -rn; }
# no_leg_on VOLUME DISK_ID: every leg of VOLUME is active, none on the disk.
no_leg_on() {
  legs "$1" >"$W/legs" || return 1
  [ -s "$W/legs" ] || return 1
  awk -v d="$2" '$4 != "active" || $5 == d {bad = 1} END {exit bad}' "$W/legs"
}

# cluster-disk-rebuild: one disk that holds legs of several mirrored disks
# is declared failed (as a health check would) while its volume is
# attached. Its mirrored disks are rebuilt in parallel across the pool by
# the head, and the manager's job log (events) shows no disk in two
# resyncs at once; `vsky disk fail --wait` watches it to the end.
scenario_disk_rebuild() {
  local v=vd dev=/dev/mapper/vsky-vd victim n start took jobs peak log
  CHUNK=4MiB DISKS=2
  cluster_up 5 32
  # 20 mirrored disks of 3 MiB over 10 disks: about 4 legs per disk.
  vsky volume create $v --size 60MiB --replicas 2 >/dev/null || fail "vsky volume create failed"
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=60 2>/dev/null
  dd if=/tmp/pat of=$dev bs=1M oflag=direct 2>"$W/dd.err" || fail "write failed: $(cat "$W/dd.err")"
  legs_by_disk $v >"$W/by-disk"
  n=$(head -1 "$W/by-disk" | awk '{print $1}')
  victim=$(head -1 "$W/by-disk" | awk '{print $2}')
  [ "$n" -ge 3 ] || fail "the fullest disk holds $n legs; the scenario needs several"
  say "disk $victim holds legs of $n mirrored disks; declaring it failed"
  start=$(now)
  vsky disk fail "$victim" --wait --wait-timeout 300s >"$W/fail-wait.out" 2>&1 || fail "vsky disk fail $victim --wait failed: $(tail -3 "$W/fail-wait.out" | tr '\n' ' ')"
  took=$(since "$start")
  sed "s/^/$P:   /" "$W/fail-wait.out" | tail -5
  wait_for 60 "every leg active and none on disk $victim" no_leg_on $v "$victim"
  vsky rebuild list --all | sed "s/^/$P:   /"
  log=$(job_log 2>"$W/job-log.err") || fail "the job log shows a disk in two resyncs: $(head -3 "$W/job-log.err" | tr '\n' ' ')"
  jobs=${log% *} peak=${log#* }
  [ "$jobs" -ge "$n" ] || fail "$jobs rebuilds started, expected at least $n"
  [ "$peak" -ge 2 ] || fail "at most $peak rebuild ran at once: not parallel"
  wait_for 30 "the kernel mirrors to be in sync on every leg" mirrors_in_sync
  [ "$(dev_sum $dev 60)" = "$(file_sum /tmp/pat)" ] || fail "data read back after the rebuild differs"
  detach_wait $v
  cluster_down
  echo "LAB-DETAIL disk $victim (legs of $n mirrored disks) declared failed under an attached volume: $jobs rebuilds, up to $peak at once across 10 disks, the job log (events) shows no disk in two resyncs; \`vsky disk fail --wait\` returned after ${took}s; mirrors all A; sha256 of 60 MiB matches"
}

# cluster-drain: a storage server is drained while an O_DIRECT writer keeps
# rewriting the attached volume. Each of its legs gets a new chunk that
# syncs as an extra leg of its mirror (the head grows the running dm-raid,
# then drops the old leg), and a detached volume's legs are copied
# server-to-server. The writer sees no error, the server ends with no leg,
# its agent is stopped and it is removed, and both volumes read back intact.
scenario_drain() {
  local v=vm w=vn dev=/dev/mapper/vsky-vm start took rounds n nw writer victim i
  cluster_up 4 64
  vsky volume create $v --size 35MiB --replicas 2 >/dev/null || fail "vsky volume create $v failed"
  vsky volume create $w --size 14MiB --replicas 2 >/dev/null || fail "vsky volume create $w failed"
  # The detached volume's data: written through the head, then detached.
  dd if=/dev/urandom of=/tmp/patw bs=1M count=14 2>/dev/null
  attach_wait $w
  dd if=/tmp/patw of=/dev/mapper/vsky-$w bs=1M oflag=direct 2>"$W/dd.err" || fail "write to $w failed"
  detach_wait $w
  attach_wait $v
  dd if=/dev/urandom of=/tmp/pat bs=1M count=35 2>/dev/null
  # The drained server: one holding legs of both volumes, so both the
  # head's online move and the storage agents' copy are exercised.
  victim=
  for i in 1 2 3 4; do
    n=$(legs $v | awk -v s="s$i" '$3 == s' | wc -l)
    nw=$(legs $w | awk -v s="s$i" '$3 == s' | wc -l)
    if [ "$n" -ge 1 ] && [ "$nw" -ge 1 ]; then victim=s$i; break; fi
  done
  [ -n "$victim" ] || fail "no server holds legs of both $v and $w: $(legs $v | tr '\n' ';') / $(legs $w | tr '\n' ';')"
  # The writer rewrites the pattern until told to stop.
  rm -f "$W/stop" "$W/rounds"
  (while [ ! -f "$W/stop" ]; do
     dd if=/tmp/pat of=$dev bs=64k oflag=direct 2>"$W/dd.err" || { echo FAIL >>"$W/rounds"; break; }
     echo ok >>"$W/rounds"
   done) &
  writer=$!
  sleep 1
  start=$(now)
  vsky server drain "$victim" --wait --wait-timeout 300s >"$W/drain.out" 2>&1 || fail "vsky server drain "$victim" --wait failed: $(tail -3 "$W/drain.out" | tr '\n' ' ')"
  took=$(since "$start")
  sed "s/^/$P:   /" "$W/drain.out" | tail -5
  kill -0 "$writer" 2>/dev/null || fail "the writer stopped during the drain: $(cat "$W/dd.err")"
  touch "$W/stop"
  wait "$writer"
  ! grep -q FAIL "$W/rounds" || fail "the writer saw an I/O error: $(cat "$W/dd.err")"
  rounds=$(grep -c ok "$W/rounds")
  say "drain of $victim ($n legs of $v attached, $nw of $w detached) done in ${took}s; the writer rewrote $v $rounds times meanwhile, no error"
  [ -z "$(legs $v | awk -v s="$victim" '$3 == s || $4 != "active"')" ] || fail "$v still has legs on $victim or not active: $(legs $v | tr '\n' ';')"
  [ -z "$(legs $w | awk -v s="$victim" '$3 == s || $4 != "active"')" ] || fail "$w still has legs on $victim or not active: $(legs $w | tr '\n' ';')"
  vsky rebuild list --all | sed "s/^/$P:   /"
  # The head drops each moved leg from its mirror once the manager lists
  # the move done, which can be just after `--wait` returned.
  wait_for 30 "every kernel mirror to hold exactly its two legs, in sync" mirrors_in_sync_with 2
  # As an admin retires a server: stop its agent, then remove it.
  kill -9 "$(cat "$W/$victim.pid")"
  rm -f "$W/$victim.pid"
  vsky server remove "$victim" >/dev/null || fail "vsky server remove $victim refused after the drain"
  [ "$(dev_sum $dev 35)" = "$(file_sum /tmp/pat)" ] || fail "$v read back after the drain differs"
  detach_wait $v
  attach_wait $w
  [ "$(dev_sum /dev/mapper/vsky-$w 14)" = "$(file_sum /tmp/patw)" ] || fail "$w (moved while detached) read back differs"
  detach_wait $w
  cluster_down
  echo "LAB-DETAIL server $victim drained under an O_DIRECT rewrite loop ($rounds rounds, no I/O error) in ${took}s: $n legs of the attached volume moved online by the head (mirror grows to 3 legs, then drops the old one), $nw legs of a detached volume copied server-to-server; $victim then held no leg, its agent was stopped and it was removed: both volumes' sha256 match"
}

# lab/run passes LAB_DEBUG=1 as vsky.debug=1 on the kernel command line.
debug_dump() { grep -q 'vsky\.debug=1' /proc/cmdline && DUMP_LINES=60 dump; }

case $scenario in
  cluster-attach) scenario_attach ;;
  cluster-kill-server) scenario_kill_server ;;
  cluster-agent-restart) scenario_agent_restart ;;
  cluster-rebuild) scenario_rebuild ;;
  cluster-disk-rebuild) scenario_disk_rebuild ;;
  cluster-drain) scenario_drain ;;
  cluster-return) scenario_return ;;
  cluster-scrub) scenario_scrub ;;
  cluster-ha-rebuild) scenario_ha_rebuild ;;
  cluster-xapi) scenario_xapi ;;
  cluster-bench) scenario_bench ;;
  cluster-busy-detach) scenario_busy_detach ;;
  demo) scenario_demo ;;
  *) echo "LAB-WHY unknown cluster scenario '$scenario'"; exit 2 ;;
esac
debug_dump
cluster_down
exit 0
