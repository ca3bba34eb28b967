//! The bytes of nf_tables messages: constants from `linux/netfilter/nf_tables.h` and
//! `nfnetlink.h`, and netlink attributes (TLVs) written and read.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub(crate) const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `NFNL_MSG_BATCH_END`.
pub(crate) const BATCH_BEGIN: u16 = 16;
pub(crate) const BATCH_END: u16 = 17;

/// `NFT_MSG_*`.
pub(crate) mod msg {
    pub(crate) const NEWTABLE: u16 = 0;
    pub(crate) const GETTABLE: u16 = 1;
    pub(crate) const DELTABLE: u16 = 2;
    pub(crate) const NEWCHAIN: u16 = 3;
    pub(crate) const NEWRULE: u16 = 6;
    pub(crate) const GETRULE: u16 = 7;
    pub(crate) const DELRULE: u16 = 8;
    pub(crate) const NEWSET: u16 = 9;
    pub(crate) const NEWSETELEM: u16 = 12;
    pub(crate) const GETSETELEM: u16 = 13;
    pub(crate) const DELSETELEM: u16 = 14;
}

/// Attribute numbers, one module per object (`NFTA_<OBJECT>_*`).
pub(crate) mod attr {
    pub(crate) const LIST_ELEM: u16 = 1;
    pub(crate) mod table {
        pub(crate) const NAME: u16 = 1;
    }
    pub(crate) mod chain {
        pub(crate) const TABLE: u16 = 1;
        pub(crate) const NAME: u16 = 3;
        pub(crate) const HOOK: u16 = 4;
        pub(crate) const POLICY: u16 = 5;
        pub(crate) const TYPE: u16 = 7;
    }
    pub(crate) mod hook {
        pub(crate) const HOOKNUM: u16 = 1;
        pub(crate) const PRIORITY: u16 = 2;
    }
    pub(crate) mod rule {
        pub(crate) const TABLE: u16 = 1;
        pub(crate) const CHAIN: u16 = 2;
        pub(crate) const HANDLE: u16 = 3;
        pub(crate) const EXPRESSIONS: u16 = 4;
        pub(crate) const USERDATA: u16 = 7;
    }
    pub(crate) mod set {
        pub(crate) const TABLE: u16 = 1;
        pub(crate) const NAME: u16 = 2;
        pub(crate) const FLAGS: u16 = 3;
        pub(crate) const KEY_TYPE: u16 = 4;
        pub(crate) const KEY_LEN: u16 = 5;
        pub(crate) const DATA_TYPE: u16 = 6;
        pub(crate) const DATA_LEN: u16 = 7;
        pub(crate) const DESC: u16 = 9;
        pub(crate) const ID: u16 = 10;
        pub(crate) const USERDATA: u16 = 13;
    }
    /// `NFTA_SET_DESC_*` and `NFTA_SET_FIELD_*`: the lengths of a concatenation's fields.
    pub(crate) mod desc {
        pub(crate) const SIZE: u16 = 1;
        pub(crate) const CONCAT: u16 = 2;
        pub(crate) const FIELD_LEN: u16 = 1;
    }
    pub(crate) mod elem {
        pub(crate) const KEY: u16 = 1;
        pub(crate) const DATA: u16 = 2;
        pub(crate) const FLAGS: u16 = 3;
        pub(crate) const USERDATA: u16 = 6;
        pub(crate) const KEY_END: u16 = 10;
    }
    pub(crate) mod elem_list {
        pub(crate) const TABLE: u16 = 1;
        pub(crate) const SET: u16 = 2;
        pub(crate) const ELEMENTS: u16 = 3;
        pub(crate) const SET_ID: u16 = 4;
    }
    pub(crate) mod expr {
        pub(crate) const NAME: u16 = 1;
        pub(crate) const DATA: u16 = 2;
    }
    pub(crate) mod data {
        pub(crate) const VALUE: u16 = 1;
        pub(crate) const VERDICT: u16 = 2;
    }
    pub(crate) mod verdict {
        pub(crate) const CODE: u16 = 1;
        pub(crate) const CHAIN: u16 = 2;
    }
}

