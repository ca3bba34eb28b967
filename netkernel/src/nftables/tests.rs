//! Encodings byte for byte (the layouts `nft --debug=netlink,mnl` shows for the same
//! objects), and the readers on messages built here.

use super::expr::{self, CmpOp, Expr, REG_1};
use super::wire::{Attrs, attr, parse};
use super::*;

fn ne16(v: u16) -> [u8; 2] {
    v.to_ne_bytes()
}

#[test]
fn attributes_are_padded_and_nests_flagged() {
    let mut a = Attrs::new();
    a.str(1, "t").u32(2, 0x0102_0304).nest(3, |a| {
        a.put(1, &[0xff]);
    });
    let mut want = Vec::new();
    want.extend(ne16(6));
    want.extend(ne16(1));
    want.extend([b't', 0, 0, 0]);
    want.extend(ne16(8));
    want.extend(ne16(2));
    want.extend([1, 2, 3, 4]);
    want.extend(ne16(12));
    want.extend(ne16(3 | 0x8000));
    want.extend(ne16(5));
    want.extend(ne16(1));
    want.extend([0xff, 0, 0, 0]);
    assert_eq!(a.buf, want);
    let read: Vec<(u16, Vec<u8>)> = parse(&a.buf).map(|(k, v)| (k, v.to_vec())).collect();
    assert_eq!(read, vec![(1, b"t\0".to_vec()), (2, vec![1, 2, 3, 4]), (3, a.buf[20..].to_vec())]);
}

#[test]
fn a_batch_is_framed_by_begin_and_end_markers() {
    let mut b = Batch::new();
    b.add_table(Family::Inet, "t");
    let buf = b.encode(7);
    // BEGIN (20 bytes), NEWTABLE (20 + 8), END (20).
    assert_eq!(buf.len(), 20 + 28 + 20);
    let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
    let half = |i: usize| u16::from_ne_bytes(buf[i..i + 2].try_into().unwrap());
    assert_eq!((word(0), half(4), word(8)), (20, 16, 7));
    assert_eq!(&buf[16..20], &[0, 0, 0, 10], "res_id is NFNL_SUBSYS_NFTABLES, big-endian");
    assert_eq!((word(20), half(24), word(28)), (28, 10 << 8, 8));
    assert_eq!(half(26) & netlink_packet_core::NLM_F_ACK, netlink_packet_core::NLM_F_ACK);
    assert_eq!(buf[36], Family::Inet as u8);
    assert_eq!((half(52), word(56)), (17, 9));
}

#[test]
fn prefixes_compile_as_nft_compiles_them() {
    // ip daddr 224.0.0.0/4: the whole address, masked (nft: bitwise … & 0x000000f0).
    let e = expr::match_net(&"224.0.0.0/4".parse().unwrap(), false, CmpOp::Eq);
    assert_eq!(e[2], Expr::Payload { base: expr::Base::Network, offset: 16, len: 4, dreg: REG_1 });
    assert_eq!(e[3], Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: vec![0xf0, 0, 0, 0], xor: vec![0; 4] });
    assert_eq!(e[4], Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![0xe0, 0, 0, 0] });
    // ip6 daddr ff00::/8: one byte loaded (nft: payload load 1b @ network header + 24).
    let e = expr::match_net(&"ff00::/8".parse().unwrap(), false, CmpOp::Eq);
    assert_eq!(e[1], Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![10] });
    assert_eq!(e[2], Expr::Payload { base: expr::Base::Network, offset: 24, len: 1, dreg: REG_1 });
    assert_eq!(e[3], Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![0xff] });
}

#[test]
fn intervals_end_after_the_broadcast_address() {
    let i = interval(&"10.0.0.0/24".parse().unwrap());
    assert_eq!(i.len(), 2);
    assert_eq!((i[0].key.as_slice(), i[0].end), (&[10, 0, 0, 0][..], false));
    assert_eq!((i[1].key.as_slice(), i[1].end), (&[10, 0, 1, 0][..], true));
    // The top of the space has no end element.
    assert_eq!(interval(&"255.255.255.0/24".parse().unwrap()).len(), 1);
    let mut both = interval(&"10.0.0.0/24".parse().unwrap());
    both.extend(interval(&"192.168.0.0/30".parse().unwrap()));
    both.extend(interval(&"255.0.0.0/8".parse().unwrap()));
    both.reverse();
    let nets: Vec<String> = interval_prefixes(&both).iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/24", "192.168.0.0/30", "255.0.0.0/8"]);
}

