//! A transaction: nf_tables objects to add or delete, encoded as one nfnetlink batch
//! (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`) that the kernel applies whole or not at all.

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};

use super::expr::{Data, Expr};
use super::wire::{self, Attrs, SUBSYS_NFTABLES, attr, msg, udata};

/// An nftables family (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ip = 2,
    Netdev = 5,
    Bridge = 7,
    Ip6 = 10,
}

impl Family {
    /// The name `nft` uses.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Netdev => "netdev",
            Family::Bridge => "bridge",
            Family::Ip6 => "ip6",
        }
    }
}

/// A hook (`NF_INET_*`; the bridge family's `NF_BR_*` have the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// What makes a chain a base chain: its type (`filter`, `nat`, `route`), hook, priority and
/// policy (true: accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
    pub accept: bool,
}

/// A key or data type of a set: `nft`'s datatype number, the length in bytes, and the
/// byte order `nft` records for it (1: host, as strings; 2: big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyType {
    pub id: u32,
    pub len: u32,
    pub byteorder: u32,
}

impl KeyType {
    pub const IPV4_ADDR: KeyType = KeyType { id: 7, len: 4, byteorder: 2 };
    pub const IPV6_ADDR: KeyType = KeyType { id: 8, len: 16, byteorder: 2 };
    pub const ETHER_ADDR: KeyType = KeyType { id: 9, len: 6, byteorder: 2 };
    pub const INET_PROTO: KeyType = KeyType { id: 12, len: 1, byteorder: 2 };
    pub const INET_SERVICE: KeyType = KeyType { id: 13, len: 2, byteorder: 2 };
    pub const MARK: KeyType = KeyType { id: 19, len: 4, byteorder: 1 };
    pub const IFNAME: KeyType = KeyType { id: 41, len: 16, byteorder: 1 };

    /// The types above, which a concatenation may be made of.
    const BASIC: [KeyType; 7] = [
        Self::IPV4_ADDR,
        Self::IPV6_ADDR,
        Self::ETHER_ADDR,
        Self::INET_PROTO,
        Self::INET_SERVICE,
        Self::MARK,
        Self::IFNAME,
    ];

    /// A concatenation (`a . b`) of the types above: `nft`'s combined type number (6 bits
    /// per part), each part padded to 4 bytes as registers hold them, and no byte order
    /// (`nft` records none for a concatenation).
    pub fn concat(parts: &[KeyType]) -> KeyType {
        KeyType {
            id: parts.iter().fold(0, |id, p| (id << 6) | p.id),
            len: parts.iter().map(|p| wire::align4(p.len as usize) as u32).sum(),
            byteorder: 0,
        }
    }

    /// The lengths (unpadded) of the parts of a concatenation; `None` for a basic type.
    pub fn fields(&self) -> Option<Vec<u32>> {
        if self.id < 64 {
            return None;
        }
        let mut out = Vec::new();
        let mut id = self.id;
        while id != 0 {
            out.push(Self::BASIC.iter().find(|b| b.id == id & 0x3f)?.len);
            id >>= 6;
        }
        out.reverse();
        Some(out)
    }
}

/// `NFT_SET_CONSTANT` / `NFT_SET_INTERVAL` / `NFT_SET_MAP`.
pub mod set_flags {
    pub const CONSTANT: u32 = 0x2;
    pub const INTERVAL: u32 = 0x4;
    pub(crate) const MAP: u32 = 0x8;
    /// `NFT_SET_CONCAT`: set by [`super::Batch::add_set`] on an interval set with a
    /// concatenated key (the kernel then needs the field lengths).
    pub(crate) const CONCAT: u32 = 0x80;
}

/// What a map maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapData {
    /// A verdict (a verdict map, `vmap`).
    Verdict,
    /// A value of this type.
    Value(KeyType),
}

/// A set or map to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub key: KeyType,
    /// `Some` for a map.
    pub data: Option<MapData>,
    /// [`set_flags`].
    pub flags: u32,
    /// `auto-merge` (only a hint that `nft` keeps in the set's user data).
    pub auto_merge: bool,
}

/// One set or map element. An interval is two elements: its start, and its end (the first
/// key after it) with `end` set; in a set of concatenations it is one element, from `key`
/// to `key_end` (both included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub end: bool,
    pub data: Option<Data>,
    pub comment: Option<String>,
}

impl Element {
    /// A plain key.
    pub fn key(key: Vec<u8>) -> Self {
        Element { key, ..Element::default() }
    }

