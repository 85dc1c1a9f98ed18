//! ① Suite files: TOML → a validated [`Suite`].
//!
//! Deserialization is strict (`deny_unknown_fields`, kebab-case keys) and every value that is
//! checked after parsing (templates, regexes, metric names, data paths) is kept with its span, so
//! that any error names the suite file, the line and the field.

use crate::error::{Error, Result};
use crate::util::line_of;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A suite file as written by the user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SuiteFile {
    /// Name of the suite; runs are grouped (and resumed) by it.
    pub name: String,
    /// Free text shown in reports.
    #[serde(default)]
    pub description: Option<String>,
    /// The models to evaluate (`[[model]]` tables).
    #[serde(default, rename = "model")]
    pub models: Vec<ModelConfig>,
    /// The tasks to run on every model (`[[task]]` tables).
    #[serde(default, rename = "task")]
    pub tasks: Vec<TaskConfig>,
}

/// Which backend answers a model's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// An OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, hosted APIs).
    Openai,
    /// llmeval's own inference engine on a local GGUF file or Hugging Face directory.
    Builtin,
}

/// Which OpenAI endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// `/chat/completions`: the prompt is sent as a user message.
    #[default]
    Chat,
    /// `/completions`: the prompt is sent as raw text; log-probabilities via `echo`.
    Completions,
}

/// The request field that carries a generation's token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub enum MaxTokensField {
    /// `max_tokens`: what OpenAI-compatible servers (vLLM, llama.cpp server) take.
    #[default]
    #[serde(rename = "max_tokens")]
    MaxTokens,
    /// `max_completion_tokens`: what hosted reasoning models take instead (they refuse `max_tokens`).
    #[serde(rename = "max_completion_tokens")]
    MaxCompletionTokens,
}

impl MaxTokensField {
    pub fn name(self) -> &'static str {
        match self {
            MaxTokensField::MaxTokens => "max_tokens",
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// One `[[model]]` table.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelConfig {
    /// Label used in results; unique within the suite.
    pub name: String,
    /// Backend: `"openai"` or `"builtin"`.
    pub engine: Engine,
    /// (openai) Base URL of the OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`. `${VAR}`
    /// and `${VAR:-default}` are replaced from the environment.
    #[serde(default)]
    pub base_url: String,
    /// (openai) Model name sent in each request (`${VAR}` expanded as in `base-url`).
    #[serde(default)]
    pub model: String,
    /// (builtin) A GGUF file or a Hugging Face directory, relative to the suite file.
    #[serde(default)]
    pub path: Option<String>,
    /// (builtin) `"auto"` (default), `"cpu"`, `"cuda"` or `"cuda:N"`.
    #[serde(default)]
    pub device: Option<Spanned<String>>,
    /// (builtin) Compute threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Evaluate this model on the tasks (default true); `false` for a model that only judges.
    #[serde(default = "default_true")]
    pub evaluate: bool,
    /// `"chat"` (default) or `"completions"`.
    #[serde(default)]
    pub api: Api,
    /// Environment variable holding the API key; the key itself is never stored anywhere.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once (default 8).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Retries after the first attempt for transient failures (default 6).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Per-request timeout in seconds (default 120).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// First retry delay in seconds; doubled each retry, with jitter, capped at 60 s (default 1).
    #[serde(default = "default_retry_initial")]
    pub retry_initial_s: f64,
    /// Client-side limit on requests started per minute.
    #[serde(default)]
    pub requests_per_minute: Option<f64>,
    /// Client-side limit on tokens per minute (prompt estimated at 4 characters a token, plus
    /// `max-tokens`).
    #[serde(default)]
    pub tokens_per_minute: Option<f64>,
    /// System message prepended to chat requests (builtin: to chat-formatted prompts).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Extra JSON fields merged into every request body (e.g. `{ top_k = 20 }`).
    #[serde(default)]
    pub extra_body: Option<toml::Table>,
    /// (openai) The field a generation's `max-tokens` is sent in: `"max_tokens"` (default) or
    /// `"max_completion_tokens"`, for hosted models that refuse `max_tokens`.
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
}

/// The longest request timeout a suite may set: a week.
const MAX_SECONDS: f64 = 604_800.0;
/// The slowest rate limit a suite may set, per minute.
const MIN_RATE: f64 = 0.001;

fn default_true() -> bool {
    true
}

fn default_concurrency() -> usize {
    8
}
fn default_max_retries() -> u32 {
    6
}
fn default_timeout() -> f64 {
    120.0
}
fn default_retry_initial() -> f64 {
    1.0
}

/// How a task queries the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Free generation, scored against `target`.
    Generate,
    /// One log-likelihood per choice; the best choice is the answer (lm-eval `multiple_choice`).
    MultipleChoice,
    /// Log-likelihood of `target` given `prompt` (lm-eval `loglikelihood`).
    Loglikelihood,
    /// Rolling log-likelihood of the rendered `prompt` (lm-eval `loglikelihood_rolling`).
    Perplexity,
}

