//! Checks of the GPU engine that need no GPU: the kernel source against the Rust side that
//! launches it, and (where the library is found) NVRTC compiling it.

use super::args::{self, Kernel};
use super::driver::{compile, Prec, Target, SOURCE};

/// Says on the real stderr (past the test harness's capture, so it shows in every run) that a
/// test checked nothing.
fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED (checked nothing): {test}: {why}");
}

/// The source without comments.
fn code() -> String {
    let mut out = String::new();
    let mut rest = SOURCE;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `LLM_KERNEL(name, Args)` declarations: (name, struct).
fn declared_kernels(code: &str) -> Vec<(String, String)> {
    code.match_indices("LLM_KERNEL(")
        .filter_map(|(i, _)| {
            let inner = &code[i + "LLM_KERNEL(".len()..];
            let inner = &inner[..inner.find(')')?];
            let (a, b) = inner.split_once(',')?;
            Some((a.trim().to_string(), b.trim().to_string()))
        })
        .filter(|(name, _)| name != "name") // the macro's own definition
        .collect()
}

/// The fields of `struct name { ... };` as (field, kind) with kind "DPtr", "i32" or "f32".
fn struct_fields(code: &str, name: &str) -> Vec<(String, String)> {
    let start = code.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("struct {name} is not in kernels.cu"));
    let body = &code[start..];
    let body = &body[body.find('{').expect("brace") + 1..body.find("};").expect("end of struct")];
    body.split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|decl| {
            let field = decl.rsplit(|c: char| c.is_whitespace() || c == '*').next().expect("field name").to_string();
            let kind = if decl.contains('*') {
                "DPtr"
            } else if decl.starts_with("int ") {
                "i32"
            } else if decl.starts_with("float ") {
                "f32"
            } else {
                panic!("struct {name}: field `{decl}` has a type the Rust side cannot mirror")
            };
            (field, kind.to_string())
        })
        .collect()
}

#[test]
fn every_launched_kernel_is_in_the_source_with_the_same_arguments() {
    let code = code();
    let declared = declared_kernels(&code);
    assert_eq!(declared.len(), Kernel::ALL.len(), "kernels.cu declares {declared:?}");
    for (kernel, strukt, fields) in args::all() {
        assert!(declared.contains(&(kernel.name().to_string(), strukt.to_string())), "LLM_KERNEL({}, {strukt}) is missing from kernels.cu", kernel.name());
        let want: Vec<(String, String)> = fields.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect();
        assert_eq!(struct_fields(&code, strukt), want, "struct {strukt}: kernels.cu and args.rs differ");
    }
    for k in Kernel::ALL {
        assert!(Kernel::ALL.iter().filter(|j| j.name() == k.name()).count() == 1);
        // a shape of a kernel takes its family's struct
        let strukt = args::all().into_iter().find(|a| a.0 == k.family()).expect("family has a struct").1;
        assert!(declared.contains(&(k.name().to_string(), strukt.to_string())), "LLM_KERNEL({}, {strukt}) is missing from kernels.cu", k.name());
    }
    // each decode product shape's kernel instantiates the body with the table's (W, R, U, P)
    let body = |s: &args::MvShape| format!("matvec_body<{}, {}, {}, {}, {}, {}>", s.warps, s.rows, s.unroll, u8::from(s.pipelined), u8::from(s.staged), s.queue);
    for s in args::MV_SHAPES {
        let line = format!("LLM_KERNEL({}, MatvecArgs) {{ {}(a, launch_block(), Pdl{{}}); }}", s.kernel.name(), body(&s));
        assert!(code.contains(&line), "kernels.cu lacks `{line}`");
    }
    // … and the one-launch step's products run the shape the host sizes their grids and shared
    // memory for, in blocks of the host's size, with the attention of as many warps
    for (kind, shape) in [("PH_MATVEC", args::STEP_SHAPE), ("PH_MATVEC_RING", args::STEP_RING_SHAPE)] {
        let step = format!("if (s_ph.kind == {kind}) {{\n        {}(*(const MatvecArgs*)s_ph.args, b, wait);", body(&shape));
        assert!(code.contains(&step), "decode_step runs `{step}`");
    }
    // (a capped shape runs its uncapped twin's kernel, as the cap only sizes the grid)
    for s in args::MV_SHAPES.iter().filter(|s| s.max_blocks > 0) {
        assert!(args::MV_SHAPES.contains(&args::MvShape { max_blocks: 0, ..*s }), "{} has no uncapped twin", s.name());
    }
    let kernels = Kernel::ALL.iter().filter(|k| k.family() == Kernel::Matvec).count();
    assert_eq!(code.matches("matvec_body<").count(), kernels + 2, "a shape in kernels.cu that MV_SHAPES lacks");
    for hd in [32, 64, 128] {
        let k = Kernel::decode_step(hd).expect("a step kernel");
        assert!(code.contains(&format!("LLM_KERNEL({}, StepArgs) {{ decode_step_body<{hd}>(a); }}", k.name())));
        assert!(code.contains(&format!("LLM_KERNEL({}, AttnArgs) {{ attention_decode_body<{hd}>(a, launch_block(), Pdl{{}}); }}", Kernel::attention_decode(hd).expect("a body").name())));
    }
    // a phase's layout as the host writes it
    for (name, value) in [("PH_ARGS", args::PH_ARGS as i64), ("PH_MATVEC", args::PH_MATVEC.into()), ("PH_ATTENTION", args::PH_ATTENTION.into()), ("PH_MATVEC_RING", args::PH_MATVEC_RING.into())] {
        assert!(code.contains(&format!("#define {name} {value} ")), "#define {name} {value}");
    }
    assert!(code.contains("struct alignas(16) Phase {\n  int kind;\n  unsigned gx, gy, gz;"), "a phase starts with its kind and grid");
    assert_eq!(args::PHASE_BYTES, 16 + args::PH_ARGS);
}

/// Launches may overlap on sm_90: before `pdl_wait()` a kernel may read nothing that an earlier
/// kernel writes. Every kernel starts with `pdl_wait(); pdl_trigger();` (after its shared
/// declarations: it lets the next kernel start only once it may run itself, so no chain of
/// waiting kernels forms); the decode product may first load its weight rows, reading only the
/// launch sizes and the weights.
#[test]
fn no_kernel_reads_earlier_results_before_it_waits() {
    let code = code();
    // the text from `from` to its first `pdl_wait();`, which `pdl_trigger();` must follow
    let text_until_wait = |from: usize| -> &str {
        let rest = &code[from..];
        let at = rest.find("pdl_wait();").unwrap_or_else(|| panic!("no pdl_wait() after {}", &rest[..40.min(rest.len())]));
        assert!(rest[at + "pdl_wait();".len()..].trim_start().starts_with("pdl_trigger();"), "`pdl_trigger();` right after the `pdl_wait();` at {}", &rest[..40.min(rest.len())]);
        &rest[..at]
    };
    // a body run as a kernel of its own and as a phase of `decode_step` calls its `wait`: `Pdl`
    // (the above) or the step's grid barrier
    let pdl = code.find("struct Pdl {").expect("struct Pdl");
    assert!(text_until_wait(pdl).ends_with("const {\n    "), "Pdl waits and triggers, nothing else");
    let text_until_own_wait = |from: usize| -> &str {
        let rest = &code[from..];
        &rest[..rest.find(" wait();").unwrap_or_else(|| panic!("no wait() after {}", &rest[..40.min(rest.len())]))]
    };
    let mut kernels = 0;
    for (i, _) in code.match_indices("LLM_KERNEL(") {
        let body = &code[i..];
        let name = body["LLM_KERNEL(".len()..].split(',').next().unwrap_or("").trim();
        if name == "name" {
            continue; // the macro's definition
        }
        kernels += 1;
        let open = body.find('{').expect("a body") + 1;
        if body[open..].trim_start().starts_with("matvec_body<") {
            continue; // checked below
        }
        // the attention kernels' bodies: their template's
        let template = ["attention_body", "attention_decode_body", "decode_step_body"].into_iter().find(|t| body[open..].trim_start().starts_with(&format!("{t}<")));
        let start = match template {
            Some(t) => {
                let f = code.find(&format!("void {t}(")).unwrap_or_else(|| panic!("{t}"));
                f + code[f..].find('{').expect("a body") + 1
            }
            None => i + open,
        };
        let before = if template == Some("attention_decode_body") { text_until_own_wait(start) } else { text_until_wait(start) };
        for st in before.split(';').map(str::trim).filter(|t| !t.is_empty()) {
            assert!(st.starts_with("__shared__") || st.starts_with("LLM_DYN_SHARED("), "{name} runs `{st}` before pdl_wait()");
        }
    }
    assert_eq!(kernels, Kernel::ALL.len());
    let mv = code.find("void matvec_body(").expect("matvec_body");
    let before = text_until_own_wait(mv);
    let fields: Vec<&str> = before.match_indices("a.").map(|(j, _)| before[j + 2..].split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or("")).collect();
    assert!(!fields.is_empty() && fields.iter().all(|f| ["m", "n", "k", "w"].contains(f)), "matvec_body reads a.{fields:?} before pdl_wait()");
    // memory is read only through the weight rows
    assert_eq!(before.matches("*(const").count(), before.matches("*(const V16*)(wrow[rr]").count(), "matvec_body: a load before pdl_wait() that is not a weight row");
}

