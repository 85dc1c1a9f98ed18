//! The GPU engine on a real GPU: correctness against the CPU's exact path, and speed. Run by
//! `benches/gpu-check.sh` on a machine with an NVIDIA GPU; every figure is one line on stdout,
//! and the exit code is 1 when a correctness check fails.
//!
//!   gpu_check check MODEL [--golden FILE] [--label NAME]
//!   gpu_check speed MODEL [--bandwidth TB/S] [--label NAME] [--json FILE]
//!   gpu_check ncu MODEL
//!
//! `check` scores the golden cases (or, without `--golden`, synthetic token sequences) and
//! generates greedily on the CPU (exact f32 path), on the GPU in f32, and on the GPU in its fast
//! storage type (f16/bf16); f32 must match the CPU within 1e-2 nats per token with identical
//! greedy tokens; both types must give bitwise the same numbers for a request alone as in one
//! batch (the GEMMs run in calls of one shape per product for that), and the same greedy tokens
//! with decode steps in one launch as launch by launch (where the one-launch step runs). `speed` measures the fast
//! type: prefill, decode at batch 1 and 32, and log-likelihood throughput on multiple-choice
//! requests that `gpu_check.py baseline` builds the same way for transformers. `ncu` runs one
//! batch-1 decode step (after a 512-token prompt; in one launch where the one-launch step runs)
//! inside the range that Nsight Compute collects when started with `--profile-from-start off`
//! (`gpu-check.sh --ncu`).

use llmeval::engine::device::Device;
use llmeval::engine::session::{GenOptions, ScoreRequest, ScoreResult};
use llmeval::engine::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Largest per-token difference allowed between the GPU's f32 path and the CPU's exact path.
const F32_GAP: f64 = 1e-2;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn load(path: &Path, exact: bool, device: Device) -> Engine {
    let mut e = Engine::load(path, threads()).unwrap_or_else(|e| fail(&format!("cannot load {}: {e}", path.display())));
    e.model.exact = exact;
    if let Some(note) = e.place(device).unwrap_or_else(|e| fail(&format!("{device}: {e}"))) {
        fail(&note);
    }
    e
}

fn fail(msg: &str) -> ! {
    eprintln!("gpu_check: {msg}");
    std::process::exit(2)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()).unwrap_or_default()
}

/// Deterministic token ids in `256..vocab` (the same formula as gpu_check.py).
fn synth(a: u64, b: u64, vocab: usize) -> u32 {
    (((a * 7919 + b * 104_729 + 13) % (vocab as u64 - 256)) + 256) as u32
}

/// Score requests and greedy prompts: from a golden file, or synthetic.
fn cases(golden: Option<&Path>, vocab: usize) -> (Vec<ScoreRequest>, Vec<Vec<u32>>) {
    if let Some(p) = golden {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())));
        let score = v["score"].as_array().map(|a| a.iter().map(|c| ScoreRequest { context: ids(&c["context_ids"]), continuation: ids(&c["continuation_ids"]) }).filter(|r| !r.context.is_empty()).collect()).unwrap_or_default();
        // twelve prompts keep the CPU's side of the check short
        let prompts = v["generate"].as_array().map(|a| a.iter().map(|c| ids(&c["prompt_ids"])).filter(|p| !p.is_empty()).take(12).collect()).unwrap_or_default();
        return (score, prompts);
    }
    let mut score = Vec::new();
    for (g, len) in [20usize, 60, 150, 300].into_iter().enumerate() {
        let ctx: Vec<u32> = (0..len).map(|i| synth(g as u64, i as u64, vocab)).collect();
        for c in 0..4u64 {
            let cont = (0..1 + (c as usize * 2 + g) % 6).map(|j| synth(1000 + g as u64 * 10 + c, j as u64, vocab)).collect();
            score.push(ScoreRequest { context: ctx.clone(), continuation: cont });
        }
    }
    let prompts = [10usize, 50, 120, 200].iter().enumerate().map(|(p, &len)| (0..len).map(|i| synth(5000 + p as u64, i as u64, vocab)).collect()).collect();
    (score, prompts)
}