/// `few-shot = { n = 5, from = "data/train.jsonl", seed = 1234 }`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FewShot {
    /// Number of examples before each prompt.
    pub n: usize,
    /// Data file to draw from (relative to the suite); default: the task's own data, never the
    /// evaluated row.
    #[serde(default)]
    pub from: Option<Spanned<String>>,
    /// Seed of the sampler (default 1234, as lm-evaluation-harness).
    #[serde(default = "default_fewshot_seed")]
    pub seed: u64,
    /// Text between examples (default `"\n\n"`).
    #[serde(default = "default_fewshot_delimiter")]
    pub delimiter: String,
}

fn default_fewshot_seed() -> u64 {
    1234
}
fn default_fewshot_delimiter() -> String {
    "\n\n".into()
}

/// `extract = { regex = "(-?\\d+)" }`: answer extraction from a generated response.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Extract {
    /// Regular expression (Rust `regex` syntax); the first match is taken, group 1 if present.
    pub regex: Spanned<String>,
    /// Capture group to take (default: 1 if the regex has groups, else the whole match).
    #[serde(default)]
    pub group: Option<usize>,
    /// Answer when nothing matches (default `"[invalid]"`).
    #[serde(default = "default_fallback")]
    pub fallback: String,
}

fn default_fallback() -> String {
    "[invalid]".into()
}

/// One step of the response filter pipeline, applied after `extract`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum FilterStep {
    /// Trim whitespace at both ends.
    Strip,
    /// Lower-case the text.
    Lowercase,
    /// Upper-case the text.
    Uppercase,
    /// Keep the first non-empty line.
    TakeFirst,
    /// `{ regex = "…" }`: first match, group 1 if present, else `[invalid]`.
    Regex(Spanned<String>),
    /// `{ map = { "yes" = "A", "no" = "B" } }`: replace a whole answer; others pass unchanged.
    Map(BTreeMap<String, String>),
}

