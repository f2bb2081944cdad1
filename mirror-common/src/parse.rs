//! The deep parse behind [`crate::field`], and the symmetric flow hash of
//! `--sample-flow`. One implementation for the datapath and the agent's
//! tests, generic over how bytes are read.
use crate::field;

/// Reads the frame as it was on the wire (see [`crate::vm::Packet::load`]).
pub trait Bytes {
    fn load(&self, off: u32, size: u32) -> Option<u32>;
}

/// Parsed fields, indexed by [`crate::field`] constants, then the parse's
/// own scratch words.
pub type Fields = [u32; FIELD_WORDS];
/// Words of [`Fields`]: the fields, then scratch.
pub const FIELD_WORDS: usize = 32;
/// Scratch: where the parse is in the frame, and the header type found
/// there. Kept in the fields array, not in locals, so that the datapath's
/// verifier (which tracks locals, not map memory) sees every path through a
/// header merge again after it, instead of multiplying with the next.
const AT: u32 = field::COUNT;
const NEXT: u32 = AT + 1;
/// A digest of the destination and of the source MAC, for the flow hash
/// of frames that are not IP.
const DST_MAC: u32 = AT + 2;
const SRC_MAC: u32 = AT + 3;

/// Reads and writes of the words the parse reads back. Volatile, so that
/// the compiler keeps them in memory rather than carrying them in registers
/// from one header to the next (which is what the verifier would track).
#[inline(always)]
fn get(f: &Fields, i: u32) -> u32 {
    // SAFETY: an in-bounds element of a live array.
    unsafe { core::ptr::read_volatile(&f[i as usize & (FIELD_WORDS - 1)]) }
}

#[inline(always)]
fn set(f: &mut Fields, i: u32, v: u32) {
    // SAFETY: as in `get`.
    unsafe { core::ptr::write_volatile(&mut f[i as usize & (FIELD_WORDS - 1)], v) }
}

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const ETH_P_8021Q: u32 = 0x8100;
const ETH_P_8021AD: u32 = 0x88a8;
const ETH_P_QINQ1: u32 = 0x9100;

const IPPROTO_HOPOPTS: u32 = 0;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_ROUTING: u32 = 43;
const IPPROTO_FRAGMENT: u32 = 44;
const IPPROTO_AH: u32 = 51;
const IPPROTO_ICMPV6: u32 = 58;
const IPPROTO_DSTOPTS: u32 = 60;
const IPPROTO_MH: u32 = 135;
const IPPROTO_SCTP: u32 = 132;

/// Parses the frame of `direction` into [`Fields`]. Stops quietly where the
/// frame ends: what could not be read stays 0.
#[inline(always)]
pub fn parse_fields<B: Bytes>(b: &B, direction: u32) -> Fields {
    let mut f = [0u32; FIELD_WORDS];
    parse_fields_into(b, direction, &mut f);
    f
}

/// [`parse_fields`] into `f` (the datapath parses in place, in map memory).
#[inline(always)]
pub fn parse_fields_into<B: Bytes>(b: &B, direction: u32, f: &mut Fields) {
    // Word by word: a whole-array assignment becomes a call of the BPF
    // target's byte-wise `memset` (a tenth of a rules session's cost).
    for word in f.iter_mut() {
        // SAFETY: a valid `&mut u32`; volatile keeps these stores.
        unsafe { core::ptr::write_volatile(word, 0) };
    }
    set(f, field::DIRECTION, direction);
    set(f, field::L4_PROTO, field::NO_PROTOCOL);
    if link(b, f).is_none() {
        return;
    }
    let ok = match get(f, field::ETHERTYPE) {
        ETH_P_IP => ipv4(b, f),
        ETH_P_IPV6 => ipv6(b, f),
        _ => None,
    };
    if ok.is_some() && get(f, field::FRAGMENT) != 2 {
        transport(b, f);
    }
    set(f, AT, 0);
    set(f, NEXT, 0);
}