    /// The `index`th (from 1) element of a list: libnftnl numbers them so (the kernel
    /// ignores the number).
    fn encode(&self, a: &mut Attrs, index: usize) {
        a.nest(index as u16, |a| {
            a.nest(attr::elem::KEY, |a| {
                a.put(attr::data::VALUE, &self.key);
            });
            if let Some(k) = &self.key_end {
                a.nest(attr::elem::KEY_END, |a| {
                    a.put(attr::data::VALUE, k);
                });
            }
            if let Some(d) = &self.data {
                a.nest(attr::elem::DATA, |a| d.encode(a));
            }
            if self.end {
                a.u32(attr::elem::FLAGS, 1);
            }
            if let Some(c) = &self.comment {
                a.put(attr::elem::USERDATA, &udata::comment(c));
            }
        });
    }
}

/// The elements `[start, end)` of an interval set for `net`; the end is left out when the
/// network reaches the top of the address space (the kernel then treats the interval as
/// open).
pub fn interval(net: &ipnet::IpNet) -> Vec<Element> {
    let start = super::expr::addr_bytes(net.network());
    let mut end = super::expr::addr_bytes(net.broadcast());
    let mut out = vec![Element::key(start)];
    // end = broadcast + 1, big-endian; no end element when it overflows.
    for b in end.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            out.push(Element { key: end, end: true, ..Element::default() });
            break;
        }
    }
    out
}

/// The name an anonymous set is created with (the kernel numbers it).
pub(crate) const ANON_SET: &str = "__set%d";

/// `NFT_SET_ANONYMOUS`.
const SET_ANONYMOUS: u32 = 0x1;

/// One message of a batch and what it does (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) family: u8,
    pub(crate) attrs: Attrs,
    pub(crate) what: String,
}

/// A transaction being put together.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub(crate) msgs: Vec<Msg>,
    /// (family, table, set) → the transaction id of a set created in this batch, which
    /// later messages of the same batch may refer to it by.
    set_ids: Vec<(Family, String, String, u32)>,
}