/// One `[[task]]` table.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TaskConfig {
    /// Task name, unique within the suite.
    pub name: String,
    /// `generate` | `multiple-choice` | `loglikelihood` | `perplexity`.
    pub kind: TaskKind,
    /// Data file (JSONL, JSON array or CSV with a header), relative to the suite file.
    pub data: Spanned<String>,
    /// minijinja template over a row giving the prompt (the context, for log-likelihood kinds).
    /// In a multi-turn task it renders each turn, with `turn` (the turn's text) and `turn_index`.
    pub prompt: Spanned<String>,
    /// Multi-turn conversations: a minijinja expression giving the row's user turns (e.g.
    /// `turns`). Each turn is answered with the model's own earlier answers in its history, and
    /// scored (and judged) per turn: turn 1 under the task's name, turn N as `NAME/turn-N`.
    #[serde(default)]
    pub turns: Option<Spanned<String>>,
    /// minijinja template giving the reference answer (`generate`) or continuation
    /// (`loglikelihood`).
    #[serde(default)]
    pub target: Option<Spanned<String>>,
    /// minijinja expression giving the list of choices (`multiple-choice`), e.g. `choices` or
    /// `[A, B, C, D]`.
    #[serde(default)]
    pub choices: Option<Spanned<String>>,
    /// minijinja expression giving the gold choice: an index or the choice text, e.g. `label`.
    #[serde(default)]
    pub gold: Option<Spanned<String>>,
    /// Text between prompt and target/choice (default `" "`, as lm-evaluation-harness).
    #[serde(default = "default_target_delimiter")]
    pub target_delimiter: String,
    /// Category for separate reporting: a template over the row (`"{{ subject }}"`) or a fixed
    /// tag (`"math"`).
    #[serde(default)]
    pub category: Option<Spanned<String>>,
    /// Maximum generated tokens (default 256).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature (default 0: greedy).
    #[serde(default)]
    pub temperature: f64,
    /// Nucleus sampling probability mass.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sampling seed sent with each request; unseeded sampling (temperature > 0) is never cached.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Few-shot examples before each prompt.
    #[serde(default)]
    pub few_shot: Option<Spanned<FewShot>>,
    /// Generate tasks: send the prompt as a user message of a conversation: the built-in engine
    /// applies the model's chat template; chat APIs do so on the server anyway.
    #[serde(default)]
    pub chat: bool,
    /// Answer extraction from the response.
    #[serde(default)]
    pub extract: Option<Extract>,
    /// Further filter steps after `extract`: `"strip"`, `"lowercase"`, `"uppercase"`,
    /// `"take-first"`, `{ regex = "…" }`, `{ map = { … } }`.
    #[serde(default)]
    pub filters: Vec<FilterStep>,
    /// Metrics: names (default by kind: `exact-match`; `acc`, `acc-norm`; `loglikelihood`, `acc`;
    /// `word-perplexity`, `byte-perplexity`, `bits-per-byte`), or judges:
    /// `{ judge = "single", model = "gpt4-judge" }`,
    /// `{ judge = "pairwise", model = "gpt4-judge", baseline = "smollm2" }` or `mode = "all-pairs"`.
    #[serde(default)]
    pub metrics: Vec<Spanned<toml::Value>>,
    /// Template giving a human verdict for pairwise judging: the winning model's name or "tie"
    /// (agreement and Cohen's kappa with the judge are then reported).
    #[serde(default)]
    pub human_label: Option<Spanned<String>>,
}

fn default_target_delimiter() -> String {
    " ".into()
}
fn default_max_tokens() -> u32 {
    256
}

/// A parsed and validated suite, with the bytes it was read from.
#[derive(Debug, Clone)]
pub struct Suite {
    pub file: SuiteFile,
    /// The suite file's path as given.
    pub path: PathBuf,
    /// Directory relative paths are resolved against.
    pub dir: PathBuf,
    /// The suite file's text.
    pub text: String,
}