/// Ethernet and VLAN tags: leaves `get(f, AT)` at the network header.
#[inline(always)]
fn link<B: Bytes>(b: &B, f: &mut Fields) -> Option<()> {
    set(f, DST_MAC, mix(b.load(0, 4)? ^ mix(b.load(4, 2)?)));
    set(f, SRC_MAC, mix(b.load(6, 4)? ^ mix(b.load(10, 2)?)));
    set(f, AT, 12);
    set(f, field::ETHERTYPE, b.load(12, 2)?);
    for tag in 0..field::MAX_VLAN_TAGS {
        let ethertype = get(f, field::ETHERTYPE);
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD && ethertype != ETH_P_QINQ1 {
            break;
        }
        let at = get(f, AT);
        set(f, if tag == 0 { field::VLAN_OUTER } else { field::VLAN_INNER }, b.load(at + 2, 2)? & 0x0fff);
        set(f, field::VLAN_COUNT, tag + 1);
        set(f, AT, at + 4);
        set(f, field::ETHERTYPE, b.load(at + 4, 2)?);
    }
    set(f, AT, get(f, AT) + 2);
    Some(())
}

/// Leaves `get(f, AT)` at the transport header and the protocol in `L4_PROTO`.
#[inline(always)]
fn ipv4<B: Bytes>(b: &B, f: &mut Fields) -> Option<()> {
    let l3 = get(f, AT);
    let vihl = b.load(l3, 1)?;
    if vihl >> 4 != 4 || vihl & 0xf < 5 {
        return None;
    }
    set(f, field::IP_VERSION, 4);
    set(f, field::SRC4, b.load(l3 + 12, 4)?);
    set(f, field::DST4, b.load(l3 + 16, 4)?);
    let frag = b.load(l3 + 6, 2)?;
    let fragment = if frag & 0x1fff != 0 {
        2
    } else if frag & 0x2000 != 0 {
        1
    } else {
        0
    };
    set(f, field::FRAGMENT, fragment);
    set(f, field::L4_PROTO, b.load(l3 + 9, 1)?);
    set(f, AT, l3 + (vihl & 0xf) * 4);
    Some(())
}

#[inline(always)]
fn ipv6<B: Bytes>(b: &B, f: &mut Fields) -> Option<()> {
    let l3 = get(f, AT);
    if b.load(l3, 1)? >> 4 != 6 {
        return None;
    }
    set(f, field::IP_VERSION, 6);
    for w in 0..4 {
        set(f, field::SRC6 + w, b.load(l3 + 8 + 4 * w, 4)?);
        set(f, field::DST6 + w, b.load(l3 + 24 + 4 * w, 4)?);
    }
    set(f, NEXT, b.load(l3 + 6, 1)?);
    set(f, AT, l3 + 40);
    for _ in 0..field::MAX_IPV6_EXT_HEADERS {
        if !extension(b, f)? {
            set(f, field::L4_PROTO, get(f, NEXT));
            return Some(());
        }
    }
    // Deeper than the parse goes: no upper-layer protocol.
    if is_ipv6_extension(get(f, NEXT)) {
        return None;
    }
    set(f, field::L4_PROTO, get(f, NEXT));
    Some(())
}

/// Steps over the extension header at `get(f, AT)` if `get(f, NEXT)` is one: true if
/// it did.
#[inline(always)]
fn extension<B: Bytes>(b: &B, f: &mut Fields) -> Option<bool> {
    let at = get(f, AT);
    let len = match get(f, NEXT) {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => (b.load(at + 1, 1)? + 1) * 8,
        IPPROTO_AH => (b.load(at + 1, 1)? + 2) * 4,
        IPPROTO_FRAGMENT => {
            let frag = b.load(at + 2, 2)?;
            let fragment = if frag & 0xfff8 != 0 {
                2
            } else if frag & 1 != 0 {
                1
            } else {
                0
            };
            set(f, field::FRAGMENT, fragment);
            8
        }
        _ => return Some(false),
    };
    set(f, NEXT, b.load(at, 1)?);
    set(f, AT, at + len);
    Some(true)
}

/// Ports, TCP flags or ICMP type and code of an unfragmented packet or a
/// first fragment.
#[inline(always)]
fn transport<B: Bytes>(b: &B, f: &mut Fields) -> Option<()> {
    let l4 = get(f, AT);
    let v4 = get(f, field::IP_VERSION) == 4;
    match get(f, field::L4_PROTO) {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let ports = b.load(l4, 4)?;
            set(f, field::SRC_PORT, ports >> 16);
            set(f, field::DST_PORT, ports & 0xffff);
            set(f, field::HAS_L4, 1);
            if get(f, field::L4_PROTO) == IPPROTO_TCP {
                set(f, field::TCP_FLAGS, b.load(l4 + 13, 1)?);
            }
        }
        IPPROTO_ICMP if v4 => read_icmp(b, l4, f)?,
        IPPROTO_ICMPV6 if !v4 => read_icmp(b, l4, f)?,
        _ => {}
    }
    Some(())
}

