//! A small VICI codec and client: the protocol strongSwan's charon speaks on its control
//! socket (`src/libcharon/plugins/vici/README.md` in strongSwan). overlayd configures charon
//! only through it — never by writing `swanctl.conf` and reloading.
//!
//! Wire format: every packet is a 32-bit big-endian length, then a one-byte packet type, a
//! name for the named types (one length byte + bytes), and a message. A message is a
//! sequence of elements: section start (name) / end, key-value (name, 16-bit length
//! value), list start (name) / item (16-bit length value) / end.
//!
//! The client is synchronous (a unix stream with timeouts): the controller calls it through
//! `crate::kernel::blocking`, like every other blocking kernel-side call.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest packet we accept from charon (its own limit is 512 KiB).
pub const MAX_PACKET: usize = 512 * 1024;

/// Packet types.
mod ptype {
    pub const CMD_REQUEST: u8 = 0;
    pub const CMD_RESPONSE: u8 = 1;
    pub const CMD_UNKNOWN: u8 = 2;
    pub const EVENT_REGISTER: u8 = 3;
    pub const EVENT_UNREGISTER: u8 = 4;
    pub const EVENT_CONFIRM: u8 = 5;
    pub const EVENT_UNKNOWN: u8 = 6;
    pub const EVENT: u8 = 7;
}

/// Message element types.
mod etype {
    pub const SECTION_START: u8 = 1;
    pub const SECTION_END: u8 = 2;
    pub const KEY_VALUE: u8 = 3;
    pub const LIST_START: u8 = 4;
    pub const LIST_ITEM: u8 = 5;
    pub const LIST_END: u8 = 6;
}

/// A value in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A key's value (bytes; usually text).
    Bytes(Vec<u8>),
    /// A list of values.
    List(Vec<Vec<u8>>),
    /// A nested section.
    Section(Message),
}

/// A message: named values in order (VICI keeps order; charon reads sections by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message(pub Vec<(String, Value)>);

/// Why a VICI exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ViciError {
    /// The socket.
    #[error("VICI socket: {0}")]
    Io(#[from] std::io::Error),
    /// Bytes that are not a VICI message.
    #[error("malformed VICI data: {0}")]
    Malformed(String),
    /// A name or value too long for its length field.
    #[error("{0} too long for VICI")]
    TooLong(String),
    /// charon does not know the command or event.
    #[error("charon does not know {0:?}")]
    Unknown(String),
    /// charon answered `success = no`.
    #[error("charon refused {command}: {message}")]
    Refused {
        /// The command.
        command: String,
        /// Its `errmsg`.
        message: String,
    },
}

impl Message {
    /// An empty message.
    pub fn new() -> Self {
        Message(Vec::new())
    }

    /// Adds a key with a text value.
    pub fn kv(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.0.push((key.into(), Value::Bytes(value.as_ref().to_vec())));
        self
    }

    /// Adds a list.
    pub fn list<I, T>(mut self, key: &str, items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.0.push((key.into(), Value::List(items.into_iter().map(|i| i.as_ref().to_vec()).collect())));
        self
    }

    /// Adds a section.
    pub fn section(mut self, key: &str, m: Message) -> Self {
        self.0.push((key.into(), Value::Section(m)));
        self
    }

    /// The first value named `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A key's value as text.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// A nested section.
    pub fn sub(&self, key: &str) -> Option<&Message> {
        match self.get(key)? {
            Value::Section(m) => Some(m),
            _ => None,
        }
    }

    /// A list's items as text (non-UTF-8 items skipped).
    pub fn strs(&self, key: &str) -> Vec<&str> {
        match self.get(key) {
            Some(Value::List(items)) => items.iter().filter_map(|i| std::str::from_utf8(i).ok()).collect(),
            _ => Vec::new(),
        }
    }