const NEW: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
const DEL: u16 = NLM_F_REQUEST | NLM_F_ACK;

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// How many messages (objects changed).
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    fn push(&mut self, kind: u16, flags: u16, family: Family, attrs: Attrs, what: String) {
        self.msgs.push(Msg { kind, flags, family: family as u8, attrs, what });
    }

    fn set_id(&self, family: Family, table: &str, set: &str) -> Option<u32> {
        self.set_ids.iter().find(|(f, t, s, _)| *f == family && t == table && s == set).map(|e| e.3)
    }

    /// `add table`: created unless it exists.
    pub fn add_table(&mut self, family: Family, table: &str) -> &mut Self {
        let mut a = Attrs::new();
        a.str(attr::table::NAME, table);
        self.push(msg::NEWTABLE, NEW, family, a, format!("adding table {} {table}", family.name()));
        self
    }

    /// `delete table`: the table and everything in it (ENOENT when it is not there).
    pub fn delete_table(&mut self, family: Family, table: &str) -> &mut Self {
        let mut a = Attrs::new();
        a.str(attr::table::NAME, table);
        self.push(msg::DELTABLE, DEL, family, a, format!("deleting table {} {table}", family.name()));
        self
    }

    /// `add chain`, a base chain when `base` says how it is hooked.
    pub fn add_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        base: Option<&BaseChain>,
    ) -> &mut Self {
        let mut a = Attrs::new();
        a.str(attr::chain::TABLE, table).str(attr::chain::NAME, chain);
        // In the order `nft` writes them.
        if let Some(b) = base {
            a.str(attr::chain::TYPE, b.kind);
            a.u32(attr::chain::POLICY, u32::from(b.accept));
            a.nest(attr::chain::HOOK, |a| {
                a.u32(attr::hook::HOOKNUM, b.hook as u32).u32(attr::hook::PRIORITY, b.priority as u32);
            });
        }
        let what = format!("adding chain {} {table} {chain}", family.name());
        self.push(msg::NEWCHAIN, NEW, family, a, what);
        self
    }

    /// `flush chain`: deletes every rule of the chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Self {
        let mut a = Attrs::new();
        a.str(attr::rule::TABLE, table).str(attr::rule::CHAIN, chain);
        let what = format!("flushing chain {} {table} {chain}", family.name());
        self.push(msg::DELRULE, DEL, family, a, what);
        self
    }

    /// An anonymous constant set (`{ a, b }` in a rule) of `key` holding `keys`, for a rule
    /// later in this batch to look up ([`Expr::AnonLookup`] with the id returned). `meta` is
    /// the meta key the rule matches against it, which `nft` records in the set's user data.
    pub fn add_anon_set(
        &mut self,
        family: Family,
        table: &str,
        key: KeyType,
        meta: Option<u32>,
        keys: &[Vec<u8>],
    ) -> u32 {
        let id = self.set_ids.len() as u32 + 1;
        let mut a = Attrs::new();
        a.str(attr::set::TABLE, table).str(attr::set::NAME, ANON_SET);
        a.u32(attr::set::FLAGS, SET_ANONYMOUS | set_flags::CONSTANT);
        a.u32(attr::set::KEY_TYPE, key.id).u32(attr::set::KEY_LEN, key.len);
        a.u32(attr::set::ID, id);
        a.nest(attr::set::DESC, |a| {
            a.u32(attr::desc::SIZE, keys.len() as u32);
        });
        let mut ud = Vec::new();
        udata::put(&mut ud, udata::SET_KEYBYTEORDER, &key.byteorder.to_ne_bytes());
        if let Some(m) = meta {
            udata::meta_typeof(&mut ud, m);
        }
        a.put(attr::set::USERDATA, &ud);
        let what = format!("adding an anonymous set to {} {table}", family.name());
        self.push(msg::NEWSET, NEW, family, a, what);
        self.set_ids.push((family, table.into(), format!("{ANON_SET}#{id}"), id));
        let mut a = Attrs::new();
        a.str(attr::elem_list::TABLE, table).str(attr::elem_list::SET, ANON_SET);
        a.u32(attr::elem_list::SET_ID, id);
        a.nest(attr::elem_list::ELEMENTS, |a| {
            keys.iter().enumerate().for_each(|(i, k)| Element::key(k.clone()).encode(a, i + 1))
        });
        let what = format!("adding elements of an anonymous set to {} {table}", family.name());
        self.push(msg::NEWSETELEM, NEW, family, a, what);
        id
    }

    /// `add set` / `add map`: created unless it exists.
    pub fn add_set(&mut self, family: Family, table: &str, set: &SetSpec) -> &mut Self {
        let id = self.set_ids.len() as u32 + 1;
        let mut flags = set.flags;
        let mut a = Attrs::new();
        a.str(attr::set::TABLE, table).str(attr::set::NAME, &set.name);
        if set.data.is_some() {
            flags |= set_flags::MAP;
        }
        // Intervals of concatenations (the pipapo set) need each field's length.
        let fields = set.key.fields().filter(|_| flags & set_flags::INTERVAL != 0);
        if fields.is_some() {
            flags |= set_flags::CONCAT;
        }
        a.u32(attr::set::FLAGS, flags);
        a.u32(attr::set::KEY_TYPE, set.key.id).u32(attr::set::KEY_LEN, set.key.len);
        match set.data {
            Some(MapData::Verdict) => {
                a.u32(attr::set::DATA_TYPE, 0xffff_ff00).u32(attr::set::DATA_LEN, 0);
            }
            Some(MapData::Value(t)) => {
                a.u32(attr::set::DATA_TYPE, t.id).u32(attr::set::DATA_LEN, t.len);
            }
            None => {}
        }
        a.u32(attr::set::ID, id);
        if let Some(lens) = &fields {
            a.nest(attr::set::DESC, |a| {
                a.nest(attr::desc::CONCAT, |a| {
                    for len in lens {
                        a.nest(attr::LIST_ELEM, |a| {
                            a.u32(attr::desc::FIELD_LEN, *len);
                        });
                    }
                });
            });
        }
        // What `nft` keeps there, in its order: the byte orders of key and data, whether to
        // merge adjacent intervals, whether key and data are concatenations, and whether the
        // data are intervals (never here).
        let mut ud = Vec::new();
        udata::put(&mut ud, udata::SET_KEYBYTEORDER, &set.key.byteorder.to_ne_bytes());
        if let Some(d) = set.data {
            let order = match d {
                MapData::Verdict => 0u32,
                MapData::Value(t) => t.byteorder,
            };
            udata::put(&mut ud, udata::SET_DATABYTEORDER, &order.to_ne_bytes());
        }
        if set.auto_merge {
            udata::put(&mut ud, udata::SET_MERGE_ELEMENTS, &1u32.to_ne_bytes());
        }
        if set.key.fields().is_some() {
            udata::concat_typeof(&mut ud, udata::SET_KEY_TYPEOF);
        }
        if let Some(MapData::Value(t)) = set.data
            && t.fields().is_some()
        {
            udata::concat_typeof(&mut ud, udata::SET_DATA_TYPEOF);
        }
        if set.data.is_some() {
            udata::put(&mut ud, udata::SET_DATA_INTERVAL, &0u32.to_ne_bytes());
        }
        a.put(attr::set::USERDATA, &ud);
        let kind = if set.data.is_some() { "map" } else { "set" };
        let what = format!("adding {kind} {} {table} {}", family.name(), set.name);
        self.push(msg::NEWSET, NEW, family, a, what);
        self.set_ids.push((family, table.into(), set.name.clone(), id));
        self
    }

    fn elements(&mut self, kind: u16, flags: u16, family: Family, table: &str, set: &str, elems: &[Element]) {
        if elems.is_empty() {
            return;
        }
        let mut a = Attrs::new();
        a.str(attr::elem_list::TABLE, table).str(attr::elem_list::SET, set);
        if let Some(id) = self.set_id(family, table, set) {
            a.u32(attr::elem_list::SET_ID, id);
        }
        a.nest(attr::elem_list::ELEMENTS, |a| elems.iter().enumerate().for_each(|(i, e)| e.encode(a, i + 1)));
        let verb = if kind == msg::NEWSETELEM { "adding" } else { "deleting" };
        let what = format!("{verb} elements of {} {table} {set}", family.name());
        self.push(kind, flags, family, a, what);
    }

    /// `add element`: each one created unless its key is there (with the same data).
    pub fn add_elements(&mut self, family: Family, table: &str, set: &str, elems: &[Element]) -> &mut Self {
        self.elements(msg::NEWSETELEM, NEW, family, table, set, elems);
        self
    }

    /// `create element`: like [`Batch::add_elements`], but EEXIST (and nothing done) if a key
    /// is already there, whatever its data.
    pub fn create_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: &[Element],
    ) -> &mut Self {
        self.elements(msg::NEWSETELEM, NEW | NLM_F_EXCL, family, table, set, elems);
        self
    }

    /// `delete element`: ENOENT (and nothing done) if any is not there.
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: &[Element],
    ) -> &mut Self {
        self.elements(msg::DELSETELEM, DEL, family, table, set, elems);
        self
    }

    /// `add rule`: appended to the chain, with `comment` if given.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr],
        comment: Option<&str>,
    ) -> &mut Self {
        let mut a = Attrs::new();
        a.str(attr::rule::TABLE, table).str(attr::rule::CHAIN, chain);
        let ids: Vec<(String, u32)> = self
            .set_ids
            .iter()
            .filter(|(f, t, _, _)| *f == family && t == table)
            .map(|(_, _, s, id)| (s.clone(), *id))
            .collect();
        let lookup = |s: &str| ids.iter().find(|(n, _)| n == s).map(|e| e.1);
        a.nest(attr::rule::EXPRESSIONS, |a| exprs.iter().for_each(|e| e.encode(a, &lookup)));
        if let Some(c) = comment {
            a.put(attr::rule::USERDATA, &udata::comment(c));
        }
        let what = format!("adding a rule to chain {} {table} {chain}", family.name());
        self.push(msg::NEWRULE, NEW | NLM_F_APPEND, family, a, what);
        self
    }

    /// `delete rule … handle`.
    pub fn delete_rule(&mut self, family: Family, table: &str, chain: &str, handle: u64) -> &mut Self {
        let mut a = Attrs::new();
        a.str(attr::rule::TABLE, table).str(attr::rule::CHAIN, chain).u64(attr::rule::HANDLE, handle);
        let what = format!("deleting rule {handle} of chain {} {table} {chain}", family.name());
        self.push(msg::DELRULE, DEL, family, a, what);
        self
    }

    /// The batch as one datagram, its messages numbered from `seq` (the begin marker) on.
    pub(crate) fn encode(&self, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        put_msg(&mut out, BATCH_MARK, wire::BATCH_BEGIN, NLM_F_REQUEST, seq, 0, &[]);
        for (i, m) in self.msgs.iter().enumerate() {
            let kind = (SUBSYS_NFTABLES << 8) | m.kind;
            put_msg(&mut out, NFGEN_V0, kind, m.flags, seq + 1 + i as u32, m.family, &m.attrs.buf);
        }
        let end = seq + 1 + self.msgs.len() as u32;
        put_msg(&mut out, BATCH_MARK, wire::BATCH_END, NLM_F_REQUEST, end, 0, &[]);
        out
    }
}

/// The `res_id` of an nfgenmsg: the subsystem for the batch markers, 0 otherwise.
const BATCH_MARK: u16 = SUBSYS_NFTABLES;
const NFGEN_V0: u16 = 0;

/// Appends a netlink header, an nfgenmsg and `attrs`.
pub(crate) fn put_msg(
    out: &mut Vec<u8>,
    res_id: u16,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out.resize(wire::align4(out.len()), 0);
}
