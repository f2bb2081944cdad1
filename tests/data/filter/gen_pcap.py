#!/usr/bin/env python3
"""Writes filter.pcap, the capture of the pcap-filter differential test.

Usage: gen_pcap.py [OUT.pcap]      (default: filter.pcap next to this script)

The test reads the committed filter.pcap, so CI needs tcpdump but not
scapy. Regenerate it after changing this script (Debian 12:
`apt-get install python3-scapy`; written with scapy 2.5.0, whose field
defaults fix the bytes), then run the ignored test
`pcap::tests::committed_pcap_is_what_the_generator_writes` to check that the
two agree.

- Classic little-endian pcap, microsecond timestamps, DLT_EN10MB.
- Packet i has timestamp exactly i seconds: that is how the test matches
  tcpdump's output to its input.
- Deterministic: no clock, no randomness except a fixed-seed generator.
- Captured length = wire length for every record (BPF's `len` is the wire
  length; keeping them equal lets a short frame stand for a truncated one).
- Addresses only from 198.18.0.0/15 (benchmarking) and 2001:db8::/32
  (documentation), plus the multicast/broadcast ones protocols use.

What it covers (each block below says why): IPv4 and IPv6; untagged,
802.1Q, 802.1ad and 0x9100 tags, single, double and triple; IPv4 options and
fragments (first, middle, last); IPv6 extension headers (hop-by-hop,
routing, destination options, fragment first/later, AH, chains); ARP and
RARP; ICMP and ICMPv6 types; all 256 TCP flag bytes; UDP, SCTP, IGMP, PIM,
VRRP, AH, ESP, GRE; 802.3 length-field frames with LLC/SNAP; broadcast and
multicast MACs; and short frames cut inside every header the filters read,
so that out-of-bounds loads (which reject the whole filter) are exercised.
"""

import os
import random
import struct
import sys

from scapy.all import (  # noqa: F401  (scapy exports are dynamic)
    AH,
    ARP,
    ESP,
    GRE,
    ICMP,
    IP,
    LLC,
    SCTP,
    SNAP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Dot3,
    Ether,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6MLQuery,
    ICMPv6MLReport,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Padding,
    Raw,
    SCTPChunkData,
    SCTPChunkInit,
)
from scapy.contrib.igmp import IGMP
from scapy.layers.sctp import SCTPChunkHeartbeatReq
from scapy.layers.vrrp import VRRP

rng = random.Random(20240518)

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
MAC_C = "02:00:00:00:00:0c"
MAC_R = "00:1b:21:3a:4f:01"
MAC_BCAST = "ff:ff:ff:ff:ff:ff"
MAC_MC4 = "01:00:5e:00:00:fb"
MAC_MC6 = "33:33:00:00:00:01"
MAC_STP = "01:80:c2:00:00:00"

V4 = ["198.18.0.1", "198.18.0.2", "198.18.1.10", "198.18.255.254", "198.19.0.1", "198.19.128.7"]
V6 = ["2001:db8::1", "2001:db8::2", "2001:db8:1::10", "2001:db8:ffff::fe", "2001:db8:0:1::1"]
PORTS = [22, 53, 80, 443, 1024, 8080, 65535]
SIZES = [60, 64, 100, 128, 200, 300, 512, 576, 1000, 1024, 1400, 1500]
MACS = [(MAC_A, MAC_B), (MAC_B, MAC_A), (MAC_A, MAC_C), (MAC_C, MAC_R), (MAC_R, MAC_A)]

# Named TCP flag sets (scapy letters: F S R P A U E C), for the mixed traffic.
FLAGS = ["S", "SA", "A", "F", "FA", "R", "RA", "PA", "P", "U", "UA", "E", "C", "SEC", "SAE",
         "FPA", "FPU", "FSRPAUEC", "", "AC", "PAE", "RU", "FSU"]

packets = []


def frame(pkt, size=None):
    """pkt as bytes, padded with a payload to `size` bytes (at least 60)."""
    size = max(size or 60, 60)
    raw = bytes(pkt)
    if len(raw) < size:
        raw += bytes((j * 7 + size) & 0xFF for j in range(size - len(raw)))
    return raw


def add(pkt, size=None):
    packets.append(frame(pkt, size))


def add_cut(pkt, length):
    """The first `length` bytes of pkt: a frame that ends inside a header."""
    raw = bytes(pkt)
    assert length < len(raw), (length, len(raw))
    packets.append(raw[:length])


def eth(i, typ=None):
    src, dst = MACS[i % len(MACS)]
    return Ether(src=src, dst=dst) if typ is None else Ether(src=src, dst=dst, type=typ)