/// `NLA_F_NESTED`, set on nested attributes as libmnl does.
const NLA_F_NESTED: u16 = 0x8000;
/// The type bits of an attribute header (without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink attributes being written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Attrs {
    pub(crate) buf: Vec<u8>,
}

impl Attrs {
    pub(crate) fn new() -> Self {
        Attrs::default()
    }

    pub(crate) fn put(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING` policies accept and `nft` sends.
    pub(crate) fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(kind, &v)
    }

    /// A 32-bit value in network byte order (nf_tables' integers are big-endian).
    pub(crate) fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    pub(crate) fn u64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    /// A nested attribute whose content `f` writes.
    pub(crate) fn nest(&mut self, kind: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }
}

/// The attributes in `buf` as (type, payload); stops at the first malformed one.
pub(crate) fn parse(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let payload = &buf[4..len];
        buf = buf.get(align4(len)..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// The first attribute of type `kind` in `buf`.
pub(crate) fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    parse(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

pub(crate) fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub(crate) fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
pub(crate) fn string(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// The user data `nft` attaches to objects: a list of (u8 type, u8 length, value) records.
pub(crate) mod udata {
    /// `NFTNL_UDATA_RULE_COMMENT` and `NFTNL_UDATA_SET_ELEM_COMMENT` (both 0).
    pub(crate) const COMMENT: u8 = 0;
    /// `NFTNL_UDATA_SET_KEYBYTEORDER`, `NFTNL_UDATA_SET_DATABYTEORDER`,
    /// `NFTNL_UDATA_SET_MERGE_ELEMENTS`.
    pub(crate) const SET_KEYBYTEORDER: u8 = 0;
    pub(crate) const SET_DATABYTEORDER: u8 = 1;
    pub(crate) const SET_MERGE_ELEMENTS: u8 = 2;
    /// `NFTNL_UDATA_SET_KEY_TYPEOF` / `NFTNL_UDATA_SET_DATA_TYPEOF`: `nft` records there
    /// that a key or data is a concatenation (nested: the expression kind, and no details).
    pub(crate) const SET_KEY_TYPEOF: u8 = 3;
    pub(crate) const SET_DATA_TYPEOF: u8 = 4;
    /// nft's `EXPR_CONCAT`, the kind recorded in a typeof record.
    pub(crate) const EXPR_CONCAT: u32 = 13;
    /// `NFTNL_UDATA_SET_DATA_INTERVAL`.
    pub(crate) const SET_DATA_INTERVAL: u8 = 6;

    pub(crate) fn put(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
        out.push(kind);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    }

    /// The typeof record `nft` writes for a concatenated key or data: `{ 0: EXPR_CONCAT, 1: {} }`.
    pub(crate) fn concat_typeof(out: &mut Vec<u8>, kind: u8) {
        let mut inner = Vec::new();
        put(&mut inner, 0, &EXPR_CONCAT.to_ne_bytes());
        put(&mut inner, 1, &[]);
        put(out, kind, &inner);
    }

    /// nft's `EXPR_META`, and the typeof record it writes for a set matched against a meta
    /// key: `{ 0: EXPR_META, 1: { 0: key } }`.
    pub(crate) const EXPR_META: u32 = 9;

    pub(crate) fn meta_typeof(out: &mut Vec<u8>, key: u32) {
        let mut data = Vec::new();
        put(&mut data, 0, &key.to_ne_bytes());
        let mut inner = Vec::new();
        put(&mut inner, 0, &EXPR_META.to_ne_bytes());
        put(&mut inner, 1, &data);
        put(out, SET_KEY_TYPEOF, &inner);
    }

    /// A comment record: the text and its NUL, as `nft` writes it.
    pub(crate) fn comment(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.push(0);
        let mut out = Vec::with_capacity(v.len() + 2);
        put(&mut out, COMMENT, &v);
        out
    }

    /// The comment in a user data blob, if there is one.
    pub(crate) fn find_comment(mut buf: &[u8]) -> Option<String> {
        while buf.len() >= 2 {
            let (kind, len) = (buf[0], buf[1] as usize);
            let value = buf.get(2..2 + len)?;
            if kind == COMMENT {
                return Some(super::string(value));
            }
            buf = &buf[2 + len..];
        }
        None
    }
}
