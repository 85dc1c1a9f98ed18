#!/usr/bin/env bash
# The built-in engine on an NVIDIA GPU (issue #8): correctness against the CPU's exact path and
# speed against PyTorch + transformers, on the default model and on a ~1.1B-parameter LLaMA with
# random weights. Exits 1 when a correctness check fails; every figure is one line of the output,
# and the last lines are rows for BENCHMARKS.md.
#
# Where the repo is set up with cargo, the default model and a GPU:
#   bash benches/gpu-check.sh
#
# On a lent GPU machine (the device tool: no Rust there, no network, 64 MiB per transfer; the
# default model is 98 MB, so it travels in two parts, one a call, each call with the check
# program):
#   here:    bash benches/gpu-check.sh --prepare     # release build, and the model in two parts, under .gpu/
#   call 1:  carry [".gpu/a"], command "bash benches/gpu-check.sh --first", timeout 580
#            GPU facts; the random 1.1B model: correctness, speed, transformers, BENCHMARKS rows (the goals)
#   call 2:  carry [".gpu/b"], command "bash benches/gpu-check.sh --second", timeout 240
#            the default model: correctness and speed (its part 0 is left on the machine by call 1,
#            so call 2 must follow within the machine's warm period; a cold machine says so)
# Where the time of a decode step goes, kernel by kernel (Nsight Compute, about 2 minutes; carry
# .gpu/a): command "bash benches/gpu-check.sh --ncu" — the first eight launches of one batch-1
# decode step of the random 1.1B model (in one launch where the one-launch step runs: the
# embedding, decode_step, logits_reduce; else the embedding and layer 0's five kernels, then layer
# 1's first two), each with its duration, DRAM throughput, occupancy and warp stalls; the whole
# report comes back as ncu-decode.txt.
# A check or speed step that fails runs once more with LLMEVAL_GPU_ONE_LAUNCH=off (see
# step_or_again below), so one session still gives the launch-by-launch figures.
# Before spending a GPU session, where torch and transformers are installed (no GPU needed):
#   python3 benches/gpu_check.py selftest /tmp/gpu-selftest    # the Python side on a small model, on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
RAND=.gpu/rand1b
PART=52428800 # bytes of the model in part 0 (50 MiB; each call also carries the 5 MB check program)

build_check() { # prints the path of the release gpu_check binary
  cargo bench --bench gpu_check --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_check" and m.get("executable"): print(m["executable"])' | tail -1
}

if [ "${1:-}" = "--prepare" ]; then
  bash scripts/fetch-model.sh
  mkdir -p .gpu/a .gpu/b
  grep -qx '/.gpu/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null || echo '/.gpu/' >>"$(git rev-parse --git-common-dir)/info/exclude"
  BIN=$(build_check)
  [ -x "$BIN" ] || { echo "gpu-check: the build of benches/gpu_check.rs failed" >&2; exit 2; }
  cp "$BIN" .gpu/a/gpu_check && strip .gpu/a/gpu_check && cp .gpu/a/gpu_check .gpu/b/gpu_check
  head -c $PART "models/$NAME" >.gpu/a/model.part0
  tail -c +$((PART + 1)) "models/$NAME" >.gpu/b/model.part1
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  for p in a b; do
    echo "call $([ $p = a ] && echo 1 || echo 2) carries .gpu/$p: $(du -sb .gpu/$p | cut -f1) bytes (+ $tree of tracked files; the limit is 67108864)"
  done
  exit 0
fi

OUTDIR=${OUT:-.gpu/out}
mkdir -p "$OUTDIR"
log() { echo "$@" | tee -a "$OUTDIR/gpu-check.log"; }

# CUDA's libraries: the toolkit's, or PyTorch's wheels (nvidia-cublas, nvidia-cuda-nvrtc).
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "") for p in nvidia.__path__))' 2>/dev/null); do
  [ -d "$d" ] || continue
  for f in $(find "$d" -maxdepth 3 \( -name 'libnvrtc.so.1[23]' -o -name 'libcublas.so.1[23]' -o -name 'libcublasLt.so.1[23]' -o -name 'libnvrtc-builtins.so.1[23]*' \) 2>/dev/null); do
    case ":$libdirs:" in *":$(dirname "$f"):"*) ;; *) libdirs="$libdirs:$(dirname "$f")" ;; esac
  done
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# compiled kernels kept beside the check (the second call on a warm machine reuses the first's)
export LLMEVAL_KERNEL_CACHE=${LLMEVAL_KERNEL_CACHE:-$PWD/.gpu/kernels}

CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
case "$CARD" in
  *H200*) BW=4.8 ;;
  *H100*PCIe*) BW=2.0 ;;
  *H100*NVL*) BW=3.9 ;;
  *H100*) BW=3.35 ;;
  *A100*80GB*) BW=2.0 ;;
  *A100*) BW=1.56 ;;
  *) BW="" ;;
