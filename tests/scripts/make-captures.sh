#!/usr/bin/env bash
# make-captures.sh — regenerate the replay test captures from real kernel traffic.
#
# Run as root on Linux. Needs: iproute2, tcpdump, tshark (dumpcap, editcap), python3. Usage:
#   sudo tests/scripts/make-captures.sh [OUTDIR]     (default: tests/captures next to this script)
#
# Two network namespaces joined by a veth pair carry all traffic; only addresses this script
# creates are ever used (10.231.0.0/24, fd00:231::/64, 10.231.250.0/24 and fd00:231:250::/64 on
# a tun device). Every capture is taken on the sending side (namespace qmA) and bounded (a few
# dozen packets). Namespaces and links are removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../captures}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
A=qmA
B=qmB
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in ip tcpdump dumpcap editcap mergecap python3; do
    command -v "$tool" >/dev/null || { echo "make-captures: missing $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "make-captures: run as root" >&2; exit 1; }

inA() { ip netns exec "$A" "$@"; }
inB() { ip netns exec "$B" "$@"; }

ip netns add "$A"
ip netns add "$B"
ip link add qmva netns "$A" address 02:00:00:23:01:01 type veth peer name qmvb netns "$B" address 02:00:00:23:01:02
inA ip link set lo up
inB ip link set lo up
inA ip addr add 10.231.0.1/24 dev qmva
inB ip addr add 10.231.0.2/24 dev qmvb
inA ip addr add fd00:231::1/64 dev qmva nodad
inB ip addr add fd00:231::2/64 dev qmvb nodad
inA ip link set qmva up
inB ip link set qmvb up
inA sysctl -qw net.ipv4.tcp_ecn=1
# A VLAN sub-interface when the kernel has 8021q; skb priority n -> PCP n.
VLAN=0
if inA ip link add link qmva name qmva.100 type vlan id 100 \
        egress-qos-map 0:0 1:1 2:2 3:3 4:4 5:5 6:6 7:7 2>/dev/null; then
    inB ip link add link qmvb name qmvb.100 type vlan id 100
    inA ip addr add 10.231.100.1/24 dev qmva.100
    inB ip addr add 10.231.100.2/24 dev qmvb.100
    inA ip link set qmva.100 up
    inB ip link set qmvb.100 up
    VLAN=1
fi

# Receivers in qmB: a TCP sink on 8080 (v4 and v6) and UDP sinks (so no ICMP unreachables).
cat > "$WORK/sink.py" <<'PY'
import socket, threading
def tcp(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8080)); s.listen(8)
    while True:
        c, _ = s.accept()
        while c.recv(65536):
            pass
        c.close()
def udp(fam, addr, port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    while True:
        s.recv(65536)
ts = [threading.Thread(target=tcp, args=(socket.AF_INET, "10.231.0.2"), daemon=True),
      threading.Thread(target=tcp, args=(socket.AF_INET6, "fd00:231::2"), daemon=True)]
for port in (5060, 5004, 16386, 16388, 16390):
    ts.append(threading.Thread(target=udp, args=(socket.AF_INET, "0.0.0.0", port), daemon=True))
    ts.append(threading.Thread(target=udp, args=(socket.AF_INET6, "::", port), daemon=True))
for t in ts: t.start()
for t in ts: t.join()
PY
ip netns exec "$B" python3 "$WORK/sink.py" &
PIDS+=($!)

# The traffic generator, run in qmA: `gen.py SCENARIO...`.
cat > "$WORK/gen.py" <<'PY'
import socket, sys, time, struct
V4, V6 = "10.231.0.2", "fd00:231::2"
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
IPV6_TCLASS, IPV6_HOPOPTS, IPV6_DSTOPTS = 67, 54, 59

def udp(fam, dst, dport, payloads, sport=0, tos=None, opts=None, hbh=None, dstopts=None,
        prio=None, gap=0.002, pmtud_off=False):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    if tos is not None:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, tos)
    if opts is not None:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opts)
    if hbh is not None:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, hbh)
    if dstopts is not None:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, dstopts)
    if prio is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, prio)
    if pmtud_off and fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    for p in payloads:
        s.sendto(p, (dst, dport)); time.sleep(gap)
    s.close()

def sip(n, fam=socket.AF_INET, dst=V4, **kw):
    msgs = [("OPTIONS sip:bob@%s SIP/2.0\r\nVia: SIP/2.0/UDP qmA;branch=z9hG4bK%d\r\n"
             "CSeq: %d OPTIONS\r\nContent-Length: 0\r\n\r\n" % (dst, i, i)).encode() for i in range(n)]
    udp(fam, dst, 5060, msgs, sport=5062 if fam == socket.AF_INET else 5064, **kw)