#[test]
fn kernel_source_is_balanced_and_needs_no_headers() {
    let code = code();
    for (open, close) in [('{', '}'), ('(', ')'), ('[', ']')] {
        let mut depth = 0i64;
        for (i, c) in code.chars().enumerate() {
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                assert!(depth >= 0, "unbalanced {close} at character {i}");
            }
        }
        assert_eq!(depth, 0, "unbalanced {open}{close}");
    }
    assert!(!code.contains("#include"), "NVRTC gets no CUDA headers: kernels.cu must define what it uses");
    // the geometry the host assumes
    for (name, value) in [("ATT_ROWS", super::ATT_ROWS), ("ATT_BK", super::ATT_BK), ("ATT_WARPS", 4), ("ATT_ROWS_PER_WARP", 4), ("ATT_MAXC", 8), ("KV_BS", super::BLOCK), ("DEC_TILE", super::DEC_TILE)] {
        assert!(code.contains(&format!("#define {name} {value} ")) || code.contains(&format!("#define {name} {value}\n")), "#define {name} {value}");
    }
    assert_eq!(super::ATT_ROWS, 4 * 4, "rows per block = warps × rows per warp");
    // the decode products' geometry and switches
    use super::args::{MV_F32, MV_GLU, MV_NORM, MV_PLAIN, MV_QKV};
    let mv = [("MV_M", args::MV_M as i64), ("MV_PLAIN", MV_PLAIN.into()), ("MV_NORM", MV_NORM.into()), ("MV_F32", MV_F32.into()), ("MV_GLU", MV_GLU.into()), ("MV_QKV", MV_QKV.into())];
    for (name, value) in mv {
        assert!(code.contains(&format!("#define {name} {value} ")) || code.contains(&format!("#define {name} {value}\n")), "#define {name} {value}");
    }
    // the shapes the host can pick: the first makes every output, a warp holds one or two weight
    // rows, a block is at most 1024 threads
    assert!([(MV_PLAIN, MV_F32), (MV_NORM, MV_F32), (MV_NORM, MV_GLU), (MV_NORM, MV_QKV)].iter().all(|&(_, o)| args::MV_SHAPES[0].runs(o, 8192, 4)));
    // a staged shape runs inputs of up to SHARED_OPT_IN a block (MV_M rows), and only it asks
    // for shared memory
    assert!(args::MV_SHAPES.iter().any(|s| s.staged));
    for s in args::MV_SHAPES.iter() {
        assert_eq!((s.runs(MV_F32, 4096, 2), s.runs(MV_F32, 8192, 4)), (true, !s.staged));
        let ring = s.threads() * s.queue * s.rows * 16;
        assert_eq!((s.shared(1, 4096, 2), s.shared(20, 4096, 2)), if s.staged { (8192 + ring, 65536 + ring) } else { (0, 0) });
        // the ring starts 16-byte aligned after rows of any length
        assert_eq!(s.shared(1, 3, 2), if s.staged { 16 + ring } else { 0 });
        assert!(s.queue == 0 || (s.staged && s.rows == 2), "{}", s.name());
    }
    assert!(args::MV_SHAPES.iter().all(|s| s.threads() <= 1024 && (s.rows == 1 || s.rows == 2)));
}

/// Loads NVRTC from `LLMEVAL_NVRTC` (a path to libnvrtc.so.13 or .12, e.g. from the
/// `nvidia-cuda-nvrtc` wheel) or the library path; the reason when absent.
fn nvrtc() -> Result<(), String> {
    if let Ok(path) = std::env::var("LLMEVAL_NVRTC") {
        let path = std::path::PathBuf::from(path);
        // NVRTC opens its builtins library by name: load it first from the same folder
        let dir = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
        let builtins = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc-builtins.so")));
        for lib in builtins.chain(std::iter::once(path.clone())) {
            let c = std::ffi::CString::new(lib.to_string_lossy().into_owned()).map_err(|e| e.to_string())?;
            // SAFETY: dlopen of a library file; RTLD_GLOBAL so later dlopen calls by soname find it.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if h.is_null() {
                return Err(format!("{} cannot be loaded (LLMEVAL_NVRTC={})", lib.display(), path.display()));
            }
        }
    }
    // SAFETY: only tries dlopen on fixed names.
    if std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false) {
        Ok(())
    } else {
        Err("no libnvrtc found (set LLMEVAL_NVRTC to a libnvrtc.so.13 or .12; .ci/run installs the nvidia-cuda-nvrtc wheel)".into())
    }
}

#[test]
fn nvrtc_compiles_the_kernels_for_every_precision() {
    if let Err(why) = nvrtc() {
        skipped("nvrtc_compiles_the_kernels_for_every_precision", &why);
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        for (w, k) in [(Prec::F32, Prec::F32), (Prec::F16, Prec::F16), (Prec::Bf16, Prec::Bf16)] {
            let ptx = compile(Target { arch, w, k, head_dim: 0 }).unwrap_or_else(|e| panic!("{arch} {w:?}: {e}"));
            let text = String::from_utf8_lossy(&ptx);
            for kernel in Kernel::ALL {
                assert!(text.contains(&format!(".entry {}(", kernel.name())), "{arch} {w:?}: no entry {}", kernel.name());
            }
            // one struct parameter per kernel
            assert!(!text.contains("_param_1"), "{arch} {w:?}: a kernel has more than one parameter");
            // for sm_90 every kernel waits for the kernel before it (launches may overlap there);
            // older architectures have no such instruction
            for body in text.split(".entry ").skip(1) {
                let name = body.split('(').next().unwrap_or("");
                let waits = body.contains("griddepcontrol.wait") && body.contains("griddepcontrol.launch_dependents");
                assert_eq!(waits, arch == "compute_90", "{arch} {w:?}: {name}'s grid dependency control");
            }
        }
    }
    // SASS for the cards the check script runs on, with ptxas's resource report: no kernel may
    // spill registers to local memory (a stack frame is allowed: sincosf's path for huge angles)
    let report = |arch: &str, log: &str| {
        let mut kernel = String::new();
        let mut used = Vec::new();
        for line in log.lines() {
            if let Some(k) = line.split("Compiling entry function '").nth(1) {
                kernel = k.split('\'').next().unwrap_or("").to_string();
            } else if line.contains("spill stores") {
                assert!(line.contains(" 0 bytes spill stores, 0 bytes spill loads"), "{arch} {kernel} spills: {line}");
            } else if let Some(regs) = line.split("Used ").nth(1) {
                used.push((kernel.clone(), regs.split(',').next().unwrap_or("").to_string()));
            }
        }
        used.sort();
        used
    };
    for arch in ["sm_80", "sm_90"] {
        let t = std::time::Instant::now();
        let (cubin, log) = super::driver::compile_with(Target { arch, w: Prec::Bf16, k: Prec::Bf16, head_dim: 0 }, &["--ptxas-options=-v"]).unwrap_or_else(|e| panic!("{arch}: {e}"));
        // what a model's first load on such a card waits for (later loads read the kernel cache)
        let took = t.elapsed().as_secs_f64();
        eprintln!("{arch} bf16: NVRTC took {took:.1} s");
        assert_eq!(&cubin[..4], b"\x7fELF", "{arch}: a CUBIN is an ELF file");
        let used = report(arch, &log);
        for (kernel, regs) in &used {
            eprintln!("{arch} bf16 {kernel}: {regs}");
        }
        assert_eq!(used.len(), Kernel::ALL.len(), "{arch}: ptxas reported every kernel:\n{log}");
        if arch == "sm_90" {
            // without the options that only make NVRTC faster (as an NVRTC that lacks them
            // compiles): the same kernels, registers for registers
            let t = std::time::Instant::now();
            let (_, plain) = super::driver::compile_trying(Target { arch, w: Prec::Bf16, k: Prec::Bf16, head_dim: 0 }, &["--ptxas-options=-v"], &[]).unwrap_or_else(|e| panic!("{arch}: {e}"));
            eprintln!("{arch} bf16: NVRTC took {:.1} s without its speed options, {took:.1} s with", t.elapsed().as_secs_f64());
            assert_eq!(report(arch, &plain), used, "{arch}: the speed options changed the kernels");
        }
    }
    // for one head size, as a model loads: the kernels the host looks up for it, and no other
    let t = std::time::Instant::now();
    let (_, log) = super::driver::compile_with(Target { arch: "sm_90", w: Prec::Bf16, k: Prec::Bf16, head_dim: 64 }, &["--ptxas-options=-v"]).unwrap_or_else(|e| panic!("heads of 64: {e}"));
    eprintln!("sm_90 bf16, heads of 64 only: NVRTC took {:.1} s", t.elapsed().as_secs_f64());
    let kept: Vec<String> = report("sm_90", &log).into_iter().map(|(k, _)| k).collect();
    let mut want: Vec<String> = Kernel::ALL.iter().filter(|k| k.compiled_for(64)).map(|k| k.name().to_string()).collect();
    want.sort();
    assert_eq!(kept, want, "the kernels of a module for heads of 64");
    // an option this NVRTC does not know among the speed options: compiled without it
    let (ptx, _) = super::driver::compile_trying(Target { arch: "compute_80", w: Prec::F32, k: Prec::F32, head_dim: 96 }, &[], &["--no-such-option"]).unwrap_or_else(|e| panic!("without an unknown speed option: {e}"));
    let ptx = String::from_utf8_lossy(&ptx);
    for k in Kernel::ALL {
        assert_eq!(ptx.contains(&format!(".entry {}(", k.name())), k.compiled_for(96), "heads of 96: {}", k.name());
    }
    assert!(Kernel::ALL.iter().any(|k| !k.compiled_for(64)) && Kernel::ALL.iter().all(|k| k.compiled_for(0)));
    eprintln!("NVRTC compiled kernels.cu for compute_80/90 (f32, f16, bf16) and sm_80/90");
}

