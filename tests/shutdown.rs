//! SIGTERM while a request runs: the server stops taking requests, the running one finishes
//! with its answer, and the process exits cleanly.

mod common;

use policies::store::SMOLLM2;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A plain HTTP/1.1 GET; the body, or `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn sigterm_lets_a_running_request_finish() {
    common::model_path(&SMOLLM2);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["serve", "--cpu", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Instant::now();
    while get(port, "/health").is_none() {
        assert!(
            up.elapsed() < Duration::from_secs(120),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let request = std::thread::spawn(move || {
        let answer = ureq::post(&format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .timeout(Duration::from_secs(300))
            .send_json(serde_json::json!({
                "model": "default",
                "messages": [{"role": "user", "content": "Count from 1 to 500, separated by commas."}],
                "max_tokens": 120,
                "temperature": 0
            }));
        (
            answer.map(|r| r.into_json::<serde_json::Value>()),
            Instant::now(),
        )
    });
    // SIGTERM once the request is running on the model.
    let waiting = Instant::now();
    loop {
        let page = get(port, "/metrics").unwrap_or_default();
        if metric(&page, "hone_in_flight") == Some(1.0) {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the request never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();

    let (answer, answered) = request.join().unwrap();
    let body = answer
        .expect("the running request got an answer")
        .expect("its body is JSON");
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(!text.is_empty(), "{body}");
    assert!(
        answered > signalled,
        "the answer came before the signal, so nothing was tested"
    );
    let exited = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            exited.elapsed() < Duration::from_secs(60),
            "the server did not exit after its last request"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