def rtp(n, fam=socket.AF_INET, dst=V4, sport=16384, dport=16386, **kw):
    pkts = [struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x1234abcd) + bytes(160) for i in range(n)]
    udp(fam, dst, dport, pkts, sport=sport, **kw)

def tcp(fam, dst, nbytes, tos=None):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if tos is not None:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    s.connect((dst, 8080))
    s.sendall(bytes(range(256)) * (nbytes // 256))
    time.sleep(0.05)
    s.close()
    time.sleep(0.05)

def tun_traffic():
    import fcntl, os, subprocess, threading
    TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454ca, 0x0001, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"qmtun", IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", "qmtun", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.231.250.1/24", "dev", "qmtun"], check=True)
    subprocess.run(["ip", "addr", "add", "fd00:231:250::1/64", "dev", "qmtun", "nodad"], check=True)
    open("/tmp/qm-tun-ready", "w").close()
    time.sleep(1.0)  # the capture attaches now
    # Drain what the kernel sends into the tun so its queue never fills.
    threading.Thread(target=lambda: [os.read(fd, 65536) for _ in iter(int, 1)], daemon=True).start()
    sip(5, dst="10.231.250.2")
    rtp(10, dst="10.231.250.2")
    sip(3, fam=socket.AF_INET6, dst="fd00:231:250::2")
    rtp(5, dst="10.231.250.2", tos=46 << 2)
    udp(socket.AF_INET, "10.231.250.2", 5004, [bytes(3000)], sport=16390, pmtud_off=True)
    time.sleep(2.0)  # let the capture take everything before the tun device disappears
    os.close(fd)

# Record-route option (type 7, 39 bytes, pointer 4) padded with an end-of-options byte.
RR = bytes([7, 39, 4]) + bytes(36) + bytes([0])
# Hop-by-hop / destination options header bodies: next header and length are filled in by the
# kernel; one PadN option of 4 bytes fills the 8-byte header.
PADN8 = bytes([0, 0, 1, 4, 0, 0, 0, 0])

for scenario in sys.argv[1:]:
    if scenario == "udp4":
        sip(6)
        rtp(15)
        sip(4, tos=0x02)                    # ECT(0): DSCP rewrite must keep ECN
        rtp(4, sport=16400, tos=0x01)       # ECT(1)
        sip(3, tos=46 << 2)                 # already EF
        rtp(5, sport=16402, tos=(46 << 2) | 0x02)  # already EF, ECT(0)
        sip(3, opts=RR)                     # IPv4 options (IHL 15)
        udp(socket.AF_INET, V4, 5004, [bytes(4000), bytes(2500)], sport=16390, pmtud_off=True)
        udp(socket.AF_INET, V4, 9999, [b"nomatch"] * 3, sport=40000)
    elif scenario == "v6":
        sip(5, fam=socket.AF_INET6, dst=V6)
        rtp(10, fam=socket.AF_INET6, dst=V6)
        sip(3, fam=socket.AF_INET6, dst=V6, tos=(46 << 2) | 0x01)
        rtp(3, fam=socket.AF_INET6, dst=V6, sport=16404, tos=0x02)
        sip(3, fam=socket.AF_INET6, dst=V6, hbh=PADN8)
        sip(3, fam=socket.AF_INET6, dst=V6, dstopts=PADN8)
        udp(socket.AF_INET6, V6, 5004, [bytes(4000), bytes(3000)], sport=16390)
        tcp(socket.AF_INET6, V6, 6000)
        udp(socket.AF_INET6, V6, 9999, [b"nomatch"] * 3, sport=40000)
    elif scenario == "tcp4":
        tcp(socket.AF_INET, V4, 12000)
        tcp(socket.AF_INET, V4, 3000, tos=46 << 2)
    elif scenario == "vlan":
        for prio in (0, 3, 5):
            sip(3, dst="10.231.100.2", prio=prio)
        rtp(6, dst="10.231.100.2", prio=5)
        udp(socket.AF_INET, "10.231.100.2", 9999, [b"nomatch"] * 2, sport=40000)
    elif scenario == "sample":
        sip(4)
        rtp(8)
        tcp(socket.AF_INET, V4, 4000)
        sip(2, fam=socket.AF_INET6, dst=V6)
        udp(socket.AF_INET, V4, 9999, [b"nomatch"] * 2, sport=40000)
    elif scenario == "tun":
        tun_traffic()
    else:
        sys.exit("unknown scenario " + scenario)
PY

