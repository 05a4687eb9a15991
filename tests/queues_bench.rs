//! The ingest throughput the issue asks to report: messages a second from a
//! queue to a subscriber, beside the `POST /api/publish` rate, in the same
//! run. A measurement, not a check (no timing is asserted); run with
//! `cargo test --release --test queues_bench -- --ignored --nocapture`.

mod common;
mod queues_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::brokers::{Rabbit, Redis};
use common::{Client, Server};
use queues_support::amqp::Amqp;
use queues_support::*;
use serde_json::json;

const N: u64 = 20_000;
const HTTP_CLIENTS: u64 = 4;

/// `POST /api/publish` over one keep-alive connection, `range` in order.
fn http_publisher(port: u16, channel: String, range: std::ops::Range<u64>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for n in range {
        let body = json!({"channel": channel, "data": {"n": n}}).to_string();
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(request.as_bytes()).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer).unwrap();
        assert!(answer.starts_with(b"{\"seq\""), "{answer:?}");
    }
}

fn rate(n: u64, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

#[test]
#[ignore]
fn ingest_throughput_beside_http_publish() {
    let rabbit = Rabbit::start();
    let redis = Redis::start();
    let amqp = Amqp::connect(&rabbit.url());
    amqp.queue("bench-in", None);
    let config = format!(
        "[[ingest]]\nkind = \"amqp\"\nurl = \"{}\"\nqueue = \"bench-in\"\n\
         [[ingest]]\nkind = \"redis-list\"\nurl = \"{}\"\nkey = \"bench-list\"\n",
        rabbit.url(),
        redis.url()
    );
    let server = Server::start(2, &config);

    // HTTP: several keep-alive publishers, each its own channel.
    let mut subs: Vec<_> = (0..HTTP_CLIENTS)
        .map(|i| {
            let mut c = server.tcp();
            c.sub(&format!("http{i}"));
            c
        })
        .collect();
    let started = Instant::now();
    let publishers: Vec<_> = (0..HTTP_CLIENTS)
        .map(|i| {
            let port = server.ws_port;
            let per = N / HTTP_CLIENTS;
            std::thread::spawn(move || http_publisher(port, format!("http{i}"), 0..per))
        })
        .collect();
    for (i, sub) in subs.iter_mut().enumerate() {
        let msgs = take_msgs(sub, (N / HTTP_CLIENTS) as usize);
        assert_eq!(msgs.len() as u64, N / HTTP_CLIENTS, "channel http{i}");
    }
    let http_rate = rate(N, started);
    for p in publishers {
        p.join().unwrap();
    }

    // AMQP: a producer publishes while the subscriber counts.
    let mut sub = server.tcp();
    sub.sub("bench-amqp");
    let bodies: Vec<(Option<String>, String)> = (0..N)
        .map(|n| {
            let body = json!({"channel": "bench-amqp", "data": {"n": n}}).to_string();
            (Some(format!("m{n}")), body)
        })
        .collect();
    let started = Instant::now();
    let producer = std::thread::spawn(move || amqp.publish("bench-in", &bodies));
    let msgs = take_msgs(&mut sub, N as usize);
    assert_in_order(&msgs, 1, 0);
    let amqp_rate = rate(N, started);
    producer.join().unwrap();

    // Redis list: filled aside, then renamed into place at once.
    let mut sub = server.tcp();
    sub.sub("bench-list");
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let bodies: Vec<String> = chunk
            .iter()
            .map(|n| json!({"channel": "bench-list", "data": {"n": n}}).to_string())
            .collect();
        let mut args = vec!["LPUSH", "staging"];
        args.extend(bodies.iter().map(String::as_str));
        redis.cmd(&args);
    }
    let started = Instant::now();
    redis.cmd(&["RENAME", "staging", "bench-list"]);
    let msgs = take_msgs(&mut sub, N as usize);
    assert_in_order(&msgs, 1, 0);
    let list_rate = rate(N, started);

    println!(
        "messages/s to a subscriber, {N} each: POST /api/publish ({HTTP_CLIENTS} keep-alive \
         clients) {http_rate:.0}, amqp ingest {amqp_rate:.0}, redis-list ingest {list_rate:.0}"
    );
}
