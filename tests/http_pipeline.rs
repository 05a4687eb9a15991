//! Pipelined HTTP requests on one connection are answered in order, however
//! many arrive in one write, without growing the worker's stack.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::{Server, TIMEOUT};
use serde_json::Value;

/// Reads one HTTP response (status and body) by its Content-Length.
fn read_response(r: &mut impl BufRead) -> Option<(u16, String)> {
    let mut status_line = String::new();
    if r.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        r.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `n` history requests in one write and checks every answer, in order.
fn pipeline(server: &Server, n: usize) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.ws_port)).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // A worker takes the connection once it has sent something (the ws
    // port defers accepting until then): one request, answered, first.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let first = read_response(&mut BufReader::new(&stream)).expect("healthz");
    assert_eq!(first.0, 200);
    let worker = server.worker_of(stream.local_addr().unwrap());
    // Mostly channels this worker owns (answered at once, which used to
    // recurse), and now and then one of the other worker's, answered later:
    // the order must hold anyway.
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let name = format!("p{i}");
        match syncd::sync::shard::owner_of(&name, 16, 2) == worker {
            true => local.push(name),
            false => remote.push(name),
        }
    }
    let channel = |i: usize| match i % 1000 {
        999 => &remote[i % remote.len()],
        _ => &local[i % local.len()],
    };
    let mut batch = Vec::new();
    for i in 0..n {
        write!(
            batch,
            "GET /api/history?channel={}&limit=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer test-key\r\n\r\n",
            channel(i)
        )
        .unwrap();
    }
    let mut writer = stream.try_clone().unwrap();
    // One write; the answers are read meanwhile so neither side stalls.
    let sender = std::thread::spawn(move || writer.write_all(&batch));
    let mut reader = BufReader::new(stream);
    for i in 0..n {
        let (status, body) = read_response(&mut reader)
            .unwrap_or_else(|| panic!("answer {i} of {n} missing:\n{}", server.log()));
        assert_eq!(status, 200, "answer {i}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["channel"], *channel(i), "answer {i} out of order");
    }
    sender.join().unwrap().expect("the whole batch was taken");
    assert_eq!(server.restarts(), 0, "a worker died:\n{}", server.log());
    assert_eq!(server.http("GET", "/healthz", "").0, 200);
    assert_eq!(server.sum_stats(|s| s.send_failures), 0, "cut off as slow");
}

#[test]
fn twenty_thousand_pipelined_requests_in_one_write_are_all_answered_in_order() {
    let server = Server::start(2, "");
    pipeline(&server, 20_000);
}

/// Answers wait for the client to read them (the server stops reading its
/// requests meanwhile) rather than overflow its send buffer.
#[test]
fn pipelined_answers_wait_for_the_reader_instead_of_cutting_it_off() {
    let server = Server::start(2, "[limits]\nmax_send_buffer = \"4KiB\"\n");
    pipeline(&server, 3_000);
}