fn score_all(e: &Engine, reqs: &[ScoreRequest]) -> Vec<ScoreResult> {
    let mut out = vec![None; reqs.len()];
    let run = e.score(reqs, &mut |i, r| out[i] = Some(r));
    run.unwrap_or_else(|err| fail(&format!("scoring on {}: {err}", e.device_label())));
    out.into_iter().map(|r| r.unwrap_or_else(|| fail("a request was not scored"))).collect()
}

fn greedy(e: &Engine, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let opts: Vec<GenOptions> = prompts.iter().map(|_| GenOptions { max_tokens: n, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] }).collect();
    let mut out = vec![Vec::new(); prompts.len()];
    let run = e.generate_all(prompts, &opts, &mut |i, g| out[i] = g.tokens);
    run.unwrap_or_else(|err| fail(&format!("generating on {}: {err}", e.device_label())));
    out
}

/// Largest and mean per-token |a − b|, and how many tokens.
fn gaps(a: &[ScoreResult], b: &[ScoreResult]) -> (f64, f64, usize) {
    let d: Vec<f64> = a.iter().zip(b).flat_map(|(x, y)| x.token_logprobs.iter().zip(&y.token_logprobs).map(|(p, q)| (p - q).abs())).collect();
    let max = d.iter().copied().fold(0.0, f64::max);
    (max, d.iter().sum::<f64>() / d.len().max(1) as f64, d.len())
}

fn verdict(ok: bool, failures: &mut usize) -> &'static str {
    if ok {
        "PASS"
    } else {
        *failures += 1;
        "FAIL"
    }
}

