//! Whole-process throughput of `llmeval run` against a loopback OpenAI server with a fixed
//! latency: 2,400 requests at concurrency 32 with 50 ms per request, ideal 640 requests/s.
//!
//!     cargo bench --bench throughput [-- REQUESTS CONCURRENCY LATENCY_MS]
//!
//! Prints the measured rate and its ratio to the ideal `concurrency / latency`.

#[path = "../tests/support/server.rs"]
mod server;

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(2400);
    let conc: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let latency_ms: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);

    let server = server::FakeServer::start(server::arith_answer);
    server.set_latency(Duration::from_millis(latency_ms));
    let dir = std::env::temp_dir().join(format!("llmeval-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut rows = String::new();
    for i in 0..n {
        rows.push_str(&format!("{{\"question\": \"{i}+{}\", \"answer\": \"{}\"}}\n", i % 97, i + i % 97));
    }
    std::fs::write(dir.join("data/arith.jsonl"), rows).unwrap();
    let suite = format!(
        "name = \"throughput\"\n[[model]]\nname = \"remote\"\nengine = \"openai\"\nbase-url = \"{}\"\nmodel = \"m\"\napi = \"chat\"\nconcurrency = {conc}\n\n\
         [[task]]\nname = \"arith\"\nkind = \"generate\"\ndata = \"data/arith.jsonl\"\nprompt = \"Q: {{{{ question }}}}\\nA:\"\ntarget = \"{{{{ answer }}}}\"\nmax-tokens = 8\nextract = {{ regex = \"(-?\\\\d+)\" }}\n",
        server.base_url()
    );
    std::fs::write(dir.join("suite.toml"), suite).unwrap();
    let db = dir.join("bench.db");

    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmeval"))
        .args(["run", dir.join("suite.toml").to_str().unwrap(), "--db", db.to_str().unwrap(), "--no-cache", "--json"])
        .output()
        .expect("run llmeval");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "llmeval failed: {}", String::from_utf8_lossy(&out.stderr));
    let served = server.log().len();
    assert_eq!(served, n, "every item requested exactly once");
    let ideal = conc as f64 / (latency_ms as f64 / 1000.0);
    let rate = n as f64 / secs;
    println!("requests {n}, concurrency {conc}, latency {latency_ms} ms");
    println!("wall {secs:.3} s, {rate:.1} requests/s, ideal {ideal:.1} requests/s, ratio {:.3}", rate / ideal);
    println!("max in flight seen by the server: {}", server.max_in_flight());
    let _ = std::fs::remove_dir_all(&dir);
}