// ── the whole GPU engine on the emulated backend ──

use super::emu::{Emu, EmuError};
use super::GpuModel;
use crate::engine::kernels::WType;
use crate::engine::llama::{logprob_and_greedy, Cache, Config, Layer, Llama, RopeStyle};
use crate::engine::session::{GenOptions, ScoreRequest, ScoreResult};
use crate::engine::{Bytes, Matrix};
use std::sync::Arc;

struct Shape {
    style: RopeStyle,
    bias: bool,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ty: WType,
}

/// A 2-layer model with random weights (dim 64, vocab 97), logits spread enough
/// that greedy choices are not near ties.
fn tiny(s: &Shape, seed: u64) -> Llama {
    let mut rng = crate::stats::SplitMix64::new(seed);
    let mut uniform = move |scale: f32| ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale;
    let c = Config { arch: "llama".into(), n_layers: 2, dim: 64, n_heads: s.heads, n_kv_heads: s.kv_heads, head_dim: s.head_dim, ffn_dim: 96, vocab: 97, ctx_len: 512, rope_theta: 10_000.0, rms_eps: 1e-5, rope_style: s.style };
    let ty = s.ty;
    let mut matrix = |rows: usize, cols: usize, scale: f32| {
        let v: Vec<f32> = (0..rows * cols).map(|_| uniform(scale)).collect();
        let data: Vec<u8> = match ty {
            WType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            WType::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        Matrix { ty, rows, cols, data: Bytes::Owned(Arc::new(data)) }
    };
    let (d, q, kv) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut layers = Vec::new();
    for _ in 0..c.n_layers {
        let (wq, wk, wv, wo) = (matrix(q, d, 0.4), matrix(kv, d, 0.4), matrix(kv, d, 0.4), matrix(d, q, 0.2));
        let (w_gate, w_up, w_down) = (matrix(c.ffn_dim, d, 0.3), matrix(c.ffn_dim, d, 0.3), matrix(d, c.ffn_dim, 0.2));
        layers.push(Layer { attn_norm: vec![1.0; d], wq, wk, wv, wo, bq: None, bk: None, bv: None, ffn_norm: vec![1.0; d], w_gate, w_up, w_down });
    }
    let tok_embd = matrix(c.vocab, d, 1.0);
    let lm_head = matrix(c.vocab, d, 0.5);
    let mut rng2 = crate::stats::SplitMix64::new(seed ^ 99);
    let mut bias = |n: usize| s.bias.then(|| (0..n).map(|_| ((rng2.next_u64() % 1000) as f32 / 1000.0 - 0.5) * 0.4).collect::<Vec<f32>>());
    for l in &mut layers {
        l.bq = bias(q);
        l.bk = bias(kv);
        l.bv = bias(kv);
        l.attn_norm.iter_mut().enumerate().for_each(|(i, w)| *w = 0.8 + (i % 5) as f32 * 0.1);
    }
    Llama::new(c, tok_embd, layers, vec![1.1; d], lm_head)
}

/// The emulated GPU for `prec`, or `None` (said on stderr for `test`) where there is no C++
/// compiler.
fn emu(prec: super::driver::Prec, memory: usize, test: &str) -> Option<Emu> {
    match Emu::new(prec, memory) {
        Ok(e) => Some(e),
        Err(EmuError::NoCompiler(why)) => {
            skipped(test, &why);
            None
        }
        Err(EmuError::Failed(e)) => panic!("emulated GPU: {e}"),
    }
}

/// [`tiny`] in the exact f32 mode (the GPU's f32 path, compared with the CPU's exact path).
fn exact_tiny(s: &Shape, seed: u64) -> Llama {
    let mut model = tiny(s, seed);
    model.exact = true;
    model
}

fn emulated(model: &Llama) -> Option<GpuModel> {
    emulated_counting(model).map(|(g, _)| g)
}

/// Blocks of the one-launch step an emulated GPU holds at once in the tests that run it: a few, so
/// each block takes several of a phase's virtual blocks.
const STEP_BLOCKS: u32 = 3;

/// The model on an emulated GPU, with the one-launch step set up after loading (not timed), and
/// the count of recorded decode passes it replays.
fn emulated_counting(model: &Llama) -> Option<(GpuModel, Arc<std::sync::atomic::AtomicUsize>)> {
    let prec = super::precision_for(model);
    let be = emu(prec, 4 << 30, "an emulated-GPU test")?;
    let (replays, resident) = (be.replays.clone(), be.resident.clone());
    let g = GpuModel::with_backend(model, Box::new(be), prec).expect("load on the emulated GPU");
    resident.store(STEP_BLOCKS, std::sync::atomic::Ordering::Relaxed);
    assert!(g.add_step(), "the one-launch step runs this model");
    Some((g, replays))
}

/// The CPU's exact forward pass, one request at a time, as `Engine::score_batch` scores.
fn cpu_score(model: &Llama, r: &ScoreRequest) -> ScoreResult {
    let full = [r.context.as_slice(), r.continuation.as_slice()].concat();
    let input = &full[..full.len() - 1];
    let first = input.len() - r.continuation.len();
    let want: Vec<usize> = (first..input.len()).collect();
    let logits = model.forward(&mut Cache::new(model.config.n_layers), input, &want);
    let v = model.config.vocab;
    let mut res = ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: vec![] };
    for (j, &t) in r.continuation.iter().enumerate() {
        let (lp, g) = logprob_and_greedy(&logits[j * v..(j + 1) * v], t);
        res.logprob += lp;
        res.is_greedy &= g;
        res.token_logprobs.push(lp);
    }
    res
}

fn cpu_greedy(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = Cache::new(model.config.n_layers);
    let mut logits = model.forward(&mut cache, prompt, &[prompt.len() - 1]);
    let mut out = Vec::new();
    for _ in 0..n {
        let next = crate::engine::session::argmax(&logits);
        out.push(next);
        logits = model.forward(&mut cache, &[next], &[0]);
    }
    out
}

fn requests(seed: u64) -> Vec<ScoreRequest> {
    let mut rng = crate::stats::SplitMix64::new(seed);
    let mut tok = move || rng.below(97) as u32;
    let mut reqs = Vec::new();
    for len in [3usize, 17, 40] {
        let ctx: Vec<u32> = (0..len).map(|_| tok()).collect();
        for k in 1..4 {
            reqs.push(ScoreRequest { context: ctx.clone(), continuation: (0..k).map(|_| tok()).collect() });
        }
    }
    reqs.push(ScoreRequest { context: (0..70).map(|_| tok()).collect(), continuation: (0..5).map(|_| tok()).collect() });
    reqs
}

fn gpu_scores(g: &GpuModel, reqs: &[ScoreRequest]) -> Vec<ScoreResult> {
    let mut out = vec![None; reqs.len()];
    g.score(reqs, 512, &mut |i, r| out[i] = Some(r)).expect("scored");
    out.into_iter().map(|r| r.expect("every request scored")).collect()
}

const SHAPES: [Shape; 4] = [
    Shape { style: RopeStyle::Interleaved, bias: false, heads: 4, kv_heads: 2, head_dim: 32, ty: WType::F32 },
    Shape { style: RopeStyle::Half, bias: true, heads: 4, kv_heads: 1, head_dim: 32, ty: WType::F32 },
    Shape { style: RopeStyle::Half, bias: false, heads: 2, kv_heads: 2, head_dim: 32, ty: WType::F32 },
    // the default model's layout: groups of three query heads, head_dim 64 (wider than dim)
    Shape { style: RopeStyle::Interleaved, bias: false, heads: 6, kv_heads: 2, head_dim: 64, ty: WType::F32 },
];