#[inline(always)]
fn read_icmp<B: Bytes>(b: &B, l4: u32, f: &mut Fields) -> Option<()> {
    let type_code = b.load(l4, 2)?;
    set(f, field::ICMP_TYPE, type_code >> 8);
    set(f, field::ICMP_CODE, type_code & 0xff);
    set(f, field::HAS_L4, 1);
    Some(())
}

#[inline(always)]
fn is_ipv6_extension(next: u32) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_AH | IPPROTO_FRAGMENT
    )
}

/// murmur3's finalizer: every input bit reaches every output bit.
#[inline(always)]
const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// A hash of the flow that is the same for both directions: endpoints
/// (address, port; MAC for frames that are not IP) are put in order before
/// hashing. Fragments hash without ports (later fragments have none), so
/// all fragments of a datagram agree; a flow some of whose packets are
/// fragmented and some not (large UDP replies to small requests) is then
/// two flows for sampling. No per-host seed: agents on different hosts keep
/// the same flows.
#[inline(always)]
pub fn flow_hash(f: &Fields) -> u32 {
    let (a, b) = match f[field::IP_VERSION as usize] {
        4 => (mix(f[field::SRC4 as usize]), mix(f[field::DST4 as usize])),
        6 => {
            let mut a = 0u32;
            let mut b = 0u32;
            for w in 0..4 {
                a = mix(a ^ f[(field::SRC6 + w) as usize]);
                b = mix(b ^ f[(field::DST6 + w) as usize]);
            }
            (a, b)
        }
        // Not IP (ARP, LLDP, ...): the link-layer endpoints, so that such
        // traffic too is sampled per conversation.
        _ => (f[SRC_MAC as usize], f[DST_MAC as usize]),
    };
    let ported = f[field::FRAGMENT as usize] == 0
        && f[field::HAS_L4 as usize] != 0
        && matches!(f[field::L4_PROTO as usize], IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP);
    let (sp, dp) = if ported { (f[field::SRC_PORT as usize], f[field::DST_PORT as usize]) } else { (0, 0) };
    let ((lo, lo_port), (hi, hi_port)) =
        if (a, sp) <= (b, dp) { ((a, sp), (b, dp)) } else { ((b, dp), (a, sp)) };
    let mut h = mix(lo ^ 0x9e37_79b9);
    h = mix(h ^ hi);
    h = mix(h ^ (lo_port << 16 | hi_port));
    mix(h ^ f[field::L4_PROTO as usize] ^ f[field::ETHERTYPE as usize] << 9)
}

/// Whether a draw (random, or a flow hash) keeps the packet when one in
/// `every` is kept.
#[inline(always)]
pub fn keeps(draw: u32, every: u32) -> bool {
    keeps_below(draw, keep_below(every))
}

/// The bound a draw must fall below to keep one packet in `every` (0: keep
/// every packet).
#[inline(always)]
pub const fn keep_below(every: u32) -> u64 {
    if every <= 1 { 0 } else { (1u64 << 32) / every as u64 }
}

