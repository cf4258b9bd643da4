//! `hone bench service`: what the HTTP service adds around the engine per request. The same
//! small plain-decoding job (greedy, 8 tokens) runs in turn directly (`Strategy::run` in this
//! process) and through a loopback server (a new connection per request, as curl makes). Each
//! answer reports the loop's own wall time, so a request's time outside the loop (HTTP, JSON,
//! the queue, the blocking pool, the metrics) is measured within the request, free of the
//! engine's run-to-run noise.

use super::BenchArgs;
use anyhow::{anyhow, bail, Context, Result};
use hone::budget::Budget;
use hone::server::{self, AppState, Config};
use hone::strategy::{Engine, Execution, Learned, Request, Strategy};
use policies::{Message, Role, Speculation};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Instant;

const PROMPT: &str = "What is the capital of France?";
const MAX_TOKENS: usize = 8;

pub fn run(a: &BenchArgs) -> Result<()> {
    let reward_name = a.reward.clone().unwrap_or_else(|| "concise".into());
    let config = Config {
        port: 0,
        model: a.model.clone(),
        policies: crate::cli::policies_dir(),
        reward: reward_name.clone(),
        rewards: a.rewards.clone(),
        cpu: a.cpu,
        workers: Some(1),
        ..Config::default()
    };
    let state = AppState::load(config)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match server::start(state) {
                Ok(started) => {
                    let _ = tx.send(Ok((started.addr, started.state.clone())));
                    let _ = started.server.await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
    });
    let (addr, state) = rx.recv()?.context("starting the server")?;

    // The direct arm: the same model and reward, loaded in this process as the server did.
    let models = crate::cli::load_models(&a.model, None, &reward_name, &a.rewards, a.cpu)?;
    let device = &models.device;
    let learned = Learned::default();
    let engine = Engine {
        policy: models.policy.as_ref(),
        reward: models.reward.as_ref(),
        reward_weight: models.reward_weight,
        learned: &learned,
        execution: Execution::Batched,
        speculation: Speculation::drafts(state.config.speculate),
    };
    let request = Request {
        messages: vec![Message::new(Role::User, PROMPT)],
        n: 1,
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        budget: Budget::default(),
        ..Request::default()
    };
    let optimize = serde_json::json!({
        "prompt": PROMPT, "strategy": "plain", "max_tokens": MAX_TOKENS, "temperature": 0.0,
    })
    .to_string();
    let chat = serde_json::json!({
        "model": "default", "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS, "temperature": 0.0,
    })
    .to_string();

    let runs = a.repeats.max(1);
    // Round trips, and round trips less the loop's own wall time as the answer reports it.
    let (mut direct, mut optimize_ms, mut chat_ms) = (vec![], vec![], vec![]);
    let (mut optimize_extra, mut chat_extra) = (vec![], vec![]);
    // One of each first, unmeasured: the first request builds the reward and warms caches.
    post(addr, "/optimize", &optimize)?;
    post(addr, "/v1/chat/completions", &chat)?;
    Strategy::Plain.run(&engine, &request, None, None)?;
    for _ in 0..runs {
        let t = Instant::now();
        Strategy::Plain.run(&engine, &request, None, None)?;
        direct.push(ms(t));
        let t = Instant::now();
        let reply = post(addr, "/optimize", &optimize)?;
        let round_trip = ms(t);
        optimize_ms.push(round_trip);
        optimize_extra.push(round_trip - wall_ms(&reply, &["usage", "wall_ms"])?);
        let t = Instant::now();
        let reply = post(addr, "/v1/chat/completions", &chat)?;
        let round_trip = ms(t);
        chat_ms.push(round_trip);
        chat_extra.push(round_trip - wall_ms(&reply, &["hone", "usage", "wall_ms"])?);
    }
    println!(
        "policy: {} | reward: {reward_name} | device: {:?} | threads: {} | {runs} requests per arm, greedy, {MAX_TOKENS} tokens",
        state.policy().name(),
        device,
        candle_core::utils::get_num_threads()
    );
    println!("| arm | median ms | median ms outside the loop |");
    println!("|---|---|---|");
    println!("| direct `Strategy::run` | {:.1} | |", median(&direct));
    for (arm, all, extra) in [
        ("POST /optimize", &optimize_ms, &optimize_extra),
        ("POST /v1/chat/completions", &chat_ms, &chat_extra),
    ] {
        println!("| {arm} | {:.1} | {:.1} |", median(all), median(extra));
    }
    Ok(())
}

/// The loop's wall time (whole milliseconds) that an answer reports at `path`.
fn wall_ms(reply: &str, path: &[&str]) -> Result<f64> {
    let mut v: &serde_json::Value = &serde_json::from_str(reply)?;
    for key in path {
        v = &v[key];
    }
    v.as_f64()
        .ok_or_else(|| anyhow!("no {} in the answer", path.join(".")))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One HTTP/1.1 POST on a new connection; the body of a 200 answer.
fn post(addr: SocketAddr, path: &str, body: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP head in the reply"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{path}: {head}\n{body}");
    }
    Ok(body.to_string())
}