#[test]
fn emulated_gpu_argument_structs_have_the_rust_layout() {
    let Some(emu) = emu(super::driver::Prec::F32, 1 << 30, "emulated_gpu_argument_structs_have_the_rust_layout") else { return };
    use super::args::*;
    let size = |k: Kernel| match k.family() {
        Kernel::Embed => size_of::<EmbedArgs>(),
        Kernel::RmsNorm => size_of::<NormArgs>(),
        Kernel::RopeStore => size_of::<RopeArgs>(),
        Kernel::Attention => size_of::<AttnArgs>(),
        Kernel::Swiglu => size_of::<SwigluArgs>(),
        Kernel::LogitsReduce => size_of::<ReduceArgs>(),
        Kernel::DecodeStepHd32 => size_of::<StepArgs>(),
        _ => size_of::<MatvecArgs>(),
    };
    let rust: Vec<usize> = Kernel::ALL.iter().map(|&k| size(k)).collect();
    assert_eq!(emu.arg_sizes(), &rust);
}

#[test]
fn emulated_gpu_scores_like_the_cpu_exact_path() {
    for (n, shape) in SHAPES.iter().enumerate() {
        let model = exact_tiny(shape, 10 + n as u64);
        let Some(g) = emulated(&model) else { return };
        // passes of 24 tokens: long requests go through in chunks; LM head in chunks of 5 rows
        g.tune(24, 6, 16, 5);
        let reqs = requests(n as u64);
        let got = gpu_scores(&g, &reqs);
        let mut worst = 0f64;
        for (r, gpu) in reqs.iter().zip(&got) {
            let cpu = cpu_score(&model, r);
            assert_eq!(gpu.token_logprobs.len(), cpu.token_logprobs.len());
            for (a, b) in gpu.token_logprobs.iter().zip(&cpu.token_logprobs) {
                worst = worst.max((a - b).abs());
            }
            assert_eq!(gpu.is_greedy, cpu.is_greedy, "shape {n}: greedy flag of {r:?}");
        }
        eprintln!("shape {n}: largest per-token difference from the CPU exact path {worst:.2e} nats");
        assert!(worst < 1e-4, "shape {n}: {worst}");
    }
}

#[test]
fn emulated_gpu_results_do_not_depend_on_the_batch() {
    let model = exact_tiny(&SHAPES[0], 3);
    let Some(g) = emulated(&model) else { return };
    let reqs = requests(9);
    let together = gpu_scores(&g, &reqs);
    g.tune(7, 2, 16, 3);
    let chunked = gpu_scores(&g, &reqs);
    for (i, r) in reqs.iter().enumerate() {
        let alone = gpu_scores(&g, std::slice::from_ref(r));
        assert_eq!(alone[0], together[i], "request {i} alone and in one batch");
        assert_eq!(chunked[i], together[i], "request {i} in small passes");
    }
}

#[test]
fn emulated_gpu_generates_like_the_cpu() {
    for (n, shape) in SHAPES.iter().enumerate() {
        let model = exact_tiny(shape, 40 + n as u64);
        let Some((g, replays)) = emulated_counting(&model) else { return };
        // decode attention in splits of 16 keys: prompts of up to 45 tokens span three
        g.tune(64, 8, 16, 64);
        let mut rng = crate::stats::SplitMix64::new(n as u64);
        let prompts: Vec<Vec<u32>> = (0..5).map(|i| (0..5 + i * 10).map(|_| rng.below(97) as u32).collect()).collect();
        let opts: Vec<GenOptions> = (0..5).map(|i| GenOptions { max_tokens: 6 + i, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] }).collect();
        let mut got = vec![None; prompts.len()];
        let decode = |t: &[u32]| format!("{t:?}");
        // two slots: finished sequences are replaced while others decode
        g.generate(&prompts, &opts, &[], 512, 2, &decode, &mut |i, r| got[i] = Some(r)).expect("generated");
        for (i, p) in prompts.iter().enumerate() {
            let gpu = got[i].as_ref().expect("every prompt generated");
            assert_eq!(gpu.tokens, cpu_greedy(&model, p, opts[i].max_tokens), "shape {n}, prompt {i}");
            assert_eq!(gpu.finish_reason, "length");
        }
        // decode steps after the first of each shape replay the recorded pass (a CUDA graph on a GPU)
        assert!(replays.load(std::sync::atomic::Ordering::Relaxed) > 10, "decode passes were replayed");
        // the speed measurement's own passes (three sequences decoding together) run too
        assert!(g.set_one_launch(Some(false)), "the one-launch step runs this model");
        let b = g.bench(&prompts[4], 3, 5, true).expect("bench");
        assert!(b.prefill > 0.0 && b.decode > 0.0 && b.prefill.is_finite() && b.decode.is_finite());
        // the profile times every operation of a prefill pass and of a decode step: a decode
        // layer is 5 launches (qkv product with RoPE, attention, 3 products), the LM head 2
        let labels = |ops: &[super::driver::Timed]| ops.iter().map(|o| o.label.split(' ').next().unwrap_or("").to_string()).collect::<Vec<_>>();
        let decode_ops = labels(&b.decode_ops);
        let layer = ["matvec", "attention", "matvec", "matvec", "matvec"];
        let want: Vec<&str> = std::iter::once("embed").chain(layer.iter().copied().cycle().take(5 * model.config.n_layers)).chain(["matvec", "logits_reduce"]).collect();
        assert_eq!(decode_ops, want, "decode step");
        assert!(b.decode_ops.iter().filter(|o| o.label.starts_with("matvec")).all(|o| o.weights > 0 && o.label.contains("·")));
        for part in ["→ swiglu", "→ rope, KV cache", "rmsnorm(x)", " +="] {
            assert!(b.decode_ops.iter().any(|o| o.label.contains(part)), "{part}");
        }
        let prefill_ops = labels(&b.prefill_ops);
        assert_eq!(prefill_ops.iter().filter(|l| *l == "gemm").count(), 4 * model.config.n_layers + 1, "prefill: four GEMMs a layer and the LM head");
        assert!(!prefill_ops.contains(&"matvec".to_string()));
        // in one launch a step: the embedding, the step (every matrix's weights), the reduction;
        // the bench also times the other way
        assert!(b.one_launch.is_some_and(|(on, t)| !on && t > 0.0 && t.is_finite()), "{:?}", b.one_launch);
        g.set_one_launch(Some(true));
        let b = g.bench(&prompts[4], 3, 5, true).expect("bench in one launch");
        assert_eq!(labels(&b.decode_ops), ["embed", "decode", "logits_reduce"], "decode step in one launch");
        assert_eq!(b.decode_ops[1].weights, super::matrix_bytes(&model.config, g.prec) / g.prec.bytes());
        assert!(b.one_launch.is_some_and(|(on, t)| on && t > 0.0 && t.is_finite()), "{:?}", b.one_launch);
        let mut again = std::collections::HashMap::new();
        g.generate(&prompts, &opts, &[], 512, 2, &decode, &mut |i, r| {
            again.insert(i, r.tokens);
        })
        .expect("generated in one launch a step");
        assert!(prompts.iter().enumerate().all(|(i, _)| again.get(&i) == got[i].as_ref().map(|r| &r.tokens)), "shape {n}: generation in one launch a step");
        // as chosen at load, one launch at every batch: the profile still takes the step apart
        g.inner.lock().unwrap().step_batch = usize::MAX;
        g.set_one_launch(None);
        let b = g.bench(&prompts[4], 3, 5, true).expect("bench as chosen");
        assert_eq!(labels(&b.decode_ops), want, "shape {n}: the chosen one-launch step profiled launch by launch");
        assert!(b.one_launch.is_some_and(|(on, _)| on), "{:?}", b.one_launch);
        assert_eq!(g.inner.lock().unwrap().step_force, None, "the profile's forcing is undone");
    }
}

/// Sets row `row` of an f32 matrix to NaN.
fn poison(m: &mut Matrix, row: usize) {
    let Bytes::Owned(data) = &mut m.data else { panic!("the tiny model's matrices are owned") };
    let data = Arc::make_mut(data);
    for x in data[row * m.cols * 4..(row + 1) * m.cols * 4].chunks_exact_mut(4) {
        x.copy_from_slice(&f32::NAN.to_le_bytes());
    }
}

