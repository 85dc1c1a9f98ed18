//! The command line: clap definitions, output formatting, exit codes. The only place that prints
//! and the only place that uses `anyhow`.

use crate::error::exit;
use crate::store::{Aggregate, Run, Store};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "llmeval", version, about = "Evaluate LLMs: benchmark suites, reference metrics, judges, arenas.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DbArg {
    /// SQLite database holding runs and the response cache [env: LLMEVAL_DB; default: llmeval.db]
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
}

/// Which runs a view shows (the leaderboard and the report).
#[derive(Args)]
struct RunSelect {
    /// Runs to show: id, prefix, tag or `latest` (repeatable) [default: the latest finished run of
    /// every suite].
    #[arg(long, num_args = 1.., value_name = "RUN")]
    runs: Vec<String>,
    /// Only runs of this suite (by default its latest finished run).
    #[arg(long, value_name = "NAME")]
    suite: Option<String>,
}

impl DbArg {
    fn path(&self) -> PathBuf {
        self.db.clone().or_else(|| std::env::var_os("LLMEVAL_DB").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("llmeval.db"))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a suite: every selected model on every selected task; results go to the database.
    Run(RunArgs),
    /// List, show, tag and delete stored runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// List and clear the response cache (answers reused by later runs of the same requests).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Compare a candidate run with a baseline; exit 1 on a significant regression.
    Gate {
        #[command(flatten)]
        db: DbArg,
        /// Baseline run: id, prefix or tag.
        #[arg(long)]
        baseline: String,
        /// Candidate run: id, prefix, tag or `latest`.
        #[arg(long)]
        candidate: String,
        /// Allowed drop of a metric, e.g. `exact-match=0.02` (repeatable; default 0).
        #[arg(long = "max-drop", value_name = "METRIC=DELTA")]
        max_drop: Vec<String>,
        /// Significance level (two-sided), for the adjusted p-values.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        /// How p-values are adjusted over the gate's comparisons: `holm` keeps the chance that
        /// any of them fails on noise at most alpha; `none` tests each at alpha on its own.
        #[arg(long, value_enum, default_value_t = CorrectionArg::Holm)]
        correction: CorrectionArg,
        /// Write JUnit XML here (one test case per task × metric).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Write a GitHub-flavoured markdown summary here.
        #[arg(long, value_name = "FILE")]
        markdown: Option<PathBuf>,
        /// Print the verdict as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a self-contained HTML report (leaderboard, charts, arena, judges, samples, runs).
    Report {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        select: RunSelect,
        /// The HTML file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Browse the leaderboard in the terminal: sort, filter, read each cell's samples (plain text
    /// when stdout is not a terminal).
    Leaderboard {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        select: RunSelect,
        /// Print the table as plain text and exit.
        #[arg(long)]
        plain: bool,
    },
    /// Arena ratings from pairwise battles.
    Arena {
        #[command(subcommand)]
        command: ArenaCommand,
    },
    /// Inspect and run a local model with the built-in engine.
    Engine {
        #[command(subcommand)]
        command: EngineCommand,
    },
    /// Score files of hypotheses against references (one sample per line).
    Metrics {
        #[command(subcommand)]
        command: MetricsCommand,
    },
}

#[derive(Args)]
struct SampleFiles {
    /// Hypotheses, one per line.
    #[arg(long, value_name = "FILE")]
    hyp: PathBuf,
    /// References, one per line; repeat for several references per sample.
    #[arg(long = "ref", value_name = "FILE", required = true)]
    refs: Vec<PathBuf>,
    /// Each line is a JSON string (so a sample can contain newlines).
    #[arg(long)]
    jsonl: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ArenaCommand {
    /// Vote in the terminal: two anonymous answers side by side; names shown after the vote.
    Vote {
        /// The arena file (TOML); its latest run provides the answers.
        arena: PathBuf,
        #[command(flatten)]
        db: DbArg,
        /// Your name, recorded as judge `human:NAME` [default: $USER].
        #[arg(long)]
        name: Option<String>,
    },
    /// Run (or resume) an arena: sampled prompts, every pair of models, judged in both orders.
    Run {
        /// The arena file (TOML).
        arena: PathBuf,
        #[command(flatten)]
        db: DbArg,
        /// Ask the models again instead of reusing cached answers.
        #[arg(long)]
        no_cache: bool,
        /// Print the arena's ratings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Elo or Bradley-Terry ratings, with bootstrap intervals and ranks.
    Ratings {
        #[command(flatten)]
        db: DbArg,
        /// FastChat battle log (JSON array or JSON lines with model_a, model_b, winner) instead of
        /// the database's judged pairs.
        #[arg(long, value_name = "FILE")]
        battles: Option<PathBuf>,
        /// `elo` (online, in battle order) or `bt` (maximum-likelihood Bradley-Terry).
        #[arg(long, value_parser = ["elo", "bt"])]
        method: String,
        /// Elo K-factor.
        #[arg(long, default_value_t = 4.0)]
        k: f64,
        /// Bootstrap resamples for 95% intervals and ranks (0: none).
        #[arg(long, default_value_t = 0)]
        bootstrap: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
        /// Fix one model's rating, e.g. `llama-13b=800`.
        #[arg(long, value_name = "MODEL=RATING")]
        anchor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ModelArg {
    /// A GGUF file or a Hugging Face directory.
    #[arg(long, value_name = "MODEL")]
    model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeviceArg {
    /// auto (a CUDA GPU if one is usable, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Subcommand)]
enum EngineCommand {
    /// Architecture, sizes, tensor types, tokenizer.
    Info {
        /// A GGUF file or a Hugging Face directory.
        model: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a text (no BOS added; special tokens parsed).
    Tokenize {
        #[command(flatten)]
        m: ModelArg,
        /// The text to tokenize.
        #[arg(long, allow_hyphen_values = true)]
        text: String,
    },
    /// Greedy generation (stops at EOS or --max-tokens; never samples).
    Generate {
        #[command(flatten)]
        m: ModelArg,
        #[command(flatten)]
        d: DeviceArg,
        /// The prompt (used as given unless --chat).
        #[arg(long, allow_hyphen_values = true)]
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
    },
    /// Log-probability of a continuation given a context (tokenized separately, as lm-eval).
    Score {
        #[command(flatten)]
        m: ModelArg,
        #[command(flatten)]
        d: DeviceArg,
        /// The context, tokenized on its own, as given (a suite's tasks move whitespace at its end
        /// into the continuation, as lm-eval does).
        #[arg(long, allow_hyphen_values = true)]
        context: String,
        /// The continuation whose log-probability is reported.
        #[arg(long, allow_hyphen_values = true)]
        continuation: String,
    },
    /// Prefill (a 512-token prompt unless --prompt-tokens) and decode (128 tokens) speed.
    Bench {
        #[command(flatten)]
        m: ModelArg,
        #[command(flatten)]
        d: DeviceArg,
        /// Prompt length in tokens; decoding continues after it (long prompts measure attention
        /// over a long context).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
        prompt_tokens: u32,
        /// Sequences decoding together (GPU only; the CPU decodes one).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Also time one prefill pass and one decode step launch by launch (GPU only).
        #[arg(long)]
        profile: bool,
    },
}

#[derive(Subcommand)]
enum MetricsCommand {
    /// Corpus BLEU, as sacrebleu.
    Bleu {
        #[command(flatten)]
        files: SampleFiles,
        /// Tokenizer: 13a, intl, zh, char or none.
        #[arg(long, default_value = "13a")]
        tokenize: String,
        /// Lower-case hypotheses and references.
        #[arg(long)]
        lowercase: bool,
        /// Smoothing of n-gram precisions without a match: exp, floor, add-k or none.
        #[arg(long, default_value = "exp")]
        smooth_method: String,
        /// The value of floor (default 0.1) or add-k (default 1) smoothing.
        #[arg(long, allow_negative_numbers = true)]
        smooth_value: Option<f64>,
    },
    /// Corpus chrF (word order 0) or chrF++ (word order 2), as sacrebleu.
    Chrf {
        #[command(flatten)]
        files: SampleFiles,
        /// Word n-gram order: 0 (chrF), 1, or 2 (chrF++).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        word_order: u8,
        /// Lower-case hypotheses and references.
        #[arg(long)]
        lowercase: bool,
    },
    /// ROUGE as rouge-score, averaged over samples (the best reference per sample when several).
    Rouge {
        #[command(flatten)]
        files: SampleFiles,
        /// Porter-stem tokens longer than three characters.
        #[arg(long)]
        stem: bool,
        /// ROUGE types, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "rouge1,rouge2,rougeL,rougeLsum")]
        types: Vec<String>,
    },
    /// The ChatGLM2-6B evaluation: jieba ROUGE-1/2/L F and character BLEU-4, ×100, mean (one
    /// --ref: the evaluation has one label per sample).
    Chatglm {
        #[command(flatten)]
        files: SampleFiles,
    },
    /// Diversity of outputs: distinct-1, distinct-2 and self-BLEU.
    Distinct {
        /// Outputs, one per line.
        #[arg(long, value_name = "FILE")]
        hyp: PathBuf,
        /// Each line is a JSON string.
        #[arg(long)]
        jsonl: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The suite file (TOML).
    suite: PathBuf,
    #[command(flatten)]
    db: DbArg,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Evaluate only the first N items of each task.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Only these tasks (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    tasks: Option<Vec<String>>,
    /// Only these models (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "X,Y")]
    models: Option<Vec<String>>,
    /// Continue the newest run of this suite if it was interrupted or has errored items (those
    /// are asked again).
    #[arg(long)]
    resume: bool,
    /// Ask the models again instead of reusing cached answers from earlier runs.
    #[arg(long)]
    no_cache: bool,
    /// Exit 0 even when some items errored after all retries.
    #[arg(long)]
    allow_errors: bool,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List the runs, newest first.
    List {
        #[command(flatten)]
        db: DbArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a run's results (RUN: id, unique id prefix, tag, or `latest`).
    Show {
        run: String,
        #[command(flatten)]
        db: DbArg,
        /// Also list every sample.
        #[arg(long)]
        samples: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give a run a name (e.g. `baseline`) to refer to it later.
    Tag {
        run: String,
        name: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Delete runs with their samples, results, judgments and tags (cached responses stay unless
    /// --with-cache).
    Delete {
        /// Runs (id, unique id prefix, tag, or `latest`).
        #[arg(required = true)]
        runs: Vec<String>,
        #[command(flatten)]
        db: DbArg,
        /// Also delete the responses these runs cached, so that no later run reuses them.
        #[arg(long)]
        with_cache: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Show what the cache holds, by model and request kind.
    List {
        #[command(flatten)]
        db: DbArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete cached responses: those meeting every condition given, or all with --all.
    Clear {
        #[command(flatten)]
        db: DbArg,
        /// Responses of models whose label (as `cache list` prints it) contains this text.
        #[arg(long, value_name = "TEXT")]
        model: Option<String>,
        /// Responses cached by this run: id, unique id prefix, tag or `latest` (repeatable).
        #[arg(long = "run", value_name = "RUN")]
        runs: Vec<String>,
        /// Responses of one request kind.
        #[arg(long, value_parser = crate::cache::KINDS)]
        kind: Option<String>,
        /// Responses cached longer ago than this: a whole number and s, m, h, d or w (e.g. 30d).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Responses whose run has been deleted.
        #[arg(long)]
        orphaned: bool,
        /// Every cached response (instead of conditions).
        #[arg(long, conflicts_with_all = ["model", "runs", "kind", "older_than", "orphaned"])]
        all: bool,
        /// Say what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Then shrink the database file (SQLite otherwise keeps the freed pages for reuse).
        #[arg(long)]
        vacuum: bool,
    },
}

/// Entry point: parses arguments, runs the command, maps the outcome to an exit code.
pub fn main() -> ExitCode {
    // a reader that stops early (`| head`) is not a failure: exit quietly, as ripgrep does
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(i32::from(exit::SUCCESS));
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Metrics { command } => cmd_metrics(command),
        Command::Engine { command } => cmd_engine(command),
        Command::Arena { command } => cmd_arena(command),
        Command::Leaderboard { db, select, plain } => cmd_leaderboard(&db.path(), &select.runs, select.suite.as_deref(), plain),
        Command::Report { db, select, out } => cmd_report(&db.path(), &select.runs, select.suite.as_deref(), &out),
        Command::Gate { db, baseline, candidate, max_drop, alpha, correction, junit, markdown, json } => cmd_gate(&db.path(), &baseline, &candidate, &max_drop, alpha, correction, junit, markdown, json),
        Command::Cache { command } => match command {
            CacheCommand::List { db, json } => cmd_cache_list(&db.path(), json),
            CacheCommand::Clear { db, model, runs, kind, older_than, orphaned, all, dry_run, vacuum } => {
                let store = open_existing(&db.path())?;
                let before = match older_than {
                    Some(age) => Some(crate::util::now_unix() - crate::cache::parse_age(&age).map_err(anyhow::Error::msg)?),
                    None => None,
                };
                let runs = runs.iter().map(|r| store.resolve_run(r).map(|r| r.id)).collect::<Result<Vec<_>, _>>()?;
                if model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                    anyhow::bail!("cache clear --model: give some text of the model's label as `llmeval cache list` prints it (empty text would match every model; --all says that)");
                }
                let filter = crate::cache::Filter { model, runs, kind, before, orphaned };
                if filter.is_empty() && !all {
                    anyhow::bail!("cache clear: name what to delete (--model, --run, --kind, --older-than, --orphaned), or pass --all to empty the cache; `llmeval cache list` shows what it holds");
                }
                cmd_cache_clear(&store, &filter, dry_run, vacuum)
            }
        },
        Command::Runs { command } => match command {
            RunsCommand::List { db, json } => cmd_runs_list(&db.path(), json),
            RunsCommand::Show { run, db, samples, json } => cmd_runs_show(&db.path(), &run, samples, json),
            RunsCommand::Tag { run, name, db } => {
                let store = open_existing(&db.path())?;
                let r = store.resolve_run(&run)?;
                // a tag that reads as something else would change what other commands resolve
                if name.is_empty() || name == "latest" || name.chars().any(char::is_control) || store.runs()?.iter().any(|x| x.id.starts_with(&name)) {
                    anyhow::bail!("runs tag {name:?}: a tag must not be empty, `latest`, a run id or the start of one, or hold control characters; choose another name");
                }
                // what the name resolves to now can only be a tag (run ids were refused above)
                let before = store.resolve_run(&name).ok();
                store.tag_run(&r.id, &name)?;
                match before {
                    Some(b) if b.id != r.id => println!("moved tag {name} from {} to {}", b.id, r.id),
                    _ => println!("tagged {} as {name}", r.id),
                }
                Ok(exit::SUCCESS)
            }
            RunsCommand::Delete { runs, db, with_cache } => {
                let store = open_existing(&db.path())?;
                // every name is resolved before anything goes, so a typo deletes nothing
                let mut ids: Vec<crate::store::Run> = Vec::new();
                for r in &runs {
                    let run = store.resolve_run(r)?;
                    if !ids.iter().any(|x| x.id == run.id) {
                        ids.push(run);
                    }
                }
                for run in ids {
                    // claimed first: a run another process is working on is not pulled from under it
                    let _claim = store.lease(&run.id)?;
                    let d = store.delete_run(&run.id, with_cache)?;
                    let tags = if d.tags.is_empty() { String::new() } else { format!("; tags {}", d.tags.join(", ")) };
                    let cached = if with_cache { format!("; {} cached responses", d.cached) } else { String::new() };
                    println!("deleted run {} (suite {}, {} samples{tags}{cached})", run.id, run.suite, d.samples);
                }
                Ok(exit::SUCCESS)
            }
        },
    }
}

/// The most compute threads a model may be given.
pub const MAX_THREADS: usize = 1024;

/// Decode steps `engine bench` times after its prompt.
const BENCH_DECODE: usize = 128;

/// What Ctrl-C prints before the process exits with 130 (see [`on_interrupt_say`]).
static INTERRUPTED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

extern "C" fn interrupted(_: libc::c_int) {
    // only async-signal-safe calls: write(2) and _exit(2); every finished sample is already
    // committed, so exiting here loses nothing a resume cannot redo
    if let Some(m) = INTERRUPTED.get() {
        // SAFETY: a static buffer, written to stderr.
        unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
    }
    // SAFETY: ends the process without running anything else.
    unsafe { libc::_exit(i32::from(exit::INTERRUPTED)) }
}

/// Makes Ctrl-C (SIGINT) print `message` and exit with 130 instead of dying silently.
fn on_interrupt_say(message: String) {
    if INTERRUPTED.set(message.into_bytes()).is_ok() {
        // SAFETY: installs a handler that only uses async-signal-safe calls; where SIGINT was
        // ignored (a background job of a script) it stays ignored.
        unsafe {
            if libc::signal(libc::SIGINT, interrupted as *const () as libc::sighandler_t) == libc::SIG_IGN {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
            }
        }
    }
}

fn cmd_run(args: RunArgs) -> anyhow::Result<u8> {
    if args.limit == Some(0) {
        // an empty run would be stored as complete and become `latest`
        anyhow::bail!("--limit 0 evaluates nothing; give at least 1");
    }
    let suite = crate::suite::Suite::load(&args.suite)?;
    let opts = crate::run::RunOptions {
        db: args.db.path(),
        limit: args.limit,
        tasks: args.tasks,
        models: args.models,
        resume: args.resume,
        no_cache: args.no_cache,
        progress: true,
        items: None,
        resume_command: Some(format!("llmeval run {} --db {} --resume", args.suite.display(), args.db.path().display())),
    };
    if args.resume && (opts.limit.is_some() || opts.tasks.is_some() || opts.models.is_some()) {
        eprintln!("note: --resume continues with the selection the run started with; --limit/--tasks/--models are ignored");
    }
    on_interrupt_say(format!("\ninterrupted: every finished item is stored in {}; `llmeval run {} --db {} --resume` continues\n", opts.db.display(), args.suite.display(), opts.db.display()));
    let report = crate::run::run_suite(&suite, &opts).with_context(|| format!("running suite {}", args.suite.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run_json(&report.run, &report.aggregates)).expect("JSON"));
    } else {
        print!("{}", results_table(&report.run, &report.aggregates));
        println!("stored in {} as run {}", opts.db.display(), report.run.id);
    }
    for note in &report.run.notes {
        eprintln!("note: {}", crate::tui::leaderboard::one_line(note));
    }
    if report.errored > 0 {
        eprintln!(
            "{} item(s) errored and were not scored{}; `llmeval runs show {} --samples` lists them with their errors, `llmeval run {} --resume` retries them",
            report.errored,
            common_error(&report),
            report.run.id,
            args.suite.display()
        );
    }
    if report.judge_errors > 0 {
        eprintln!("{} judge call(s) failed (see the notes above); `llmeval run {} --resume` retries them", report.judge_errors, args.suite.display());
    }
    if report.errored + report.judge_errors > 0 && !args.allow_errors {
        return Ok(exit::FAILURE);
    }
    Ok(exit::SUCCESS)
}

fn num(x: Option<f64>) -> Value {
    x.filter(|v| v.is_finite()).map_or(Value::Null, |v| json!(v))
}

fn result_json(a: &Aggregate, with_category: bool) -> Value {
    let mut v = json!({
        "model": a.model,
        "task": a.task,
        "metric": a.metric,
        "value": num(a.value),
        "stderr": num(a.stderr),
        "ci95": a.ci95.map_or(Value::Null, |(l, h)| json!([l, h])),
        "n": a.n,
        "errors": a.errors,
    });
    if with_category {
        v["category"] = json!(a.category);
    }
    v
}

/// The `run --json` document: overall results only, in the documented shape.
fn run_json(run: &Run, aggs: &[Aggregate]) -> Value {
    json!({
        "run_id": run.id,
        "suite": run.suite,
        "status": run.status,
        "results": aggs.iter().filter(|a| a.category.is_empty()).map(|a| result_json(a, false)).collect::<Vec<_>>(),
    })
}

fn fmt_value(a: &Aggregate) -> String {
    match (a.value, a.ci95) {
        (Some(v), Some((lo, hi))) => format!("{v:.4} ± {:.4}", (hi - lo) / 2.0),
        (Some(v), None) => format!("{v:.4}"),
        (None, _) => "—".into(),
    }
}

/// A plain-text table with a header row; columns padded to their widest cell.
/// Cells are printed as one line each with control characters made visible (a name or answer
/// holding an escape sequence must not drive the terminal), padded by display width.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    use crate::tui::leaderboard::{one_line, width};
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| one_line(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(width(c));
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - width(c)))).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

fn results_table(run: &Run, aggs: &[Aggregate]) -> String {
    let rows: Vec<Vec<String>> = aggs
        .iter()
        .map(|a| {
            let task = if a.category.is_empty() { a.task.clone() } else { format!("  {} / {}", a.task, a.category) };
            vec![a.model.clone(), task, a.metric.clone(), fmt_value(a), a.stderr.map_or("—".into(), |s| format!("{s:.4}")), a.n.to_string(), a.errors.to_string()]
        })
        .collect();
    format!("suite {} · run {} · {}\n{}", crate::tui::leaderboard::one_line(&run.suite), run.id, run.status, table(&["model", "task", "metric", "value ± 95% CI", "stderr", "n", "errors"], &rows))
}

/// The results database for a command that reads it: one that does not exist is an error (it is
/// not created: a typo in --db would otherwise read as "no runs").
fn open_existing(db: &std::path::Path) -> anyhow::Result<Store> {
    if !db.exists() {
        anyhow::bail!("database {} does not exist; `llmeval run SUITE --db {}` creates it (or give --db the right file)", db.display(), db.display());
    }
    match Store::open(db) {
        Ok(s) => Ok(s),
        // a database this user may only read (a shared results file, a read-only mount) still reads
        Err(e @ crate::error::Error::Db { .. }) => Ok(Store::open_read_only(db).map_err(|_| e)?),
        Err(e) => Err(e.into()),
    }
}

fn cmd_cache_list(db: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let store = open_existing(db)?;
    let groups = crate::cache::groups(&store.cache_entries()?);
    if json {
        let v: Vec<Value> = groups
            .iter()
            .map(|g| json!({"model": g.model, "kind": g.kind, "entries": g.entries, "bytes": g.bytes, "oldest": crate::util::iso8601(g.oldest), "newest": crate::util::iso8601(g.newest), "orphaned": g.orphaned}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
    } else if groups.is_empty() {
        println!("the cache in {} is empty", db.display());
    } else {
        print!("{}", cache_table(&groups));
        let (n, bytes, orphaned) = groups.iter().fold((0, 0, 0), |(n, b, o), g| (n + g.entries, b + g.bytes, o + g.orphaned));
        let orphaned = if orphaned > 0 { format!("; {orphaned} from deleted runs (`cache clear --orphaned`)") } else { String::new() };
        println!("{n} cached responses, {}{orphaned}", crate::cache::size(bytes));
    }
    Ok(exit::SUCCESS)
}

fn cache_table(groups: &[crate::cache::Group]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.model.clone(), g.kind.clone(), g.entries.to_string(), crate::cache::size(g.bytes), crate::util::iso8601(g.oldest), crate::util::iso8601(g.newest)])
        .collect();
    table(&["model", "kind", "entries", "size", "oldest", "newest"], &rows)
}

fn cmd_cache_clear(store: &Store, filter: &crate::cache::Filter, dry_run: bool, vacuum: bool) -> anyhow::Result<u8> {
    let chosen: Vec<crate::store::CacheEntry> = store.cache_entries()?.into_iter().filter(|e| filter.matches(e)).collect();
    let groups = crate::cache::groups(&chosen);
    if !groups.is_empty() {
        print!("{}", cache_table(&groups));
    }
    let bytes: u64 = chosen.iter().map(|e| e.bytes).sum();
    if dry_run {
        println!("would delete {} cached responses, {} (--dry-run: nothing was deleted)", chosen.len(), crate::cache::size(bytes));
        return Ok(exit::SUCCESS);
    }
    let keys: Vec<String> = chosen.into_iter().map(|e| e.key).collect();
    let n = store.delete_cached(&keys)?;
    println!("deleted {n} cached responses, {}", crate::cache::size(bytes));
    if vacuum {
        store.vacuum()?;
        let size = std::fs::metadata(store.path()).map(|m| crate::cache::size(m.len())).unwrap_or_default();
        println!("vacuumed {} ({size})", store.path().display());
    }
    Ok(exit::SUCCESS)
}

fn cmd_runs_list(db: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let store = open_existing(db)?;
    let mut runs = store.runs()?;
    store.show_statuses(&mut runs)?;
    if json {
        let v: Vec<Value> = runs
            .iter()
            .map(|r| json!({"run_id": r.id, "suite": r.suite, "status": r.status, "started_at": crate::util::iso8601(r.started_at), "ended_at": r.ended_at.map(crate::util::iso8601), "suite_hash": r.suite_hash, "version": r.version}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
    } else if runs.is_empty() {
        println!("no runs in {}", db.display());
    } else {
        let rows: Vec<Vec<String>> = runs.iter().map(|r| vec![r.id.clone(), r.suite.clone(), r.status.clone(), crate::util::iso8601(r.started_at), r.suite_hash[..12.min(r.suite_hash.len())].to_string()]).collect();
        print!("{}", table(&["run", "suite", "status", "started", "suite hash"], &rows));
    }
    Ok(exit::SUCCESS)
}

fn cmd_runs_show(db: &std::path::Path, key: &str, samples: bool, json: bool) -> anyhow::Result<u8> {
    let store = open_existing(db)?;
    let mut run = store.resolve_run(key)?;
    store.show_statuses(std::slice::from_mut(&mut run))?;
    let aggs = store.aggregates(&run.id)?;
    let sample_rows = if samples { store.samples(&run.id)? } else { Vec::new() };
    if json {
        let mut v = json!({
            "run_id": run.id,
            "suite": run.suite,
            "suite_path": run.suite_path,
            "suite_hash": run.suite_hash,
            "status": run.status,
            "version": run.version,
            "started_at": crate::util::iso8601(run.started_at),
            "ended_at": run.ended_at.map(crate::util::iso8601),
            "selection": run.selection,
            "notes": run.notes,
            "config": run.config,
            "results": aggs.iter().map(|a| result_json(a, true)).collect::<Vec<_>>(),
        });
        if samples {
            v["samples"] = serde_json::to_value(&sample_rows).expect("JSON");
        }
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        return Ok(exit::SUCCESS);
    }
    print!("{}", results_table(&run, &aggs));
    for n in &run.notes {
        println!("note: {}", crate::tui::leaderboard::one_line(n));
    }
    if run.status == "interrupted" {
        // an arena's run continues with `arena run` on its arena file, which the run does not record
        let how = match run.suite.strip_prefix("arena:") {
            Some(name) => format!("`llmeval arena run` on the arena file of arena {name:?}"),
            None => format!("`llmeval run {} --resume`", crate::tui::leaderboard::one_line(&run.suite_path)),
        };
        println!("note: no llmeval process is working on this run; {how} continues it");
    }
    if samples {
        let rows: Vec<Vec<String>> = sample_rows
            .iter()
            .map(|s| {
                let scores = s.scores.iter().map(|(k, v)| format!("{k}={}", v.as_f64().map_or("?".into(), |x| format!("{x:.4}")))).collect::<Vec<_>>().join(" ");
                let clip = |t: &Option<String>| {
                    let t = t.clone().unwrap_or_default().replace('\n', "⏎");
                    if t.chars().count() > 40 { format!("{}…", t.chars().take(40).collect::<String>()) } else { t }
                };
                vec![s.model.clone(), s.task.clone(), s.item_id.clone(), clip(&s.answer), clip(&s.target), if let Some(e) = &s.error { format!("ERROR: {e}") } else { scores }]
            })
            .collect();
        print!("\n{}", table(&["model", "task", "item", "answer", "target", "scores"], &rows));
    }
    Ok(exit::SUCCESS)
}

/// Hypotheses and references, checked to have the same number of lines.
fn load_pairs(f: &SampleFiles) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let hyp = read_hypotheses(&f.hyp, f.jsonl)?;
    let mut refs = Vec::new();
    for r in &f.refs {
        let lines = crate::dataset::read_samples(r, f.jsonl)?;
        if lines.len() != hyp.len() {
            let (short, long, n) = if lines.len() < hyp.len() { (r, &f.hyp, lines.len()) } else { (&f.hyp, r, hyp.len()) };
            anyhow::bail!(
                "{} has {} samples but {} has {}: line {} of {} has no counterpart in {}",
                f.hyp.display(),
                hyp.len(),
                r.display(),
                lines.len(),
                n + 1,
                long.display(),
                short.display()
            );
        }
        refs.push(lines);
    }
    Ok((hyp, refs))
}

/// The samples to score: an empty file is an error (its score would print as 0).
fn read_hypotheses(path: &std::path::Path, jsonl: bool) -> anyhow::Result<Vec<String>> {
    let hyp = crate::dataset::read_samples(path, jsonl)?;
    if hyp.is_empty() {
        anyhow::bail!("{}: no samples (the file is empty); give one sample per line", path.display());
    }
    Ok(hyp)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string(v).expect("JSON"));
}

fn cmd_metrics(command: MetricsCommand) -> anyhow::Result<u8> {
    use crate::metric::{diversity, rouge, sacrebleu};
    match command {
        MetricsCommand::Bleu { files, tokenize, lowercase, smooth_method, smooth_value } => {
            let tokenize = tokenize.parse().map_err(|e: String| anyhow::anyhow!("--tokenize: {e}"))?;
            let smooth = sacrebleu::Smooth::parse(&smooth_method, smooth_value).map_err(|e| anyhow::anyhow!("--smooth-method/--smooth-value: {e}"))?;
            let (hyp, refs) = load_pairs(&files)?;
            let refs: Vec<Vec<&str>> = refs.iter().map(|r| strs(r)).collect();
            let options = sacrebleu::BleuOptions { tokenize, lowercase, smooth };
            let s = sacrebleu::corpus_bleu(&strs(&hyp), &refs, &options);
            let signature = options.signature(refs.len());
            if files.json {
                print_json(&json!({"score": s.score, "bp": s.bp, "sys_len": s.sys_len, "ref_len": s.ref_len, "precisions": s.precisions, "signature": signature}));
            } else {
                let p: Vec<String> = s.precisions.iter().map(|p| format!("{p:.1}")).collect();
                let ratio = if s.ref_len > 0 { s.sys_len as f64 / s.ref_len as f64 } else { 0.0 };
                println!("BLEU = {:.2} {} (BP = {:.3} ratio = {ratio:.3} hyp_len = {} ref_len = {})", s.score, p.join("/"), s.bp, s.sys_len, s.ref_len);
                println!("signature: {signature}");
            }
        }
        MetricsCommand::Chrf { files, word_order, lowercase } => {
            let (hyp, refs) = load_pairs(&files)?;
            let refs: Vec<Vec<&str>> = refs.iter().map(|r| strs(r)).collect();
            let word_order = usize::from(word_order);
            let options = sacrebleu::ChrfOptions { word_order, lowercase };
            let score = sacrebleu::corpus_chrf(&strs(&hyp), &refs, &options);
            let signature = options.signature(refs.len());
            if files.json {
                print_json(&json!({"score": score, "signature": signature}));
            } else {
                println!("chrF2{} = {score:.2}", "+".repeat(word_order));
                println!("signature: {signature}");
            }
        }
        MetricsCommand::Rouge { files, stem, types } => {
            let types: Vec<rouge::RougeType> = types.iter().map(|t| t.parse()).collect::<Result<_, String>>().map_err(|e| anyhow::anyhow!("--types: {e}"))?;
            if let Some(t) = types.iter().enumerate().find_map(|(i, t)| types[..i].contains(t).then(|| t.name())) {
                anyhow::bail!("--types lists {t} twice; give each type once");
            }
            let (hyp, refs) = load_pairs(&files)?;
            let per: Vec<Vec<rouge::Prf>> = {
                let refs: Vec<Vec<&str>> = refs.iter().map(|r| strs(r)).collect();
                sacrebleu::per_segment(&strs(&hyp), &refs, |h, r| rouge::score_multi(r, h, &types, stem))
            };
            let n = per.len().max(1) as f64;
            let mut out = serde_json::Map::new();
            let mut rows = Vec::new();
            for (k, t) in types.iter().enumerate() {
                // `+ 0.0`: an empty sum is -0.0 in Rust; no samples print as 0
                let mean = |f: fn(&rouge::Prf) -> f64| per.iter().map(|s| f(&s[k])).sum::<f64>() / n + 0.0;
                let (p, r, f) = (mean(|x| x.precision), mean(|x| x.recall), mean(|x| x.fmeasure));
                out.insert(t.name(), json!({"precision": p, "recall": r, "fmeasure": f}));
                rows.push(vec![t.name(), format!("{p:.6}"), format!("{r:.6}"), format!("{f:.6}")]);
            }
            if files.json {
                print_json(&Value::Object(out));
            } else {
                print!("{}", table(&["type", "precision", "recall", "fmeasure"], &rows));
            }
        }
        MetricsCommand::Chatglm { files } => {
            let (hyp, refs) = load_pairs(&files)?;
            if refs.len() != 1 {
                anyhow::bail!("the ChatGLM evaluation takes exactly one --ref");
            }
            let s = crate::metric::chatglm::corpus(&strs(&hyp), &strs(&refs[0]));
            if files.json {
                print_json(&json!({"rouge-1": s[0], "rouge-2": s[1], "rouge-l": s[2], "bleu-4": s[3]}));
            } else {
                println!("rouge-1 = {:.4}\nrouge-2 = {:.4}\nrouge-l = {:.4}\nbleu-4 = {:.4}", s[0], s[1], s[2], s[3]);
            }
        }
        MetricsCommand::Distinct { hyp, jsonl, json } => {
            let outs = read_hypotheses(&hyp, jsonl)?;
            let o = strs(&outs);
            let (d1, d2, sb) = (diversity::distinct(&o, 1), diversity::distinct(&o, 2), diversity::self_bleu(&o));
            if json {
                print_json(&json!({"distinct-1": d1, "distinct-2": d2, "self-bleu": sb, "n": o.len()}));
            } else {
                println!("distinct-1 = {d1:.4}\ndistinct-2 = {d2:.4}\nself-BLEU = {sb:.2}\nn = {}", o.len());
            }
        }
    }
    Ok(exit::SUCCESS)
}

fn load_engine(path: &std::path::Path, threads: Option<usize>, device: Option<&str>) -> anyhow::Result<crate::model::builtin::BuiltinModel> {
    if let Some(t) = threads.filter(|t| !(1..=MAX_THREADS).contains(t)) {
        anyhow::bail!("--threads {t}: give 1 to {MAX_THREADS}");
    }
    let cfg = crate::suite::ModelConfig {
        name: path.display().to_string(),
        engine: crate::suite::Engine::Builtin,
        base_url: String::new(),
        model: String::new(),
        path: Some(path.display().to_string()),
        device: Some(toml::Spanned::new(0..0, device.unwrap_or("cpu").to_string())),
        threads,
        evaluate: true,
        api: crate::suite::Api::Completions,
        api_key_env: None,
        concurrency: 1,
        max_retries: 0,
        timeout_s: 1.0,
        retry_initial_s: 0.0,
        requests_per_minute: None,
        tokens_per_minute: None,
        system_prompt: None,
        extra_body: None,
        max_tokens_field: Default::default(),
    };
    let m = crate::model::builtin::BuiltinModel::new(&cfg, std::path::Path::new(""))?;
    if let Some(note) = m.device_note() {
        eprintln!("{note}");
    }
    Ok(m)
}

fn cmd_engine(command: EngineCommand) -> anyhow::Result<u8> {
    use crate::model::{Context, LoglikelihoodRequest, Message};
    match command {
        EngineCommand::Info { model, json } => {
            let m = load_engine(&model, Some(1), None)?;
            let info = &m.engine().info;
            if json {
                print_json(&serde_json::to_value(info).expect("JSON"));
            } else {
                let types: Vec<String> = info.tensor_types.iter().map(|(k, v)| format!("{k}×{v}")).collect();
                println!("{}\n  format        {}\n  architecture  {}{}\n  parameters    {:.1}M\n  layers        {}\n  dim           {} (heads {}, kv heads {}, head dim {})\n  ffn           {}\n  vocab         {}\n  context       {}\n  rope theta    {}\n  tensors       {}\n  tokenizer     {} (bos {:?}, eos {:?}, add bos {})\n  chat template {}",
                    info.path, info.format, info.architecture, info.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(), info.parameters as f64 / 1e6,
                    info.layers, info.dim, info.heads, info.kv_heads, info.head_dim, info.ffn_dim, info.vocab, info.context_length, info.rope_theta, types.join(", "),
                    info.tokenizer, info.bos, info.eos, info.add_bos, if info.chat_template { "yes" } else { "no" });
            }
        }
        EngineCommand::Tokenize { m, text } => {
            let model = load_engine(&m.model, m.threads, None)?;
            let ids = model.engine().encode(&text);
            if m.json {
                print_json(&json!({"ids": ids}));
            } else {
                for id in ids {
                    println!("{id}\t{:?}", model.engine().decode(&[id]));
                }
            }
        }
        EngineCommand::Generate { m, d, prompt, chat, max_tokens } => {
            let model = load_engine(&m.model, m.threads, Some(&d.device))?;
            let context = if chat { Context::Chat(vec![Message { role: "user".into(), content: prompt.clone() }]) } else { Context::Text(prompt.clone()) };
            let prompt_text = match &context {
                Context::Chat(msgs) => model.engine().render_chat(&msgs.iter().map(|x| (x.role.clone(), x.content.clone())).collect::<Vec<_>>())?,
                Context::Text(t) => t.clone(),
            };
            let mut prompt_ids = model.engine().encode(&prompt_text);
            if !chat && model.engine().add_bos {
                prompt_ids.splice(0..0, model.engine().bos);
            }
            if prompt_ids.is_empty() {
                anyhow::bail!("--prompt is empty (and the model adds no BOS token): there is nothing to continue");
            }
            let opts = crate::engine::session::GenOptions { max_tokens, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] };
            let mut out = None;
            model.engine().generate_all(std::slice::from_ref(&prompt_ids), std::slice::from_ref(&opts), &mut |_, g| out = Some(g))?;
            let g = out.ok_or_else(|| anyhow::anyhow!("no generation"))?;
            if let Some(e) = g.error {
                anyhow::bail!("{}: {e}", m.model.display());
            }
            if m.json {
                print_json(&json!({"text": g.text, "tokens": g.tokens, "prompt_tokens": prompt_ids}));
            } else {
                println!("{}", g.text);
            }
        }
        EngineCommand::Score { m, d, context, continuation } => {
            if continuation.is_empty() {
                anyhow::bail!("--continuation is empty: an empty text has log-probability 0; give the text to score");
            }
            let model = load_engine(&m.model, m.threads, Some(&d.device))?;
            let mut result = None;
            // exactly the texts given (llama.cpp's protocol in the reference); a suite's tasks move
            // the context's trailing whitespace into the continuation first, as lm-eval
            let mut tokens = Vec::new();
            model.score_detailed(&[LoglikelihoodRequest { context, continuation }], &mut |_, req, o| {
                tokens = req.continuation.clone();
                result = Some(o.result);
            });
            let s = result.expect("one result").map_err(|e| anyhow::anyhow!(e))?;
            if m.json {
                print_json(&json!({"logprob": s.logprob, "is_greedy": s.is_greedy, "tokens": tokens, "token_logprobs": s.token_logprobs}));
            } else {
                println!("logprob {:.6} · greedy {} · {} token(s)", s.logprob, s.is_greedy, tokens.len());
                let rows: Vec<Vec<String>> = tokens.iter().zip(&s.token_logprobs).map(|(&t, lp)| vec![t.to_string(), format!("{:?}", model.engine().decode(&[t])), format!("{lp:.6}")]).collect();
                print!("{}", table(&["token", "text", "logprob"], &rows));
            }
        }
        EngineCommand::Bench { m, d, prompt_tokens, batch, profile } => {
            let model = load_engine(&m.model, m.threads, Some(&d.device))?;
            let e = model.engine();
            let batch = if e.gpu.is_some() { batch.max(1) } else { 1 };
            let (prompt_len, ctx) = (prompt_tokens as usize, e.model.config.ctx_len);
            if prompt_len + BENCH_DECODE > ctx {
                return Err(crate::Error::Usage(format!(
                    "--prompt-tokens {prompt_len} and {BENCH_DECODE} decoded tokens do not fit in the {ctx}-token context of {}: give at most {}",
                    m.model.display(),
                    ctx.saturating_sub(BENCH_DECODE)
                ))
                .into());
            }
            if !profile {
                let (prefill, decode) = e.bench_on(prompt_len, BENCH_DECODE, batch)?;
                if m.json {
                    print_json(&json!({"device": e.device_label(), "prompt_tokens": prompt_len, "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "decode_batch": batch}));
                } else {
                    println!("{}: prefill {prefill:.1} tokens/s ({prompt_len}-token prompt) · decode {decode:.1} tokens/s ({BENCH_DECODE} tokens, batch {batch})", e.device_label());
                }
                return Ok(exit::SUCCESS);
            }
            use crate::engine::cuda::profile::{gemm_choices_json, group, render, render_gemm_choices, render_shapes, shapes_json};
            let Some(gpu) = &e.gpu else {
                return Err(crate::Error::Usage(format!("--profile times GPU launches, and {} runs on {}: add --device cuda", m.model.display(), e.device_label())).into());
            };
            let prompt = e.bench_prompt(prompt_len);
            let b = gpu.bench(&prompt, batch, BENCH_DECODE, true).map_err(crate::engine::EngineError::from)?;
            let prompt_len = prompt.len() as f64;
            let elem = gpu.prec.bytes();
            let (pg, dg) = (group(&b.prefill_ops, elem), group(&b.decode_ops, elem));
            let shapes = gpu.matvec_timing();
            let gemms = gpu.gemm_choices();
            if m.json {
                print_json(&json!({"device": e.device_label(), "prefill_tokens_per_s": b.prefill, "decode_tokens_per_s": b.decode, "decode_batch": batch,
                    "other_launch_mode": b.other_mode.map(|o| json!({"overlapping_launches": o.overlap, "prefill_tokens_per_s": o.prefill, "decode_tokens_per_s": o.decode})), "prefill_profile": pg, "decode_profile": dg, "profile_error": b.profile_error, "decode_product_shapes": shapes_json(&shapes), "prefill_gemm_ways": gemm_choices_json(&gemms),
                    "decode_attention": b.attention.iter().map(|(way, t)| json!({"way": way, "decode_tokens_per_s": t})).collect::<Vec<_>>(),
                    "one_launch_step": b.one_launch.map(|(on, other)| json!({"used": on, "other_way_decode_tokens_per_s": other}))}));
            } else {
                println!("{}: prefill {:.1} tokens/s ({prompt_len}-token prompt) · decode {:.1} tokens/s ({BENCH_DECODE} tokens, batch {batch})", e.device_label(), b.prefill, b.decode);
                if let Some(o) = b.other_mode {
                    let how = if o.overlap { "with each kernel starting while the last finishes (programmatic dependent launch, LLMEVAL_GPU_OVERLAP=on)" } else { "with each kernel launched after the last has finished (LLMEVAL_GPU_OVERLAP unset)" };
                    println!("{how}: prefill {:.1} tokens/s · decode {:.1} tokens/s", o.prefill, o.decode);
                }
                // the engine's own way first
                for (way, t) in &b.attention {
                    println!("decode with attention on {way}: {t:.1} tokens/s");
                }
                match b.one_launch {
                    Some((on, other)) => println!("decode {} (chosen at load): {:.1} tokens/s · {}: {other:.1} tokens/s", if on { "in one launch a step" } else { "launch by launch" }, b.decode, if on { "launch by launch" } else { "in one launch a step" }),
                    None => println!("decode in one launch a step: does not run here"),
                }
                match &b.profile_error {
                    Some(why) => println!("no launch-by-launch profile: {why}"),
                    None => {
                        print!("{}", render("prefill pass, launch by launch", &b.prefill_ops, &pg, 1e6 * prompt_len / b.prefill));
                        print!("{}", render(&format!("decode step (batch {batch}), launch by launch"), &b.decode_ops, &dg, 1e6 * batch as f64 / b.decode));
                    }
                }
                if !shapes.is_empty() {
                    print!("{}", render_shapes(&shapes, elem));
                }
                print!("{}", render_gemm_choices(&gemms));
            }
        }
    }
    Ok(exit::SUCCESS)
}

/// The error the errored items of a run share, as a parenthesis after their count.
fn common_error(report: &crate::run::RunReport) -> String {
    match &report.common_error {
        Some((e, n)) if *n == report.errored => format!(" ({}: {e})", if *n == 1 { "its error" } else { "all with the error" }),
        Some((e, n)) => format!(" ({n} of them: {e})"),
        None => String::new(),
    }
}

fn cmd_arena(command: ArenaCommand) -> anyhow::Result<u8> {
    use crate::arena::{self, Battle, Method};
    let (db, battles, method, k, bootstrap, seed, anchor, json) = match command {
        ArenaCommand::Run { arena: file, db, no_cache, json } => {
            let report = arena::run_arena(&file, &db.path(), no_cache).with_context(|| format!("running arena {}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run_json(&report.run, &report.aggregates)).expect("JSON"));
            } else {
                print!("{}", results_table(&report.run, &report.aggregates));
                println!("stored in {} as run {}; `llmeval arena ratings --db {} --method bt` rates the battles", db.path().display(), report.run.id, db.path().display());
            }
            if report.errored + report.judge_errors > 0 {
                eprintln!("{} item(s){} and {} judge call(s) errored; `llmeval arena run {}` again retries them", report.errored, common_error(&report), report.judge_errors, file.display());
                return Ok(exit::FAILURE);
            }
            return Ok(exit::SUCCESS);
        }
        ArenaCommand::Ratings { db, battles, method, k, bootstrap, seed, anchor, json } => (db, battles, method, k, bootstrap, seed, anchor, json),
        ArenaCommand::Vote { arena: file, db, name } => {
            let name = name.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "anonymous".into());
            let store = open_existing(&db.path())?;
            let (run_id, pairs) = arena::pairs_to_vote(&store, &file, &name)?;
            if pairs.is_empty() {
                println!("nothing to vote on: every pair of the latest run of {} has a vote from {name}", file.display());
                return Ok(exit::SUCCESS);
            }
            if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                anyhow::bail!("arena vote needs a terminal");
            }
            let n = crate::tui::vote::event_loop(&store, &run_id, &name, crate::tui::vote::State::new(pairs))?;
            println!("{n} vote(s) recorded as human:{name}");
            return Ok(exit::SUCCESS);
        }
    };
    let battles: Vec<Battle> = match &battles {
        Some(path) => {
            let b = arena::read_battles(path)?;
            if b.is_empty() {
                anyhow::bail!("{}: no battles in the file (expected a JSON array or JSON lines of {{\"model_a\", \"model_b\", \"winner\"}})", path.display());
            }
            b
        }
        None => {
            let store = open_existing(&db.path())?;
            let mut pairs = store.judged_pairs()?;
            // a suite or arena run again judges the same prompts again: counting every run would
            // count those battles twice, so each suite's newest judged run stands for it
            let judged: std::collections::BTreeSet<&str> = pairs.iter().map(|p| p.run_id.as_str()).collect();
            let mut newest: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
            for r in store.runs()?.iter().filter(|r| judged.contains(r.id.as_str())) {
                newest.entry(r.suite.clone()).or_insert_with(|| r.id.clone());
            }
            pairs.retain(|p| newest.values().any(|id| *id == p.run_id));
            let used: Vec<String> = newest.iter().map(|(suite, id)| format!("{id} ({suite})")).collect();
            eprintln!("{}", crate::tui::leaderboard::one_line(&format!("battles from the newest judged run of each suite: {}", used.join(", "))));
            if let Some(h) = arena::human_agreement(&pairs) {
                let f = |x: Option<f64>| x.map_or("—".into(), |v| format!("{v:.3}"));
                eprintln!("judge vs human: agreement {} (n={}), without ties {} (n={}), Cohen's kappa {}", f(h.agreement), h.n, f(h.agreement_without_ties), h.n_without_ties, f(h.cohen_kappa));
            }
            arena::battles_from_pairs(&pairs)
        }
    };
    if battles.is_empty() {
        anyhow::bail!("no battles: give --battles FILE, or run an arena or a suite with a pairwise judge first (pairs whose verdicts could not be parsed in both orders are not battles)");
    }
    let anchor = match &anchor {
        Some(a) => {
            // the last `=` splits, so a model name may contain one
            let (m, v) = a.rsplit_once('=').ok_or_else(|| anyhow::anyhow!("--anchor {a:?}: expected MODEL=RATING"))?;
            let v = v.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| anyhow::anyhow!("--anchor {a:?}: {v:?} is not a finite number"))?;
            Some((m.to_string(), v))
        }
        None => None,
    };
    if !k.is_finite() || k <= 0.0 {
        anyhow::bail!("--k {k}: the Elo K-factor must be a finite number above 0 (FastChat uses 4)");
    }
    if bootstrap > 1_000_000 {
        anyhow::bail!("--bootstrap {bootstrap}: at most 1000000 resamples (FastChat uses 1000)");
    }
    let m = if method == "elo" { Method::Elo } else { Method::Bt };
    let r = arena::rate(&battles, m, k, bootstrap, seed, anchor.as_ref().map(|(a, v)| (a.as_str(), *v)))?;
    for note in &r.notes {
        eprintln!("note: {}", crate::tui::leaderboard::one_line(note));
    }
    let mut order: Vec<&String> = r.ratings.keys().collect();
    order.sort_by(|a, b| r.ratings[*b].total_cmp(&r.ratings[*a]));
    if json {
        let ci: serde_json::Map<String, Value> = r.ci95.iter().map(|(k, (lo, hi))| (k.clone(), json!([lo, hi]))).collect();
        print_json(&json!({"method": method, "battles": battles.len(), "ratings": r.ratings, "ci95": ci, "rank": r.rank, "notes": r.notes}));
        return Ok(exit::SUCCESS);
    }
    let counts = |name: &str| battles.iter().filter(|b| b.model_a == name || b.model_b == name).count();
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|m| {
            let ci = r.ci95.get(*m).map_or("—".into(), |(lo, hi)| format!("{lo:.1} – {hi:.1}"));
            vec![r.rank[*m].to_string(), m.to_string(), format!("{:.1}", r.ratings[*m]), ci, counts(m).to_string()]
        })
        .collect();
    println!("{} ratings from {} battles", if m == Method::Elo { "Elo" } else { "Bradley-Terry" }, battles.len());
    print!("{}", table(&["rank", "model", "rating", "95% CI", "battles"], &rows));
    let observed = arena::observed_win_rates(&battles);
    let matrix = |title: &str, cell: &dyn Fn(&str, &str) -> String| {
        println!("\n{title} (row beats column)");
        let mut header = vec![""];
        header.extend(order.iter().map(|s| s.as_str()));
        let rows: Vec<Vec<String>> = order.iter().map(|a| std::iter::once(a.to_string()).chain(order.iter().map(|b| cell(a, b))).collect()).collect();
        print!("{}", table(&header, &rows));
    };
    matrix("observed win rate", &|a, b| if a == b { "—".into() } else { observed.get(&(a.to_string(), b.to_string())).map_or("".into(), |(w, _)| format!("{w:.2}")) });
    matrix("predicted win rate", &|a, b| if a == b { "—".into() } else { format!("{:.2}", arena::predicted_win_rate(r.ratings[a], r.ratings[b])) });
    Ok(exit::SUCCESS)
}

fn cmd_report(db: &std::path::Path, runs: &[String], suite: Option<&str>, out: &std::path::Path) -> anyhow::Result<u8> {
    let store = open_existing(db)?;
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(out), std::fs::canonicalize(db))
        && a == b
    {
        anyhow::bail!("--out {} is the database itself; name an .html file", out.display());
    }
    let chosen = crate::results::select_runs(&store, runs, suite)?;
    let samples = crate::report::write(&store, &chosen, out)?;
    let ids: Vec<&str> = chosen.iter().map(|r| r.id.as_str()).collect();
    println!("wrote {} ({} run(s): {}; {samples} sample(s))", out.display(), chosen.len(), ids.join(", "));
    Ok(exit::SUCCESS)
}

fn cmd_leaderboard(db: &std::path::Path, runs: &[String], suite: Option<&str>, plain: bool) -> anyhow::Result<u8> {
    use crate::tui::leaderboard;
    if !db.exists() {
        anyhow::bail!("database {} does not exist; run a suite first or give --db", db.display());
    }
    let store = open_existing(db)?;
    let chosen = crate::results::select_runs(&store, runs, suite)?;
    let data = crate::results::load(&store, &chosen)?;
    let terminal = !plain && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let size = if terminal { ratatui::crossterm::terminal::size().unwrap_or((80, 24)) } else { (80, 24) };
    let state = leaderboard::State::new(data, store.judged_pairs()?, size);
    if !terminal {
        let ids: Vec<String> = chosen.iter().map(|r| format!("{} ({})", r.id, r.suite)).collect();
        println!("{}", leaderboard::one_line(&format!("leaderboard of {} run(s): {}", chosen.len(), ids.join(", "))));
        print!("{}", leaderboard::plain(&state.board));
        return Ok(exit::SUCCESS);
    }
    leaderboard::run(&store, state).context("leaderboard")?;
    Ok(exit::SUCCESS)
}

/// `llmeval gate --correction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CorrectionArg {
    Holm,
    None,
}

#[allow(clippy::too_many_arguments)]
fn cmd_gate(db: &std::path::Path, baseline: &str, candidate: &str, max_drop: &[String], alpha: f64, correction: CorrectionArg, junit: Option<PathBuf>, markdown: Option<PathBuf>, json: bool) -> anyhow::Result<u8> {
    let store = open_existing(db)?;
    let b = store.resolve_run(baseline)?;
    let c = store.resolve_run(candidate)?;
    let mut tolerances = std::collections::BTreeMap::new();
    for m in max_drop {
        let (name, v) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--max-drop {m:?}: expected METRIC=DELTA"))?;
        let v: f64 = v.parse().ok().filter(|v: &f64| !v.is_nan()).ok_or_else(|| anyhow::anyhow!("--max-drop {m:?}: {v:?} is not a number"))?;
        tolerances.insert(name.to_string(), v);
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        anyhow::bail!("--alpha {alpha}: must be between 0 and 1");
    }
    let correction = match correction {
        CorrectionArg::Holm => crate::gate::Correction::Holm,
        CorrectionArg::None => crate::gate::Correction::None,
    };
    let cs = crate::gate::compare(&store.samples(&b.id)?, &store.samples(&c.id)?, &tolerances, alpha, correction, 1234).map_err(|e| anyhow::anyhow!("comparing runs {} and {}: {e}", b.id, c.id))?;
    // a candidate missing every item is a failure reported per comparison, not a usage error
    if cs.iter().all(|x| x.n == 0 && x.missing_items == 0) {
        anyhow::bail!("runs {} and {} share no scored item (same model, task and document); nothing to compare", b.id, c.id);
    }
    // a tolerance for a metric the gate never meets would silently not apply (a typo)
    let compared: std::collections::BTreeSet<&str> = cs.iter().map(|x| x.metric.as_str()).collect();
    if let Some(name) = tolerances.keys().find(|m| !compared.contains(m.as_str())) {
        anyhow::bail!("--max-drop {name}=…: no comparison has a metric named {name:?}; the metrics compared are {}", compared.iter().copied().collect::<Vec<_>>().join(", "));
    }
    let failed = cs.iter().any(|x| x.failed());
    if let Some(p) = &junit {
        std::fs::write(p, crate::gate::junit(&cs)).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &markdown {
        std::fs::write(p, crate::gate::markdown(&cs, &b.id, &c.id)).with_context(|| format!("writing {}", p.display()))?;
    }
    if json {
        let correction = if correction == crate::gate::Correction::Holm { "holm" } else { "none" };
        print_json(&json!({"verdict": if failed { "regression" } else { "pass" }, "baseline": b.id, "candidate": c.id, "alpha": alpha, "correction": correction, "comparisons": cs}));
    } else {
        let rows: Vec<Vec<String>> = cs
            .iter()
            .map(|x| {
                let verdict = match (x.regression, x.missing_items > 0) {
                    (true, true) => "REGRESSION, MISSING",
                    (true, false) => "REGRESSION",
                    (false, true) => "MISSING",
                    (false, false) => "ok",
                };
                let ci = if x.drop_ci.iter().any(|v| v.is_nan()) { "—".to_string() } else { format!("[{}, {}]", crate::gate::signed(x.drop_ci[0]), crate::gate::signed(x.drop_ci[1])) };
                vec![x.model.clone(), x.task.clone(), x.metric.clone(), x.n.to_string(), format!("{:.4}", x.baseline), format!("{:.4}", x.candidate), crate::gate::signed(x.drop), ci, crate::gate::fmt_p(x.p_adjusted), verdict.into()]
            })
            .collect();
        let adjusted = if correction == crate::gate::Correction::Holm { format!(", p Holm-adjusted over {} comparisons", cs.iter().filter(|x| x.n > 0).count()) } else { String::new() };
        println!("baseline {} → candidate {} (alpha {alpha}, two-sided{adjusted})", b.id, c.id);
        print!("{}", table(&["model", "task", "metric", "n", "baseline", "candidate", "drop", "drop 95% CI", "p", "verdict"], &rows));
        let say = |line: String| println!("{}", crate::tui::leaderboard::one_line(&line));
        for x in cs.iter().filter(|x| x.regression && !x.flipped.is_empty()) {
            say(format!("{} / {} / {}: right before, wrong now: {}", x.model, x.task, x.metric, x.flipped.join(", ")));
        }
        for x in cs.iter().filter(|x| x.missing_items > 0) {
            say(crate::gate::missing_line(x));
        }
        for x in cs.iter() {
            if let Some(n) = &x.note {
                say(format!("{} / {} / {}: {n}", x.model, x.task, x.metric));
            }
        }
    }
    Ok(if failed { exit::FAILURE } else { exit::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn table_cells_cannot_drive_the_terminal_and_pad_by_display_width() {
        let t = table(&["name", "n"], &[vec!["a\u{1b}[2J\u{7}b\nc".into(), "1".into()], vec!["日本".into(), "2".into()]]);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[2], "a\u{241b}[2J\u{2407}b⏎c  1");
        // two double-width characters take 4 of the column's 9 columns
        assert_eq!(lines[3], "日本       2");
    }
}