#[test]
fn elements_carry_the_comment_nft_writes() {
    let e = Element {
        key: vec![10, 0, 0, 5],
        key_end: None,
        end: false,
        data: Some(Data::Verdict(Verdict::Jump("g".into()))),
        comment: Some("net/c1/eth0".into()),
    };
    let mut b = Batch::new();
    b.add_elements(Family::Inet, "t", "src4", std::slice::from_ref(&e));
    let a = &b.msgs[0].attrs.buf;
    let list = wire::find(a, attr::elem_list::ELEMENTS).unwrap();
    let elem = wire::find(list, attr::LIST_ELEM).unwrap();
    // `nft --debug=netlink`: userdata = { \x00\x0cnet/c1/eth0\x00 }
    assert_eq!(wire::find(elem, attr::elem::USERDATA).unwrap(), b"\x00\x0cnet/c1/eth0\x00");
    assert_eq!(parse_element(elem), Some(e));
}

#[test]
fn comments_are_cleaned_and_bounded() {
    assert_eq!(comment("a\"b\\c d\n").unwrap(), "abc d");
    assert!(comment(&"x".repeat(129)).is_err());
}

#[test]
fn set_user_data_is_what_nft_writes() {
    let mut b = Batch::new();
    let map = SetSpec {
        name: "m".into(),
        key: KeyType::IPV4_ADDR,
        data: Some(MapData::Verdict),
        flags: 0,
        auto_merge: false,
    };
    let set = SetSpec {
        name: "s".into(),
        key: KeyType::IPV4_ADDR,
        data: None,
        flags: set_flags::INTERVAL,
        auto_merge: true,
    };
    b.add_set(Family::Inet, "t", &map).add_set(Family::Inet, "t", &set);
    let ud = |i: usize| wire::find(&b.msgs[i].attrs.buf, attr::set::USERDATA).unwrap().to_vec();
    let n = |v: u32| v.to_ne_bytes();
    // `nft --debug=mnl add map inet t m { type ipv4_addr : verdict; }`
    let mut want = vec![0, 4];
    want.extend(n(2));
    want.extend([1, 4]);
    want.extend(n(0));
    want.extend([6, 4]);
    want.extend(n(0));
    assert_eq!(ud(0), want);
    // `… add set inet t s { type ipv4_addr; flags interval; auto-merge; }`
    let mut want = vec![0, 4];
    want.extend(n(2));
    want.extend([2, 4]);
    want.extend(n(1));
    assert_eq!(ud(1), want);
    let flags = wire::find(&b.msgs[0].attrs.buf, attr::set::FLAGS).and_then(wire::be_u32);
    assert_eq!(flags, Some(set_flags::MAP));
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn an_anonymous_set_is_what_nft_sends() {
    // `nft --debug=mnl add rule inet s input iifname { "flannel.1", "flannel-v6.1" } …`:
    // the set (`__set%d`, anonymous and constant, size 2, typeof `meta iifname`) and its
    // elements (numbered in the list, as libnftnl does).
    let mut b = Batch::new();
    let keys = [expr::ifname_bytes("flannel.1"), expr::ifname_bytes("flannel-v6.1")];
    let id = b.add_anon_set(Family::Inet, "s", KeyType::IFNAME, Some(expr::meta::IIFNAME), &keys);
    assert_eq!(id, 1);
    assert_eq!(
        b.msgs[0].attrs.buf,
        unhex(
            "06000100730000000c0002005f5f73657425640008000300000000030800040000000029080005000000001008000a00000000010c00098008000100000000021a000d00000401000000030e00040900000001060004060000000000"
        )
    );
    assert_eq!(
        b.msgs[1].attrs.buf,
        unhex(
            "06000100730000000c0002005f5f73657425640008000400000000013c0003801c0001801800018014000100666c616e6e656c2e31000000000000001c0002801800018014000100666c616e6e656c2d76362e3100000000"
        )
    );
    // The rule refers to it by the name template and the id: `lookup reg 1 set __set%d 0x1`.
    let mut a = Attrs::new();
    Expr::AnonLookup { id, sreg: REG_1, invert: true }.encode(&mut a, &|_| None);
    let data = wire::find(wire::find(&a.buf, attr::LIST_ELEM).unwrap(), attr::expr::DATA).unwrap();
    assert_eq!(data, unhex("08000200000000010c0001005f5f73657425640008000400000000010800050000000001"));
}

#[test]
fn concatenations_know_their_fields() {
    let k = KeyType::concat(&[KeyType::IPV6_ADDR, KeyType::INET_PROTO, KeyType::INET_SERVICE]);
    // `nft --debug=mnl`: key type 0x830d (8 << 12 | 12 << 6 | 13), 24 bytes, no byte order.
    assert_eq!((k.id, k.len, k.byteorder), ((8 << 12) | (12 << 6) | 13, 24, 0));
    assert_eq!(k.fields(), Some(vec![16, 1, 2]));
    assert_eq!(KeyType::IPV4_ADDR.fields(), None);
    // A part this module does not know: no field lengths rather than wrong ones.
    assert_eq!(KeyType { id: (7 << 6) | 63, len: 8, byteorder: 0 }.fields(), None);
    assert_eq!(expr::reg_at(0), REG_1);
    assert_eq!((expr::reg_at(1), expr::reg_at(4), expr::reg_at(5)), (9, 2, 13));
}