    /// The encoded elements.
    pub fn encode(&self) -> Result<Vec<u8>, ViciError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), ViciError> {
        for (k, v) in &self.0 {
            match v {
                Value::Bytes(b) => {
                    out.push(etype::KEY_VALUE);
                    put_name(out, k)?;
                    put_value(out, b)?;
                }
                Value::List(items) => {
                    out.push(etype::LIST_START);
                    put_name(out, k)?;
                    for i in items {
                        out.push(etype::LIST_ITEM);
                        put_value(out, i)?;
                    }
                    out.push(etype::LIST_END);
                }
                Value::Section(m) => {
                    out.push(etype::SECTION_START);
                    put_name(out, k)?;
                    m.encode_into(out)?;
                    out.push(etype::SECTION_END);
                }
            }
        }
        Ok(())
    }

    /// Decodes elements (a whole message, sections balanced).
    pub fn decode(data: &[u8]) -> Result<Message, ViciError> {
        let mut r = Reader { data, pos: 0 };
        let m = decode_section(&mut r, 0)?;
        if r.pos != data.len() {
            return Err(ViciError::Malformed("section end without a start".into()));
        }
        Ok(m)
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), ViciError> {
    let len = u8::try_from(name.len()).map_err(|_| ViciError::TooLong(format!("name {name:.40}…")))?;
    out.push(len);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn put_value(out: &mut Vec<u8>, v: &[u8]) -> Result<(), ViciError> {
    let len = u16::try_from(v.len()).map_err(|_| ViciError::TooLong(format!("a {}-byte value", v.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(v);
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ViciError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len());
        let end = end.ok_or_else(|| ViciError::Malformed(format!("truncated at byte {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, ViciError> {
        Ok(self.take(1)?[0])
    }

    fn name(&mut self) -> Result<String, ViciError> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ViciError::Malformed("a name is not UTF-8".into()))
    }

    fn value(&mut self) -> Result<Vec<u8>, ViciError> {
        let len = self.take(2)?;
        let n = u16::from_be_bytes([len[0], len[1]]) as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// Sections nest at most this deep (charon's own messages nest 4–5 levels).
const MAX_DEPTH: usize = 32;

fn decode_section(r: &mut Reader<'_>, depth: usize) -> Result<Message, ViciError> {
    if depth > MAX_DEPTH {
        return Err(ViciError::Malformed("sections nested too deep".into()));
    }
    let mut m = Message::new();
    while r.pos < r.data.len() {
        match r.u8()? {
            etype::SECTION_START => {
                let name = r.name()?;
                let inner = decode_section(r, depth + 1)?;
                m.0.push((name, Value::Section(inner)));
            }
            etype::SECTION_END => {
                if depth == 0 {
                    // Let the caller see the stray end.
                    r.pos -= 1;
                    return Ok(m);
                }
                return Ok(m);
            }
            etype::KEY_VALUE => {
                let name = r.name()?;
                let v = r.value()?;
                m.0.push((name, Value::Bytes(v)));
            }
            etype::LIST_START => {
                let name = r.name()?;
                let mut items = Vec::new();
                loop {
                    match r.u8()? {
                        etype::LIST_ITEM => items.push(r.value()?),
                        etype::LIST_END => break,
                        t => return Err(ViciError::Malformed(format!("element {t} inside a list"))),
                    }
                }
                m.0.push((name, Value::List(items)));
            }
            t => return Err(ViciError::Malformed(format!("unknown element type {t}"))),
        }
    }
    if depth > 0 {
        return Err(ViciError::Malformed("section not closed".into()));
    }
    Ok(m)
}

/// One packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A command.
    Request(String, Message),
    /// A command's answer.
    Response(Message),
    /// The command is unknown.
    CmdUnknown,
    /// Register for an event.
    Register(String),
    /// Unregister.
    Unregister(String),
    /// Registration confirmed.
    Confirm,
    /// The event is unknown.
    EventUnknown,
    /// An event (also the streamed items of `list-sas` and friends).
    Event(String, Message),
}

impl Packet {
    /// The packet with its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, ViciError> {
        let mut body = Vec::new();
        match self {
            Packet::Request(name, m) => {
                body.push(ptype::CMD_REQUEST);
                put_name(&mut body, name)?;
                m.encode_into(&mut body)?;
            }
            Packet::Response(m) => {
                body.push(ptype::CMD_RESPONSE);
                m.encode_into(&mut body)?;
            }
            Packet::CmdUnknown => body.push(ptype::CMD_UNKNOWN),
            Packet::Register(name) => {
                body.push(ptype::EVENT_REGISTER);
                put_name(&mut body, name)?;
            }
            Packet::Unregister(name) => {
                body.push(ptype::EVENT_UNREGISTER);
                put_name(&mut body, name)?;
            }
            Packet::Confirm => body.push(ptype::EVENT_CONFIRM),
            Packet::EventUnknown => body.push(ptype::EVENT_UNKNOWN),
            Packet::Event(name, m) => {
                body.push(ptype::EVENT);
                put_name(&mut body, name)?;
                m.encode_into(&mut body)?;
            }
        }
        if body.len() > MAX_PACKET {
            return Err(ViciError::TooLong(format!("a {}-byte packet", body.len())));
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        Ok(out)
    }

    /// Decodes a packet's body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Packet, ViciError> {
        let mut r = Reader { data: body, pos: 0 };
        let t = r.u8()?;
        let rest = |r: &Reader<'_>| Message::decode(&r.data[r.pos..]);
        Ok(match t {
            ptype::CMD_REQUEST => {
                let n = r.name()?;
                Packet::Request(n, rest(&r)?)
            }
            ptype::CMD_RESPONSE => Packet::Response(rest(&r)?),
            ptype::CMD_UNKNOWN => Packet::CmdUnknown,
            ptype::EVENT_REGISTER => Packet::Register(r.name()?),
            ptype::EVENT_UNREGISTER => Packet::Unregister(r.name()?),
            ptype::EVENT_CONFIRM => Packet::Confirm,
            ptype::EVENT_UNKNOWN => Packet::EventUnknown,
            ptype::EVENT => {
                let n = r.name()?;
                Packet::Event(n, rest(&r)?)
            }
            t => return Err(ViciError::Malformed(format!("unknown packet type {t}"))),
        })
    }
}

/// A connection to charon's VICI socket.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects, with `timeout` for every read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ViciError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client { stream })
    }

    fn send(&mut self, p: &Packet) -> Result<(), ViciError> {
        self.stream.write_all(&p.encode()?)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<Packet, ViciError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 || n > MAX_PACKET {
            return Err(ViciError::Malformed(format!("a packet of {n} bytes")));
        }
        let mut body = vec![0u8; n];
        self.stream.read_exact(&mut body)?;
        Packet::decode(&body)
    }

    /// Runs a command and returns its answer (events are not expected here).
    pub fn call(&mut self, command: &str, m: Message) -> Result<Message, ViciError> {
        self.send(&Packet::Request(command.into(), m))?;
        loop {
            match self.recv()? {
                Packet::Response(r) => return Ok(r),
                Packet::CmdUnknown => return Err(ViciError::Unknown(command.into())),
                // A stray event of an earlier stream: skip.
                Packet::Event(..) => continue,
                p => return Err(ViciError::Malformed(format!("unexpected {p:?} answering {command}"))),
            }
        }
    }

    /// Runs a command that must answer `success = yes`.
    pub fn call_ok(&mut self, command: &str, m: Message) -> Result<Message, ViciError> {
        let r = self.call(command, m)?;
        if r.str("success") == Some("no") {
            return Err(ViciError::Refused {
                command: command.into(),
                message: r.str("errmsg").unwrap_or("no reason given").to_string(),
            });
        }
        Ok(r)
    }

    /// Runs a streaming command (`list-sas`, `list-conns` …): registers for `event`, sends
    /// the command, collects the events until the answer, unregisters.
    pub fn stream(
        &mut self,
        command: &str,
        event: &str,
        m: Message,
    ) -> Result<(Vec<Message>, Message), ViciError> {
        self.send(&Packet::Register(event.into()))?;
        match self.recv()? {
            Packet::Confirm => {}
            Packet::EventUnknown => return Err(ViciError::Unknown(event.into())),
            p => return Err(ViciError::Malformed(format!("unexpected {p:?} registering {event}"))),
        }
        self.send(&Packet::Request(command.into(), m))?;
        let mut events = Vec::new();
        let answer = loop {
            match self.recv()? {
                Packet::Event(name, e) if name == event => events.push(e),
                Packet::Event(..) => {}
                Packet::Response(r) => break r,
                Packet::CmdUnknown => return Err(ViciError::Unknown(command.into())),
                p => return Err(ViciError::Malformed(format!("unexpected {p:?} during {command}"))),
            }
        };
        self.send(&Packet::Unregister(event.into()))?;
        match self.recv()? {
            Packet::Confirm => {}
            p => return Err(ViciError::Malformed(format!("unexpected {p:?} unregistering {event}"))),
        }
        Ok((events, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_encodes_byte_for_byte() {
        // The example message of strongSwan's VICI README:
        // key1 = value1, section1 { sub-section { key2 = value2 } list1 [ item1 item2 ] }
        let m = Message::new().kv("key1", "value1").section(
            "section1",
            Message::new()
                .section("sub-section", Message::new().kv("key2", "value2"))
                .list("list1", ["item1", "item2"]),
        );
        let want: Vec<u8> = [
            &[3, 4][..],
            b"key1",
            &[0, 6],
            b"value1",
            &[1, 8],
            b"section1",
            &[1, 11],
            b"sub-section",
            &[3, 4],
            b"key2",
            &[0, 6],
            b"value2",
            &[2, 4, 5],
            b"list1",
            &[5, 0, 5],
            b"item1",
            &[5, 0, 5],
            b"item2",
            &[6, 2],
        ]
        .concat();
        assert_eq!(m.encode().unwrap(), want);
        assert_eq!(Message::decode(&want).unwrap(), m);
        assert_eq!(m.sub("section1").unwrap().strs("list1"), ["item1", "item2"]);
        assert_eq!(m.sub("section1").unwrap().sub("sub-section").unwrap().str("key2"), Some("value2"));
    }

    #[test]
    fn packets_round_trip_with_their_length_prefix() {
        for p in [
            Packet::Request("version".into(), Message::new()),
            Packet::Response(Message::new().kv("success", "yes")),
            Packet::CmdUnknown,
            Packet::Register("list-sa".into()),
            Packet::Unregister("list-sa".into()),
            Packet::Confirm,
            Packet::EventUnknown,
            Packet::Event("list-sa".into(), Message::new().section("c", Message::new().kv("state", "x"))),
        ] {
            let bytes = p.encode().unwrap();
            let n = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(n, bytes.len() - 4);
            assert_eq!(Packet::decode(&bytes[4..]).unwrap(), p);
        }
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        for bad in [
            &[1u8, 3, b'a'][..],    // truncated name
            &[3, 1, b'k', 0, 9, 1], // value shorter than its length
            &[1, 1, b's'],          // section never closed
            &[2],                   // end without a start
            &[4, 1, b'l', 3],       // a key-value inside a list
            &[9],                   // unknown element
        ] {
            assert!(Message::decode(bad).is_err(), "{bad:?}");
        }
        assert!(Packet::decode(&[42]).is_err());
        assert!(Packet::decode(&[]).is_err());
        let deep = [1u8, 1, b's'].repeat(MAX_DEPTH + 2);
        assert!(Message::decode(&deep).is_err());
        assert!(matches!(Message::new().kv("k", vec![0u8; 70_000]).encode(), Err(ViciError::TooLong(_))));
        assert!(matches!(Message::new().kv(&"n".repeat(300), "v").encode(), Err(ViciError::TooLong(_))));
    }

    proptest::proptest! {
        /// Whatever bytes arrive, decoding answers without panicking.
        #[test]
        fn any_bytes_are_answered(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Message::decode(&data);
            let _ = Packet::decode(&data);
        }

        /// Every message we can build survives encoding.
        #[test]
        fn built_messages_round_trip(
            keys in proptest::collection::vec("[a-z_-]{1,12}", 0..6),
            vals in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..6),
        ) {
            let mut m = Message::new();
            for (i, k) in keys.iter().enumerate() {
                m = match i % 3 {
                    0 => m.kv(k, vals.get(i).cloned().unwrap_or_default()),
                    1 => m.list(k, vals.clone()),
                    _ => m.section(k, Message::new().kv(k, k)),
                };
            }
            proptest::prop_assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
        }
    }

    /// A fake charon on a socket pair: answers one streaming command as charon does.
    #[test]
    fn a_streaming_command_collects_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vici");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut s2 = s.try_clone().unwrap();
            let mut read = || {
                let mut len = [0u8; 4];
                s.read_exact(&mut len).unwrap();
                let mut b = vec![0; u32::from_be_bytes(len) as usize];
                s.read_exact(&mut b).unwrap();
                Packet::decode(&b).unwrap()
            };
            assert_eq!(read(), Packet::Register("list-sa".into()));
            s2.write_all(&Packet::Confirm.encode().unwrap()).unwrap();
            let mut out = Vec::new();
            assert_eq!(read(), Packet::Request("list-sas".into(), Message::new().kv("noblock", "yes")));
            for i in 0..2 {
                let e = Message::new().section(&format!("ike{i}"), Message::new().kv("state", "ESTABLISHED"));
                out.extend(Packet::Event("list-sa".into(), e).encode().unwrap());
            }
            out.extend(Packet::Response(Message::new()).encode().unwrap());
            s2.write_all(&out).unwrap();
            assert_eq!(read(), Packet::Unregister("list-sa".into()));
            s2.write_all(&Packet::Confirm.encode().unwrap()).unwrap();
            assert_eq!(read(), Packet::Request("nope".into(), Message::new()));
            s2.write_all(&Packet::CmdUnknown.encode().unwrap()).unwrap();
        });
        let mut c = Client::connect(&path, Duration::from_secs(5)).unwrap();
        let (events, _) = c.stream("list-sas", "list-sa", Message::new().kv("noblock", "yes")).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].sub("ike1").unwrap().str("state"), Some("ESTABLISHED"));
        assert!(matches!(c.call("nope", Message::new()), Err(ViciError::Unknown(_))));
        server.join().unwrap();
    }
}