# --- IPv4 TCP: every one of the 256 flag bytes ---------------------------------
# 13th byte of the TCP header: CWR ECE URG ACK PSH RST SYN FIN.
for flags in range(256):
    src, dst = V4[flags % len(V4)], V4[(flags + 1) % len(V4)]
    add(eth(flags) / IP(src=src, dst=dst) /
        TCP(sport=PORTS[flags % len(PORTS)], dport=PORTS[(flags // 7) % len(PORTS)], flags=flags,
            seq=1000 + flags, ack=2000 if flags & 0x10 else 0, urgptr=7 if flags & 0x20 else 0),
        60 + (flags % 5) * 4)

# --- IPv4 TCP with options, a range of ports and sizes --------------------------
for i, flags in enumerate(FLAGS):
    sport = PORTS[i % len(PORTS)]
    dport = PORTS[(i * 3 + 1) % len(PORTS)]
    src, dst = V4[i % len(V4)], V4[(i + 1) % len(V4)]
    add(eth(i) / IP(src=src, dst=dst, ttl=64) /
        TCP(sport=sport, dport=dport, flags=flags, seq=1000 + i,
            options=[("MSS", 1460), ("NOP", None), ("WScale", 7)] if "S" in flags else []),
        SIZES[i % len(SIZES)])

# Port sweep over TCP and UDP, both directions.
for i, p in enumerate(PORTS):
    add(eth(i) / IP(src=V4[0], dst=V4[2]) / TCP(sport=40000 + i, dport=p, flags="S"), SIZES[(i + 2) % len(SIZES)])
    add(eth(i + 1) / IP(src=V4[2], dst=V4[0]) / TCP(sport=p, dport=40000 + i, flags="SA"), 60)
    add(eth(i + 2) / IP(src=V4[3], dst=V4[4]) / UDP(sport=50000 + i, dport=p), SIZES[(i + 5) % len(SIZES)])
    add(eth(i + 3) / IP(src=V4[4], dst=V4[3]) / UDP(sport=p, dport=50000 + i), SIZES[(i + 7) % len(SIZES)])

# Ports inside and just outside a few ranges, and port 0.
for p in [0, 1, 21, 23, 79, 81, 442, 444, 1023, 1025, 5000, 8079, 8081, 65534]:
    add(eth(p) / IP(src=V4[5], dst=V4[1]) / UDP(sport=33000, dport=p), 60 + (p % 300))
add(eth(1) / IP(src=V4[1], dst=V4[5]) / TCP(sport=0, dport=0, flags="R"), 60)

# --- IPv4 UDP: to broadcast and multicast ---------------------------------------
add(Ether(src=MAC_A, dst=MAC_BCAST) / IP(src=V4[0], dst="198.19.255.255") / UDP(sport=68, dport=67), 342)
add(Ether(src=MAC_B, dst=MAC_MC4) / IP(src=V4[1], dst="224.0.0.251", ttl=255) / UDP(sport=5353, dport=5353), 120)
add(Ether(src=MAC_C, dst=MAC_BCAST) / IP(src=V4[2], dst="255.255.255.255") / UDP(sport=137, dport=137), 92)
for i in range(6):
    add(eth(i) / IP(src=V4[i % len(V4)], dst=V4[(i + 3) % len(V4)]) / UDP(sport=1024 + i, dport=53) /
        Raw(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"), SIZES[i * 2])

# --- ICMP: many types ---------------------------------------------------------------
for i in range(4):
    add(eth(i) / IP(src=V4[0], dst=V4[i + 1]) / ICMP(type=8, id=1, seq=i), SIZES[i + 1])
    add(eth(i + 1) / IP(src=V4[i + 1], dst=V4[0]) / ICMP(type=0, id=1, seq=i), SIZES[i + 1])
inner = IP(src=V4[0], dst=V4[5]) / UDP(sport=40000, dport=33434)
for typ, code in [(3, 3), (3, 1), (3, 4), (11, 0), (11, 1), (5, 1), (12, 0), (4, 0)]:
    add(eth(typ) / IP(src=V4[4], dst=V4[0]) / ICMP(type=typ, code=code) / inner, 90)
for typ in [9, 10, 13, 14, 15, 16, 17, 18]:
    add(eth(typ) / IP(src=V4[typ % 6], dst=V4[(typ + 1) % 6]) / ICMP(type=typ, ts_ori=1000, ts_rx=2000, ts_tx=3000), 60 + typ)

# --- IGMP, PIM, VRRP, GRE, ESP, AH, OSPF and an unassigned protocol -----------------
add(Ether(src=MAC_A, dst="01:00:5e:00:00:01") / IP(src=V4[0], dst="224.0.0.1", ttl=1) /
    IGMP(type=0x11, mrcode=100, gaddr="0.0.0.0"), 60)
add(Ether(src=MAC_B, dst="01:00:5e:00:00:fb") / IP(src=V4[1], dst="224.0.0.251", ttl=1,
                                                  options=[IPOption_Router_Alert()]) /
    IGMP(type=0x16, gaddr="224.0.0.251"), 60)
add(Ether(src=MAC_C, dst="01:00:5e:00:00:0d") / IP(src=V4[2], dst="224.0.0.13", proto=103, ttl=1) /
    Raw(b"\x20\x00\x00\x00" + b"\x00" * 16), 60)
add(Ether(src="00:00:5e:00:01:07", dst="01:00:5e:00:00:12") / IP(src=V4[3], dst="224.0.0.18", ttl=255) /
    VRRP(vrid=7, priority=100, addrlist=[V4[4]]), 60)
add(eth(2) / IP(src=V4[2], dst=V4[3]) / GRE(proto=0x0800) / IP(src=V4[0], dst=V4[1]) / UDP(sport=1, dport=2), 80)
add(eth(3) / IP(src=V4[3], dst=V4[4]) / ESP(spi=0x1000, seq=1, data=b"\x00" * 24), 80)
add(eth(4) / IP(src=V4[4], dst=V4[5]) / AH(spi=0x2000, seq=1, nh=6, payloadlen=4, icv=b"\x00" * 12) /
    TCP(sport=443, dport=1024, flags="A"), 90)
for proto in [89, 133, 255]:
    add(eth(proto) / IP(src=V4[proto % len(V4)], dst=V4[(proto + 2) % len(V4)], proto=proto) /
        Raw(b"\x00" * 24), 60 + proto % 50)

# --- SCTP ---------------------------------------------------------------------------
add(eth(0) / IP(src=V4[0], dst=V4[1]) / SCTP(sport=2905, dport=2905) / SCTPChunkInit(), 100)
add(eth(1) / IP(src=V4[1], dst=V4[0]) / SCTP(sport=2905, dport=2905) / SCTPChunkData(data=b"x" * 40), 120)
add(eth(2) / IP(src=V4[2], dst=V4[3]) / SCTP(sport=36412, dport=80) / SCTPChunkHeartbeatReq(), 80)

# --- IPv4 fragments: first (MF, offset 0), middle (MF, offset > 0), last -------------
# Later fragments carry payload bytes where a port would be: filters must not
# read ports there.
add(eth(0) / IP(src=V4[0], dst=V4[1], id=0x1111, flags="MF", frag=0) / TCP(sport=1024, dport=80, flags="PA") /
    Raw(b"A" * 200), 254)
add(eth(0) / IP(src=V4[0], dst=V4[1], id=0x1111, flags=0, frag=28, proto=6) / Raw(b"\x00\x50\x04\x00" * 25), 134)
add(eth(1) / IP(src=V4[1], dst=V4[0], id=0x2222, flags="MF", frag=0) / UDP(sport=53, dport=1024) /
    Raw(b"C" * 1000), 1042)
add(eth(1) / IP(src=V4[1], dst=V4[0], id=0x2222, flags="MF", frag=128, proto=17) / Raw(b"\x00\x35" * 500), 1034)
add(eth(1) / IP(src=V4[1], dst=V4[0], id=0x2222, flags=0, frag=253, proto=17) / Raw(b"\x00\x35" * 40), 114)
add(eth(2) / IP(src=V4[2], dst=V4[3], id=0x3333, flags="MF", frag=0) / ICMP(type=8) / Raw(b"F" * 500), 542)
add(eth(2) / IP(src=V4[2], dst=V4[3], id=0x3333, flags=0, frag=63, proto=1) / Raw(b"\x08" * 40), 74)
# Offset bits only in the high byte of the field (0x1f00), and DF + MF.
add(eth(3) / IP(src=V4[3], dst=V4[1], id=0x4444, flags="MF", frag=0x1f00, proto=6) / Raw(b"\x01\xbb" * 20), 80)
add(eth(3) / IP(src=V4[3], dst=V4[4], flags="DF") / TCP(sport=443, dport=1024, flags="A"), 1500)
add(eth(4) / IP(src=V4[4], dst=V4[3], flags="DF+MF") / UDP(sport=443, dport=1024), 64)

# Short IP packets padded by the link: the frame is longer than the datagram.
add(eth(0) / IP(src=V4[0], dst=V4[1]) / TCP(sport=1024, dport=22, flags="A") / Padding(b"\x00" * 6))
add(eth(1) / IP(src=V4[1], dst=V4[0]) / UDP(sport=53, dport=1024) / Raw(b"ok") / Padding(b"\x00" * 16))

# --- IPv4 options: the transport header moves with the IHL --------------------------
add(eth(0) / IP(src=V4[0], dst=V4[1], options=[IPOption_Router_Alert()]) / UDP(sport=1024, dport=53), 80)
add(eth(1) / IP(src=V4[1], dst=V4[2], options=[IPOption_RR(routers=["198.18.0.254"])]) /
    TCP(sport=22, dport=1024, flags="PA"), 150)
add(eth(2) / IP(src=V4[4], dst=V4[0], options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(),
                                               IPOption_Router_Alert()]) / ICMP(type=8), 70)
add(eth(3) / IP(src=V4[5], dst=V4[3], options=[IPOption_RR(routers=["198.19.0.1", "198.19.0.2"])]) /
    TCP(sport=8080, dport=443, flags="S"), 90)
# The longest header (IHL 15): 40 bytes of NOPs.
add(eth(4) / IP(src=V4[0], dst=V4[4], options=[IPOption_NOP()] * 40) / TCP(sport=80, dport=8080, flags="S"), 100)
# Odd headers libpcap does not validate: IHL below 5, and version 6 behind
# the IPv4 EtherType. Filters use the IHL as it is.
bad_ihl = bytearray(bytes(IP(src=V4[0], dst=V4[1]) / TCP(sport=22, dport=80, flags="S")))
bad_ihl[0] = 0x44
add(eth(0, 0x0800) / Raw(bytes(bad_ihl)), 60)
add(eth(1, 0x0800) / Raw(bytes(IPv6(src=V6[0], dst=V6[1]) / UDP(sport=53, dport=53))), 70)

# --- IPv6 TCP/UDP/SCTP --------------------------------------------------------------
for i, flags in enumerate(["S", "SA", "A", "PA", "FA", "R", "U", "E", "C", "SEC"]):
    src, dst = V6[i % len(V6)], V6[(i + 1) % len(V6)]
    add(eth(i) / IPv6(src=src, dst=dst) / TCP(sport=PORTS[i % len(PORTS)], dport=PORTS[(i + 2) % len(PORTS)],
                                               flags=flags), SIZES[(i + 3) % len(SIZES)])
for i, p in enumerate(PORTS):
    add(eth(i) / IPv6(src=V6[(i + 2) % len(V6)], dst=V6[(i + 3) % len(V6)]) / UDP(sport=40000 + i, dport=p),
        SIZES[(i + 1) % len(SIZES)])
add(eth(0) / IPv6(src=V6[0], dst=V6[1]) / SCTP(sport=2905, dport=2905) / SCTPChunkInit(), 110)
add(eth(1) / IPv6(src=V6[1], dst=V6[0]) / SCTP(sport=2905, dport=443) / SCTPChunkData(data=b"y" * 30), 130)
add(eth(2) / IPv6(src=V6[2], dst=V6[1], nh=103) / Raw(b"\x20\x00\x00\x00" * 4), 80)

# --- ICMPv6: many types ---------------------------------------------------------------
add(eth(0) / IPv6(src=V6[0], dst=V6[1]) / ICMPv6EchoRequest(id=7, seq=1), 70)
add(eth(1) / IPv6(src=V6[1], dst=V6[0]) / ICMPv6EchoReply(id=7, seq=1), 70)
add(eth(2) / IPv6(src=V6[2], dst=V6[3]) / ICMPv6EchoRequest(id=8, seq=2) / Raw(b"p" * 400), 500)
add(Ether(src=MAC_A, dst="33:33:ff:00:00:02") / IPv6(src=V6[0], dst="ff02::1:ff00:2", hlim=255) /
    ICMPv6ND_NS(tgt=V6[1]) / ICMPv6NDOptSrcLLAddr(lladdr=MAC_A), 86)
add(Ether(src=MAC_B, dst=MAC_A) / IPv6(src=V6[1], dst=V6[0], hlim=255) / ICMPv6ND_NA(tgt=V6[1], R=0, S=1), 86)
add(Ether(src=MAC_C, dst=MAC_MC6) / IPv6(src=V6[2], dst="ff02::1") / ICMPv6EchoRequest(), 62)
add(Ether(src=MAC_A, dst="33:33:00:00:00:02") / IPv6(src="fe80::a", dst="ff02::2", hlim=255) / ICMPv6ND_RS(), 70)
add(Ether(src=MAC_R, dst=MAC_MC6) / IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6ND_RA(), 80)
add(eth(4) / IPv6(src="fe80::1", dst=V6[0], hlim=255) / ICMPv6ND_Redirect(tgt=V6[1], dst=V6[2]), 100)
inner6 = IPv6(src=V6[0], dst=V6[4]) / UDP(sport=40000, dport=33434)
add(eth(3) / IPv6(src=V6[3], dst=V6[0]) / ICMPv6DestUnreach(code=4) / inner6, 110)
add(eth(3) / IPv6(src=V6[3], dst=V6[0]) / ICMPv6PacketTooBig(mtu=1280) / inner6, 110)
add(eth(3) / IPv6(src=V6[3], dst=V6[0]) / ICMPv6TimeExceeded() / inner6, 110)
add(eth(3) / IPv6(src=V6[3], dst=V6[0]) / ICMPv6ParamProblem(code=1, ptr=6) / inner6, 110)
add(Ether(src=MAC_R, dst=MAC_MC6) / IPv6(src="fe80::1", dst="ff02::1", hlim=1) / IPv6ExtHdrHopByHop() /
    ICMPv6MLQuery(), 90)
add(Ether(src=MAC_R, dst=MAC_MC6) / IPv6(src="fe80::1", dst="ff02::1", hlim=1) / ICMPv6MLQuery(), 80)
add(Ether(src=MAC_A, dst="33:33:00:00:00:fb") / IPv6(src="fe80::a", dst="ff02::fb", hlim=1) /
    IPv6ExtHdrHopByHop() / ICMPv6MLReport(mladdr="ff02::fb"), 90)

# --- IPv6 extension headers: libpcap looks past one fragment header only -------------
add(eth(0) / IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrHopByHop() / UDP(sport=1024, dport=53), 90)
add(eth(1) / IPv6(src=V6[1], dst=V6[2]) / IPv6ExtHdrHopByHop() / TCP(sport=22, dport=1024, flags="S"), 100)
add(eth(2) / IPv6(src=V6[2], dst=V6[3]) / IPv6ExtHdrRouting(addresses=[V6[4]]) /
    TCP(sport=1024, dport=80, flags="SA"), 120)
add(eth(3) / IPv6(src=V6[3], dst=V6[0]) / IPv6ExtHdrDestOpt() / UDP(sport=53, dport=8080), 110)
add(eth(4) / IPv6(src=V6[4], dst=V6[1]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() /
    ICMPv6EchoRequest(), 100)
add(eth(0) / IPv6(src=V6[0], dst=V6[2]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=[V6[3]]) /
    IPv6ExtHdrDestOpt() / TCP(sport=443, dport=1024, flags="PA"), 200)
add(eth(1) / IPv6(src=V6[1], dst=V6[0]) / AH(spi=0x3000, seq=1, nh=17, payloadlen=4, icv=b"\x00" * 12) /
    UDP(sport=53, dport=53), 110)
# Fragment header: first fragment (offset 0, M=1), then later ones.
add(eth(1) / IPv6(src=V6[1], dst=V6[3]) / IPv6ExtHdrFragment(id=0xabcd, offset=0, m=1) /
    UDP(sport=1024, dport=53) / Raw(b"H" * 600), 670)
add(eth(1) / IPv6(src=V6[1], dst=V6[3]) / IPv6ExtHdrFragment(id=0xabcd, offset=76, m=0, nh=17) /
    Raw(b"\x00\x35" * 150), 362)
add(eth(2) / IPv6(src=V6[2], dst=V6[0]) / IPv6ExtHdrFragment(id=0x1234, offset=0, m=1) /
    TCP(sport=80, dport=1024, flags="A") / Raw(b"J" * 1200), 1300)
add(eth(2) / IPv6(src=V6[2], dst=V6[0]) / IPv6ExtHdrFragment(id=0x1234, offset=153, m=1, nh=6) /
    Raw(b"\x00\x50" * 600), 1270)
add(eth(3) / IPv6(src=V6[3], dst=V6[1]) / IPv6ExtHdrFragment(id=0x5678, offset=0, m=1) /
    ICMPv6EchoRequest(id=9, seq=1) / Raw(b"q" * 100), 200)
add(eth(3) / IPv6(src=V6[3], dst=V6[1]) / IPv6ExtHdrFragment(id=0x5678, offset=14, m=0, nh=58) /
    Raw(b"\x80" * 40), 110)
# A fragment header after another extension header: libpcap does not see it.
add(eth(4) / IPv6(src=V6[4], dst=V6[2]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=0x9999, offset=0, m=1) /
    TCP(sport=22, dport=443, flags="S"), 120)
add(eth(0) / IPv6(src=V6[0], dst=V6[3]) / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(id=0x9998, offset=5, m=0, nh=17) /
    Raw(b"\x00\x35" * 20), 120)
# An atomic fragment (offset 0, M=0) and a SCTP first fragment.
add(eth(1) / IPv6(src=V6[1], dst=V6[4]) / IPv6ExtHdrFragment(id=0x7777, offset=0, m=0) /
    UDP(sport=443, dport=443), 90)
add(eth(2) / IPv6(src=V6[2], dst=V6[4]) / IPv6ExtHdrFragment(id=0x7778, offset=0, m=1) /
    SCTP(sport=2905, dport=80) / SCTPChunkInit(), 130)

# --- ARP and RARP: `host`/`net` without a qualifier test their addresses too ---------
add(Ether(src=MAC_A, dst=MAC_BCAST) / ARP(op=1, hwsrc=MAC_A, psrc=V4[0], pdst=V4[1]))
add(Ether(src=MAC_B, dst=MAC_A) / ARP(op=2, hwsrc=MAC_B, psrc=V4[1], hwdst=MAC_A, pdst=V4[0]))
add(Ether(src=MAC_C, dst=MAC_BCAST) / ARP(op=1, hwsrc=MAC_C, psrc=V4[4], pdst=V4[5]))
add(Ether(src=MAC_R, dst=MAC_C) / ARP(op=2, hwsrc=MAC_R, psrc=V4[5], hwdst=MAC_C, pdst=V4[4]))
add(Ether(src=MAC_R, dst=MAC_BCAST) / ARP(op=1, hwsrc=MAC_R, psrc=V4[3], pdst=V4[3]))  # gratuitous
add(Ether(src=MAC_A, dst=MAC_BCAST, type=0x8035) / ARP(op=3, hwsrc=MAC_A, psrc="0.0.0.0", hwdst=MAC_A,
                                                      pdst="0.0.0.0"))
add(Ether(src=MAC_R, dst=MAC_A, type=0x8035) / ARP(op=4, hwsrc=MAC_R, psrc=V4[3], hwdst=MAC_A, pdst=V4[2]))

# --- 802.3 length-field frames with LLC (and SNAP) ------------------------------------
add(Dot3(src=MAC_A, dst=MAC_STP) / LLC(dsap=0x42, ssap=0x42, ctrl=3) / Raw(b"\x00" * 35))     # STP
add(Dot3(src=MAC_B, dst="09:00:2b:00:00:05") / LLC(dsap=0xfe, ssap=0xfe, ctrl=3) / Raw(b"\x83" * 27))  # ISO
add(Dot3(src=MAC_C, dst=MAC_BCAST) / LLC(dsap=0xe0, ssap=0xe0, ctrl=3) / Raw(b"\xff" * 30))   # IPX 802.2
add(Dot3(src=MAC_C, dst=MAC_BCAST) / Raw(b"\xff\xff" + b"\x00" * 28))                       # IPX 802.3 raw
add(Dot3(src=MAC_A, dst=MAC_BCAST) / LLC(dsap=0xf0, ssap=0xf0, ctrl=3) / Raw(b"\x00" * 30))   # NetBEUI
add(Dot3(src=MAC_B, dst=MAC_BCAST) / LLC(dsap=0x06, ssap=0x06, ctrl=3) / Raw(b"\x45" * 30))   # IP over 802.2
add(Dot3(src=MAC_A, dst="09:00:07:ff:ff:ff") / LLC(dsap=0xaa, ssap=0xaa, ctrl=3) /
    SNAP(OUI=0x080007, code=0x809b) / Raw(b"\x00" * 30))                                  # AppleTalk SNAP
add(Dot3(src=MAC_B, dst=MAC_BCAST) / LLC(dsap=0xaa, ssap=0xaa, ctrl=3) / SNAP(OUI=0, code=0x8137) /
    Raw(b"\xff" * 30))                                                                    # IPX SNAP
add(Dot3(src=MAC_C, dst=MAC_A) / LLC(dsap=0xaa, ssap=0xaa, ctrl=3) / SNAP(OUI=0, code=0x0800) /
    IP(src=V4[2], dst=V4[0]) / UDP(sport=53, dport=53))                                    # IP over SNAP
add(Dot3(src=MAC_A, dst=MAC_B, len=1500) / LLC(dsap=0x64, ssap=0x64, ctrl=3) / Raw(b"\x00" * 40))
add(Ether(src=MAC_C, dst=MAC_BCAST, type=0x8137) / Raw(b"\xff\xff" + b"\x00" * 40))          # IPX Ethernet II
add(Ether(src=MAC_A, dst=MAC_BCAST, type=0x809b) / Raw(b"\x00" * 40))                      # EtherTalk
add(Ether(src=MAC_B, dst=MAC_BCAST, type=0x80f3) / Raw(b"\x00\x01\x80\x9b\x06\x04\x00\x01" + b"\x00" * 20))  # AARP
add(Dot3(src=MAC_C, dst="09:00:07:ff:ff:ff") / LLC(dsap=0xaa, ssap=0xaa, ctrl=3) / SNAP(OUI=0, code=0x80f3) /
    Raw(b"\x00" * 28))                                                                    # AARP SNAP
add(Ether(src=MAC_A, dst=MAC_B, type=0x05dd) / Raw(b"\x00" * 40))                          # type 1501
add(Ether(src=MAC_R, dst=MAC_A, type=0x88cc) / Raw(b"\x02\x07\x04" + b"\x00" * 40))          # LLDP

# --- 802.1Q single-tagged: several VIDs, PCP and DEI bits set --------------------------
for i, vid in enumerate([1, 10, 100, 200, 4094, 100, 10, 100, 0, 4095]):
    if i % 3 == 0:
        l3 = IPv6(src=V6[i % len(V6)], dst=V6[(i + 1) % len(V6)]) / UDP(sport=1024, dport=PORTS[i % len(PORTS)])
    elif i % 3 == 1:
        l3 = IP(src=V4[i % len(V4)], dst=V4[(i + 2) % len(V4)]) / TCP(sport=PORTS[i % len(PORTS)], dport=80,
                                                                      flags=FLAGS[i])
    else:
        l3 = IP(src=V4[(i + 1) % len(V4)], dst=V4[i % len(V4)]) / UDP(sport=53, dport=1024 + i)
    add(eth(i) / Dot1Q(vlan=vid, prio=i % 8, id=i % 2) / l3, SIZES[i % len(SIZES)])
add(eth(0) / Dot1Q(vlan=100) / IP(src=V4[0], dst=V4[1]) / ICMP(type=8), 64)
add(eth(1) / Dot1Q(vlan=100) / IP(src=V4[1], dst=V4[0]) / ICMP(type=0), 64)
add(eth(2) / Dot1Q(vlan=200) / IPv6(src=V6[0], dst=V6[1]) / ICMPv6EchoRequest(), 70)
add(eth(3) / Dot1Q(vlan=10) / IP(src=V4[2], dst=V4[3]) / TCP(sport=22, dport=1024, flags="PA"), 300)
add(Ether(src=MAC_A, dst=MAC_BCAST) / Dot1Q(vlan=100) / ARP(op=1, hwsrc=MAC_A, psrc=V4[0], pdst=V4[2]))
add(eth(4) / Dot1Q(vlan=200) / IP(src=V4[5], dst=V4[0]) / SCTP(sport=2905, dport=2905) / SCTPChunkInit(), 100)
add(eth(0) / Dot1Q(vlan=100) / IP(src=V4[0], dst=V4[1], id=0x4444, flags=0, frag=100, proto=17) /
    Raw(b"\x00\x35" * 30), 98)
add(eth(1) / Dot1Q(vlan=300) / IPv6(src=V6[1], dst=V6[2]) / IPv6ExtHdrFragment(id=1, offset=0, m=1) /
    TCP(sport=443, dport=22, flags="S"), 100)
add(eth(2) / Dot1Q(vlan=10) / IP(src=V4[3], dst=V4[2], options=[IPOption_Router_Alert()]) /
    TCP(sport=8080, dport=22, flags="FA"), 80)
add(Ether(src=MAC_B, dst=MAC_MC4) / Dot1Q(vlan=200) / IP(src=V4[1], dst="224.0.0.251") / UDP(sport=5353, dport=5353),
    90)
# 802.1ad (0x88a8) and 0x9100 as a single tag.
add(eth(3, 0x88A8) / Dot1AD(vlan=1000) / IP(src=V4[3], dst=V4[1]) / UDP(sport=53, dport=443), 80)
add(eth(4, 0x9100) / Dot1Q(vlan=1000) / IP(src=V4[4], dst=V4[0]) / TCP(sport=22, dport=443, flags="S"), 80)
add(eth(0, 0x9100) / Dot1Q(vlan=20) / IPv6(src=V6[0], dst=V6[4]) / UDP(sport=53, dport=53), 90)

# --- Double-tagged: 802.1ad / 0x9100 / 0x8100 outer, 802.1Q inner -----------------------
for i, (svid, cvid) in enumerate([(1000, 100), (1000, 200), (2000, 100), (2000, 10), (300, 300)]):
    if i % 2 == 0:
        l3 = IP(src=V4[i], dst=V4[i + 1]) / TCP(sport=1024 + i, dport=PORTS[i], flags="S")
    else:
        l3 = IPv6(src=V6[i], dst=V6[i - 1]) / UDP(sport=53, dport=PORTS[i])
    add(eth(i, 0x88A8) / Dot1AD(vlan=svid) / Dot1Q(vlan=cvid) / l3, SIZES[(i + 4) % len(SIZES)])
add(eth(1) / Dot1Q(vlan=100) / Dot1Q(vlan=200) / IP(src=V4[0], dst=V4[3]) / UDP(sport=1024, dport=53), 90)
add(eth(2) / Dot1Q(vlan=10) / Dot1Q(vlan=100) / IPv6(src=V6[0], dst=V6[2]) / TCP(sport=443, dport=1024,
                                                                                 flags="SA"), 110)
add(eth(3, 0x9100) / Dot1Q(vlan=2000, type=0x8100) / Dot1Q(vlan=10) / IP(src=V4[1], dst=V4[2]) /
    ICMP(type=8), 80)
add(eth(4, 0x88A8) / Dot1AD(vlan=1000) / Dot1Q(vlan=100) / ARP(op=1, hwsrc=MAC_R, psrc=V4[1], pdst=V4[0]), 70)
# Triple-tagged.
add(eth(0, 0x88A8) / Dot1AD(vlan=1000, type=0x8100) / Dot1Q(vlan=100, type=0x8100) / Dot1Q(vlan=10) /
    IP(src=V4[0], dst=V4[1]) / TCP(sport=1024, dport=80, flags="S"), 90)

# --- Short frames: each ends inside a header a filter reads -----------------------------
tcp4 = eth(0) / IP(src=V4[0], dst=V4[1]) / TCP(sport=1024, dport=80, flags="S")
udp4 = eth(1) / IP(src=V4[1], dst=V4[0]) / UDP(sport=53, dport=1024)
tcp6 = eth(2) / IPv6(src=V6[0], dst=V6[1]) / TCP(sport=443, dport=1024, flags="SA")
frag6 = eth(3) / IPv6(src=V6[1], dst=V6[2]) / IPv6ExtHdrFragment(id=3, offset=0, m=1) / UDP(sport=53, dport=53)
arp = Ether(src=MAC_A, dst=MAC_BCAST) / ARP(op=1, hwsrc=MAC_A, psrc=V4[0], pdst=V4[1])
vtcp = eth(4) / Dot1Q(vlan=100) / IP(src=V4[2], dst=V4[3]) / TCP(sport=22, dport=80, flags="S")
icmp6 = eth(0) / IPv6(src=V6[0], dst=V6[1]) / ICMPv6EchoRequest()
add_cut(tcp4, 6)     # inside the destination MAC
add_cut(tcp4, 10)    # inside the source MAC
add_cut(tcp4, 13)    # inside the EtherType
add_cut(tcp4, 14)    # Ethernet header only
add_cut(tcp4, 22)    # IPv4 header up to the fragment field
add_cut(tcp4, 24)    # IPv4 up to the protocol
add_cut(tcp4, 30)    # inside the source address
add_cut(tcp4, 34)    # IPv4 header, no TCP
add_cut(tcp4, 36)    # source port only
add_cut(tcp4, 44)    # TCP cut before the flags
add_cut(tcp4, 47)    # TCP cut right after the flags
add_cut(udp4, 37)    # inside the destination port
add_cut(tcp6, 20)    # IPv6 up to the next header
add_cut(tcp6, 30)    # inside the source address
add_cut(tcp6, 46)    # source address, inside the destination
add_cut(tcp6, 54)    # IPv6 header, no TCP
add_cut(tcp6, 56)    # source port only
add_cut(tcp6, 65)    # TCP cut before the flags
add_cut(frag6, 54)   # fragment header missing
add_cut(frag6, 58)   # inside the fragment header
add_cut(icmp6, 54)   # no ICMPv6 header
add_cut(arp, 30)     # ARP sender address cut
add_cut(arp, 40)     # ARP target address cut
add_cut(vtcp, 16)    # inside the tag
add_cut(vtcp, 18)    # tag, no inner EtherType
add_cut(vtcp, 40)    # tagged IPv4, inside the TCP ports
add_cut(vtcp, 51)    # tagged TCP cut before the flags

# --- Bulk: a deterministic mix, to spread addresses, ports and sizes --------------------
while len(packets) < 600:
    kind = rng.randrange(6)
    size = rng.choice(SIZES + [rng.randrange(60, 1501)])
    mac = MACS[rng.randrange(len(MACS))]
    e = Ether(src=mac[0], dst=mac[1])
    if kind == 0:
        l4 = TCP(sport=rng.choice(PORTS), dport=rng.choice(PORTS), flags=rng.choice(FLAGS))
        add(e / IP(src=rng.choice(V4), dst=rng.choice(V4), ttl=rng.choice([1, 32, 64, 128, 255])) / l4, size)
    elif kind == 1:
        add(e / IP(src=rng.choice(V4), dst=rng.choice(V4), tos=rng.choice([0, 0x10, 0xb8])) /
            UDP(sport=rng.choice(PORTS), dport=rng.choice(PORTS)), size)
    elif kind == 2:
        add(e / IPv6(src=rng.choice(V6), dst=rng.choice(V6), tc=rng.choice([0, 0xb8])) /
            TCP(sport=rng.choice(PORTS), dport=rng.choice(PORTS), flags=rng.choice(FLAGS)), size)
    elif kind == 3:
        add(e / IPv6(src=rng.choice(V6), dst=rng.choice(V6)) / UDP(sport=rng.choice(PORTS),
                                                                    dport=rng.choice(PORTS)), size)
    elif kind == 4:
        vid = rng.choice([10, 100, 200, 4094])
        add(e / Dot1Q(vlan=vid) / IP(src=rng.choice(V4), dst=rng.choice(V4)) /
            TCP(sport=rng.choice(PORTS), dport=rng.choice(PORTS), flags=rng.choice(FLAGS)), size)
    else:
        vid = rng.choice([10, 100, 200])
        add(e / Dot1Q(vlan=vid) / IPv6(src=rng.choice(V6), dst=rng.choice(V6)) /
            UDP(sport=rng.choice(PORTS), dport=rng.choice(PORTS)), size)


def write_pcap(path):
    """A classic pcap, written by hand so that every header byte is fixed."""
    with open(path, "wb") as f:
        # Magic (microseconds), version 2.4, zone 0, sigfigs 0, snaplen, DLT_EN10MB.
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, raw in enumerate(packets):
            f.write(struct.pack("<IIII", i, 0, len(raw), len(raw)))
            f.write(raw)


def main():
    if len(sys.argv) > 2:
        sys.exit("usage: gen_pcap.py [OUT.pcap]")
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) == 2 else os.path.join(here, "filter.pcap")
    write_pcap(out)
    sys.stderr.write(f"wrote {len(packets)} packets to {out}\n")


if __name__ == "__main__":
    main()
