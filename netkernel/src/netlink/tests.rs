//! The request/reply machinery against a scripted kernel: torn dumps, overflows, errors,
//! stale replies and pipelined batches.

use std::collections::VecDeque;
use std::io;

use netlink_packet_core::{
    Emitable, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable,
};
use netlink_packet_route::RouteNetlinkMessage as Rtm;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};

use super::conn::{Conn, MAX_DUMP_ATTEMPTS, Request};
use super::error::NetlinkError;
use super::flags;
use super::socket::Transport;

/// One request as the fake kernel saw it.
#[derive(Debug, Clone)]
struct Seen {
    seq: u32,
    flags: u16,
    message: Rtm,
}

type Respond = Box<dyn FnMut(&Seen, usize) -> Vec<io::Result<Vec<u8>>>>;

/// A kernel that answers each request with what `respond` says (given the request and how
/// many requests came before it), queued as datagrams or socket errors.
struct Fake {
    respond: Respond,
    seen: Vec<Seen>,
    sends: usize,
    queue: VecDeque<io::Result<Vec<u8>>>,
    /// What successive `unwatch` calls answer (then: nothing changed).
    announced: VecDeque<bool>,
    watching: Option<u32>,
}

impl Fake {
    fn new(respond: impl FnMut(&Seen, usize) -> Vec<io::Result<Vec<u8>>> + 'static) -> Self {
        Fake {
            respond: Box::new(respond),
            seen: Vec::new(),
            sends: 0,
            queue: VecDeque::new(),
            announced: VecDeque::new(),
            watching: None,
        }
    }
}

impl Transport for Fake {
    fn send(&mut self, mut buf: &[u8]) -> io::Result<()> {
        self.sends += 1;
        while !buf.is_empty() {
            let nl = NetlinkBuffer::new_checked(buf).unwrap();
            let len = nl.length() as usize;
            let mut header = NetlinkHeader::default();
            header.message_type = nl.message_type();
            header.flags = nl.flags();
            let message = Rtm::deserialize(&header, nl.payload()).unwrap();
            let seen = Seen { seq: nl.sequence_number(), flags: nl.flags(), message };
            let n = self.seen.len();
            let replies = (self.respond)(&seen, n);
            self.seen.push(seen);
            self.queue.extend(replies);
            buf = &buf[(len + 3) & !3..];
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut Vec<u8>, nonblocking: bool) -> io::Result<usize> {
        buf.clear();
        match self.queue.pop_front() {
            Some(Ok(d)) => {
                let n = d.len().min(buf.capacity());
                buf.extend_from_slice(&d[..n]);
                Ok(d.len())
            }
            Some(Err(e)) => Err(e),
            None if nonblocking => Err(io::ErrorKind::WouldBlock.into()),
            None => panic!("the client waits for a reply that will never come"),
        }
    }

    fn watch(&mut self, group: u32) -> io::Result<()> {
        assert_eq!(self.watching.replace(group), None);
        Ok(())
    }

    fn unwatch(&mut self, group: u32) -> bool {
        assert_eq!(self.watching.take(), Some(group));
        self.announced.pop_front().unwrap_or(false)
    }
}

fn header(kind: u16, flags: u16, seq: u32, payload_len: usize) -> Vec<u8> {
    let mut h = NetlinkHeader::default();
    h.length = (16 + payload_len) as u32;
    h.message_type = kind;
    h.flags = flags;
    h.sequence_number = seq;
    let mut buf = vec![0u8; 16];
    h.emit(&mut buf);
    buf
}

/// An rtnetlink message as the kernel sends it.
fn msg(seq: u32, flags: u16, m: &Rtm) -> Vec<u8> {
    let len = NetlinkSerializable::buffer_len(m);
    let mut buf = header(NetlinkSerializable::message_type(m), flags, seq, len);
    buf.resize(16 + len, 0);
    NetlinkSerializable::serialize(m, &mut buf[16..]);
    buf.resize((buf.len() + 3) & !3, 0);
    buf
}

/// `NLMSG_ERROR` for `seq`: an ACK when `errno` is 0; with an extended-ACK text if given.
fn error(seq: u32, errno: i32, text: Option<&str>) -> Vec<u8> {
    let mut payload = (-errno).to_ne_bytes().to_vec();
    payload.extend(header(RTM_NEWLINK, 0, seq, 0));
    let mut flags = NLM_F_CAPPED;
    if let Some(t) = text {
        flags |= NLM_F_ACK_TLVS;
        let mut v = t.as_bytes().to_vec();
        v.push(0);
        payload.extend(((4 + v.len()) as u16).to_ne_bytes());
        payload.extend(1u16.to_ne_bytes());
        payload.extend(&v);
        payload.resize((payload.len() + 3) & !3, 0);
    }
    let mut buf = header(NLMSG_ERROR, flags, seq, payload.len());
    buf.extend(payload);
    buf
}

const RTM_NEWLINK: u16 = 16;

fn done(seq: u32, flags: u16) -> Vec<u8> {
    let mut buf = header(NLMSG_DONE, NLM_F_MULTIPART | flags, seq, 4);
    buf.extend(0i32.to_ne_bytes());
    buf
}

fn link(index: u32) -> Rtm {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfName(format!("if{index}")));
    Rtm::NewLink(m)
}