impl Suite {
    /// Reads, parses and validates a suite file.
    pub fn load(path: &Path) -> Result<Suite> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { path: path.to_path_buf(), cause: source })?;
        Suite::parse(path, text)
    }

    /// Parses and validates suite text that was read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Suite> {
        let file: SuiteFile = toml::from_str(&text).map_err(|e| {
            let (line, message) = crate::util::toml_error(&text, &e);
            let location = line.map_or_else(|| path.display().to_string(), |l| format!("{}:{l}", path.display()));
            Error::config(location, message)
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut suite = Suite { file, path: path.to_path_buf(), dir, text };
        let tables: Vec<String> = (0..suite.file.models.len()).map(|i| suite.table_at("[[model]]", i)).collect();
        for (m, at) in suite.file.models.iter_mut().zip(tables) {
            for (field, value) in [("base-url", &mut m.base_url), ("model", &mut m.model)] {
                *value = expand_env(value).map_err(|msg| Error::config(&at, format!("model {:?}: {field}: {msg}", m.name)))?;
            }
        }
        suite.validate()?;
        Ok(suite)
    }

    /// `path:line` of a spanned value, for error messages.
    pub fn at<T>(&self, value: &Spanned<T>) -> String {
        format!("{}:{}", self.path.display(), line_of(&self.text, value.span().start))
    }

    /// `path:line` of the `index`-th table under `header` (`[[model]]`, `[[task]]`), for errors
    /// about a table as a whole; the file alone where the table is written another way.
    fn table_at(&self, header: &str, index: usize) -> String {
        let line = self.text.lines().enumerate().filter(|(_, l)| l.split('#').next().unwrap_or("").trim() == header).nth(index).map(|(i, _)| i + 1);
        line.map_or_else(|| self.path.display().to_string(), |l| format!("{}:{l}", self.path.display()))
    }

    /// Resolves a path written in the suite.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let p = Path::new(rel);
        if p.is_absolute() { p.to_path_buf() } else { self.dir.join(p) }
    }

    fn validate(&self) -> Result<()> {
        let f = &self.file;
        let whole = self.path.display().to_string();
        if f.models.is_empty() {
            return Err(Error::config(whole, "no [[model]] table: a suite needs at least one model"));
        }
        if f.tasks.is_empty() {
            return Err(Error::config(whole, "no [[task]] table: a suite needs at least one task"));
        }
        // names are printed in tables, reports and file names: no escape sequences or line breaks
        let printable = |at: String, what: &str, name: &str| match name.chars().find(|c| c.is_control()) {
            Some(c) => Err(Error::config(at, format!("{what} name {name:?} holds the control character {c:?}; use printable characters"))),
            None => Ok(()),
        };
        printable(whole.clone(), "suite", &f.name)?;
        for (i, m) in f.models.iter().enumerate() {
            printable(self.table_at("[[model]]", i), "model", &m.name)?;
        }
        for (i, t) in f.tasks.iter().enumerate() {
            printable(self.table_at("[[task]]", i), "task", &t.name)?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in f.models.iter().enumerate() {
            let whole = self.table_at("[[model]]", i);
            if !seen.insert(&m.name) {
                return Err(Error::config(&whole, format!("model name {:?} is used twice; names must be unique", m.name)));
            }
            if m.concurrency == 0 {
                return Err(Error::config(&whole, format!("model {:?}: concurrency must be at least 1", m.name)));
            }
            if !(m.timeout_s > 0.0 && m.timeout_s <= MAX_SECONDS) {
                return Err(Error::config(&whole, format!("model {:?}: timeout-s = {}: give seconds above 0, at most {MAX_SECONDS} (a week)", m.name, m.timeout_s)));
            }
            if !(m.retry_initial_s >= 0.0 && m.retry_initial_s <= 60.0) {
                return Err(Error::config(&whole, format!("model {:?}: retry-initial-s = {}: give 0 to 60 seconds", m.name, m.retry_initial_s)));
            }
            for (key, v) in [("requests-per-minute", m.requests_per_minute), ("tokens-per-minute", m.tokens_per_minute)] {
                if let Some(v) = v
                    && !(v >= MIN_RATE && v.is_finite())
                {
                    return Err(Error::config(&whole, format!("model {:?}: {key} = {v}: give a number of at least {MIN_RATE} (one in a thousand minutes)", m.name)));
                }
            }
            match m.engine {
                Engine::Openai => {
                    if !(m.base_url.starts_with("http://") || m.base_url.starts_with("https://")) {
                        return Err(Error::config(&whole, format!("model {:?}: base-url {:?} must start with http:// or https:// (engine = \"openai\" needs base-url and model)", m.name, m.base_url)));
                    }
                    if m.model.is_empty() {
                        return Err(Error::config(&whole, format!("model {:?}: engine = \"openai\" needs `model`, the name the server knows the model by", m.name)));
                    }
                    if m.path.is_some() || m.device.is_some() || m.threads.is_some() {
                        return Err(Error::config(&whole, format!("model {:?}: path, device and threads are for engine = \"builtin\"", m.name)));
                    }
                }
                Engine::Builtin => {
                    if m.path.is_none() {
                        return Err(Error::config(&whole, format!("model {:?}: engine = \"builtin\" needs `path`, a GGUF file or a Hugging Face directory", m.name)));
                    }
                    if !m.base_url.is_empty() || m.api_key_env.is_some() || m.max_tokens_field != MaxTokensField::MaxTokens {
                        return Err(Error::config(&whole, format!("model {:?}: base-url, api-key-env and max-tokens-field are for engine = \"openai\"", m.name)));
                    }
                    if let Some(t) = m.threads.filter(|t| !(1..=crate::cli::MAX_THREADS).contains(t)) {
                        return Err(Error::config(&whole, format!("model {:?}: threads = {t}: give 1 to {}", m.name, crate::cli::MAX_THREADS)));
                    }
                    if let Some(d) = &m.device
                        && let Err(e) = d.get_ref().parse::<crate::engine::device::Device>()
                    {
                        return Err(Error::config(self.at(d), format!("model {:?}: device: {e}", m.name)));
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in f.tasks.iter().enumerate() {
            if !seen.insert(&t.name) {
                return Err(Error::config(self.table_at("[[task]]", i), format!("task name {:?} is used twice; names must be unique", t.name)));
            }
            // a multi-turn task stores turn k as task "NAME/turn-k"
            if let Some((_, k)) = t.name.rsplit_once("/turn-")
                && !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(Error::config(self.table_at("[[task]]", i), format!("task name {:?} ends like a turn of a multi-turn task (\"NAME/turn-K\"), which llmeval names that way; choose another name", t.name)));
            }
            self.validate_task(t, &self.table_at("[[task]]", i))?;
        }
        Ok(())
    }

    /// Checks one task; `table` is where its `[[task]]` table starts, for errors about a value
    /// that carries no line of its own.
    fn validate_task(&self, t: &TaskConfig, table: &str) -> Result<()> {
        let task = &t.name;
        let data = self.resolve(t.data.get_ref());
        if data.is_dir() {
            return Err(Error::config(self.at(&t.data), format!("task {task:?}: data {} is a directory; name a .jsonl, .json, .csv or .tsv file in it", data.display())));
        }
        if !data.is_file() {
            return Err(Error::config(self.at(&t.data), format!("task {task:?}: data file {} does not exist (paths are relative to the suite file)", data.display())));
        }
        if let Some(fs) = t.few_shot.as_ref().map(Spanned::get_ref)
            && let Some(from) = &fs.from
        {
            let p = self.resolve(from.get_ref());
            if !p.is_file() {
                return Err(Error::config(self.at(from), format!("task {task:?}: few-shot file {} does not exist", p.display())));
            }
        }
        match t.kind {
            TaskKind::MultipleChoice => {
                for (field, v) in [("choices", &t.choices), ("gold", &t.gold)] {
                    if v.is_none() {
                        return Err(Error::config(table, format!("task {task:?}: a multiple-choice task needs `{field}` (a minijinja expression over the row)")));
                    }
                }
            }
            TaskKind::Generate | TaskKind::Loglikelihood => {
                // Judges and diversity metrics need no reference; everything else does.
                let target_free = |m: &Spanned<toml::Value>| match MetricSpec::parse(m.get_ref()) {
                    Ok(MetricSpec::Judge(j)) => !j.judge.ends_with("-reference"),
                    Ok(MetricSpec::Name(n)) => n.starts_with("distinct-"),
                    Err(_) => false,
                };
                let needs_target = t.kind == TaskKind::Loglikelihood || t.metrics.is_empty() || !t.metrics.iter().all(target_free);
                if t.target.is_none() && needs_target {
                    return Err(Error::config(table, format!("task {task:?}: a {} task needs `target` (a template over the row)", kind_name(t.kind))));
                }
            }
            TaskKind::Perplexity => {}
        }
        if let Some(turns) = &t.turns
            && (t.kind != TaskKind::Generate || t.few_shot.is_some())
        {
            return Err(Error::config(self.at(turns), format!("task {task:?}: turns are for generate tasks without few-shot examples")));
        }
        if t.chat && t.kind != TaskKind::Generate {
            return Err(Error::config(table, format!("task {task:?}: chat = true is for generate tasks; a {} task scores the prompt as plain text (remove `chat`)", kind_name(t.kind))));
        }
        if t.few_shot.is_some() && t.kind == TaskKind::Perplexity {
            return Err(Error::config(table, format!("task {task:?}: few-shot makes no sense for a perplexity task")));
        }
        // Templates and expressions compile.
        let env = crate::prompt::environment();
        for (field, v) in [("prompt", Some(&t.prompt)), ("target", t.target.as_ref()), ("category", t.category.as_ref())] {
            if let Some(v) = v {
                env.template_from_str(v.get_ref()).map_err(|e| Error::config(self.at(v), format!("task {task:?}: {field}: bad template: {}", crate::prompt::jinja_message(&e))))?;
            }
        }
        for (field, v) in [("choices", t.choices.as_ref()), ("gold", t.gold.as_ref()), ("turns", t.turns.as_ref())] {
            if let Some(v) = v {
                env.compile_expression(v.get_ref()).map_err(|e| Error::config(self.at(v), format!("task {task:?}: {field}: bad expression: {}", crate::prompt::jinja_message(&e))))?;
            }
        }
        let mut regexes: Vec<&Spanned<String>> = t.extract.iter().map(|e| &e.regex).collect();
        for f in &t.filters {
            if let FilterStep::Regex(r) = f {
                regexes.push(r);
            }
        }
        for r in regexes {
            regex::Regex::new(r.get_ref()).map_err(|e| Error::config(self.at(r), format!("task {task:?}: bad regex {:?}: {}", r.get_ref(), e.to_string().lines().last().unwrap_or_default())))?;
        }
        if let Some(ex) = &t.extract {
            let re = regex::Regex::new(ex.regex.get_ref()).expect("checked above");
            if let Some(g) = ex.group
                && g >= re.captures_len()
            {
                return Err(Error::config(self.at(&ex.regex), format!("task {task:?}: extract group {g} does not exist; the regex has {} group(s)", re.captures_len() - 1)));
            }
        }
        let mut names: Vec<String> = Vec::new();
        for m in &t.metrics {
            let spec = MetricSpec::parse(m.get_ref()).map_err(|msg| Error::config(self.at(m), format!("task {task:?}: {msg}")))?;
            let name = match &spec {
                MetricSpec::Name(n) => n.clone(),
                MetricSpec::Judge(j) => j.metric_name(),
            };
            if names.contains(&name) {
                let why = match &spec {
                    MetricSpec::Judge(_) => "; two judges with one template would share a metric name: give each its own task, or copy the template into judges/ under another name",
                    MetricSpec::Name(_) => "; list it once",
                };
                return Err(Error::config(self.at(m), format!("task {task:?}: metric {name} is listed twice{why}")));
            }
            names.push(name);
            match spec {
                MetricSpec::Name(name) => crate::metric::check_metric(&name, t.kind).map_err(|msg| Error::config(self.at(m), format!("task {task:?}: {msg}")))?,
                MetricSpec::Judge(j) => {
                    if t.kind != TaskKind::Generate {
                        return Err(Error::config(self.at(m), format!("task {task:?}: judges score generated answers; this is a {} task", kind_name(t.kind))));
                    }
                    for (what, name) in std::iter::once(("model", &j.model)).chain(j.baseline.iter().map(|b| ("baseline", b))) {
                        if !self.file.models.iter().any(|x| &x.name == name) {
                            let names: Vec<&str> = self.file.models.iter().map(|x| x.name.as_str()).collect();
                            return Err(Error::config(self.at(m), format!("task {task:?}: judge {what} {name:?} is not a [[model]] of the suite ({})", names.join(", "))));
                        }
                    }
                    let judge = crate::judge::load_judge(&j.judge, &self.dir).map_err(|e| Error::config(self.at(m), format!("task {task:?}: {e}")))?;
                    // a comparison needs two answers: without them the metric would have no value
                    let evaluated: Vec<&str> = self.file.models.iter().filter(|x| x.evaluate).map(|x| x.name.as_str()).collect();
                    let opponents = evaluated.iter().filter(|x| Some(**x) != j.baseline.as_deref()).count();
                    let enough = match &j.baseline {
                        Some(_) => opponents >= 1,
                        None => evaluated.len() >= 2,
                    };
                    if judge.template.kind != crate::judge::JudgeKind::Single && !enough {
                        return Err(Error::config(
                            self.at(m),
                            format!("task {task:?}: judge {:?} compares two answers, but the suite evaluates {} ({}); add a model, or give a `baseline`", j.judge, evaluated.len(), evaluated.join(", ")),
                        ));
                    }
                }
            }
        }
        if let Some(h) = &t.human_label {
            env.template_from_str(h.get_ref()).map_err(|e| Error::config(self.at(h), format!("task {task:?}: human-label: bad template: {}", crate::prompt::jinja_message(&e))))?;
        }
        if !(t.temperature >= 0.0 && t.temperature.is_finite()) {
            return Err(Error::config(table, format!("task {task:?}: temperature = {}: give 0 (greedy) or a positive number", t.temperature)));
        }
        if t.kind == TaskKind::Generate && t.max_tokens == 0 {
            return Err(Error::config(table, format!("task {task:?}: max-tokens = 0 leaves every answer empty; give at least 1")));
        }
        if let Some(p) = t.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(Error::config(table, format!("task {task:?}: top-p = {p}: give a probability above 0, at most 1")));
        }
        if t.stop.iter().any(String::is_empty) {
            return Err(Error::config(table, format!("task {task:?}: stop has an empty string, which would stop every answer before it starts; remove it")));
        }
        Ok(())
    }

    /// Content hash of the suite file plus every data file it names (the run's identity).
    pub fn content_hash(&self) -> Result<String> {
        let mut h = String::new();
        h.push_str(&crate::util::sha256_hex(self.text.as_bytes()));
        // `${VAR}` in base-url and model: the endpoint and model the text names depend on them
        for m in &self.file.models {
            h.push_str(&crate::util::sha256_hex(format!("{}\n{}\n{}", m.name, m.base_url, m.model).as_bytes()));
        }
        for t in &self.file.tasks {
            let mut files = vec![t.data.get_ref().clone()];
            if let Some(from) = t.few_shot.as_ref().and_then(|f| f.get_ref().from.as_ref()) {
                files.push(from.get_ref().clone());
            }
            for f in files {
                let p = self.resolve(&f);
                let bytes = std::fs::read(&p).map_err(|source| Error::Read { path: p.clone(), cause: source })?;
                h.push_str(&crate::util::sha256_hex(&bytes));
            }
            // a judge template edited between runs changes every verdict
            for m in &t.metrics {
                if let Ok(MetricSpec::Judge(j)) = MetricSpec::parse(m.get_ref()) {
                    h.push_str(&crate::judge::load_judge(&j.judge, &self.dir)?.hash);
                }
            }
        }
        Ok(crate::util::sha256_hex(h.as_bytes()))
    }
}

/// A task's metric entry: a metric name, or a judge.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricSpec {
    Name(String),
    Judge(JudgeSpec),
}

/// `{ judge = "pairwise", model = "gpt4-judge", baseline = "x" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeSpec {
    /// Judge template name (a file in judges/, next to the suite, or built in).
    pub judge: String,
    /// The `[[model]]` that judges.
    pub model: String,
    /// Pairwise: every model is compared with this one.
    pub baseline: Option<String>,
    /// Pairwise: every pair of evaluated models (`mode = "all-pairs"`).
    pub all_pairs: bool,
    /// Overrides the judge template's `max-tokens` (a small local judge needs few).
    pub max_tokens: Option<u32>,
}