esac

MODE=${1:-all} # all | --first | --second | --ncu
case "$MODE" in all | --first | --second | --ncu) ;; *) echo "gpu-check: unknown mode $MODE (--prepare, --first, --second, --ncu, or none for all)" >&2; exit 2 ;; esac
START=$(date +%s)
log "== llmeval GPU check ${MODE#--} · ${CARD:-no GPU name from nvidia-smi} (bandwidth ${BW:-unknown} TB/s) · driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1) · $(date -u +%Y-%m-%dT%H:%MZ)"
log "CUDA libraries from: ${LD_LIBRARY_PATH:-(none found: the check will fail to start the GPU)}"

# The check program: the one carried from --prepare, else a release build here.
BIN=""
for b in .gpu/a/gpu_check .gpu/b/gpu_check; do [ -x "$b" ] && BIN=$b; done
if [ -z "$BIN" ]; then
  if command -v cargo >/dev/null; then
    BIN=$(build_check)
  else
    log "gpu-check: no .gpu/a/gpu_check or .gpu/b/gpu_check and no cargo: run 'bash benches/gpu-check.sh --prepare' where cargo is, and carry .gpu/a (call 1) or .gpu/b (call 2)"
    exit 2
  fi
fi

status=0
step() { # step SECONDS command...: runs with a time limit, logs, records a failure
  local limit=$1
  shift
  set +e
  timeout "$limit" "$@" 2>&1 | tee -a "$OUTDIR/gpu-check.log"
  local rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -eq 124 ]; then log "gpu-check: '$*' ran past ${limit}s"; fi
  if [ "$rc" -ne 0 ]; then status=1; fi
  last=$rc
}
# after a check that could not start the GPU or load the model (exit 2), the rest would fail the
# same way: stop, and keep the lent machine's time for a rerun
stop_if_no_gpu() {
  if [ "${last:-0}" -eq 2 ]; then
    log "== stopped: the GPU or the model did not start (see above) after $(($(date +%s) - START)) s"
    exit 1
  fi
}

# step_or_again SECONDS command...: a step that fails (exit 1), cannot load (exit 2) or panics
# (101) runs once more with every decode step launch by launch. That tells a failure of the
# one-launch step from the rest (a trap in it leaves the CUDA context unusable: every later call
# of that process fails, and if it comes while loading times the step, the load fails) and still
# gives the launch-by-launch figures. Where only the second run loaded, the rest of the check runs
# that way too. A time limit is not run again (no time for it).
step_or_again() {
  step "$@"
  local first=$last limit=$1
  shift
  if [ "$first" -eq 1 ] || [ "$first" -eq 2 ] || [ "$first" -eq 101 ]; then
    log "== again with LLMEVAL_GPU_ONE_LAUNCH=off (every decode step launch by launch)"
    step "$limit" env LLMEVAL_GPU_ONE_LAUNCH=off "$@"
    if [ "$first" -eq 2 ] && [ "$last" -ne 2 ]; then
      export LLMEVAL_GPU_ONE_LAUNCH=off
      log "gpu-check: only launch by launch loaded: the rest of this check runs that way"
    fi
  fi
}

if [ "$MODE" = "--ncu" ]; then
  [ -f $RAND/model.safetensors ] || step 90 python3 benches/gpu_check.py write-model $RAND
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
  [ -n "$NCU" ] || { log "gpu-check: no ncu (Nsight Compute) on this machine"; exit 2; }
  log "== Nsight Compute ($NCU): one batch-1 decode step of the random 1.1B model, first 8 launches"
  step 240 "$NCU" --profile-from-start off --clock-control none --launch-count 8 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
    --log-file "$OUTDIR/ncu-decode.txt" "$BIN" ncu $RAND --label random-1.1b
  # the figures that say where the time goes, kernel by kernel
  grep -E "^  [A-Za-z_0-9]+\(|^ +(Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per Thread|Block Limit Registers|Warp Cycles Per Issued Instruction|No Eligible|One or More Eligible) " "$OUTDIR/ncu-decode.txt" | tee -a "$OUTDIR/gpu-check.log" || log "gpu-check: ncu wrote no kernel sections (see ncu-decode.txt)"
  grep -E "^ +(OPT|WRN) .*(stall|Stall|occupancy|latency)" "$OUTDIR/ncu-decode.txt" | head -20 | tee -a "$OUTDIR/gpu-check.log" || true
  log "== ncu done in $(($(date +%s) - START)) s"
  exit $status
fi

