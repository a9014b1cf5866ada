//! Issue 12, the dashboard's live updates: Server-Sent Events from a
//! real `spoolflow serve` receive the points an engine writes after they
//! connected; a reconnect with `Last-Event-ID` gets what it missed; one
//! from another start of the server is told to reload; Ctrl-C ends the
//! server with streams open.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use super::serve_support::*;
use crate::common::*;

/// (each as (event, id, data)).
fn read_events(
    s: &mut BufReader<TcpStream>,
    mut until: impl FnMut(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let mut events = Vec::new();
    let (mut ev, mut id, mut data) = (String::new(), String::new(), String::new());
    let mut line = String::new();
    // The server's keep-alive comments come every 15 s: the socket's
    // read timeout alone would never fire.
    let give_up = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            std::time::Instant::now() < give_up,
            "no awaited event within {DEADLINE:?}: {events:?}"
        );
        line.clear();
        let n = s
            .read_line(&mut line)
            .expect("an SSE line before the deadline");
        assert!(n > 0, "the stream ended: {events:?}");
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if !ev.is_empty() || !data.is_empty() {
                events.push((
                    std::mem::take(&mut ev),
                    std::mem::take(&mut id),
                    std::mem::take(&mut data),
                ));
                if until(&events) {
                    return events;
                }
            }
        } else if let Some(v) = l.strip_prefix("event:") {
            ev = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("id:") {
            id = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
}

/// Opens `/events` (with `Last-Event-ID` when given) past its headers.
fn open_events(srv: &Server, last: Option<&str>) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let last = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{last}\r\n",
        srv.addr
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return r;
        }
    }
}

// The chunked framing of an SSE body is read through: a chunk-size line
// is neither an event field nor blank, so `read_events` skips it.
#[test]
fn sse_sends_points_written_after_connecting_and_what_a_reconnect_missed() {
    let t = TestRoot::new();
    t.tasker("org.example", "ok", "#!/bin/sh\ncat\n");
    t.taskmaster("org.example", "\"ok\"");
    let _engine = t.spawn_engine(&["--workers", "1"]);
    let srv = serve(&t, &[]);
    let mut s = open_events(&srv, None);
    read_events(&mut s, |e| e.iter().any(|(ev, _, _)| ev == "hello"));
    t.drop_task(
        "live-1.json",
        r#"{"domain":"org.example","payload":{"n":1}}"#,
    );
    let events = read_events(&mut s, |e| {
        e.iter().any(|(ev, _, d)| {
            ev == "point" && d.contains(r#""id":"live-1""#) && d.contains(r#""point":"completed""#)
        })
    });
    let points: Vec<&(String, String, String)> =
        events.iter().filter(|(ev, _, _)| ev == "point").collect();
    assert!(
        points.iter().all(|(_, id, _)| !id.is_empty()),
        "every point has an id"
    );
    assert!(
        events.iter().any(|(ev, _, _)| ev == "change"),
        "files came and went: {events:?}"
    );

    // A browser that saw only the first point gets the rest on reconnect.
    let first_id = points[0].1.clone();
    let mut again = open_events(&srv, Some(&first_id));
    let replay = read_events(&mut again, |e| {
        e.iter()
            .any(|(ev, _, d)| ev == "point" && d.contains(r#""point":"completed""#))
    });
    let replayed: Vec<&String> = replay
        .iter()
        .filter(|(ev, _, _)| ev == "point")
        .map(|(_, id, _)| id)
        .collect();
    let wanted: Vec<&String> = points[1..].iter().map(|(_, id, _)| id).collect();
    assert_eq!(replayed, wanted);
    // One from another start of the server: told to reload.
    let mut stale = open_events(&srv, Some("0-5"));
    read_events(&mut stale, |e| e.iter().any(|(ev, _, _)| ev == "reset"));
    // Ctrl-C ends the server though streams are open.
    let mut srv = srv;
    assert_eq!(srv.interrupt(), Some(0));
}

/// An open page learns that an engine started and that it stopped
/// (killed, even: nothing on disk changes then): a `change` event names
/// the engine each time, and `/api/status` says so.
#[test]
fn an_engines_start_and_its_death_are_events() {
    let t = TestRoot::new();
    let srv = serve(&t, &[]);
    let mut events = open_events(&srv, None);
    read_events(&mut events, |e| e.iter().any(|(ev, _, _)| ev == "hello"));
    let engine_change = |e: &[(String, String, String)]| {
        e.iter()
            .any(|(ev, _, data)| ev == "change" && data.contains("engine"))
    };
    let engine = t.spawn_engine(&["--workers", "1"]);
    read_events(&mut events, engine_change);
    wait_for("the engine in the status", DEADLINE, || {
        !get(&srv, "/api/status").json()["engine"].is_null()
    });
    engine.signal(nix::sys::signal::Signal::SIGKILL);
    // A start may be told twice (the engine writes its pid record in more
    // than one step): the event that counts is one after which the status
    // has no engine, and one comes (the death is an event of its own).
    let gone = || get(&srv, "/api/status").json()["engine"].is_null();
    read_events(&mut events, |e| engine_change(e) && gone());
    drop(engine);
}
