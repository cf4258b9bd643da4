//! The `openai` Python client (installed by .ci/run) talks to a real `hone serve` unchanged.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn openai_python_client_works_unchanged() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/reward_models/manifests");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_hone"))
            .args([
                "serve",
                "--port",
                &port.to_string(),
                "--reward",
                "concise",
                "--rewards",
                manifests,
                "--cpu",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start hone serve"),
    );
    let health = format!("http://127.0.0.1:{port}/health");
    let started = Instant::now();
    while ureq::get(&health).call().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "server did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
