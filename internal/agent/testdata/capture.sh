#!/bin/bash
# Captures the fixture tree under this directory from the running machine,
# trimmed: ./capture.sh OUT (as root, for the two tmpfs mounts; IMWATCH is
# an imwatch binary). It starts two imwatch agents (PIDs 4242 and 4243 in
# the fixture), a sleep (PID 1 in the fixture, which holds the host's mount
# table), TCP sockets in a few states on IPv4 and IPv6, and two tmpfs
# stacked on a mount point with a space in its name; then copies what the
# collectors read and cuts what they do not need. Regenerate the golden
# file afterwards: go test ./internal/agent -run TestGolden -update
set -euo pipefail
out=$1
imwatch=${IMWATCH:?set IMWATCH to an imwatch binary}
rm -rf "$out"; mkdir -p "$out/proc/net" "$out/proc/pressure" "$out/sys"
cleanup() {
	umount "/tmp/imw fix" 2>/dev/null || true; umount "/tmp/imw fix" 2>/dev/null || true; rmdir "/tmp/imw fix" 2>/dev/null || true
	[[ -n ${ag:-} ]] && kill "$ag" 2>/dev/null || true
	[[ -n ${py:-} ]] && kill "$py" 2>/dev/null || true
	[[ -n ${ag2:-} ]] && kill "$ag2" 2>/dev/null || true
	[[ -n ${sl:-} ]] && kill "$sl" 2>/dev/null || true
}
trap cleanup EXIT
# sockets: a v6 listener with an established connection holding unread bytes, a v4 listener
python3 -u - > /tmp/mkfix.ports <<'PY' &
import socket, time
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 0)); l6.listen(8)
c6 = socket.create_connection(("::1", l6.getsockname()[1])); a6, _ = l6.accept()
c6.send(b"x" * 100)
l4 = socket.socket(); l4.bind(("127.0.0.1", 0)); l4.listen(8)
c4 = socket.create_connection(("127.0.0.1", l4.getsockname()[1]))
print("%04X %04X" % (l6.getsockname()[1], l4.getsockname()[1]), flush=True)
time.sleep(30)
PY
py=$!
"$imwatch" agent --listen 127.0.0.1:0 >/dev/null 2>&1 & ag=$!
"$imwatch" agent --listen 127.0.0.1:0 --no-collector.process >/dev/null 2>&1 & ag2=$!
sleep 60 & sl=$!
mkdir -p "/tmp/imw fix"; mount -t tmpfs -o size=1m imwfix "/tmp/imw fix"; mount -t tmpfs -o size=2m,ro imwfix2 "/tmp/imw fix"
for i in $(seq 50); do [[ -s /tmp/mkfix.ports ]] && break; sleep 0.1; done
read -r p6 p4 < /tmp/mkfix.ports
sleep 0.5
cp /proc/meminfo /proc/loadavg /proc/diskstats "$out/proc/"
# /proc/stat with the per-IRQ counts cut (the total comes first)
awk '/^intr /{printf "%s", $1; for (i=2;i<=12;i++) printf " %s", $i; print ""; next} {print}' /proc/stat > "$out/proc/stat"
grep -E '^(nr_free_pages|nr_dirty|nr_writeback|pgpgin|pgpgout|pswpin|pswpout|pgalloc_normal|pgfree|pgfault|pgmajfault|pgsteal_kswapd|pgscan_kswapd|oom_kill|thp_fault_alloc) ' /proc/vmstat > "$out/proc/vmstat"
cp /proc/net/dev /proc/net/sockstat /proc/net/sockstat6 "$out/proc/net/"
{ head -1 /proc/net/tcp; grep -E ":$p4 " /proc/net/tcp; grep -E ' 0A ' /proc/net/tcp | grep -v ":$p4 " | head -2; grep -E ' 06 ' /proc/net/tcp | head -2 || true; } > "$out/proc/net/tcp"
{ head -1 /proc/net/tcp6; grep -E ":$p6 " /proc/net/tcp6; } > "$out/proc/net/tcp6"
cp /proc/pressure/cpu /proc/pressure/io /proc/pressure/memory "$out/proc/pressure/"
for pair in "$sl:1" "$ag:4242" "$ag2:4243"; do
	src=${pair%%:*}; dst=${pair##*:}
	d="$out/proc/$dst"; mkdir -p "$d/fd"
	cp /proc/$src/comm /proc/$src/cmdline /proc/$src/limits "$d/"
	sed "s/^$src /$dst /" /proc/$src/stat > "$d/stat"
	for f in $(ls /proc/$src/fd); do : > "$d/fd/$f"; done
done
grep -v ' /mnt/' /proc/1/mountinfo > "$out/proc/1/mountinfo"
echo "Present so that procfs/blockdevice accept the tree; no collector reads sysfs." > "$out/sys/README"