/// Whether a draw falls below `bound` (from [`keep_below`]).
#[inline(always)]
pub fn keeps_below(draw: u32, bound: u64) -> bool {
    bound == 0 || u64::from(draw) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Frame<'a>(&'a [u8]);

    impl Bytes for Frame<'_> {
        fn load(&self, off: u32, size: u32) -> Option<u32> {
            let s = self.0.get(off as usize..(off + size) as usize)?;
            Some(s.iter().fold(0, |v, b| v << 8 | u32::from(*b)))
        }
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        v.extend_from_slice(&ethertype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn ipv4(proto: u8, frag: u16, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut v = vec![0x45, 0, 0, 0, 0, 0];
        v.extend_from_slice(&frag.to_be_bytes());
        v.extend_from_slice(&[64, proto, 0, 0]);
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(l4);
        v
    }

    const TCP_SYN: [u8; 20] = [0x30, 0x39, 0x01, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0];

    #[test]
    fn tagged_ipv4_tcp() {
        let mut inner = vec![0x20, 0x0a, 0x08, 0x00];
        inner.extend(ipv4(6, 0, [198, 18, 0, 1], [198, 18, 0, 2], &TCP_SYN));
        let frame = eth(0x8100, &inner);
        let f = parse_fields(&Frame(&frame), 1);
        assert_eq!(f[field::DIRECTION as usize], 1);
        assert_eq!(f[field::VLAN_COUNT as usize], 1);
        assert_eq!(f[field::VLAN_OUTER as usize], 10);
        assert_eq!(f[field::ETHERTYPE as usize], 0x0800);
        assert_eq!(f[field::L4_PROTO as usize], 6);
        assert_eq!(f[field::SRC_PORT as usize], 12345);
        assert_eq!(f[field::DST_PORT as usize], 443);
        assert_eq!(f[field::TCP_FLAGS as usize], 0x02);
        assert_eq!(f[field::SRC4 as usize], 0xc612_0001);
        assert_eq!(f[field::HAS_L4 as usize], 1);
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let frame = eth(0x0800, &ipv4(17, 0x00b9, [198, 18, 0, 1], [198, 18, 0, 2], &TCP_SYN));
        let f = parse_fields(&Frame(&frame), 0);
        assert_eq!(f[field::FRAGMENT as usize], 2);
        assert_eq!(f[field::L4_PROTO as usize], 17);
        assert_eq!(f[field::HAS_L4 as usize], 0);
        assert_eq!(f[field::SRC_PORT as usize], 0);
    }

    #[test]
    fn ipv6_extension_headers_are_followed() {
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
        ip6.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain([0u8; 11].iter()).chain([1u8].iter()));
        ip6.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain([0u8; 11].iter()).chain([2u8].iter()));
        // Hop-by-hop (8 bytes) -> fragment (first) -> UDP.
        ip6.extend([44, 0, 1, 4, 0, 0, 0, 0]);
        ip6.extend([17, 0, 0, 1, 0, 0, 0, 7]);
        ip6.extend([0, 53, 0x30, 0x39, 0, 8, 0, 0]);
        let frame = eth(0x86dd, &ip6);
        let f = parse_fields(&Frame(&frame), 0);
        assert_eq!(f[field::IP_VERSION as usize], 6);
        assert_eq!(f[field::L4_PROTO as usize], 17);
        assert_eq!(f[field::FRAGMENT as usize], 1);
        assert_eq!((f[field::SRC_PORT as usize], f[field::DST_PORT as usize]), (53, 12345));
        assert_eq!(f[field::SRC6 as usize], 0x2001_0db8);
        assert_eq!(f[field::DST6 as usize + 3], 2);
    }

    #[test]
    fn flow_hash_is_symmetric() {
        let fwd = eth(0x0800, &ipv4(6, 0, [198, 18, 0, 1], [198, 18, 0, 2], &TCP_SYN));
        let mut rev_tcp = TCP_SYN;
        rev_tcp[..4].copy_from_slice(&[0x01, 0xbb, 0x30, 0x39]);
        let rev = eth(0x0800, &ipv4(6, 0, [198, 18, 0, 2], [198, 18, 0, 1], &rev_tcp));
        let a = flow_hash(&parse_fields(&Frame(&fwd), 0));
        assert_eq!(a, flow_hash(&parse_fields(&Frame(&rev), 1)));
        let other = eth(0x0800, &ipv4(6, 0, [198, 18, 0, 1], [198, 18, 0, 3], &TCP_SYN));
        assert_ne!(a, flow_hash(&parse_fields(&Frame(&other), 0)));
    }

    #[test]
    fn frames_that_are_not_ip_hash_by_their_mac_addresses_both_ways() {
        let arp = |dst: [u8; 6], src: [u8; 6]| {
            let mut v = dst.to_vec();
            v.extend_from_slice(&src);
            v.extend_from_slice(&[0x08, 0x06]);
            v.extend_from_slice(&[0u8; 46]);
            v
        };
        let (a, b, c) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 3]);
        let h = |f: &[u8]| flow_hash(&parse_fields(&Frame(f), 0));
        assert_eq!(h(&arp(a, b)), h(&arp(b, a)));
        assert_ne!(h(&arp(a, b)), h(&arp(a, c)));
    }

    #[test]
    fn keeps_one_in_n() {
        assert!(keeps(u32::MAX, 0) && keeps(u32::MAX, 1));
        let kept = (0..100_000u32).filter(|i| keeps(mix(*i), 100)).count();
        assert!((900..1100).contains(&kept), "{kept}");
    }
}