#[test]
fn emulated_gpu_greedy_generation_stops_at_a_nan_logit() {
    let greedy = GenOptions { max_tokens: 6, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] };
    let decode = |t: &[u32]| format!("{t:?}");
    let generate = |model: &Llama, prompt: &[u32]| {
        let g = emulated(model)?;
        let mut got = None;
        g.generate(&[prompt.to_vec()], std::slice::from_ref(&greedy), &[], 512, 2, &decode, &mut |_, r| got = Some(r)).expect("generated");
        got
    };
    // NaN logits for tokens 60 and 7 from the start: the first of them is named, after the prefill
    let mut model = exact_tiny(&SHAPES[0], 45);
    poison(&mut model.lm_head, 60);
    poison(&mut model.lm_head, 7);
    let prompt = [3, 1, 4, 1, 5];
    let Some(got) = generate(&model, &prompt) else { return };
    assert_eq!(got.error.as_deref(), Some("the logit of token 7 is NaN after 0 generated token(s): the weights are damaged"));
    assert!(got.tokens.is_empty());
    // every logit NaN once the third generated token is fed (its embedding is NaN): a decode step
    let mut model = exact_tiny(&SHAPES[0], 45);
    let want = cpu_greedy(&model, &prompt, 3);
    assert!(!want[..2].contains(&want[2]) && !prompt.contains(&want[2]), "pick a seed whose third token is new: {want:?}");
    poison(&mut model.tok_embd, want[2] as usize);
    let got = generate(&model, &prompt).expect("emulated");
    assert_eq!(got.tokens, want);
    assert_eq!(got.error.as_deref(), Some("the logit of token 0 is NaN after 3 generated token(s): the weights are damaged"));
}

/// A tiny exact-mode model (`SHAPES[0]`, seed `seed`), it loaded on an emulated GPU that `set`
/// adjusted first, and what `set` returned; `None` (said for `test`) without a C++ compiler.
fn emulated_with<T>(seed: u64, test: &str, set: impl FnOnce(&Emu) -> T) -> Option<(Llama, GpuModel, T)> {
    let model = exact_tiny(&SHAPES[0], seed);
    let prec = super::precision_for(&model);
    let be = emu(prec, 4 << 30, test)?;
    let t = set(&be);
    let g = GpuModel::with_backend(&model, Box::new(be), prec).expect("load on the emulated GPU");
    Some((model, g, t))
}

/// A device whose profile fails still gives its speed figures, with the reason.
#[test]
fn a_failing_profile_leaves_the_bench_figures() {
    let no_events = |be: &Emu| be.no_profile.store(true, std::sync::atomic::Ordering::Relaxed);
    let Some((_, g, ())) = emulated_with(5, "a_failing_profile_leaves_the_bench_figures", no_events) else { return };
    let b = g.bench(&[5, 6, 7, 8, 9, 10], 2, 4, true).expect("bench");
    assert!(b.prefill > 0.0 && b.decode > 0.0);
    assert!(b.prefill_ops.is_empty() && b.decode_ops.is_empty());
    assert!(b.profile_error.as_deref().is_some_and(|e| e.contains("no events")), "{:?}", b.profile_error);
    // the model still runs, with its graphs
    let again = g.bench(&[5, 6, 7, 8, 9, 10], 2, 4, false).expect("bench again");
    assert!(again.decode > 0.0);
}

/// On a device whose launches can overlap, the bench also times decode in the other launch mode,
/// then puts the setting back; the model scores the same bits afterwards.
#[test]
fn the_bench_times_decode_with_and_without_overlapping_launches() {
    let Some((_, g, overlap)) = emulated_with(6, "the_bench_times_decode_with_and_without_overlapping_launches", |be| be.overlap.clone()) else { return };
    let reqs = requests(4);
    let before = gpu_scores(&g, &reqs);
    let b = g.bench(&[5, 6, 7, 8, 9, 10], 2, 4, false).expect("bench");
    assert!(b.other_mode.is_some_and(|o| o.overlap && o.decode > 0.0 && o.decode.is_finite() && o.prefill > 0.0), "off: timed with overlap too {b:?}");
    assert!(!overlap.load(std::sync::atomic::Ordering::Relaxed), "overlap stays off");
    overlap.store(true, std::sync::atomic::Ordering::Relaxed);
    let b = g.bench(&[5, 6, 7, 8, 9, 10], 2, 4, true).expect("bench");
    assert!(b.decode > 0.0 && b.other_mode.is_some_and(|o| !o.overlap && o.decode > 0.0 && o.decode.is_finite() && o.prefill > 0.0), "{b:?}");
    assert!(overlap.load(std::sync::atomic::Ordering::Relaxed), "overlap restored");
    assert_eq!(b.decode_ops.iter().filter(|o| o.label == "logits_reduce").count(), 1, "the profile's decode step ran");
    // decode again with each other way to run its attention, the engine's own put back
    let names: Vec<&str> = b.attention.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(b.attention[0].1, b.decode, "{names:?}");
    assert!(names[0].starts_with("warps on keys") && names.iter().any(|n| n.starts_with("warps on rows")) && names.len() >= 3, "{names:?}");
    assert!(b.attention.iter().all(|(_, t)| *t > 0.0 && t.is_finite()));
    assert!(g.inner.lock().unwrap().decode_attn.keys.is_some());
    assert_eq!(gpu_scores(&g, &reqs), before);
}

/// A driver that records overlapping launches but will not replay them: the decode step runs
/// with plain launches from then on, and generation is still the CPU's.
#[test]
fn a_refused_recording_of_overlapping_launches_falls_back_to_plain_ones() {
    let on = |be: &Emu| {
        be.overlap.store(true, std::sync::atomic::Ordering::Relaxed);
        be.refuse_overlap_replays.store(true, std::sync::atomic::Ordering::Relaxed);
        be.overlap.clone()
    };
    let Some((model, g, overlap)) = emulated_with(7, "a_refused_recording_of_overlapping_launches_falls_back_to_plain_ones", on) else { return };
    let prompt: Vec<u32> = (0..12).map(|i| (i * 7 % 97) as u32).collect();
    let opts = [GenOptions { max_tokens: 6, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] }];
    let mut got = None;
    g.generate(std::slice::from_ref(&prompt), &opts, &[], 512, 1, &|t: &[u32]| format!("{t:?}"), &mut |_, r| got = Some(r)).expect("generated");
    assert_eq!(got.expect("generated").tokens, cpu_greedy(&model, &prompt, 6));
    assert!(!overlap.load(std::sync::atomic::Ordering::Relaxed), "overlap turned off");
}

/// A driver that will not record overlapping launches: the decode step is recorded with plain
/// launches (overlap off from then on), replayed, and generation is still the CPU's.
#[test]
fn a_refused_capture_of_overlapping_launches_records_plain_ones() {
    use std::sync::atomic::Ordering::Relaxed;
    let on = |be: &Emu| {
        be.overlap.store(true, Relaxed);
        be.refuse_overlap_capture.store(true, Relaxed);
        (be.overlap.clone(), be.replays.clone())
    };
    let Some((model, g, (overlap, replays))) = emulated_with(7, "a_refused_capture_of_overlapping_launches_records_plain_ones", on) else { return };
    let prompt: Vec<u32> = (0..12).map(|i| (i * 5 % 97) as u32).collect();
    let opts = [GenOptions { max_tokens: 6, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] }];
    let mut got = None;
    let replayed = replays.load(Relaxed);
    g.generate(std::slice::from_ref(&prompt), &opts, &[], 512, 1, &|t: &[u32]| format!("{t:?}"), &mut |_, r| got = Some(r)).expect("generated");
    assert_eq!(got.expect("generated").tokens, cpu_greedy(&model, &prompt, 6));
    assert!(!overlap.load(Relaxed), "overlap turned off");
    assert!(replays.load(Relaxed) > replayed, "the steps were recorded and replayed");
}

/// A GEMM library whose first ways sum a row in an order that depends on the row's place in the
/// call (as stream-K kernels do): loading tries the ways in turn and keeps the first that gives a
/// row the same bits anywhere, and scores then do not depend on the batch. Where no way does, the
/// passes run way 0, the model's note says so, and scores do change with the batch (what the
/// check guards against).
#[test]
fn a_gemm_way_that_sums_by_a_rows_place_is_passed_over() {
    use super::emu::GEMM_WAYS;
    let test = "a_gemm_way_that_sums_by_a_rows_place_is_passed_over";
    let dependent = |n: usize| move |be: &Emu| be.placement_dependent.store(n, std::sync::atomic::Ordering::Relaxed);
    let reqs = requests(9);
    // how many requests score differently alone than in one batch
    let batch_dependent = |g: &GpuModel| {
        let together = gpu_scores(g, &reqs);
        reqs.iter().zip(&together).filter(|(r, t)| gpu_scores(g, std::slice::from_ref(*r))[0] != **t).count()
    };
    let Some((_, g, ())) = emulated_with(11, test, dependent(0)) else { return };
    let choices = g.gemm_choices();
    assert_eq!(choices.iter().map(|c| c.product).collect::<Vec<_>>(), super::Product::ALL);
    assert!(choices.iter().all(|c| c.chosen == Some(0) && c.tried.len() == 1), "{choices:?}");
    assert!(g.gemm_note().is_none());

    let Some((_, g, ())) = emulated_with(11, test, dependent(2)) else { return };
    for c in g.gemm_choices() {
        assert_eq!(c.chosen, Some(2), "{c:?}");
        assert_eq!(c.tried.iter().map(|t| t.1.clone()).collect::<Vec<_>>(), [Ok(false), Ok(false), Ok(true)]);
        assert!(c.tried[0].0.contains("by the row's place"), "{c:?}");
        assert_eq!(c.shape.0, 6, "calls of the backend's rows");
    }
    assert!(g.gemm_note().is_none());
    assert_eq!(batch_dependent(&g), 0);

    let Some((_, g, ())) = emulated_with(11, test, dependent(GEMM_WAYS)) else { return };
    assert!(g.gemm_choices().iter().all(|c| c.chosen.is_none() && c.tried.len() == GEMM_WAYS));
    let note = g.gemm_note().expect("a note");
    assert!(note.contains("q/k/v, attention output, gate/up, down, LM head products") && note.contains("last digits"), "{note}");
    assert!(batch_dependent(&g) > 0, "a way that sums by a row's place makes scores depend on the batch");
}