impl JudgeSpec {
    /// The metric's name in results, e.g. `judge-single`, `judge-pairwise-vs-base`.
    pub fn metric_name(&self) -> String {
        match (&self.baseline, self.all_pairs) {
            (Some(b), _) => format!("judge-{}-vs-{b}", self.judge),
            (None, true) => format!("judge-{}-all-pairs", self.judge),
            _ => format!("judge-{}", self.judge),
        }
    }
}

impl MetricSpec {
    /// Reads a `metrics` entry: a string, or a judge table.
    pub fn parse(v: &toml::Value) -> std::result::Result<MetricSpec, String> {
        match v {
            toml::Value::String(s) => Ok(MetricSpec::Name(s.clone())),
            toml::Value::Table(t) => {
                for k in t.keys() {
                    if !["judge", "model", "baseline", "mode", "max-tokens"].contains(&k.as_str()) {
                        return Err(format!("unknown key `{k}` in a judge metric; expected judge, model, baseline, mode or max-tokens"));
                    }
                }
                let get = |k: &str| -> std::result::Result<Option<String>, String> {
                    match t.get(k) {
                        None => Ok(None),
                        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                        Some(other) => Err(format!("`{k}` must be a string, found {}", other.type_str())),
                    }
                };
                let judge = get("judge")?.ok_or("a judge metric needs `judge` (e.g. \"single\" or \"pairwise\")")?;
                let model = get("model")?.ok_or("a judge metric needs `model`, the [[model]] that judges")?;
                let baseline = get("baseline")?;
                let all_pairs = match get("mode")?.as_deref() {
                    None => false,
                    Some("all-pairs") => true,
                    Some(m) => return Err(format!("unknown judge mode {m:?}; expected \"all-pairs\"")),
                };
                if baseline.is_some() && all_pairs {
                    return Err("give either baseline or mode = \"all-pairs\", not both".into());
                }
                let max_tokens = match t.get("max-tokens") {
                    None => None,
                    Some(toml::Value::Integer(n)) if *n > 0 && *n <= i64::from(u32::MAX) => Some(*n as u32),
                    Some(other) => return Err(format!("`max-tokens` must be an integer from 1 to {}, found {other}", u32::MAX)),
                };
                Ok(MetricSpec::Judge(JudgeSpec { judge, model, baseline, all_pairs, max_tokens }))
            }
            other => Err(format!("a metric is a name or a judge table, found {}", other.type_str())),
        }
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` with environment variables.
pub fn expand_env(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
        let inner = &after[..end];
        let (var, default) = match inner.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(var), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("environment variable {var} is not set; export it or write ${{{var}:-default}}")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The kebab-case name of a task kind.
pub fn kind_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Generate => "generate",
        TaskKind::MultipleChoice => "multiple-choice",
        TaskKind::Loglikelihood => "loglikelihood",
        TaskKind::Perplexity => "perplexity",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run resumed after `${VAR}` changed would mix two endpoints' answers in one run.
    #[test]
    fn the_hash_covers_what_environment_variables_expand_to() {
        let dir = std::env::temp_dir().join(format!("llmeval-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("d.jsonl"), "{\"q\": \"1\", \"a\": \"1\"}\n").unwrap();
        let text = "name = \"s\"\n[[model]]\nname = \"m\"\nengine = \"openai\"\nbase-url = \"http://127.0.0.1:9/v1\"\nmodel = \"${LLMEVAL_TEST_HASH_MODEL:-one}\"\n\
                    [[task]]\nname = \"t\"\nkind = \"generate\"\ndata = \"d.jsonl\"\nprompt = \"{{ q }}\"\ntarget = \"{{ a }}\"\nmetrics = [\"exact-match\"]\n";
        let hash = || Suite::parse(&dir.join("s.toml"), text.to_string()).unwrap().content_hash().unwrap();
        let before = hash();
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("LLMEVAL_TEST_HASH_MODEL", "two") };
        let after = hash();
        unsafe { std::env::remove_var("LLMEVAL_TEST_HASH_MODEL") };
        assert_ne!(before, after);
        assert_eq!(hash(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_expansion() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("LLMEVAL_TEST_EXPAND", "http://h:1/v1") };
        assert_eq!(expand_env("${LLMEVAL_TEST_EXPAND}").unwrap(), "http://h:1/v1");
        assert_eq!(expand_env("${LLMEVAL_TEST_UNSET_X:-http://d/v1}").unwrap(), "http://d/v1");
        assert_eq!(expand_env("plain").unwrap(), "plain");
        assert!(expand_env("${LLMEVAL_TEST_UNSET_X}").unwrap_err().contains("LLMEVAL_TEST_UNSET_X"));
        assert!(expand_env("${oops").is_err());
    }
}
