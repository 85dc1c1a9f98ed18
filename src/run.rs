//! ④ The runner: suite × models → batched requests → scored samples in the store → aggregates.
//!
//! All requests of one kind for one model go to the backend as a single batch, so a remote model
//! keeps `concurrency` requests in flight across tasks. Each sample is scored and committed the
//! moment its last request returns; aggregates are always recomputed from the stored samples, so
//! a resumed run reports exactly what an uninterrupted one would.

use crate::error::{Error, Result};
use crate::filter::{pick_letter, Pipeline};
use crate::metric::{Evidence, Metric};
use crate::model::{Context, GenRequest, Generation, Loglikelihood, LoglikelihoodRequest, Model, Outcome, RollingRequest};
use crate::prompt::Item;
use crate::store::{Aggregate, Run, Sample, Store};
use crate::suite::{JudgeSpec, ModelConfig, Suite, TaskConfig, TaskKind};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What `llmeval run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub db: PathBuf,
    pub limit: Option<usize>,
    pub tasks: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub resume: bool,
    pub no_cache: bool,
    pub progress: bool,
    /// Only these item indices of these tasks (the arena's sampled prompts).
    pub items: Option<BTreeMap<String, Vec<usize>>>,
    /// The command that continues this run, said when it stops part-way (default:
    /// `llmeval run SUITE --resume`).
    pub resume_command: Option<String>,
}

/// A finished (or resumed and finished) run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run: Run,
    pub aggregates: Vec<Aggregate>,
    /// Samples that errored (after all retries).
    pub errored: usize,
    /// The error most of them share, and how many do.
    pub common_error: Option<(String, usize)>,
    /// Judge calls that errored (after all retries).
    pub judge_errors: usize,
}

/// Bootstrap settings for corpus metrics (fixed, so aggregates are reproducible).
pub const BOOTSTRAP_ITERATIONS: usize = 1000;
pub const BOOTSTRAP_SEED: u64 = 1234;

#[derive(Clone, Copy)]
enum Part {
    Gen,
    Letter,
    Choice(usize),
    Continuation,
    Rolling,
}

/// A sample waiting for its requests.
struct Pending<'a> {
    task: &'a TaskConfig,
    pipeline: &'a Pipeline,
    metrics: &'a [Box<dyn Metric>],
    item: &'a Item,
    prompt_shown: String,
    generation: Option<Generation>,
    lls: Vec<Option<Loglikelihood>>,
    remaining: usize,
    errors: Vec<String>,
    attempts: u32,
    latency_ms: f64,
    cached: bool,
}

fn selection_json(opts: &RunOptions) -> Value {
    json!({"tasks": opts.tasks, "models": opts.models, "limit": opts.limit, "items": opts.items})
}

fn pick<'a, T>(all: &'a [T], name: impl Fn(&T) -> &str, wanted: &Option<Vec<String>>, what: &str) -> Result<Vec<&'a T>> {
    let Some(wanted) = wanted else { return Ok(all.iter().collect()) };
    for w in wanted {
        if !all.iter().any(|x| name(x) == w) {
            let names: Vec<&str> = all.iter().map(&name).collect();
            return Err(Error::Usage(format!("no {what} named {w:?} in the suite{}; it has: {}", crate::util::did_you_mean(w, names.iter().copied()), names.join(", "))));
        }
    }
    Ok(all.iter().filter(|x| wanted.iter().any(|w| w == name(x))).collect())
}

fn new_run_id() -> String {
    let now = crate::util::now_unix();
    let stamp = crate::util::iso8601(now).replace(['-', ':'], "").replace('T', "-").trim_end_matches('Z').to_string();
    let salt = crate::util::sha256_hex(format!("{now}-{}", std::process::id()).as_bytes());
    format!("{stamp}-{}", &salt[..6])
}

/// The suite as stored with a run: parsed, so comments and formatting go, and only variable names
/// of API keys ever appear.
fn config_json(suite: &Suite) -> Value {
    json!({
        "name": suite.file.name,
        "models": suite.file.models,
        "tasks": suite.file.tasks,
    })
}

fn parse_selection(v: &Value) -> (Option<Vec<String>>, Option<Vec<String>>, Option<usize>) {
    let list = |k: &str| v.get(k).and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect());
    (list("tasks"), list("models"), v.get("limit").and_then(Value::as_u64).map(|x| x as usize))
}

/// The multiple-choice prompt for models without log-probabilities.
fn letter_prompt(item: &Item) -> String {
    let mut p = item.prompt.trim_end().to_string();
    p.push_str("\n\n");
    for (i, c) in item.choices.iter().enumerate() {
        p.push_str(&format!("{}. {}\n", (b'A' + i as u8) as char, c));
    }
    p.push_str("Answer with the letter of the correct choice.");
    p
}

/// What a run works through, checked before anything is stored or asked: a bad row, template,
/// judge or model stops here.
struct Plan<'s> {
    run: Run,
    /// a new run (to be stored), not a resumed one
    fresh: bool,
    /// the evaluated models, and the judges' models that are not among them
    models: Vec<&'s ModelConfig>,
    judge_models: Vec<&'s ModelConfig>,
    backends: Vec<Box<dyn Model>>,
    judge_backends: Vec<Box<dyn Model>>,
    /// the selected tasks, a multi-turn task as one task per turn (turn N named `NAME/turn-N`)
    tasks: Vec<TaskConfig>,
    rendered: Vec<Vec<Item>>,
    /// each task's turn: tasks are asked in waves, so that turn N sees the answers before it
    turn_of: Vec<usize>,
    /// (task index, judge) for every judge metric
    judges: Vec<(usize, JudgeSpec)>,
}

/// Every judge metric of `tasks`, with its task's index.
fn judge_specs(tasks: &[&TaskConfig]) -> Vec<(usize, JudgeSpec)> {
    tasks
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.metrics.iter().filter_map(move |m| match crate::suite::MetricSpec::parse(m.get_ref()) {
                Ok(crate::suite::MetricSpec::Judge(j)) => Some((ti, j)),
                _ => None,
            })
        })
        .collect()
}

/// Runs (or resumes) a suite and returns its aggregates.
pub fn run_suite(suite: &Suite, opts: &RunOptions) -> Result<RunReport> {
    let mut store = Store::open(&opts.db)?;
    let plan = plan(suite, opts, &store)?;
    if plan.fresh {
        store.create_run(&plan.run)?;
    }
    // held until this function returns: another process resuming this run meanwhile is refused
    let _lease = store.lease(&plan.run.id)?;
    const STOPPED: &str = "stopped by an error: ";
    let (run_id, status_before) = (plan.run.id.clone(), plan.run.status.clone());
    let mut notes_before = plan.run.notes.clone();
    notes_before.retain(|n| !n.starts_with(STOPPED)); // a resumed run says only why it last stopped
    let outcome = execute(suite, opts, &mut store, plan, notes_before.clone());
    // a run stopped by an error says so where its results are read; what finished is kept
    outcome.map_err(|e| {
        let resume = opts.resume_command.clone().unwrap_or_else(|| format!("llmeval run {} --resume", suite.path.display()));
        notes_before.push(format!("{STOPPED}{e}; the finished items are stored, and `{resume}` continues once the cause is fixed"));
        // best effort: the error itself may be the database's
        let _ = store.set_run_status(&run_id, &status_before, None, &notes_before);
        Error::Stopped { run: run_id, resume, source: Box::new(e) }
    })
}

/// The run `opts` asks for (new, or the one to resume), and everything it will work through.
fn plan<'s>(suite: &'s Suite, opts: &RunOptions, store: &Store) -> Result<Plan<'s>> {
    let hash = suite.content_hash()?;
    let (run, fresh) = if opts.resume {
        let run = store.latest_resumable(&suite.file.name)?.ok_or_else(|| {
            Error::Usage(format!(
                "nothing to resume: the newest run of suite {:?} in {} finished with every item answered (or there is none); run without --resume",
                suite.file.name,
                opts.db.display()
            ))
        })?;
        if run.suite_hash != hash {
            // a model that resolves elsewhere (`${VAR}` in base-url or model changed) is named
            let now = config_json(suite);
            for m in now["models"].as_array().into_iter().flatten() {
                let was = run.config["models"].as_array().into_iter().flatten().find(|x| x["name"] == m["name"]);
                for key in ["base-url", "model"] {
                    if let Some(was) = was.map(|w| &w[key]).filter(|w| **w != m[key]) {
                        return Err(Error::Usage(format!(
                            "model {}: {key} is now {} but was {was} when run {} started (an environment variable in the suite changed); set it back to resume, or start a new run without --resume",
                            m["name"], m[key], run.id
                        )));
                    }
                }
            }
            return Err(Error::Usage(format!(
                "suite {:?} or its data changed since run {} started (hash {} → {}); a resumed run must see the same inputs, so start a new run without --resume",
                suite.file.name, run.id, &run.suite_hash[..12], &hash[..12]
            )));
        }
        (run, false)
    } else {
        let run = Run {
            id: new_run_id(),
            suite: suite.file.name.clone(),
            suite_path: suite.path.display().to_string(),
            suite_hash: hash,
            config: config_json(suite),
            selection: selection_json(opts),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: crate::util::now_unix(),
            ended_at: None,
            status: "running".into(),
            notes: vec![],
        };
        (run, true)
    };
    // A resumed run keeps the selection it started with.
    let (tasks_sel, models_sel, limit) = parse_selection(&run.selection);
    let item_sel: Option<BTreeMap<String, Vec<usize>>> = run.selection.get("items").and_then(|v| serde_json::from_value(v.clone()).ok());
    let selected = pick(&suite.file.models, |m| m.name.as_str(), &models_sel, "model")?;
    let picked = pick(&suite.file.tasks, |t| t.name.as_str(), &tasks_sel, "task")?;
    // Judges: every judge metric of the selected tasks, and the models they call.
    let judges = judge_specs(&picked);
    let models: Vec<&crate::suite::ModelConfig> = selected.iter().copied().filter(|m| m.evaluate).collect();
    if models.is_empty() {
        return Err(Error::Usage("no model to evaluate: every selected model has evaluate = false".into()));
    }
    let mut judge_models: Vec<&crate::suite::ModelConfig> = Vec::new();
    for (_, j) in &judges {
        let m = suite.file.models.iter().find(|m| m.name == j.model).expect("validated with the suite");
        if !models.iter().any(|x| x.name == m.name) && !judge_models.iter().any(|x| x.name == m.name) {
            judge_models.push(m);
        }
        if let Some(b) = &j.baseline
            && !models.iter().any(|x| &x.name == b)
        {
            return Err(Error::Usage(format!("the judge baseline {b:?} is not among the evaluated models; select it with --models or set evaluate = true")));
        }
    }

    // Render everything before the first request: bad rows stop the run here.
    let mut base_rendered: Vec<Vec<Item>> = Vec::new();
    for t in &picked {
        let rows = crate::dataset::load(&suite.resolve(t.data.get_ref()))?;
        let mut items = crate::prompt::render_task(suite, t, &rows, limit)?;
        if let Some(sel) = &item_sel {
            let keep = sel.get(&t.name).cloned().unwrap_or_default();
            items.retain(|i| keep.contains(&i.index));
        }
        base_rendered.push(items);
    }
    // Multi-turn tasks become one task per turn (turn N named `NAME/turn-N`), run in waves so
    // that turn N sees the model's own answers to the turns before it.
    let mut owned: Vec<TaskConfig> = Vec::new();
    let mut rendered: Vec<Vec<Item>> = Vec::new();
    let mut turn_of: Vec<usize> = Vec::new();
    for (bi, t) in picked.iter().enumerate() {
        if t.turns.is_none() {
            owned.push((*t).clone());
            rendered.push(std::mem::take(&mut base_rendered[bi]));
            turn_of.push(0);
            continue;
        }
        let n_turns = base_rendered[bi].iter().map(|i| i.turns.len()).max().unwrap_or(0);
        for k in 0..n_turns {
            let mut tk = (*t).clone();
            if k > 0 {
                tk.name = turn_task_name(&t.name, k);
            }
            tk.chat = true;
            owned.push(tk);
            rendered.push(base_rendered[bi].iter().filter(|i| i.turns.len() > k).map(|i| Item { prompt: i.turns[k].clone(), ..i.clone() }).collect());
            turn_of.push(k);
        }
    }
    let tasks: Vec<&TaskConfig> = owned.iter().collect();
    let judges = judge_specs(&tasks);
    // what the judge phase would refuse is refused now, not after every answer was paid for
    let model_names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    for (ti, spec) in &judges {
        crate::judge::load_judge(&spec.judge, &suite.dir)?;
        crate::judge::check_human_labels(&crate::judge::TaskJudging { task: tasks[*ti], items: &rendered[*ti], spec: spec.clone(), models: model_names.clone() })?;
    }
    let backends: Vec<Box<dyn Model>> = models.iter().map(|m| crate::model::from_config(m, &suite.dir)).collect::<Result<_>>()?;
    let judge_backends: Vec<Box<dyn Model>> = judge_models.iter().map(|m| crate::model::from_config(m, &suite.dir)).collect::<Result<_>>()?;

    // a task no selected model can serve is a suite error, before anything is stored
    for (model_cfg, backend) in models.iter().zip(&backends) {
        if let Some(task) = tasks.iter().find(|t| matches!(t.kind, TaskKind::Loglikelihood | TaskKind::Perplexity) && !backend.capabilities().loglikelihood) {
            return Err(Error::config(
                suite.path.display().to_string(),
                format!("task {:?} needs log-probabilities, which model {:?} (api = \"chat\") cannot give; use api = \"completions\" on a server that supports echo + logprobs", task.name, model_cfg.name),
            ));
        }
    }
    Ok(Plan { run, fresh, models, judge_models, backends, judge_backends, tasks: owned, rendered, turn_of, judges })
}

/// Asks every model every item of the plan not yet answered (in waves of turns), judges the
/// answers, and stores the aggregates and the run's status. `notes`: the run's notes so far.
fn execute(suite: &Suite, opts: &RunOptions, store: &mut Store, plan: Plan, mut notes: Vec<String>) -> Result<RunReport> {
    let Plan { run, models, judge_models, backends, judge_backends, tasks: owned, rendered, turn_of, judges, .. } = plan;
    let tasks: Vec<&TaskConfig> = owned.iter().collect();
    let model_names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let waves = turn_of.iter().max().map_or(1, |m| m + 1);
    let pipelines: Vec<Pipeline> = tasks.iter().map(|t| Pipeline::new(t)).collect();
    let metrics: Vec<Vec<Box<dyn Metric>>> = tasks.iter().map(|t| crate::metric::for_task(t)).collect();
    for n in backends.iter().chain(&judge_backends).flat_map(|b| b.notes()) {
        if !notes.contains(&n) {
            notes.push(n);
        }
    }
    let finished = store.finished_keys(&run.id)?;
    let total: usize = models.len() * rendered.iter().map(Vec::len).sum::<usize>();
    let mut progress = crate::progress::Progress::new((total - finished.len().min(total)) as u64, opts.progress);

    for (model_cfg, backend) in models.iter().zip(&backends) {
        for wave in 0..waves {
            progress.set_label(model_cfg.name.clone());
            let identity = backend.identity();
            let caps = backend.capabilities();
            // Earlier turns' answers of this model, for the conversation history of this wave.
            let earlier: std::collections::HashMap<(String, i64), Option<String>> = if wave == 0 {
                Default::default()
            } else {
                store.samples(&run.id)?.into_iter().filter(|s| s.model == model_cfg.name).map(|s| ((s.task, s.item), if s.error.is_none() { s.response } else { None })).collect()
            };
            let mut pending: Vec<Pending> = Vec::new();
            let mut gen_reqs: Vec<(usize, Part, GenRequest)> = Vec::new();
            let mut ll_reqs: Vec<(usize, Part, LoglikelihoodRequest)> = Vec::new();
            let mut roll_reqs: Vec<(usize, Part, RollingRequest)> = Vec::new();
            for (ti, task) in tasks.iter().enumerate() {
                if turn_of[ti] != wave {
                    continue;
                }
                let letters = task.kind == TaskKind::MultipleChoice && !caps.loglikelihood;
                if letters {
                    let note = format!(
                        "{} × {}: the endpoint gives no log-probabilities, so multiple choice was asked as a lettered question and the letter extracted; acc-norm is not reported",
                        model_cfg.name, task.name
                    );
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                }
                for item in &rendered[ti] {
                    if finished.contains(&(model_cfg.name.clone(), task.name.clone(), item.index as i64)) {
                        continue;
                    }
                    let slot = pending.len();
                    let gen_req = |context: String| GenRequest {
                        context: if task.chat { Context::Chat(vec![crate::model::Message { role: "user".into(), content: context }]) } else { Context::Text(context) },
                        max_tokens: task.max_tokens,
                        temperature: task.temperature,
                        top_p: task.top_p,
                        seed: task.seed,
                        stop: task.stop.clone(),
                    };
                    let mut p = Pending {
                        task,
                        pipeline: &pipelines[ti],
                        metrics: &metrics[ti],
                        item,
                        prompt_shown: item.prompt.clone(),
                        generation: None,
                        lls: Vec::new(),
                        remaining: 0,
                        errors: Vec::new(),
                        attempts: 0,
                        latency_ms: 0.0,
                        cached: true,
                    };
                    match task.kind {
                        TaskKind::Generate if wave > 0 => {
                            // The conversation so far: each earlier turn and the model's own answer.
                            let base = picked_name(&task.name);
                            let mut msgs = Vec::new();
                            let mut missing = None;
                            for j in 0..wave {
                                msgs.push(crate::model::Message { role: "user".into(), content: item.turns[j].clone() });
                                match earlier.get(&(if j == 0 { base.to_string() } else { turn_task_name(base, j) }, item.index as i64)) {
                                    Some(Some(a)) => msgs.push(crate::model::Message { role: "assistant".into(), content: a.clone() }),
                                    _ => missing = Some(j + 1),
                                }
                            }
                            msgs.push(crate::model::Message { role: "user".into(), content: item.prompt.clone() });
                            if let Some(j) = missing {
                                p.errors.push(format!("turn {j} has no answer, so turn {} cannot be asked", wave + 1));
                                p.remaining = 0;
                                let sample = finish_sample(&run.id, &model_cfg.name, &p);
                                store.put_sample(&sample)?;
                                progress.finished(0, true);
                                continue;
                            }
                            let mut r = gen_req(String::new());
                            r.context = Context::Chat(msgs);
                            gen_reqs.push((slot, Part::Gen, r));
                        }
                        TaskKind::Generate => gen_reqs.push((slot, Part::Gen, gen_req(item.prompt.clone()))),
                        TaskKind::MultipleChoice if letters => {
                            p.prompt_shown = letter_prompt(item);
                            gen_reqs.push((slot, Part::Letter, gen_req(p.prompt_shown.clone())));
                        }
                        TaskKind::MultipleChoice => {
                            p.lls = vec![None; item.choices.len()];
                            for (ci, c) in item.choices.iter().enumerate() {
                                ll_reqs.push((slot, Part::Choice(ci), encode_pair(&item.prompt, &format!("{}{}", task.target_delimiter, c))));
                            }
                        }
                        TaskKind::Loglikelihood => {
                            p.lls = vec![None];
                            let continuation = format!("{}{}", task.target_delimiter, item.target.as_deref().unwrap_or_default());
                            ll_reqs.push((slot, Part::Continuation, encode_pair(&item.prompt, &continuation)));
                        }
                        TaskKind::Perplexity => {
                            p.lls = vec![None];
                            roll_reqs.push((slot, Part::Rolling, RollingRequest { text: item.prompt.clone() }));
                        }
                    }
                    pending.push(p);
                }
            }
            for (slot, _, _) in &gen_reqs {
                pending[*slot].remaining += 1;
            }
            for (slot, _, _) in &ll_reqs {
                pending[*slot].remaining += 1;
            }
            for (slot, _, _) in &roll_reqs {
                pending[*slot].remaining += 1;
            }

            let mut ctx = Ctx { store, run_id: &run.id, model: &model_cfg.name, no_cache: opts.no_cache, progress: &mut progress, failure: None };
            ctx.dispatch(&mut pending, gen_reqs, "generate", &identity, |r| r.deterministic(), |b, reqs, sink| b.generate(reqs, sink), backend.as_ref(), |p, _, g: Generation| {
                p.generation = Some(g);
            });
            ctx.dispatch(&mut pending, ll_reqs, "loglikelihood", &identity, |_| true, |b, reqs, sink| b.loglikelihood(reqs, sink), backend.as_ref(), |p, part, l: Loglikelihood| {
                let i = match part { Part::Choice(i) => i, _ => 0 };
                p.lls[i] = Some(l);
            });
            ctx.dispatch(&mut pending, roll_reqs, "loglikelihood_rolling", &identity, |_| true, |b, reqs, sink| b.loglikelihood_rolling(reqs, sink), backend.as_ref(), |p, _, l: Loglikelihood| {
                p.lls[0] = Some(l);
            });
            if let Some(e) = ctx.failure.take() {
                progress.done();
                return Err(e);
            }
            // answers the length limit ended may be cut off mid-answer, and scored as they are
            let mut cut: BTreeMap<(&str, u32), usize> = BTreeMap::new();
            for p in pending.iter().filter(|p| p.generation.as_ref().and_then(|g| g.finish_reason.as_deref()) == Some("length")) {
                *cut.entry((p.task.name.as_str(), p.task.max_tokens)).or_default() += 1;
            }
            // and a server that ignores max_tokens sends answers longer than the task allows
            let mut long: BTreeMap<(&str, u32), (usize, u64)> = BTreeMap::new();
            for p in &pending {
                if let Some(n) = p.generation.as_ref().and_then(|g| g.completion_tokens).filter(|&n| n > u64::from(p.task.max_tokens)) {
                    let e = long.entry((p.task.name.as_str(), p.task.max_tokens)).or_default();
                    *e = (e.0 + 1, e.1.max(n));
                }
            }
            let cut = cut.into_iter().map(|((task, max), n)| format!("task {task:?}, model {:?}: {n} answer(s) ended at max-tokens = {max} (finish_reason \"length\"), maybe cut off; raise max-tokens if they should go on", model_cfg.name));
            let long = long.into_iter().map(|((task, max), (n, most))| {
                format!("task {task:?}, model {:?}: {n} answer(s) are longer than max-tokens = {max} (up to {most} tokens by the server's count): the server does not honour max_tokens, and they are scored as they came", model_cfg.name)
            });
            for note in cut.chain(long) {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    progress.done();

    // Judges read the stored answers and write their scores onto the samples.
    let mut reliability = Vec::new();
    for (ti, spec) in &judges {
        let judge_model: &dyn Model = match models.iter().position(|m| m.name == spec.model) {
            Some(i) => backends[i].as_ref(),
            None => judge_backends[judge_models.iter().position(|m| m.name == spec.model).expect("built above")].as_ref(),
        };
        let tj = crate::judge::TaskJudging { task: tasks[*ti], items: &rendered[*ti], spec: spec.clone(), models: model_names.clone() };
        reliability.extend(crate::judge::run_judges(store, &run.id, &suite.dir, &tj, judge_model, &spec.model, opts.no_cache)?);
    }

    // judges of two answers score win rates (0–1), not ratings (1–10); a failed judge call leaves
    // the answers it was to judge without a score: errors of that judge's column
    let mut pairwise = std::collections::BTreeSet::new();
    let mut unjudged: BTreeMap<(String, String), std::collections::BTreeSet<(String, i64)>> = BTreeMap::new();
    let mut failures: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for (ti, spec) in &judges {
        let (task, metric) = (tasks[*ti].name.clone(), spec.metric_name());
        if crate::judge::load_judge(&spec.judge, &suite.dir)?.template.kind != crate::judge::JudgeKind::Single {
            pairwise.insert((task.clone(), metric.clone()));
        }
        let failed: Vec<_> = store.judgments(&run.id, &task, &metric)?.into_iter().filter(|j| j.error.is_some()).collect();
        let answers: std::collections::BTreeSet<(String, i64)> = failed
            .iter()
            .flat_map(|j| [&j.model, &j.opponent].into_iter().filter(|m| !m.is_empty()).map(move |m| (m.clone(), j.item)))
            .filter(|(m, _)| spec.baseline.as_ref() != Some(m)) // a baseline gets no score
            .collect();
        if !answers.is_empty() {
            unjudged.insert((task, metric), answers);
        }
        failures.push((&tasks[*ti].name, &spec.model, failed.into_iter().filter_map(|j| j.error).collect()));
    }
    let mut aggregates = aggregate_run(store, &run.id, &tasks, &metrics, &model_names, &pairwise, &unjudged)?;
    aggregates.extend(reliability);
    store.put_aggregates(&run.id, &aggregates)?;
    let samples = store.samples(&run.id)?;
    for n in unscored_notes(&samples, &tasks, &rendered, &metrics) {
        if !notes.contains(&n) {
            notes.push(n);
        }
    }
    let errored = samples.iter().filter(|s| s.error.is_some()).count();
    // the commonest error; of equally common ones, the first met in item order
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for e in samples.iter().filter_map(|s| s.error.as_deref()) {
        match counts.iter_mut().find(|(x, _)| *x == e) {
            Some((_, n)) => *n += 1,
            None => counts.push((e, 1)),
        }
    }
    let common_error = counts.iter().fold(None::<(&str, usize)>, |best, &(e, n)| if best.is_some_and(|(_, b)| b >= n) { best } else { Some((e, n)) }).map(|(e, n)| (e.to_string(), n));
    // failed judge calls leave answers unjudged: the run is not complete, and --resume retries them
    let mut judge_errors = 0;
    const UNJUDGED: &str = "so their answers are not judged";
    notes.retain(|n| !n.contains(UNJUDGED)); // a resumed run's are counted anew
    for (task, judge, failed) in failures {
        if let Some(first) = failed.first() {
            judge_errors += failed.len();
            notes.push(format!("task {task:?}: {} call(s) of judge {judge:?} failed, {UNJUDGED} (first: {first})", failed.len()));
        }
    }
    let status = if errored + judge_errors > 0 { "errored" } else { "complete" };
    let ended = crate::util::now_unix();
    store.set_run_status(&run.id, status, Some(ended), &notes)?;
    let run = Run { status: status.into(), ended_at: Some(ended), notes, ..run };
    Ok(RunReport { run, aggregates, errored, common_error, judge_errors })
}

/// A Student-t interval of few scores can reach past what a metric can be (an accuracy of −0.05):
/// it is cut at the metric's range.
fn clip_to_range(metric: &str, pairwise: bool, ci: Option<(f64, f64)>) -> Option<(f64, f64)> {
    match (ci, crate::results::metric_range(metric, pairwise)) {
        (Some((lo, hi)), Some((min, max))) => {
            // a bound a rounding error past the range (a BLEU of 100.00000000000001) stays ordered
            let hi = hi.clamp(min, max);
            Some((lo.clamp(min, hi), hi))
        }
        (ci, _) => ci,
    }
}

/// lm-eval's `_encode_pair`: whitespace ending the context moves to the start of the
/// continuation, so "Answer: " + "Paris" is scored as "Answer:" + " Paris" (the way a tokenizer
/// joins a space to the word after it).
fn encode_pair(context: &str, continuation: &str) -> LoglikelihoodRequest {
    // Python's str.rstrip: Unicode whitespace and the separators \x1c-\x1f
    let kept = context.trim_end_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c));
    LoglikelihoodRequest { context: kept.to_string(), continuation: format!("{}{continuation}", &context[kept.len()..]) }
}

/// The task of turn `k` (0-based) of multi-turn task `base`.
fn turn_task_name(base: &str, k: usize) -> String {
    if k == 0 { base.to_string() } else { format!("{base}/turn-{}", k + 1) }
}

/// The multi-turn task a per-turn task belongs to.
fn picked_name(name: &str) -> &str {
    match name.rsplit_once("/turn-") {
        Some((base, n)) if n.parse::<usize>().is_ok() => base,
        _ => name,
    }
}

/// Per-model dispatch state.
struct Ctx<'s, 'p> {
    store: &'s Store,
    run_id: &'s str,
    model: &'s str,
    no_cache: bool,
    progress: &'p mut crate::progress::Progress,
    /// A store error met inside a callback; the run stops with it.
    failure: Option<Error>,
}

impl Ctx<'_, '_> {
    /// Serves what the cache has, sends the rest to the backend as one batch, and completes
    /// samples as their last request returns.
    #[allow(clippy::too_many_arguments)]
    fn dispatch<Req: serde::Serialize, Resp: serde::Serialize + serde::de::DeserializeOwned>(
        &mut self,
        pending: &mut [Pending],
        reqs: Vec<(usize, Part, Req)>,
        kind: &str,
        identity: &Value,
        cacheable: impl Fn(&Req) -> bool,
        call: impl FnOnce(&dyn Model, &[Req], &mut dyn FnMut(usize, Outcome<Resp>)),
        backend: &dyn Model,
        apply: impl Fn(&mut Pending, Part, Resp),
    ) {
        if self.failure.is_some() || reqs.is_empty() {
            return;
        }
        let mut to_send: Vec<(usize, Part, Option<String>)> = Vec::new();
        let mut batch: Vec<Req> = Vec::new();
        for (slot, part, req) in reqs {
            let key = cacheable(&req).then(|| crate::store::cache_key(identity, kind, &req));
            if let Some(k) = &key {
                match self.store.cached(k, self.run_id, self.no_cache) {
                    Ok(Some(text)) => {
                        if let Ok(resp) = serde_json::from_str::<Resp>(&text) {
                            let outcome = Outcome { result: Ok(resp), latency_ms: 0.0, attempts: 0 };
                            self.complete(pending, slot, part, outcome, &apply, true);
                            continue;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.failure = Some(e);
                        return;
                    }
                }
            }
            to_send.push((slot, part, key));
            batch.push(req);
        }
        let mut answered = vec![false; to_send.len()];
        let mut sink = |i: usize, outcome: Outcome<Resp>| {
            if self.failure.is_some() || std::mem::replace(&mut answered[i], true) {
                return;
            }
            let (slot, part, key) = &to_send[i];
            if let (Some(k), Ok(resp)) = (key, &outcome.result) {
                let text = serde_json::to_string(resp).expect("responses serialize");
                if let Err(e) = self.store.put_cached(k, self.run_id, kind, identity, &text) {
                    self.failure = Some(e);
                    return;
                }
            }
            self.complete(pending, *slot, *part, outcome, &apply, false);
        };
        call(backend, &batch, &mut sink);
        // a model that can answer nothing more stops the run; what it did not answer stays unasked
        if let Some(message) = backend.halted() {
            self.failure.get_or_insert(Error::Model { model: self.model.to_string(), message });
            return;
        }
        // a request the backend never answered (a failure inside it) errors its item: the run
        // must not read as complete with the item missing
        for (i, (slot, part, _)) in to_send.iter().enumerate() {
            if !answered[i] && self.failure.is_none() {
                let result = Err(format!("the model gave no answer to this {kind} request (a failure inside llmeval; --resume retries it)"));
                self.complete(pending, *slot, *part, Outcome { result, latency_ms: 0.0, attempts: 1 }, &apply, false);
            }
        }
    }

    fn complete<Resp>(&mut self, pending: &mut [Pending], slot: usize, part: Part, outcome: Outcome<Resp>, apply: &impl Fn(&mut Pending, Part, Resp), cached: bool) {
        let p = &mut pending[slot];
        p.remaining -= 1;
        // the parts of an item (its choices) go out together: its attempts are its most-tried part's
        p.attempts = p.attempts.max(outcome.attempts);
        p.latency_ms += outcome.latency_ms;
        p.cached &= cached;
        match outcome.result {
            Ok(r) => apply(p, part, r),
            Err(e) => p.errors.push(e),
        }
        if p.remaining == 0 {
            let sample = finish_sample(self.run_id, self.model, p);
            self.progress.finished(p.attempts, sample.error.is_some());
            if let Err(e) = self.store.put_sample(&sample) {
                self.failure = Some(e);
            }
        }
    }
}

/// Builds a finished sample: evidence, extracted answer, per-metric statistics.
fn finish_sample(run_id: &str, model: &str, p: &Pending) -> Sample {
    let item = p.item;
    let mut s = Sample {
        run_id: run_id.to_string(),
        model: model.to_string(),
        task: p.task.name.clone(),
        item: item.index as i64,
        item_id: item.id.clone(),
        doc_hash: item.doc_hash.clone(),
        category: item.category.clone(),
        prompt: p.prompt_shown.clone(),
        target: match item.gold {
            Some(g) => item.choices.get(g).cloned(),
            None => item.target.clone(),
        },
        latency_ms: Some(p.latency_ms),
        attempts: i64::from(p.attempts),
        cached: p.cached,
        finished_at: crate::util::now_unix(),
        ..Default::default()
    };
    if !p.errors.is_empty() {
        s.error = Some(p.errors.join("; "));
        return s;
    }
    let evidence = match p.task.kind {
        TaskKind::Generate => {
            let g = p.generation.as_ref().expect("generation present when no error");
            s.prompt_tokens = g.prompt_tokens.map(|x| x as i64);
            s.completion_tokens = g.completion_tokens.map(|x| x as i64);
            Evidence::Generation { response: g.text.clone(), answer: p.pipeline.apply(&g.text) }
        }
        TaskKind::MultipleChoice if p.generation.is_some() => {
            let g = p.generation.as_ref().expect("checked");
            s.prompt_tokens = g.prompt_tokens.map(|x| x as i64);
            s.completion_tokens = g.completion_tokens.map(|x| x as i64);
            let picked = pick_letter(&g.text, item.choices.len());
            let answer = picked.map(|i| ((b'A' + i as u8) as char).to_string()).unwrap_or_else(|| "[invalid]".into());
            Evidence::Letter { response: g.text.clone(), answer, picked }
        }
        TaskKind::MultipleChoice => Evidence::Choices { results: p.lls.iter().map(|l| l.clone().expect("all choices present")).collect() },
        TaskKind::Loglikelihood => Evidence::Continuation { result: p.lls[0].clone().expect("present") },
        TaskKind::Perplexity => Evidence::Rolling { result: p.lls[0].clone().expect("present") },
    };
    match &evidence {
        Evidence::Generation { response, answer } | Evidence::Letter { response, answer, .. } => {
            s.response = Some(response.clone());
            s.answer = Some(answer.clone());
        }
        Evidence::Choices { results } => {
            let best = results.iter().enumerate().max_by(|a, b| a.1.logprob.total_cmp(&b.1.logprob).then(b.0.cmp(&a.0))).map(|(i, _)| i);
            s.answer = best.and_then(|i| item.choices.get(i).cloned());
        }
        Evidence::Continuation { result } | Evidence::Rolling { result } => {
            s.answer = Some(format!("{:.6}", result.logprob));
        }
    }
    for m in p.metrics {
        if let Ok(stats) = m.score(item, &evidence) {
            s.scores.insert(m.name().to_string(), json!(m.sample_value(&stats)));
            s.stats.insert(m.name().to_string(), json!(stats));
        }
    }
    s.evidence = Some(serde_json::to_value(&evidence).expect("evidence serializes"));
    s
}

/// A note for each model × task × metric that some answered items have no value of (the metric
/// could not score what the model gave: acc-norm without log-probabilities, acc without
/// `top_logprobs`), with the count and the first reason, recomputed from the stored evidence.
fn unscored_notes(samples: &[Sample], tasks: &[&TaskConfig], rendered: &[Vec<Item>], metrics: &[Vec<Box<dyn Metric>>]) -> Vec<String> {
    let mut out = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        // a judge's unscored items are its unparsed verdicts, counted by its parse-failure-rate
        for m in metrics[ti].iter().filter(|m| !m.name().starts_with("judge-")) {
            // (model) → (answered items, unscored items, first reason)
            let mut by_model: BTreeMap<&str, (usize, usize, Option<String>)> = BTreeMap::new();
            for s in samples.iter().filter(|s| s.task == task.name && s.error.is_none() && s.evidence.is_some()) {
                let e = by_model.entry(&s.model).or_default();
                e.0 += 1;
                if s.stats.contains_key(m.name()) {
                    continue;
                }
                e.1 += 1;
                if e.2.is_none() {
                    let evidence = s.evidence.clone().and_then(|v| serde_json::from_value::<Evidence>(v).ok());
                    let item = rendered[ti].iter().find(|i| i.index as i64 == s.item);
                    e.2 = match (item, evidence) {
                        (Some(item), Some(ev)) => m.score(item, &ev).err(),
                        _ => None,
                    };
                }
            }
            for (model, (answered, unscored, why)) in by_model {
                // a metric that scores (judges write theirs later) but not these items
                if let (true, Some(why)) = (unscored > 0, why) {
                    out.push(format!("task {:?}, model {model:?}: {} has no value for {unscored} of {answered} answered items: {why}", task.name, m.name()));
                }
            }
        }
    }
    out
}

/// Aggregates of a run, from its stored samples: per model × task × metric, overall and per
/// category.
/// Every (model, task, category, metric)'s summary from the stored samples. `unjudged`: per
/// (task, judge metric), the (model, item) answers a failed judge call left without a score,
/// counted in that metric's `errors` (with the errored samples).
fn aggregate_run(
    store: &Store,
    run_id: &str,
    tasks: &[&TaskConfig],
    metrics: &[Vec<Box<dyn Metric>>],
    models: &[String],
    pairwise: &std::collections::BTreeSet<(String, String)>,
    unjudged: &BTreeMap<(String, String), std::collections::BTreeSet<(String, i64)>>,
) -> Result<Vec<Aggregate>> {
    let samples = store.samples(run_id)?;
    let mut out = Vec::new();
    for model in models {
        for (ti, task) in tasks.iter().enumerate() {
            let mine: Vec<&Sample> = samples.iter().filter(|s| &s.model == model && s.task == task.name).collect();
            let mut groups: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
            for s in &mine {
                if let Some(c) = &s.category {
                    groups.entry(c.clone()).or_default().push(s);
                }
            }
            let mut all = vec![(String::new(), mine.clone())];
            if groups.len() > 1 || groups.values().next().is_some_and(|g| g.len() < mine.len()) {
                all.extend(groups);
            }
            for (category, group) in all {
                let errors = group.iter().filter(|s| s.error.is_some()).count() as i64;
                for m in &metrics[ti] {
                    let not_judged = unjudged.get(&(task.name.clone(), m.name().to_string())).map_or(0, |answers| {
                        group.iter().filter(|s| s.error.is_none() && s.stats.get(m.name()).is_none() && answers.contains(&(s.model.clone(), s.item))).count()
                    });
                    let errors = errors + not_judged as i64;
                    let stats: Vec<Vec<f64>> = group
                        .iter()
                        .filter(|s| s.error.is_none())
                        .filter_map(|s| s.stats.get(m.name()).and_then(|v| serde_json::from_value::<Vec<f64>>(v.clone()).ok()))
                        .collect();
                    if stats.is_empty() && errors == 0 {
                        continue; // not applicable (acc-norm on a chat-only endpoint)
                    }
                    let refs: Vec<&[f64]> = stats.iter().map(Vec::as_slice).collect();
                    let summary = if stats.is_empty() {
                        crate::stats::Summary { value: f64::NAN, stderr: None, ci95: None, n: 0 }
                    } else if m.is_corpus() {
                        crate::stats::bootstrap_summary(&refs, &|s: &[&[f64]]| m.aggregate(s), BOOTSTRAP_ITERATIONS, BOOTSTRAP_SEED)
                    } else {
                        crate::stats::mean_summary(&stats.iter().map(|s| s[0]).collect::<Vec<_>>())
                    };
                    out.push(Aggregate {
                        model: model.clone(),
                        task: task.name.clone(),
                        category: category.clone(),
                        metric: m.name().to_string(),
                        value: Some(summary.value).filter(|v| v.is_finite()),
                        stderr: summary.stderr,
                        ci95: clip_to_range(m.name(), pairwise.contains(&(task.name.clone(), m.name().to_string())), summary.ci95),
                        n: summary.n as i64,
                        errors,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::encode_pair;

    #[test]
    fn intervals_stay_inside_the_metrics_range() {
        assert_eq!(super::clip_to_range("acc", false, Some((-0.046, 0.646))), Some((0.0, 0.646)));
        assert_eq!(super::clip_to_range("judge-single", false, Some((-38.97, 49.97))), Some((1.0, 10.0)));
        assert_eq!(super::clip_to_range("judge-pairwise", true, Some((0.2, 1.3))), Some((0.2, 1.0)));
        assert_eq!(super::clip_to_range("loglikelihood", false, Some((-9.0, -1.0))), Some((-9.0, -1.0)));
        let (lo, hi) = super::clip_to_range("bleu", false, Some((100.00000000000001, 100.00000000000001))).unwrap();
        assert!(lo <= hi && hi == 100.0, "{lo} {hi}");
    }

    #[test]
    fn trailing_context_whitespace_moves_to_the_continuation_as_in_lm_eval() {
        let r = encode_pair("Question: x\nAnswer: ", "Paris");
        assert_eq!((r.context.as_str(), r.continuation.as_str()), ("Question: x\nAnswer:", " Paris"));
        let r = encode_pair("Q \n\t\u{3000}\x1f", " A");
        assert_eq!((r.context.as_str(), r.continuation.as_str()), ("Q", " \n\t\u{3000}\x1f A"));
        let r = encode_pair("Q:", " A");
        assert_eq!((r.context.as_str(), r.continuation.as_str()), ("Q:", " A"));
    }
}