# capture NAME TOOL IFACE SCENARIO...: TOOL is one of tcpdump, tcpdump-nano, tcpdump-sll,
# tcpdump-sll2, dumpcap. Flushes neighbour caches first so ARP / NDP show up too.
capture() {
    local name=$1 tool=$2 iface=$3
    shift 3
    inA ip neigh flush all
    local file="$OUT/$name"
    local filter="not ip6 multicast or icmp6"
    case $tool in
        tcpdump) ip netns exec "$A" tcpdump -q -U --immediate-mode -i "$iface" -Q out -s 0 -w "$file" &;;
        tcpdump-nano) ip netns exec "$A" tcpdump -q -U --immediate-mode -i "$iface" -Q out -s 0 --time-stamp-precision=nano -w "$file" &;;
        tcpdump-sll) ip netns exec "$A" tcpdump -q -U --immediate-mode -i any -y LINUX_SLL -Q out -s 0 -w "$file" &;;
        tcpdump-sll2) ip netns exec "$A" tcpdump -q -U --immediate-mode -i any -y LINUX_SLL2 -Q out -s 0 -w "$file" &;;
        dumpcap) ip netns exec "$A" dumpcap -q -i "$iface" -f "ether src 02:00:00:23:01:01" -w "$file" &;;
        *) echo "unknown tool $tool" >&2; exit 1;;
    esac
    local cap=$!
    PIDS+=("$cap")
    sleep 1.5
    inA python3 "$WORK/gen.py" "$@"
    sleep 1
    kill -TERM "$cap" 2>/dev/null || true
    wait "$cap" 2>/dev/null || true
    chmod 644 "$file"
    echo "make-captures: $name: $(stat -c %s "$file") bytes"
}

sleep 1  # let the sink bind
capture udp4-ether.pcap tcpdump qmva udp4
capture v6-ether.pcapng dumpcap qmva v6
capture tcp4-ether-nano.pcap tcpdump-nano qmva tcp4
capture cooked-sll.pcap tcpdump-sll - udp4
capture cooked-sll2.pcap tcpdump-sll2 - v6
capture sample.pcap tcpdump qmva sample

# Raw IP: a tun device in qmA (the generator owns it); the capture starts once it exists.
rm -f /tmp/qm-tun-ready
ip netns exec "$A" python3 "$WORK/gen.py" tun &
GEN=$!
PIDS+=("$GEN")
for _ in $(seq 50); do [ -e /tmp/qm-tun-ready ] && break; sleep 0.1; done
ip netns exec "$A" tcpdump -q -U --immediate-mode -i qmtun -s 0 -w "$OUT/tun-raw.pcap" &
CAP=$!
PIDS+=("$CAP")
wait "$GEN"
sleep 0.5
kill -TERM "$CAP" 2>/dev/null || true; wait "$CAP" 2>/dev/null || true
rm -f /tmp/qm-tun-ready
echo "make-captures: tun-raw.pcap: $(stat -c %s "$OUT/tun-raw.pcap") bytes"

# 802.1Q-tagged frames: real tags from the VLAN sub-interface when the kernel has 8021q.
# Otherwise the tags are inserted into real captured frames: after the MAC addresses of each
# Ethernet frame, an 802.1Q tag (VLAN 100, PCP = frame number mod 8); every third frame gets an
# 802.1ad outer tag (VLAN 200, PCP 1) in front of it. Captured and wire lengths grow by the same
# amount, so the frames stay whole.
if [ "$VLAN" = 1 ]; then
    capture vlan-ether.pcap tcpdump qmva vlan
else
    capture "plain-for-vlan.pcap" tcpdump qmva sample
    mv "$OUT/plain-for-vlan.pcap" "$WORK/plain.pcap"
    python3 - "$WORK/plain.pcap" "$OUT/vlan-ether.pcap" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:4] == bytes.fromhex("d4c3b2a1"), "expected a little-endian microsecond pcap"
out, at, n = bytearray(data[:24]), 24, 0
while at < len(data):
    sec, frac, incl, orig = struct.unpack_from("<IIII", data, at)
    frame = data[at + 16: at + 16 + incl]
    tag = struct.pack("!HH", 0x8100, ((n % 8) << 13) | 100)
    if n % 3 == 2:
        tag = struct.pack("!HH", 0x88a8, (1 << 13) | 200) + tag
    frame = frame[:12] + tag + frame[12:]
    out += struct.pack("<IIII", sec, frac, len(frame), orig + len(tag)) + frame
    at += 16 + incl
    n += 1
open(sys.argv[2], "wb").write(out)
PY
fi
# The same tagged frames as pcapng.
editcap -F pcapng "$OUT/vlan-ether.pcap" "$OUT/vlan-ether.pcapng"
# A pcapng with two interfaces of different link types (Ethernet = 0, raw IP = 1), packets
# interleaved by time.
mergecap -F pcapng -w "$OUT/two-interfaces.pcapng" "$OUT/udp4-ether.pcap" "$OUT/tun-raw.pcap"
chmod 644 "$OUT"/*.pcap "$OUT"/*.pcapng
ls -l "$OUT"