fn check(model: &Path, golden: Option<&Path>, label: &str) -> usize {
    let mut failures = 0;
    // the GPU first: a machine whose CUDA does not start fails here, before the CPU's long part
    let t = Instant::now();
    drop(load(model, true, Device::Cuda(0)));
    // most of it NVRTC where the kernel cache is cold (the check's first run on a machine)
    println!("[{label}] GPU load in f32: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let cpu = load(model, true, Device::Cpu);
    let vocab = cpu.model.config.vocab;
    let (reqs, prompts) = cases(golden, vocab);
    let gen_len = if cpu.info.parameters > 500_000_000 { 16 } else { 32 };
    let cpu_scores = score_all(&cpu, &reqs);
    let cpu_tokens: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&cpu, std::slice::from_ref(p), gen_len).remove(0)).collect();
    drop(cpu);
    println!("[{label}] CPU exact path: {} requests, {} greedy prompts × {gen_len} tokens ({:.1} s)", reqs.len(), prompts.len(), t.elapsed().as_secs_f64());

    for exact in [true, false] {
        let t = Instant::now();
        let gpu = load(model, exact, Device::Cuda(0));
        let name = gpu.device_label();
        if !exact {
            println!("[{label}] {name} GPU load in the fast type: {:.1} s", t.elapsed().as_secs_f64());
        }
        let scores = score_all(&gpu, &reqs);
        let (max, mean, n) = gaps(&scores, &cpu_scores);
        let greedy_flags = scores.iter().zip(&cpu_scores).filter(|(a, b)| a.is_greedy == b.is_greedy).count();
        let tokens = greedy(&gpu, &prompts, gen_len);
        let same = tokens.iter().zip(&cpu_tokens).filter(|(a, b)| a == b).count();
        let first_diff: Vec<String> = tokens.iter().zip(&cpu_tokens).map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count().to_string()).collect();
        // one request at a time against the whole batch
        let alone: Vec<ScoreResult> = reqs.iter().map(|r| score_all(&gpu, std::slice::from_ref(r)).remove(0)).collect();
        let (bmax, _, _) = gaps(&alone, &scores);
        let bitwise = alone.iter().zip(&scores).filter(|(a, b)| a == b).count();
        // decode steps in one launch and launch by launch give the same bits: the same greedy
        // tokens as the way chosen at load
        let mut both_ways = None;
        if let Some(g) = &gpu.gpu {
            print!("[{label}] {name} {}", llmeval::engine::cuda::profile::render_gemm_choices(&g.gemm_choices()));
            if let Some(limit) = g.one_launch() {
                let mut ways = [true, false].map(|on| {
                    g.set_one_launch(Some(on));
                    greedy(&gpu, &prompts, gen_len)
                });
                g.set_one_launch(None);
                both_ways = Some((limit, std::mem::take(&mut ways[0]), std::mem::take(&mut ways[1])));
            }
        }
        match &both_ways {
            Some((limit, one, each)) => {
                let chosen = match *limit {
                    0 => "launch by launch at every batch".to_string(),
                    usize::MAX => "in one launch at every batch".to_string(),
                    b => format!("in one launch up to {b} sequences"),
                };
                let same = one.iter().zip(each).zip(&tokens).filter(|((a, b), c)| a == b && b == c).count();
                println!("[{label}] {name} decode steps {chosen} (chosen at load); in one launch and launch by launch: greedy tokens identical on {same}/{} prompts: {}", prompts.len(), verdict(same == prompts.len(), &mut failures));
            }
            None => println!("[{label}] {name} decode steps launch by launch (the one-launch step does not run here)"),
        }
        if exact {
            println!("[{label}] {name} vs CPU exact: per-token log-prob max |Δ| {max:.2e}, mean {mean:.2e} nats over {n} tokens (limit {F32_GAP:.0e}): {}", verdict(max <= F32_GAP, &mut failures));
            println!("[{label}] {name} vs CPU exact: is_greedy equal on {greedy_flags}/{} requests", reqs.len());
            println!("[{label}] {name} vs CPU exact: greedy tokens identical on {same}/{} prompts (identical prefix lengths {}): {}", prompts.len(), first_diff.join(" "), verdict(same == prompts.len(), &mut failures));
            println!("[{label}] {name} batch invariance: alone vs in one batch bitwise equal {bitwise}/{} (max |Δ| {bmax:.2e} nats): {}", reqs.len(), verdict(bitwise == reqs.len(), &mut failures));
        } else {
            println!("[{label}] {name} vs CPU exact (information): per-token max |Δ| {max:.2e}, mean {mean:.2e} nats over {n} tokens; is_greedy equal {greedy_flags}/{}; greedy tokens identical {same}/{} (identical prefix lengths {})", reqs.len(), prompts.len(), first_diff.join(" "));
            println!("[{label}] {name} batch invariance: alone vs in one batch bitwise equal {bitwise}/{} (max |Δ| {bmax:.2e} nats): {}", reqs.len(), verdict(bitwise == reqs.len(), &mut failures));
        }
    }
    failures
}

/// The multiple-choice requests of the throughput test (same formula as gpu_check.py): `groups`
/// contexts of 192 tokens, four continuations of 1 to 8 tokens each.
fn mc_requests(groups: usize, vocab: usize) -> Vec<ScoreRequest> {
    let mut out = Vec::new();
    for g in 0..groups as u64 {
        let ctx: Vec<u32> = (0..192).map(|i| synth(g, i, vocab)).collect();
        for c in 0..4u64 {
            let n = 1 + (c * 3 + g) % 8;
            out.push(ScoreRequest { context: ctx.clone(), continuation: (0..n).map(|j| synth(100_000 + g * 4 + c, j, vocab)).collect() });
        }
    }
    out
}

