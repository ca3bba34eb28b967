//! One long-lived netlink handle: thousands of calls, from two threads, on one socket.
//! A test binary of its own: it counts the process's open descriptors, which tests running
//! beside it in the same process would change.

use netkernel::link::VethOptions;
use netkernel::route::Route;
use test_netns::{TestNs, require_root};

#[test]
fn one_handle_serves_thousands_of_calls() {
    fn shareable<T: Send + Sync>(_: &T) {}
    require_root!();
    let host = TestNs::new("longlived");
    let nl = host.netlink();
    nl.add_veth("ll0", "ll0p", None, &VethOptions::default()).unwrap();
    for n in ["ll0", "ll0p"] {
        nl.set_up(nl.require_link(n).unwrap().index).unwrap();
    }
    let dev = nl.require_link("ll0").unwrap().index;
    shareable(&nl);
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    let t = std::time::Instant::now();
    let mut calls = 0;
    for i in 0..1500u32 {
        let r =
            Route::new(format!("10.{}.{}.0/24", 100 + i / 250, i % 250).parse().unwrap(), None, Some(dev));
        nl.add_route(&r).unwrap();
        assert!(nl.link("ll0").unwrap().is_some());
        assert!(nl.link_by_index(dev).unwrap().unwrap().up);
        calls += 3;
        if i % 100 == 0 {
            assert_eq!(nl.routes(false, None).unwrap().len(), i as usize + 1);
            calls += 1;
        }
    }
    // And from another thread: the handle is one socket in its namespace, whoever calls.
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..1500u32 {
                let r = Route::new(
                    format!("10.{}.{}.0/24", 100 + i / 250, i % 250).parse().unwrap(),
                    None,
                    Some(dev),
                );
                nl.del_route(&r).unwrap();
            }
        });
    });
    calls += 1500;
    assert!(nl.routes(false, None).unwrap().is_empty());
    assert_eq!(fds(), before, "calls must not open sockets");
    eprintln!("{calls} calls on one handle in {:?}", t.elapsed());
}
