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

impl DbArg {
    fn path(&self) -> PathBuf {
        self.db.clone().or_else(|| std::env::var_os("LLMEVAL_DB").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("llmeval.db"))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a suite: every selected model on every selected task; results go to the database.
    Run(RunArgs),
    /// List, show and tag stored runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
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
    /// Continue the latest unfinished run of this suite.
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
}

/// Entry point: parses arguments, runs the command, maps the outcome to an exit code.
pub fn main() -> ExitCode {
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
        Command::Runs { command } => match command {
            RunsCommand::List { db, json } => cmd_runs_list(&db.path(), json),
            RunsCommand::Show { run, db, samples, json } => cmd_runs_show(&db.path(), &run, samples, json),
            RunsCommand::Tag { run, name, db } => {
                let store = Store::open(&db.path())?;
                let r = store.resolve_run(&run)?;
                store.tag_run(&r.id, &name)?;
                println!("tagged {} as {name}", r.id);
                Ok(exit::SUCCESS)
            }
        },
    }
}

fn cmd_run(args: RunArgs) -> anyhow::Result<u8> {
    let suite = crate::suite::Suite::load(&args.suite)?;
    let opts = crate::run::RunOptions {
        db: args.db.path(),
        limit: args.limit,
        tasks: args.tasks,
        models: args.models,
        resume: args.resume,
        no_cache: args.no_cache,
        progress: true,
    };
    if args.resume && (opts.limit.is_some() || opts.tasks.is_some() || opts.models.is_some()) {
        eprintln!("note: --resume continues with the selection the run started with; --limit/--tasks/--models are ignored");
    }
    let report = crate::run::run_suite(&suite, &opts).with_context(|| format!("running suite {}", args.suite.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run_json(&report.run, &report.aggregates)).expect("JSON"));
    } else {
        print!("{}", results_table(&report.run, &report.aggregates));
        println!("stored in {} as run {}", opts.db.display(), report.run.id);
    }
    for note in &report.run.notes {
        eprintln!("note: {note}");
    }
    if report.errored > 0 {
        eprintln!(
            "{} item(s) errored after all retries and were not scored; `llmeval runs show {} --samples` lists them, `llmeval run {} --resume` retries them",
            report.errored,
            report.run.id,
            args.suite.display()
        );
        if !args.allow_errors {
            return Ok(exit::FAILURE);
        }
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
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for r in rows {
        out.push_str(&line(r.clone()));
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
    format!("suite {} · run {} · {}\n{}", run.suite, run.id, run.status, table(&["model", "task", "metric", "value ± 95% CI", "stderr", "n", "errors"], &rows))
}

fn cmd_runs_list(db: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let store = Store::open(db)?;
    let runs = store.runs()?;
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
    let store = Store::open(db)?;
    let run = store.resolve_run(key)?;
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
        println!("note: {n}");
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