fn indexes(msgs: &[Rtm]) -> Vec<u32> {
    msgs.iter()
        .map(|m| match m {
            Rtm::NewLink(l) => l.header.index,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn dump_req() -> Request {
    Request::new(flags::DUMP, Rtm::GetLink(LinkMessage::default()))
}

fn enobufs() -> io::Result<Vec<u8>> {
    Err(io::Error::from_raw_os_error(libc::ENOBUFS))
}

/// A dump in two datagrams, the way the kernel splits big ones.
fn dump_reply(seq: u32, links: &[u32], intr_at: Option<usize>) -> Vec<io::Result<Vec<u8>>> {
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut intr = 0;
    for (i, l) in links.iter().enumerate() {
        if Some(i) == intr_at {
            intr = NLM_F_DUMP_INTR;
        }
        let m = msg(seq, NLM_F_MULTIPART | intr, &link(*l));
        if i < links.len() / 2 { first.extend(m) } else { second.extend(m) }
    }
    second.extend(done(seq, intr));
    vec![Ok(first), Ok(second)]
}

#[test]
fn a_dump_flagged_interrupted_is_repeated_and_only_the_clean_pass_returned() {
    let mut conn = Conn::new(Fake::new(|req, n| match n {
        // The first pass: the kernel's table changed after two entries (a half-old view).
        0 => dump_reply(req.seq, &[1, 2, 3, 4], Some(2)),
        _ => dump_reply(req.seq, &[1, 2, 5, 6, 7], None),
    }));
    let msgs = conn.dump(&dump_req(), None).unwrap();
    assert_eq!(indexes(&msgs), [1, 2, 5, 6, 7]);
    assert_eq!(conn.dump_retries, 1);
    let seen = &conn.transport().seen;
    assert_eq!(seen.len(), 2, "the whole dump is asked again");
    assert_ne!(seen[0].seq, seen[1].seq, "each attempt has its own sequence number");
    assert!(seen.iter().all(|s| s.flags == flags::DUMP));
}

#[test]
fn the_flag_on_the_done_message_alone_also_counts() {
    let mut conn = Conn::new(Fake::new(|req, n| {
        let mut d = msg(req.seq, NLM_F_MULTIPART, &link(1));
        d.extend(done(req.seq, if n == 0 { NLM_F_DUMP_INTR } else { 0 }));
        vec![Ok(d)]
    }));
    assert_eq!(indexes(&conn.dump(&dump_req(), None).unwrap()), [1]);
    assert_eq!(conn.dump_retries, 1);
}

#[test]
fn a_dump_that_keeps_being_interrupted_ends_in_an_error_that_says_so() {
    let mut conn = Conn::new(Fake::new(|req, _| dump_reply(req.seq, &[1, 2], Some(0))));
    let e = conn.dump(&dump_req(), None).unwrap_err();
    assert!(
        matches!(e, NetlinkError::DumpInterrupted { attempts } if attempts == MAX_DUMP_ATTEMPTS),
        "{e:?}"
    );
    assert_eq!(e.errno(), Some(libc::EINTR));
    assert!(e.to_string().contains("interrupted 10 times"), "{e}");
    assert_eq!(conn.transport().seen.len(), MAX_DUMP_ATTEMPTS as usize);
}

#[test]
fn a_dump_whose_replies_overflowed_is_drained_and_repeated() {
    let mut conn = Conn::new(Fake::new(|req, n| match n {
        0 => {
            // A first datagram, then the queue overflowed; the rest of the old dump is
            // still queued and must not be mistaken for the new one's.
            let mut v = vec![Ok(msg(req.seq, NLM_F_MULTIPART, &link(1))), enobufs()];
            v.extend(dump_reply(req.seq, &[2, 3], None));
            v
        }
        _ => dump_reply(req.seq, &[1, 2, 3], None),
    }));
    assert_eq!(indexes(&conn.dump(&dump_req(), None).unwrap()), [1, 2, 3]);
    assert_eq!(conn.dump_retries, 1);
}

#[test]
fn a_dump_error_is_the_kernels_errno() {
    let mut conn = Conn::new(Fake::new(|req, _| vec![Ok(error(req.seq, libc::EOPNOTSUPP, None))]));
    let e = conn.dump(&dump_req(), None).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EOPNOTSUPP));
    assert_eq!(conn.dump_retries, 0);
}

#[test]
fn acks_errors_and_extended_ack_texts() {
    let mut conn = Conn::new(Fake::new(|req, n| match n {
        0 => vec![Ok(error(req.seq, 0, None))],
        1 => vec![Ok(error(req.seq, libc::EEXIST, None))],
        _ => vec![Ok(error(req.seq, libc::EINVAL, Some("Nexthop has invalid gateway")))],
    }));
    let req = Request::new(flags::ADD, link(3));
    conn.ack(&req).unwrap();
    let e = conn.ack(&req).unwrap_err();
    assert!(matches!(e, NetlinkError::Kernel { errno: libc::EEXIST, message: None }), "{e:?}");
    let e = conn.ack(&req).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
    assert!(e.to_string().contains("Nexthop has invalid gateway"), "{e}");
}

#[test]
fn stale_replies_of_earlier_requests_are_skipped() {
    let mut conn = Conn::new(Fake::new(|req, _| {
        // Leftovers of an exchange given up on come first, then the answer.
        vec![
            Ok(error(req.seq.wrapping_sub(1), libc::ENODEV, None)),
            Ok(msg(req.seq - 1, 0, &link(9))),
            Ok(msg(req.seq, 0, &link(4))),
        ]
    }));
    let got = conn.get(&Request::new(flags::GET, link(4))).unwrap();
    assert_eq!(indexes(&[got]), [4]);
}

#[test]
fn a_get_of_something_missing_is_its_errno() {
    let mut conn = Conn::new(Fake::new(|req, _| vec![Ok(error(req.seq, libc::ENODEV, None))]));
    assert_eq!(conn.get(&Request::new(flags::GET, link(4))).unwrap_err().errno(), Some(libc::ENODEV));
}

/// The link index a batch request carries (the fake kernel fails some by index).
fn index_of(seen: &Seen) -> u32 {
    match &seen.message {
        Rtm::NewLink(l) => l.header.index,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_goes_out_in_windows_and_each_failure_is_reported_on_its_own_request() {
    let mut conn = Conn::new(Fake::new(|req, _| {
        let errno = match index_of(req) {
            7 => libc::EEXIST,
            250 => libc::ENODEV,
            _ => 0,
        };
        vec![Ok(error(req.seq, errno, None))]
    }));
    let reqs: Vec<Request> = (0..300).map(|i| Request::new(flags::REPLACE, link(i))).collect();
    let results = conn.batch(&reqs, 128);
    assert_eq!(results.len(), 300);
    for (i, r) in results.iter().enumerate() {
        match i {
            7 => assert_eq!(r.as_ref().unwrap_err().errno(), Some(libc::EEXIST)),
            250 => assert_eq!(r.as_ref().unwrap_err().errno(), Some(libc::ENODEV)),
            _ => assert!(r.is_ok(), "{i}: {r:?}"),
        }
    }
    let fake = conn.transport();
    assert_eq!(fake.sends, 3, "128 + 128 + 44 requests, one datagram each");
    assert!(fake.seen.iter().all(|s| s.flags == flags::REPLACE));
    let mut seqs: Vec<u32> = fake.seen.iter().map(|s| s.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 300, "one sequence number per request");
}

#[test]
fn acks_may_come_out_of_order() {
    let mut conn = Conn::new(Fake::new(|_, _| Vec::new()));
    // Answer the whole window at once, last first, after it has been sent.
    let reqs: Vec<Request> = (0..10).map(|i| Request::new(flags::REPLACE, link(i))).collect();
    conn.transport_mut().respond = Box::new(|req, _| {
        if index_of(req) == 9 {
            let first = req.seq - 9;
            (0..10).rev().map(|k| Ok(error(first + k, if k == 4 { libc::EPERM } else { 0 }, None))).collect()
        } else {
            Vec::new()
        }
    });
    let results = conn.batch(&reqs, 128);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.as_ref().err().and_then(|e| e.errno()), (i == 4).then_some(libc::EPERM), "{i}");
    }
}

#[test]
fn lost_acks_after_an_overflow_are_sent_again() {
    let mut conn = Conn::new(Fake::new(|req, n| {
        // The first window: the ACKs of requests 5 and 6 are dropped, then ENOBUFS.
        match (n, index_of(req)) {
            (_, 5 | 6) if n < 20 => Vec::new(),
            (_, 19) if n < 20 => vec![Ok(error(req.seq, 0, None)), enobufs()],
            _ => vec![Ok(error(req.seq, 0, None))],
        }
    }));
    let reqs: Vec<Request> = (0..20).map(|i| Request::new(flags::REPLACE, link(i))).collect();
    let results = conn.batch(&reqs, 128);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let again: Vec<u32> = conn.transport().seen[20..].iter().map(index_of).collect();
    assert_eq!(again, [5, 6], "only the unanswered requests are repeated");
}

#[test]
fn several_messages_in_one_datagram_are_all_read() {
    let mut conn = Conn::new(Fake::new(|req, _| {
        let mut d = Vec::new();
        for i in 1..=50 {
            d.extend(msg(req.seq, NLM_F_MULTIPART, &link(i)));
        }
        d.extend(done(req.seq, 0));
        vec![Ok(d)]
    }));
    assert_eq!(indexes(&conn.dump(&dump_req(), None).unwrap()), (1..=50).collect::<Vec<_>>());
}

#[test]
fn a_dump_of_several_parts_during_which_a_change_was_announced_is_repeated() {
    let mut conn = Conn::new(Fake::new(|req, n| {
        dump_reply(req.seq, if n == 0 { &[1, 2, 3, 3] } else { &[1, 2, 3] }, None)
    }));
    conn.transport_mut().announced.extend([true, false]);
    assert_eq!(indexes(&conn.dump(&dump_req(), Some(11)).unwrap()), [1, 2, 3]);
    assert_eq!(conn.dump_retries, 1);
    assert_eq!(conn.transport().watching, None, "the group is left after the dump");
}

#[test]
fn a_dump_of_one_part_was_read_in_one_go_and_a_change_does_not_matter() {
    let mut conn = Conn::new(Fake::new(|req, _| {
        let mut d = msg(req.seq, NLM_F_MULTIPART, &link(1));
        d.extend(done(req.seq, 0));
        vec![Ok(d)]
    }));
    conn.transport_mut().announced.extend([true]);
    assert_eq!(indexes(&conn.dump(&dump_req(), Some(11)).unwrap()), [1]);
    assert_eq!(conn.dump_retries, 0);
}

#[test]
fn a_watched_dump_that_keeps_changing_gives_up() {
    let mut conn = Conn::new(Fake::new(|req, _| dump_reply(req.seq, &[1, 2], None)));
    conn.transport_mut().announced.extend([true; 20]);
    let e = conn.dump(&dump_req(), Some(11)).unwrap_err();
    assert!(matches!(e, NetlinkError::DumpInterrupted { attempts: 10 }), "{e:?}");
}

#[test]
fn an_undecodable_answer_to_a_get_is_an_error_not_a_wait() {
    let mut conn = Conn::new(Fake::new(|req, _| {
        // RTM_NEWLINK with a payload too short for its header.
        let mut d = header(RTM_NEWLINK, 0, req.seq, 4);
        d.extend([1, 2, 3, 4]);
        vec![Ok(d)]
    }));
    let e = conn.get(&Request::new(flags::GET, link(4))).unwrap_err();
    assert!(matches!(e, NetlinkError::Protocol(_)), "{e:?}");
}

#[test]
fn an_undecodable_object_is_left_out_of_a_dump() {
    let mut conn = Conn::new(Fake::new(|req, _| {
        let mut d = msg(req.seq, NLM_F_MULTIPART, &link(1));
        d.extend(header(RTM_NEWLINK, NLM_F_MULTIPART, req.seq, 4));
        d.extend([1, 2, 3, 4]);
        d.extend(msg(req.seq, NLM_F_MULTIPART, &link(3)));
        d.extend(done(req.seq, 0));
        vec![Ok(d)]
    }));
    assert_eq!(indexes(&conn.dump(&dump_req(), None).unwrap()), [1, 3]);
}
