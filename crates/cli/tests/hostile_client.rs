//! Hostile clients against the controller binary (issue 13.1), on its in-process sandbox:
//! - more slow connections than the process may open files, under a lowered fd limit: it stays
//!   up or answers again within seconds of the attack ending, no app ever leaves `/status`, and
//!   a deploy file edited during the attack is applied after it;
//! - a client that sends nothing, trickles its headers or trickles a webhook's body is cut off
//!   within the server's timeouts.
//!
//! Every client connects to 127.0.0.1 only; every loop is bounded in count and time.

use hippo_gitops_testkit as common;
use hippo_gitops_testkit::controller_child;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{assert_examples_converged, assert_no_duplicates, hippo_state};
use controller_child::*;
use serde_json::Value;

/// The controller's file descriptor limit (soft and hard).
const FD_LIMIT: u64 = 256;
/// Slow connections the attacker keeps trying to hold open: more than the controller may open.
const SLOW_CONNECTIONS: usize = 400;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(12);
/// How soon after the attack the controller must answer again.
const RECOVERY: Duration = Duration::from_secs(10);

/// Runs the child under [`FD_LIMIT`].
fn lowered_fd_limit(cmd: &mut Command) {
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FD_LIMIT,
                rlim_max: FD_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// What the attacker managed.
#[derive(Debug, Default)]
struct Attack {
    /// Connections established in all.
    opened: usize,
    /// The most held open at once.
    most_at_once: usize,
}

/// Holds up to [`SLOW_CONNECTIONS`] connections to `addr` until `until`, each sending a
/// request's headers one byte a second and never finishing them; connections the server
/// closes are replaced. All are closed when it returns.
fn slow_clients(addr: SocketAddr, until: Instant) -> Attack {
    let mut attack = Attack::default();
    let mut open: Vec<TcpStream> = Vec::new();
    let mut next_byte = Instant::now();
    while Instant::now() < until {
        // Top up; a full accept queue makes connecting time out, which ends this round.
        let round_end = (Instant::now() + Duration::from_millis(500)).min(until);
        while open.len() < SLOW_CONNECTIONS && Instant::now() < round_end {
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            else {
                break;
            };
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            if stream
                .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .is_ok()
            {
                attack.opened += 1;
                open.push(stream);
            }
        }
        attack.most_at_once = attack.most_at_once.max(open.len());
        if Instant::now() >= next_byte {
            // One more byte of a header that never ends; a connection the server closed fails.
            open.retain_mut(|s| s.write_all(b"x").is_ok());
            next_byte = Instant::now() + Duration::from_secs(1);
        }
        thread::sleep(Duration::from_millis(50));
    }
    attack
}

/// The apps a `/status` answer lists.
fn app_names(status: &Value) -> Vec<String> {
    status["apps"]
        .as_array()
        .map(|apps| {
            apps.iter()
                .filter_map(|a| a["app"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Panics if a `/status` answer lacks one of the example's apps.
fn assert_no_app_dropped(status: &Value, when: &str) {
    let names = app_names(status);
    for app in ["weather", "invoices"] {
        assert!(
            names.iter().any(|n| n == app),
            "{app} was dropped from /status {when}: {status}"
        );
    }
}

#[test]
fn slow_clients_beyond_the_fd_limit_neither_stop_it_nor_drop_an_app() {
    let (_tmp, dir, sb) = checkout();
    // A 5 s interval: the periodic rescan is part of what must not lose the edit.
    let mut d = Daemon::start_with(
        &dir,
        &sandbox_args(&["-f", "deploy-specs/", "--interval", "5s"]),
        lowered_fd_limit,
    );
    let before = d.until_all_ready(60);
    assert_no_app_dropped(&before, "before the attack");

    let addr = d.addr;
    let attack_end = Instant::now() + ATTACK;
    let attacker = thread::spawn(move || slow_clients(addr, attack_end));

    // During the attack: edit a deploy file, and read /status whenever it answers.
    thread::sleep(Duration::from_secs(2));
    edit_weather(&dir.join("deploy-specs"));
    let mut answered = 0;
    let mut unanswered = 0;
    while Instant::now() < attack_end {
        match request_within(addr, "GET", "/status", &[], b"", Duration::from_secs(1)) {
            Ok(r) if r.status == 200 => {
                answered += 1;
                assert_no_app_dropped(&r.json(), "during the attack");
            }
            _ => unanswered += 1,
        }
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "the controller exited during the attack:\n{}",
            d.log_text()
        );
        thread::sleep(Duration::from_millis(250));
    }
    let attack = attacker.join().unwrap();
    eprintln!("attack: {attack:?}; /status during it: {answered} answered, {unanswered} not");
    // The server serves a quarter of its fd limit at once; the attack held twice that (the
    // rest queued in the kernel), and on the code before the limit it held more than the
    // whole fd limit.
    assert!(
        attack.most_at_once > FD_LIMIT as usize / 2,
        "the attack never held more than {} connections: {attack:?}",
        FD_LIMIT / 2
    );

    // Answers again within seconds.
    let ended = Instant::now();
    loop {
        if let Ok(r) = request_within(addr, "GET", "/healthz", &[], b"", Duration::from_secs(1)) {
            if r.status == 200 {
                break;
            }
        }
        assert!(
            ended.elapsed() < RECOVERY,
            "no answer from /healthz within {RECOVERY:?} of the attack's end:\n{}",
            d.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let recovered = ended.elapsed();

    // The edit made during the attack is applied, and no app is missing meanwhile.
    d.until(30, "the edit made during the attack in Hippo", |addr| {
        let s = status(addr)?;
        assert_no_app_dropped(&s, "after the attack");
        let ch = channel(&s, "weather", "production")?;
        (ch["desiredRevision"] == "1.1.0" && ch["hippoRevision"] == "1.1.0").then_some(())
    });
    let after = d.until_all_ready(30);
    assert_no_app_dropped(&after, "after the attack");
    assert!(
        after["source"]["error"].is_null(),
        "the source reads fine again: {}",
        after["source"]
    );
    d.terminate();
    let state = hippo_state(&sb);
    assert_examples_converged(&state);
    assert_weather_edit_applied(&state);
    assert_no_duplicates(&state);
    eprintln!("answered again {recovered:?} after the attack");
}

/// Reads until the server closes the connection; answers what it sent and when it closed, or
/// `None` if it was still open after `limit`.
fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<(String, Duration)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some((String::from_utf8_lossy(&got).into(), started.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((String::from_utf8_lossy(&got).into(), started.elapsed())),
        }
    }
    None
}

#[test]
fn clients_that_send_nothing_or_trickle_are_cut_off() {
    // The server's limits (src/controller/http.rs): 10 s for the headers, 10 s for the rest.
    let limit = Duration::from_secs(16);
    let (_tmp, dir, _sb) = checkout();
    let mut d = Daemon::start(&dir, &sandbox_args(&["-f", "deploy-specs/"]));
    d.until_all_ready(60);
    let connect = || TcpStream::connect_timeout(&d.addr, Duration::from_secs(2)).unwrap();

    let mut silent = connect();
    let mut trickling_headers = connect();
    trickling_headers
        .write_all(b"GET /status HTTP/1.1\r\n")
        .unwrap();
    let mut trickling_body = connect();
    trickling_body
        .write_all(
            b"POST /hooks/generic HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{",
        )
        .unwrap();
    // One byte a second on the two trickling connections, on another thread.
    let mut headers_writer = trickling_headers.try_clone().unwrap();
    let mut body_writer = trickling_body.try_clone().unwrap();
    let trickle_end = Instant::now() + limit;
    let trickler = thread::spawn(move || {
        while Instant::now() < trickle_end {
            let a = headers_writer.write_all(b"x").is_ok();
            let b = body_writer.write_all(b" ").is_ok();
            if !a && !b {
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });

    let (_, silent_after) = until_closed(&mut silent, limit)
        .unwrap_or_else(|| panic!("a connection that sent nothing is still open after {limit:?}"));
    let (_, headers_after) = until_closed(&mut trickling_headers, limit).unwrap_or_else(|| {
        panic!("a connection trickling its headers is still open after {limit:?}")
    });
    let (answer, body_after) = until_closed(&mut trickling_body, limit)
        .unwrap_or_else(|| panic!("a webhook trickling its body is still open after {limit:?}"));
    trickler.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body that doesn't arrive in time gets 408: {answer:?}"
    );
    eprintln!(
        "closed after: silent {silent_after:?}, headers {headers_after:?}, body {body_after:?}"
    );
    // It still serves everyone else.
    assert_eq!(get(d.addr, "/healthz").unwrap().status, 200);
    d.terminate();
}