fn speed(model: &Path, bandwidth: Option<f64>, label: &str, json_out: Option<&Path>) {
    let e = load(model, false, Device::Cuda(0));
    let gpu = e.gpu.as_ref().unwrap_or_else(|| fail("no GPU"));
    let vocab = e.model.config.vocab;
    let prompt: Vec<u32> = (0..512).map(|i| synth(42, i, vocab)).collect();
    let run = |batch: usize, profile: bool| gpu.bench(&prompt, batch, 128, profile).unwrap_or_else(|err| fail(&format!("bench: {err}")));
    let _ = run(1, false); // warm-up: graphs recorded, clocks up
    let b1 = run(1, true);
    if let Some(why) = &b1.profile_error {
        println!("[{label}] no launch-by-launch profile: {why}");
    }
    let (prefill, decode1) = (b1.prefill, b1.decode);
    let b32 = run(32, false);
    let decode32 = b32.decode;
    let elem = gpu.prec.bytes();
    let prefill_profile = profile_table(&format!("[{label}] prefill pass of 512 tokens, launch by launch"), &b1.prefill_ops, elem, 512.0 / prefill);
    let decode_profile = profile_table(&format!("[{label}] decode step at batch 1, launch by launch"), &b1.decode_ops, elem, 1.0 / decode1);
    let shapes = gpu.matvec_timing();
    print!("[{label}] {}", llmeval::engine::cuda::profile::render_shapes(&shapes, elem));
    let gemms = gpu.gemm_choices();
    print!("[{label}] {}", llmeval::engine::cuda::profile::render_gemm_choices(&gemms));
    let reqs = mc_requests(512, vocab);
    let _ = score_all(&e, &reqs[..64]);
    let t = Instant::now();
    let _ = score_all(&e, &reqs);
    let secs = t.elapsed().as_secs_f64();
    let tokens: usize = reqs.iter().map(|r| r.context.len() + r.continuation.len()).sum();
    let (weights, kv) = gpu.memory();
    println!("[{label}] {} · weights {:.2} GB ({}), KV cache {:.1} GB", e.device_label(), weights as f64 / 1e9, gpu.prec.name(), kv as f64 / 1e9);
    println!("[{label}] llmeval prefill {prefill:.0} tokens/s (512-token prompt)");
    println!("[{label}] llmeval decode batch 1: {decode1:.1} tokens/s · batch 32: {decode32:.1} tokens/s (128 tokens after a 512-token prompt)");
    if let (Some(o1), Some(o32)) = (b1.other_mode, b32.other_mode) {
        let how = if o1.overlap { "with overlapping launches (LLMEVAL_GPU_OVERLAP=on)" } else { "without overlapping launches (each kernel after the last has finished)" };
        let pct = |a: f64, b: f64| 100.0 * (a / b - 1.0);
        println!("[{label}] llmeval {how}: prefill {:.0} tokens/s ({:+.1}%) · decode batch 1 {:.1} tokens/s ({:+.1}%) · batch 32 {:.1} tokens/s ({:+.1}%)", o1.prefill, pct(o1.prefill, prefill), o1.decode, pct(o1.decode, decode1), o32.decode, pct(o32.decode, decode32));
    }
    // the decode step's attention run each way it can here (the engine's own first)
    let ways = |b: &llmeval::engine::cuda::Bench| b.attention.iter().map(|(n, t)| format!("{n}: {t:.1}")).collect::<Vec<_>>().join(" · ");
    println!("[{label}] llmeval decode tokens/s by the way attention runs, batch 1: {}", ways(&b1));
    println!("[{label}] llmeval decode tokens/s by the way attention runs, batch 32: {}", ways(&b32));
    // the one-launch decode step against launch by launch (the engine runs the one load found
    // faster, batch by batch)
    let step = |b: &llmeval::engine::cuda::Bench, own: f64| match b.one_launch {
        Some((true, other)) => format!("one launch {own:.1} (the engine's choice) · launch by launch {other:.1}"),
        Some((false, other)) => format!("launch by launch {own:.1} (the engine's choice) · one launch {other:.1}"),
        None => "the one-launch step does not run here".to_string(),
    };
    println!("[{label}] llmeval decode tokens/s by how a step launches, batch 1: {}", step(&b1, decode1));
    println!("[{label}] llmeval decode tokens/s by how a step launches, batch 32: {}", step(&b32, decode32));
    println!("[{label}] llmeval log-likelihood: {} requests ({} groups of 4 choices, 192-token contexts) in {secs:.2} s = {:.0} requests/s, {:.0} tokens/s", reqs.len(), reqs.len() / 4, reqs.len() as f64 / secs, tokens as f64 / secs);
    // a decode step reads every matrix once (the embedding table only a row)
    let per_token = gpu.bytes_per_token();
    let bound = bandwidth.map(|bw| bw * 1e12 / per_token as f64);
    if let Some(b) = bound {
        println!("[{label}] decode batch 1 bandwidth bound {b:.1} tokens/s ({:.3} GB read per token / {:.2} TB/s); llmeval at {:.0}% of it", per_token as f64 / 1e9, bandwidth.unwrap_or(0.0), 100.0 * decode1 / b);
    }
    if let Some(p) = json_out {
        let v = json!({"device": e.device_label(), "prefill_tokens_per_s": prefill, "decode_b1_tokens_per_s": decode1, "decode_b32_tokens_per_s": decode32, "other_mode_overlaps": b1.other_mode.map(|o| o.overlap), "other_mode_prefill_tokens_per_s": b1.other_mode.map(|o| o.prefill), "other_mode_decode_b1_tokens_per_s": b1.other_mode.map(|o| o.decode), "other_mode_decode_b32_tokens_per_s": b32.other_mode.map(|o| o.decode),
            "loglik_requests_per_s": reqs.len() as f64 / secs, "loglik_tokens_per_s": tokens as f64 / secs, "weights_bytes": weights, "bytes_per_token": per_token, "bandwidth_bound_b1": bound,
            "prefill_profile": prefill_profile, "decode_profile": decode_profile, "decode_product_shapes": llmeval::engine::cuda::profile::shapes_json(&shapes), "prefill_gemm_ways": llmeval::engine::cuda::profile::gemm_choices_json(&gemms),
            "decode_attention_b1": b1.attention, "decode_attention_b32": b32.attention, "one_launch_b1": b1.one_launch, "one_launch_b32": b32.one_launch});
        std::fs::write(p, v.to_string()).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())));
    }
}

