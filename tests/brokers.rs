//! The broker harness itself: a real redis-server and rabbitmq-server start
//! on free ports, answer, and come back after a kill -9.
mod common;

use common::brokers::{Rabbit, Redis};

#[test]
fn redis_starts_answers_and_comes_back_empty_after_a_kill() {
    let mut redis = Redis::start();
    assert_eq!(redis.cmd(&["SET", "k", "v"]), "+OK");
    assert_eq!(redis.cmd(&["GET", "k"]), "v");
    redis.kill();
    assert!(redis.try_cmd(&["PING"]).is_none());
    redis.launch();
    assert_eq!(redis.cmd(&["GET", "k"]), "(nil)");
}

#[test]
fn rabbitmq_starts_on_its_own_ports_and_accepts_amqp() {
    let rabbit = Rabbit::start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", rabbit.port)).expect("amqp port");
    use std::io::{Read, Write};
    s.write_all(b"AMQP\x00\x00\x09\x01")
        .expect("protocol header");
    let mut frame = [0u8; 7];
    s.read_exact(&mut frame).expect("connection.start");
    assert_eq!(frame[0], 1, "a method frame: {frame:?}");
}
