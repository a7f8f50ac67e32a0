//! Loopback ports for servers the tests start (nginx, Apache, Prometheus), which bind the port
//! themselves a moment after it is chosen.
//!
//! A port taken by binding port 0 comes from the kernel's ephemeral range, where any outgoing
//! connection (the emulator's clients, the agent's probes) can be given the same port before the
//! server binds it. So the port is drawn at random below that range (which starts at 32768 by
//! default), checked free by binding it, and never handed out twice in one test process.

use std::collections::HashSet;
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port in 20000..32000 nothing listens on right now and not given out before by
/// this process.
pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = rand::random_range(20000..32000);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000 after 1000 tries");
}