#[test]
fn emulated_gpu_in_half_precision_stays_close() {
    for (ty, name) in [(WType::F32, "bf16 (converted f32 weights)"), (WType::F16, "f16"), (WType::BF16, "bf16")] {
        let shape = Shape { ty, ..SHAPES[0] };
        let mut exact = tiny(&shape, 77);
        let Some(g) = emulated(&exact) else { return };
        exact.exact = true;
        let reqs = requests(5);
        let got = gpu_scores(&g, &reqs);
        let mut worst = 0f64;
        for (r, gpu) in reqs.iter().zip(&got) {
            for (a, b) in gpu.token_logprobs.iter().zip(&cpu_score(&exact, r).token_logprobs) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{name}: largest per-token difference from the CPU exact path {worst:.2e} nats");
        assert!(worst < 0.15 && worst > 0.0, "{name}: {worst}");
        // in the storage type too, a request alone gives the bits it gives in the batch
        for (i, r) in reqs.iter().enumerate().step_by(3) {
            assert_eq!(gpu_scores(&g, std::slice::from_ref(r))[0], got[i], "{name}: request {i} alone and in one batch");
        }
    }
}

/// The decode products' kernel on its own, for every storage type, both inputs (as stored, and
/// RMSNorm made on the fly through a row index) and both outputs (f32, set or accumulated, and
/// SwiGLU of gate/up pairs in the storage type): against an f64 reference made from the same
/// rounded inputs, and bitwise the same for a row alone as among eleven (two blocks of input
/// rows) and for every shape of the kernel, with sizes that leave partial warps and blocks.
#[test]
fn emulated_matvec_matches_a_reference_and_ignores_the_batch() {
    use super::args::{MatvecArgs, MvShape, MV_M, MV_SHAPES};
    use super::driver::Backend;
    assert!(MV_SHAPES.len() >= 2);
    for prec in [Prec::F32, Prec::F16, Prec::Bf16] {
        let Some(emu) = emu(prec, 1 << 30, "emulated_matvec_matches_a_reference_and_ignores_the_batch") else { return };
        let gpu: &dyn Backend = &emu;
        let mut rng = crate::stats::SplitMix64::new(prec as u64 + 7);
        let mut uniform = move |scale: f32| ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale;
        // values as stored in `prec`, and their bytes
        let store = |v: &[f32]| -> (Vec<f32>, Vec<u8>) {
            match prec {
                Prec::F32 => (v.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Prec::F16 => (v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(), v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()),
                Prec::Bf16 => (v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect(), v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()),
            }
        };
        let round = |x: f32| store(&[x]).0[0];
        let load = |bytes: &[u8]| -> Vec<f32> {
            match prec {
                Prec::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                Prec::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
                Prec::Bf16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
            }
        };
        // f32 sums of the same rounded inputs (an input rounded the other way where the norm
        // scale's last bit differs moves a sum by far less than this share of its terms' size)
        let sum_tol = 3e-5;
        // the SwiGLU output is rounded to the storage type
        let out_tol = match prec {
            Prec::F32 => 1e-6,
            Prec::F16 => 1.0 / 1024.0,
            Prec::Bf16 => 1.0 / 128.0,
        };
        let m = 11;
        for (k, n) in [(72usize, 38usize), (1040, 22)] {
            let (wv, wb) = store(&(0..n * k).map(|_| uniform(0.5)).collect::<Vec<f32>>());
            let w = gpu.alloc(wb.len()).unwrap();
            gpu.upload(w, &wb).unwrap();
            for mode in [super::MV_PLAIN, super::MV_NORM] {
                // inputs as the kernel sees them, rounded to the storage type
                let (inputs, a, x, norm_w, rows) = if mode == super::MV_PLAIN {
                    let (v, bytes) = store(&(0..m * k).map(|_| uniform(1.0)).collect::<Vec<f32>>());
                    let a = gpu.alloc(bytes.len()).unwrap();
                    gpu.upload(a, &bytes).unwrap();
                    (v, a, 0, 0, 0)
                } else {
                    // 15 residual rows, 11 of them picked (out of order) through `rows`
                    let xs: Vec<f32> = (0..15 * k).map(|_| uniform(3.0)).collect();
                    let nw: Vec<f32> = (0..k).map(|_| 0.5 + uniform(0.5)).collect();
                    let picks: Vec<i32> = (0..m as i32).map(|r| (r * 7 + 3) % 15).collect();
                    let mut v = Vec::new();
                    for &src in &picks {
                        let row = &xs[src as usize * k..(src as usize + 1) * k];
                        let ss: f64 = row.iter().map(|&t| f64::from(t) * f64::from(t)).sum();
                        let scale = (1.0 / (ss / k as f64 + 1e-5).sqrt()) as f32;
                        v.extend(row.iter().zip(&nw).map(|(&t, &g)| round(t * scale * g)));
                    }
                    let (x, nwp, rp) = (gpu.alloc(xs.len() * 4).unwrap(), gpu.alloc(k * 4).unwrap(), gpu.alloc(m * 4).unwrap());
                    gpu.upload(x, &xs).unwrap();
                    gpu.upload(nwp, &nw).unwrap();
                    gpu.upload(rp, &picks).unwrap();
                    (v, 0, x, nwp, rp)
                };
                let dot = |r: usize, j: usize| -> (f64, f64) {
                    let terms = (0..k).map(|i| f64::from(inputs[r * k + i]) * f64::from(wv[j * k + i]));
                    terms.fold((0.0, 1.0), |(s, a), t| (s + t, a + t.abs()))
                };
                let y = gpu.alloc(m * n * 4).unwrap();
                let start: Vec<f32> = (0..m * n).map(|_| uniform(1.0)).collect();
                for (glu, accumulate) in [(false, false), (false, true), (true, false)] {
                    let out = if glu { super::MV_GLU } else { super::MV_F32 };
                    let mut first: Option<Vec<u8>> = None;
                    // a shape with a block cap also with one block, which streams every row group
                    let shapes = MV_SHAPES.iter().flat_map(|s| [*s].into_iter().chain((s.max_blocks > 0).then_some(MvShape { max_blocks: 1, ..*s })));
                    for shape in shapes.filter(|s| s.runs(out, k, prec.bytes())) {
                        gpu.upload(y, &start).unwrap();
                        let args = |m: usize, r0: usize| MatvecArgs {
                            bias: 0,
                            inv_freq: 0,
                            pos: 0,
                            seq_of: 0,
                            blk_off: 0,
                            tables: 0,
                            kc: 0,
                            vc: 0,
                            nh: 0,
                            nkv: 0,
                            hd: 0,
                            a: if a == 0 { 0 } else { a + (r0 * k * prec.bytes()) as u64 },
                            x,
                            norm_w,
                            rows: if rows == 0 { 0 } else { rows + (r0 * 4) as u64 },
                            w,
                            y: y + (r0 * if glu { n / 2 * prec.bytes() } else { n * 4 }) as u64,
                            m: m as i32,
                            n: n as i32,
                            k: k as i32,
                            mode,
                            out: if glu { super::MV_GLU } else { super::MV_F32 },
                            accumulate: i32::from(accumulate),
                            eps: 1e-5,
                        };
                        // (its shared memory opted into, as loading a model does)
                        gpu.set_shared(shape.kernel, shape.shared(MV_M, k, prec.bytes()) as usize).unwrap();
                        let launch = |m: usize, r0: usize| gpu.launch_product(shape, prec.bytes(), &args(m, r0)).unwrap();
                        let read = || -> Vec<u8> {
                            let mut out = vec![0u8; m * n * 4];
                            gpu.download(y, &mut out).unwrap();
                            out
                        };
                        launch(m, 0);
                        let together = read();
                        let what = format!("{prec:?} mode {mode} glu {glu} accumulate {accumulate} k {k} shape {}", shape.name());
                        if glu {
                            let got = load(&together[..m * n / 2 * prec.bytes()]);
                            for r in 0..m {
                                for j in 0..n / 2 {
                                    let ((g, ga), (u, ua)) = (dot(r, 2 * j), dot(r, 2 * j + 1));
                                    let silu = g / (1.0 + (-g).exp());
                                    let want = silu * u;
                                    let bound = out_tol * want.abs() + sum_tol * (1.1 * u.abs() * ga + silu.abs() * ua) + 1e-6;
                                    assert!((f64::from(got[r * n / 2 + j]) - want).abs() <= bound, "{what} row {r} feature {j}: {} vs {want}", got[r * n / 2 + j]);
                                }
                            }
                        } else {
                            let got: Vec<f32> = together.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                            for r in 0..m {
                                for j in 0..n {
                                    let (d, scale) = dot(r, j);
                                    let want = d + if accumulate { f64::from(start[r * n + j]) } else { 0.0 };
                                    assert!((f64::from(got[r * n + j]) - want).abs() <= sum_tol * scale, "{what} row {r} col {j}: {} vs {want}", got[r * n + j]);
                                }
                            }
                        }
                        // each row alone gives the same bits
                        gpu.upload(y, &start).unwrap();
                        for r in 0..m {
                            launch(1, r);
                        }
                        assert!(read() == together, "{what}: a row alone differs from the batch");
                        // and every shape gives the same bits
                        assert!(first.get_or_insert_with(|| together.clone()) == &together, "{what}: differs from shape {}", MV_SHAPES[0].name());
                    }
                }
            }
        }
    }
}

/// Log-probs read off decode steps (each continuation token fed alone, as generation does), for
/// `reqs` decoding together or one at a time: [request][continuation token 1..].
fn decode_logprobs(g: &GpuModel, reqs: &[ScoreRequest], together: bool) -> Vec<Vec<f64>> {
    use super::batch::{pack, BlockPool, Forward, Span};
    let mut inner = g.inner.lock().unwrap_or_else(|e| e.into_inner());
    let tile = inner.limits().tile_tokens;
    let mut pool = BlockPool::new(inner.blocks);
    let tables: Vec<Vec<u32>> = reqs.iter().map(|r| pool.alloc((r.context.len() + r.continuation.len()).div_ceil(super::BLOCK) + 1).expect("blocks")).collect();
    for (r, t) in reqs.iter().zip(&tables) {
        let span = Span { table: t.clone(), start: 0, tokens: r.context.clone(), want: vec![(r.context.len() - 1, Some(r.continuation[0]))] };
        inner.run(&pack(&[span], tile), false).expect("prefill");
    }
    let mut out = vec![Vec::new(); reqs.len()];
    let steps = reqs.iter().map(|r| r.continuation.len() - 1).max().unwrap_or(0);
    for j in 0..steps {
        let live: Vec<usize> = (0..reqs.len()).filter(|&i| j + 1 < reqs[i].continuation.len()).collect();
        let groups: Vec<Vec<usize>> = if together { vec![live] } else { live.into_iter().map(|i| vec![i]).collect() };
        for group in groups {
            let spans: Vec<Span> = group.iter().map(|&i| Span { table: tables[i].clone(), start: reqs[i].context.len() + j, tokens: vec![reqs[i].continuation[j]], want: vec![(0, Some(reqs[i].continuation[j + 1]))] }).collect();
            let rows = inner.run(&pack(&spans, 1), true).expect("decode step");
            for (&i, row) in group.iter().zip(rows) {
                out[i].push(row.logprob);
            }
        }
    }
    out
}

/// Decode steps (the fused matvec products, graph replay, split attention) score as the CPU's
/// exact path does, and a sequence's numbers are the same bits alone as among others.
#[test]
fn emulated_gpu_decode_steps_score_like_the_cpu_and_ignore_the_batch() {
    for (n, shape) in SHAPES.iter().enumerate() {
        let model = exact_tiny(shape, 60 + n as u64);
        let Some(g) = emulated(&model) else { return };
        g.tune(64, 8, 16, 64);
        let mut rng = crate::stats::SplitMix64::new(n as u64 + 100);
        let mut tok = move || rng.below(97) as u32;
        let reqs: Vec<ScoreRequest> = [(5usize, 7usize), (20, 4), (37, 9), (14, 2)].iter().map(|&(c, k)| ScoreRequest { context: (0..c).map(|_| tok()).collect(), continuation: (0..k).map(|_| tok()).collect() }).collect();
        let together = decode_logprobs(&g, &reqs, true);
        let alone = decode_logprobs(&g, &reqs, false);
        let mut worst = 0f64;
        for (i, r) in reqs.iter().enumerate() {
            let cpu = cpu_score(&model, r);
            assert_eq!(together[i].len(), r.continuation.len() - 1);
            for (a, b) in together[i].iter().zip(&cpu.token_logprobs[1..]) {
                worst = worst.max((a - b).abs());
            }
            assert!(together[i].iter().zip(&alone[i]).all(|(a, b)| a.to_bits() == b.to_bits()), "shape {n}, request {i}: decoding alone and together differ");
        }
        eprintln!("shape {n}: decode steps' largest per-token difference from the CPU exact path {worst:.2e} nats");
        assert!(worst < 1e-4, "shape {n}: {worst}");
        // the decode attention as loaded: warps on keys; the other ways score as closely
        let loaded = g.inner.lock().unwrap().decode_attn;
        assert!(loaded.keys.is_some_and(|(_, w)| w as usize == super::DEC_WARPS), "{loaded:?}");
        // one warp in two rounds, two warps in a round, splits within a warp's tile, more splits
        // than the merge loads in one round, the scoring kernel
        for (warps, split) in [(Some(1), 64), (Some(2), 64), (Some(3), 24), (Some(2), 8), (None, 16), (None, 8)] {
            g.force_decode_attention(warps, split);
            for (i, r) in reqs.iter().enumerate() {
                let cpu = cpu_score(&model, r);
                let got = &decode_logprobs(&g, std::slice::from_ref(r), true)[0];
                let worst = got.iter().zip(&cpu.token_logprobs[1..]).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
                assert!(worst < 1e-4, "shape {n}, request {i}, {warps:?} warps, {split}-key splits: {worst}");
            }
        }
        g.force_decode_attention(loaded.keys.map(|(_, w)| w), 16);
        assert_eq!(decode_logprobs(&g, &reqs, true), together, "shape {n}: the loaded way again");
        // whichever shape of the product kernel runs, the same bits
        for s in super::MV_SHAPES {
            g.force_matvec(s);
            assert_eq!(decode_logprobs(&g, &reqs, true), together, "shape {n}: decode products on {}", s.name());
        }
    }
}

/// A decode step in one launch (every block of the grid at once, grid barriers between its
/// phases) gives the same bits as launch by launch, alone and in a batch, whatever the number of
/// blocks the device holds at once (one block taking every phase's virtual blocks, or several
/// with the attention's split merge across them); a step the driver will not record in a graph
/// runs unrecorded, and a launch it refuses falls back to launch by launch, with the same bits.
#[test]
fn emulated_gpu_decode_steps_in_one_launch_give_the_same_bits() {
    use std::sync::atomic::Ordering::Relaxed;
    for (n, shape) in SHAPES.iter().enumerate() {
        let model = exact_tiny(shape, 160 + n as u64);
        let prec = super::precision_for(&model);
        let Some(be) = emu(prec, 4 << 30, "emulated_gpu_decode_steps_in_one_launch_give_the_same_bits") else { return };
        let (resident, cooperative) = (be.resident.clone(), be.cooperative.clone());
        let (refuse_capture, replays, overlap) = (be.refuse_cooperative_capture.clone(), be.replays.clone(), be.overlap.clone());
        let g = GpuModel::with_backend(&model, Box::new(be), prec).expect("load on the emulated GPU");
        resident.store(STEP_BLOCKS, Relaxed);
        assert!(g.add_step());
        g.tune(64, 8, 16, 64);
        let mut rng = crate::stats::SplitMix64::new(n as u64 + 200);
        let mut tok = move || rng.below(97) as u32;
        let reqs: Vec<ScoreRequest> = [(5usize, 5usize), (37, 6), (14, 3)].iter().map(|&(c, k)| ScoreRequest { context: (0..c).map(|_| tok()).collect(), continuation: (0..k).map(|_| tok()).collect() }).collect();
        assert!(g.set_one_launch(Some(false)), "shape {n}: the one-launch step runs this model");
        let launches = (decode_logprobs(&g, &reqs, true), decode_logprobs(&g, &reqs, false));
        for blocks in [1, 3, 7] {
            resident.store(blocks, Relaxed);
            // (the step's blocks follow the device's count when the model loads)
            g.inner.lock().unwrap().step.as_mut().expect("a step kernel").blocks = blocks;
            assert!(g.set_one_launch(Some(true)));
            let before = cooperative.load(Relaxed);
            let one = (decode_logprobs(&g, &reqs, true), decode_logprobs(&g, &reqs, false));
            assert!(cooperative.load(Relaxed) > before, "shape {n}: the steps ran in one launch");
            assert_eq!(one, launches, "shape {n}, {blocks} blocks: one launch and launch by launch differ");
        }
        // as chosen at load, batch by batch: steps of more sequences than the limit launch by launch
        // (two sequences decode together for four steps, then one alone for a fifth)
        for (limit, steps) in [(0, 0), (1, 1), (2, 5), (usize::MAX, 5)] {
            g.inner.lock().unwrap().step_batch = limit;
            assert!(g.set_one_launch(None));
            let before = cooperative.load(Relaxed);
            assert_eq!(decode_logprobs(&g, &reqs[..2], true), launches.0[..2], "shape {n}: up to {limit} sequences in one launch");
            assert_eq!(cooperative.load(Relaxed) - before, steps, "shape {n}: steps in one launch with up to {limit} sequences");
        }
        // products through a ring of pieces in shared memory, as phases too
        assert!(g.inner.lock().unwrap().step.is_some_and(|s| s.ring), "shape {n}: the ring fits");
        g.force_matvec(super::args::STEP_RING_SHAPE);
        assert!(g.set_one_launch(Some(true)));
        let before = cooperative.load(Relaxed);
        assert_eq!(decode_logprobs(&g, &reqs, true), launches.0, "shape {n}: products through a ring in one launch");
        assert!(cooperative.load(Relaxed) > before);
        g.force_matvec(super::MV_SHAPES[0]);
        // splits finer than a block's keys: several blocks merge a sequence's partials
        g.force_decode_attention(Some(super::DEC_WARPS as u32), 8);
        assert!(g.set_one_launch(Some(false)));
        let fine = decode_logprobs(&g, &reqs, true);
        assert!(g.set_one_launch(Some(true)));
        assert_eq!(decode_logprobs(&g, &reqs, true), fine, "shape {n}: 8-key splits in one launch");
        // attention on blocks of fewer warps than the step's: launch by launch, one launch on
        assert!(g.set_one_launch(Some(false)));
        g.force_decode_attention(Some(3), 16);
        let three = decode_logprobs(&g, &reqs, true);
        assert!(g.set_one_launch(Some(true)));
        let before = cooperative.load(Relaxed);
        assert_eq!(decode_logprobs(&g, &reqs, true), three, "shape {n}: three-warp attention with the one-launch step on");
        assert_eq!(cooperative.load(Relaxed), before, "shape {n}: no one-launch step with three-warp attention");
        g.force_decode_attention(Some(super::DEC_WARPS as u32), 16);
        // a driver that will not record a cooperative launch: each step launches the step
        // kernel itself, the same bits; overlap, not the cause, stays as it was
        refuse_capture.store(true, Relaxed);
        overlap.store(true, Relaxed);
        assert!(g.set_one_launch(Some(true)));
        g.inner.lock().unwrap().drop_graphs();
        let (before, replayed) = (cooperative.load(Relaxed), replays.load(Relaxed));
        assert_eq!(decode_logprobs(&g, &reqs, true), launches.0, "shape {n}: one launch, not recorded");
        assert!(cooperative.load(Relaxed) > before, "shape {n}: still in one launch");
        assert_eq!(replays.load(Relaxed), replayed, "shape {n}: no recording replayed");
        assert!(g.inner.lock().unwrap().step.is_some_and(|s| !s.recorded));
        assert!(overlap.load(Relaxed), "shape {n}: overlap kept");
        refuse_capture.store(false, Relaxed);
        overlap.store(false, Relaxed);
        // a device that now holds fewer blocks than the step has refuses its launch: launch by
        // launch from then on, the same bits
        assert!(g.set_one_launch(Some(true)));
        resident.store(2, Relaxed);
        g.inner.lock().unwrap().step.as_mut().expect("a step kernel").blocks = 3;
        assert_eq!(decode_logprobs(&g, &reqs, true), launches.0, "shape {n}: after a refused launch");
        assert!(g.inner.lock().unwrap().step.is_none(), "shape {n}: no one-launch step after a refusal");
    }
}

/// A short request's decode steps on `g` score within 1e-4 nats of `model` on the CPU.
fn decodes_like_the_cpu(model: &Llama, g: &GpuModel) {
    let r = ScoreRequest { context: vec![3, 1, 4, 1, 5], continuation: vec![9, 2, 6, 5] };
    let got = &decode_logprobs(g, std::slice::from_ref(&r), true)[0];
    let cpu = cpu_score(model, &r);
    assert!(got.iter().zip(&cpu.token_logprobs[1..]).all(|(a, b)| (a - b).abs() < 1e-4), "{got:?}");
}

/// Loading times the one-launch step at 1, 8 and 32 sequences and uses it up to the largest
/// batch from which on it kept winning (on the emulated GPU, whose host-clock timing decides
/// nothing, any of them); scores are the CPU's either way.
#[test]
fn loading_times_the_one_launch_step_batch_by_batch() {
    let room = |be: &Emu| be.resident.store(STEP_BLOCKS, std::sync::atomic::Ordering::Relaxed);
    let Some((model, g, ())) = emulated_with(10, "loading_times_the_one_launch_step_batch_by_batch", room) else { return };
    assert!(matches!(g.one_launch(), Some(0 | 1 | 8 | usize::MAX)), "{:?}", g.one_launch());
    assert_eq!(g.inner.lock().unwrap().step_force, None, "the timing's forcing is undone");
    decodes_like_the_cpu(&model, &g);
}

/// A device that holds no block of the step kernel at once (or cannot say) loads the model with
/// decode steps launch by launch, and they still score as the CPU does.
#[test]
fn without_room_for_the_step_kernel_decode_steps_launch_by_launch() {
    let none = |be: &Emu| be.resident.store(0, std::sync::atomic::Ordering::Relaxed);
    let Some((model, g, ())) = emulated_with(9, "without_room_for_the_step_kernel_decode_steps_launch_by_launch", none) else { return };
    assert_eq!(g.one_launch(), None);
    assert!(!g.set_one_launch(Some(true)));
    assert_eq!(g.one_launch(), None);
    decodes_like_the_cpu(&model, &g);
}

/// Loading a model times the product kernel's shapes on each decode product and picks the
/// fastest; pairs-only outputs (RoPE'd q/k/v, SwiGLU) are timed on two-row shapes only.
#[test]
fn emulated_gpu_times_the_product_shapes_when_it_loads() {
    use super::{Product, MV_SHAPES};
    let Some((model, g, ())) = emulated_with(8, "emulated_gpu_times_the_product_shapes_when_it_loads", |_| ()) else { return };
    let timing = g.matvec_timing();
    assert_eq!(timing.iter().map(|t| t.product).collect::<Vec<_>>(), Product::ALL);
    let c = &model.config;
    for t in &timing {
        let pairs = matches!(t.product, Product::Qkv | Product::GateUp);
        let want: Vec<_> = MV_SHAPES.iter().filter(|s| !pairs || s.rows == 2).copied().collect();
        assert_eq!(t.micros.iter().map(|m| m.0).collect::<Vec<_>>(), want, "{:?}", t.product);
        assert!(t.micros.iter().all(|m| m.1 > 0.0 && m.1.is_finite()), "{t:?}");
        let best = t.micros.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
        assert!(t.micros.iter().any(|m| m.0 == t.chosen && m.1 == best), "{t:?}");
    }
    let dims: Vec<(usize, usize)> = timing.iter().map(|t| (t.n, t.k)).collect();
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    assert_eq!(dims, [(q + 2 * kv, c.dim), (c.dim, q), (2 * c.ffn_dim, c.dim), (c.dim, c.ffn_dim), (c.vocab, c.dim)]);
    // without timing (no events), the first shape everywhere and nothing reported
    let no_events = |be: &Emu| be.no_profile.store(true, std::sync::atomic::Ordering::Relaxed);
    let Some((_, g, ())) = emulated_with(8, "emulated_gpu_times_the_product_shapes_when_it_loads", no_events) else { return };
    assert!(g.matvec_timing().is_empty());
}


/// A model whose heads the kernels cannot run is refused before the kernels are compiled for it,
/// with its head size in the message.
#[test]
fn heads_the_kernels_cannot_run_are_refused_by_size() {
    let config = |head_dim: usize, n_heads: usize| Config { arch: "llama".into(), n_layers: 1, dim: 64, n_heads, n_kv_heads: 1, head_dim, ffn_dim: 96, vocab: 97, ctx_len: 512, rope_theta: 10_000.0, rms_eps: 1e-5, rope_style: RopeStyle::Interleaved };
    for (hd, heads) in [(32, 1), (64, 4), (96, 2), (256, 1)] {
        assert!(super::check_heads(&config(hd, heads), "cuda:0 (test)").is_ok(), "head_dim {hd}, {heads} heads");
    }
    for (hd, heads, what) in [(48, 1, "head_dim 48"), (288, 1, "head_dim 288"), (64, super::ATT_ROWS + 1, "query heads per KV head")] {
        let e = super::check_heads(&config(hd, heads), "cuda:0 (test)").expect_err("refused").to_string();
        assert!(e.contains(what) && e.contains("cuda:0 (test)"), "{e}");
    }
}