/// Prints a profile grouped by kernel and shape; returns the groups as JSON. `whole` is the
/// seconds the same work took when timed as a whole (a decode step replayed from its graph).
fn profile_table(title: &str, ops: &[llmeval::engine::cuda::driver::Timed], elem_bytes: usize, whole: f64) -> Value {
    use llmeval::engine::cuda::profile;
    let groups = profile::group(ops, elem_bytes);
    print!("{}", profile::render(title, ops, &groups, whole * 1e6));
    serde_json::to_value(&groups).unwrap_or(Value::Null)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let (Some(cmd), Some(model)) = (args.first(), args.get(1)) else {
        fail("usage: gpu_check check|speed|ncu MODEL [--golden FILE] [--bandwidth TB/S] [--label NAME] [--json FILE]");
    };
    let model = PathBuf::from(model);
    let label = flag("--label").unwrap_or_else(|| model.display().to_string());
    match cmd.as_str() {
        "check" => {
            let failures = check(&model, flag("--golden").as_deref().map(Path::new), &label);
            if failures > 0 {
                println!("[{label}] {failures} check(s) FAILED");
                std::process::exit(1);
            }
        }
        "ncu" => {
            let e = load(&model, false, Device::Cuda(0));
            let gpu = e.gpu.as_ref().unwrap_or_else(|| fail("no GPU"));
            let prompt: Vec<u32> = (0..512).map(|i| synth(42, i, e.model.config.vocab)).collect();
            // the one-launch step where it runs here, chosen or not (earlier runs profiled the
            // products launch by launch): its kernel is what the profiler sees
            let chosen = gpu.one_launch();
            let one = gpu.set_one_launch(Some(true));
            println!("[{label}] profiled step: {} (loading chose one launch up to {chosen:?} sequences)", if one { "in one launch" } else { "launch by launch (no one-launch step here)" });
            let b = gpu.bench(&prompt, 1, 8, true).unwrap_or_else(|err| fail(&format!("bench: {err}")));
            println!("[{label}] one decode step profiled ({} launches)", b.decode_ops.len());
        }
        "speed" => speed(&model, flag("--bandwidth").and_then(|b| b.parse().ok()), &label, flag("--json").as_deref().map(Path::new)),
        other => fail(&format!("unknown command {other:?}")),
    }
}