if [ "$MODE" != "--second" ]; then
  [ -f $RAND/model.safetensors ] || step 90 python3 benches/gpu_check.py write-model $RAND
  log "== random 1.1B LLaMA: GPU f32 vs the CPU's exact path (≤ 1e-2 nats per token, identical greedy tokens; bitwise batch invariance in f32 and the fast type)"
  step_or_again 170 "$BIN" check $RAND --label random-1.1b
  stop_if_no_gpu
  log "== random 1.1B LLaMA: speed (fast path), launch-by-launch profile"
  step_or_again 120 "$BIN" speed $RAND --label random-1.1b ${BW:+--bandwidth $BW} --json "$OUTDIR/llmeval-speed.json"
  log "== PyTorch + transformers, bf16, same card, same model"
  step 150 python3 benches/gpu_check.py baseline $RAND "$OUTDIR/transformers-speed.json"
  if [ -f "$OUTDIR/llmeval-speed.json" ] && [ -f "$OUTDIR/transformers-speed.json" ]; then
    log "== rows for BENCHMARKS.md (random-weight 1.1B LLaMA, bf16, ${CARD})"
    python3 - "$OUTDIR/llmeval-speed.json" "$OUTDIR/transformers-speed.json" "$CARD" <<'PY' | tee -a "$OUTDIR/gpu-check.log"
import json, sys
o, t, card = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
print(f"| figure ({card}) | llmeval | transformers {t['transformers']} | ratio |")
print("| --- | --- | --- | --- |")
for key, what in [("prefill_tokens_per_s", "prefill tokens/s (512-token prompt)"), ("decode_b1_tokens_per_s", "decode tokens/s, batch 1"),
                  ("decode_b32_tokens_per_s", "decode tokens/s, batch 32"), ("loglik_requests_per_s", "log-likelihood requests/s (2048, 4-choice groups)"),
                  ("loglik_tokens_per_s", "log-likelihood tokens/s")]:
    print(f"| {what} | {o[key]:.1f} | {t[key]:.1f} | {o[key] / t[key]:.2f}× |")
if o.get("bandwidth_bound_b1"):
    b = o["bandwidth_bound_b1"]
    print(f"| decode batch 1 vs bandwidth bound ({o['bytes_per_token'] / 1e9:.3f} GB read per token at the datasheet's {o['bytes_per_token'] * b / 1e12:.2f} TB/s) | {100 * o['decode_b1_tokens_per_s'] / b:.0f}% of {b:.0f} tokens/s | {100 * t['decode_b1_tokens_per_s'] / b:.0f}% | |")
    if t.get("copy_bandwidth_tb_s"):
        m = t["copy_bandwidth_tb_s"] * 1e12 / o["bytes_per_token"]
        print(f"| decode batch 1 vs the measured copy bandwidth ({t['copy_bandwidth_tb_s']:.2f} TB/s) | {100 * o['decode_b1_tokens_per_s'] / m:.0f}% of {m:.0f} tokens/s | {100 * t['decode_b1_tokens_per_s'] / m:.0f}% | |")
print(f"goals: decode batch 1 ≥ 50% of the bound: {'met' if o.get('bandwidth_bound_b1') and o['decode_b1_tokens_per_s'] >= 0.5 * o['bandwidth_bound_b1'] else 'NOT met'}; "
      f"log-likelihood ≥ 2× transformers: {'met' if o['loglik_tokens_per_s'] >= 2 * t['loglik_tokens_per_s'] else 'NOT met'}")
PY
  fi
fi

if [ "$MODE" != "--first" ]; then
  # The default model: in models/, or assembled from the two carried parts.
  MODEL=models/$NAME
  if ! { [ -f "$MODEL" ] && echo "$SHA  $MODEL" | sha256sum --check --status; }; then
    MODEL=.gpu/$NAME
    if [ -f .gpu/a/model.part0 ] && [ -f .gpu/b/model.part1 ]; then
      cat .gpu/a/model.part0 .gpu/b/model.part1 >"$MODEL"
    fi
    if ! { [ -f "$MODEL" ] && echo "$SHA  $MODEL" | sha256sum --check --status; }; then
      log "gpu-check: the default model is missing (part 0 comes with call 1 and stays while the machine is warm, part 1 with call 2; see the top of this script)"
      exit 2
    fi
  fi
  log "== default model: GPU f32 vs the CPU's exact path on tests/goldens/llamacpp_extra.json (≤ 1e-2 nats per token, identical greedy tokens; bitwise batch invariance in f32 and the fast type)"
  step_or_again 120 "$BIN" check "$MODEL" --golden tests/goldens/llamacpp_extra.json --label default-model
  stop_if_no_gpu
  log "== default model: speed (fast path)"
  step 40 "$BIN" speed "$MODEL" --label default-model ${BW:+--bandwidth $BW}
fi
log "== $( [ $status -eq 0 ] && echo 'correctness checks passed' || echo 'a check FAILED (see above)') in $(($(date +%s) - START)) s"
exit $status
