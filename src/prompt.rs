//! ② Rows → rendered items: minijinja templates for the prompt, target, choices, gold and
//! category, with lm-evaluation-harness's few-shot construction.
//!
//! Everything is rendered up front, before any request is sent, so that a template that fails on
//! row 1,234 stops the run with the file and line before any money is spent. Few-shot examples are
//! drawn with Python's own generator ([`crate::pyrandom`]), so prompts equal lm-eval's.

use crate::dataset::Row;
use crate::error::{Error, Result};
use crate::suite::{Suite, TaskConfig};
use minijinja::{Environment, UndefinedBehavior, Value};

/// One evaluation item of a task, fully rendered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Item {
    /// 0-based position in the data file.
    pub index: usize,
    /// The row's `id` field when it has one, else the index.
    pub id: String,
    /// SHA-256 of the row (canonical JSON): matches items across runs.
    pub doc_hash: String,
    /// Category for separate reporting.
    pub category: Option<String>,
    /// The full prompt: few-shot examples, then this row's rendered prompt.
    pub prompt: String,
    /// Reference answer (generate) or continuation (loglikelihood).
    pub target: Option<String>,
    /// Choices (multiple-choice).
    pub choices: Vec<String>,
    /// Index of the gold choice (multiple-choice).
    pub gold: Option<usize>,
    /// A human's pairwise verdict (`human-label`): the winning model's name or "tie".
    #[serde(default)]
    pub human: Option<String>,
    /// Multi-turn tasks: every turn's rendered prompt (`prompt` is the first).
    #[serde(default)]
    pub turns: Vec<String>,
}

/// The template environment shared by suites and judges: strict undefined values, so a missing
/// column is an error rather than an empty string.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // a JSON null would print as "none" and be scored as text (a null target matching "none")
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                "a value is null; fix the row, or test it with `{% if x is none %}` or give a default with `x or \"\"`",
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.set_syntax(minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build().expect("default syntax is valid"));
    env
}

/// A one-line message for a minijinja error.
pub fn jinja_message(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

struct Compiled<'a> {
    prompt: minijinja::Template<'a, 'a>,
    target: Option<minijinja::Template<'a, 'a>>,
    category: Option<minijinja::Template<'a, 'a>>,
    human: Option<minijinja::Template<'a, 'a>>,
    choices: Option<minijinja::Expression<'a, 'a>>,
    gold: Option<minijinja::Expression<'a, 'a>>,
    turns: Option<minijinja::Expression<'a, 'a>>,
}

/// The parts of one row before few-shot examples are added.
struct Rendered {
    prompt: String,
    target: Option<String>,
    category: Option<String>,
    human: Option<String>,
    choices: Vec<String>,
    gold: Option<usize>,
    turns: Vec<String>,
}

impl Rendered {
    /// The answer shown after the prompt in a few-shot example.
    fn example_answer(&self) -> Option<&str> {
        match self.gold {
            Some(g) => self.choices.get(g).map(String::as_str),
            None => self.target.as_deref(),
        }
    }
}

/// The category of a row whose `category` template renders blank.
pub const NO_CATEGORY: &str = "(none)";

/// Renders one row; few-shot `example`s skip the category, which they do not need.
fn render_row(c: &Compiled, task: &TaskConfig, row: &Row, loc: &str, example: bool) -> Result<Rendered> {
    let ctx = Value::from(minijinja::value::Serde(&row.fields));
    // an undefined value is most often a column the row does not have: name the template's names
    // that the row lacks (minijinja's message does not), and the columns it has
    let fail = |field: &str, names: std::collections::HashSet<String>, e: minijinja::Error| {
        let mut hint = String::new();
        if e.kind() == minijinja::ErrorKind::UndefinedError {
            let env = environment();
            let given = |n: &str| row.fields.contains_key(n) || c.turns.is_some() && (n == "turn" || n == "turn_index") || env.globals().any(|(g, _)| g == n);
            let mut missing: Vec<String> = names.into_iter().filter(|n| !given(n)).collect();
            missing.sort();
            let quoted = |names: &mut dyn Iterator<Item = &String>| names.map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
            let columns = quoted(&mut row.fields.keys());
            hint = match missing.as_slice() {
                [] => format!(" (the row's columns are {columns})"),
                [one] => format!(": `{one}` is not a column of this row{}; its columns are {columns}", crate::util::did_you_mean(one, row.fields.keys().map(String::as_str))),
                many => format!(": {} are not columns of this row; its columns are {columns}", quoted(&mut many.iter())),
            };
        }
        Error::data(loc, format!("task {:?}: {field}: {}{hint}", task.name, jinja_message(&e)))
    };
    let render = |field: &str, t: &minijinja::Template| t.render(&ctx).map_err(|e| fail(field, t.undeclared_variables(false), e));
    let prompt = if c.turns.is_some() { String::new() } else { render("prompt", &c.prompt)? };
    let target = c.target.as_ref().map(|t| render("target", t)).transpose()?;
    let category = c.category.as_ref().filter(|_| !example).map(|t| render("category", t)).transpose()?;
    let human = c.human.as_ref().filter(|_| !example).map(|t| render("human-label", t)).transpose()?;
    let mut choices = Vec::new();
    let mut gold = None;
    if let Some(expr) = &c.choices {
        let v = expr.eval(&ctx).map_err(|e| fail("choices", expr.undeclared_variables(false), e))?;
        // a string iterates as its characters, which is never what a list of choices means
        if v.kind() == minijinja::value::ValueKind::String {
            return Err(Error::data(loc, format!("task {:?}: choices: expected a list, got the string {v:?}; the expression must give a list (a column holding one, or `[a, b, c]`)", task.name)));
        }
        let iter = v.try_iter().map_err(|_| Error::data(loc, format!("task {:?}: choices: expected a list, got {v}", task.name)))?;
        choices = iter.map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect();
        if choices.len() < 2 {
            return Err(Error::data(loc, format!("task {:?}: choices: need at least 2 choices, got {}", task.name, choices.len())));
        }
    }
    if let Some(expr) = &c.gold {
        let v = expr.eval(&ctx).map_err(|e| fail("gold", expr.undeclared_variables(false), e))?;
        let g = if let Some(s) = v.as_str() {
            match s.trim().parse::<usize>() {
                Ok(i) if !choices.contains(&s.to_string()) => Some(i),
                _ => choices.iter().position(|c| c == s),
            }
        } else {
            i64::try_from(v.clone()).ok().and_then(|i| usize::try_from(i).ok())
        };
        match g {
            Some(i) if i < choices.len() => gold = Some(i),
            _ => {
                return Err(Error::data(
                    loc,
                    format!("task {:?}: gold: {v} is neither an index below {} nor one of the choices {:?}", task.name, choices.len(), choices),
                ))
            }
        }
    }
    // lm-eval scores a continuation's tokens: an empty one has log-probability 0 and would win
    // every comparison, or score a perfect perplexity
    if !example {
        use crate::suite::TaskKind;
        let empty = |what: String| Err(Error::data(loc, format!("task {:?}: {what} is empty, and an empty text has log-probability 0 (it would always win); fix the row, or give the task a `target-delimiter`", task.name)));
        match task.kind {
            TaskKind::MultipleChoice if task.target_delimiter.is_empty() => {
                if let Some(i) = choices.iter().position(String::is_empty) {
                    return empty(format!("choice {i}"));
                }
            }
            TaskKind::Loglikelihood if task.target_delimiter.is_empty() && target.as_deref().is_some_and(str::is_empty) => return empty("the target".into()),
            TaskKind::Perplexity if prompt.is_empty() => return Err(Error::data(loc, format!("task {:?}: the prompt renders empty: there is no text to score", task.name))),
            TaskKind::Generate if c.turns.is_none() && prompt.trim().is_empty() => {
                return Err(Error::data(loc, format!("task {:?}: the prompt renders empty: a model given nothing answers nothing of the question", task.name)))
            }
            _ => {}
        }
    }
    // a blank category would collide with the whole task's row (category "")
    let category = category.map(|c| if c.trim().is_empty() { NO_CATEGORY.to_string() } else { c });
    let mut turns = Vec::new();
    let mut prompt = prompt;
    if let Some(expr) = &c.turns {
        let v = expr.eval(&ctx).map_err(|e| fail("turns", expr.undeclared_variables(false), e))?;
        let list: Vec<Value> = v.try_iter().map_err(|_| Error::data(loc, format!("task {:?}: turns: expected a list, got {v}", task.name)))?.collect();
        if list.is_empty() {
            return Err(Error::data(loc, format!("task {:?}: turns: the row has no turns", task.name)));
        }
        for (i, turn) in list.iter().enumerate() {
            let mut fields = row.fields.clone();
            fields.insert("turn".into(), serde_json::Value::String(turn.as_str().map(str::to_string).unwrap_or_else(|| turn.to_string())));
            fields.insert("turn_index".into(), serde_json::json!(i));
            turns.push(c.prompt.render(Value::from(minijinja::value::Serde(&fields))).map_err(|e| fail("prompt", c.prompt.undeclared_variables(false), e))?);
        }
        prompt = turns[0].clone();
    }
    Ok(Rendered { prompt, target, category, human, choices, gold, turns })
}

/// Renders every row of a task (at most `limit`) into items, few-shot examples included.
pub fn render_task(suite: &Suite, task: &TaskConfig, rows: &[Row], limit: Option<usize>) -> Result<Vec<Item>> {
    let env = environment();
    let bad = |field: &str, e: minijinja::Error| Error::config(suite.path.display().to_string(), format!("task {:?}: {field}: {}", task.name, jinja_message(&e)));
    let compiled = Compiled {
        prompt: env.template_from_str(task.prompt.get_ref()).map_err(|e| bad("prompt", e))?,
        target: task.target.as_ref().map(|t| env.template_from_str(t.get_ref())).transpose().map_err(|e| bad("target", e))?,
        category: task.category.as_ref().map(|t| env.template_from_str(t.get_ref())).transpose().map_err(|e| bad("category", e))?,
        human: task.human_label.as_ref().map(|t| env.template_from_str(t.get_ref())).transpose().map_err(|e| bad("human-label", e))?,
        choices: task.choices.as_ref().map(|t| env.compile_expression(t.get_ref())).transpose().map_err(|e| bad("choices", e))?,
        gold: task.gold.as_ref().map(|t| env.compile_expression(t.get_ref())).transpose().map_err(|e| bad("gold", e))?,
        turns: task.turns.as_ref().map(|t| env.compile_expression(t.get_ref())).transpose().map_err(|e| bad("turns", e))?,
    };
    let data_path = suite.resolve(task.data.get_ref());
    let n = limit.map_or(rows.len(), |l| l.min(rows.len()));

    // Few-shot source: another file, or this data (then the evaluated row is never its own example).
    let fewshot_rows: Option<(Vec<Row>, std::path::PathBuf)> = match task.few_shot.as_ref().and_then(|f| f.get_ref().from.as_ref()) {
        Some(from) => {
            let p = suite.resolve(from.get_ref());
            Some((crate::dataset::load(&p)?, p))
        }
        None => None,
    };
    let (shot_rows, shot_path) = match &fewshot_rows {
        Some((r, p)) => (r.as_slice(), p.as_path()),
        None => (rows, data_path.as_path()),
    };
    let mut shot_cache: Vec<Option<Rendered>> = Vec::new();
    let mut rng = task.few_shot.as_ref().map(|f| crate::pyrandom::PyRandom::new(f.get_ref().seed));
    if let Some(spanned) = &task.few_shot {
        let fs = spanned.get_ref();
        let needed = if fewshot_rows.is_some() { fs.n } else { fs.n + 1 };
        if needed > shot_rows.len() {
            return Err(Error::config(
                suite.at(spanned),
                format!("task {:?}: few-shot n = {} needs {} rows in {}, which has {}", task.name, fs.n, needed, shot_path.display(), shot_rows.len()),
            ));
        }
        shot_cache.resize_with(shot_rows.len(), || None);
    }

    let mut items = Vec::with_capacity(n);
    for (index, row) in rows.iter().take(n).enumerate() {
        let loc = format!("{}:{}", data_path.display(), row.line);
        let r = render_row(&compiled, task, row, &loc, false)?;
        let mut prompt = String::new();
        if let (Some(fs), Some(rng)) = (task.few_shot.as_ref().map(toml::Spanned::get_ref), rng.as_mut()) {
            // lm-eval: sample n (+1 from the same split), drop the evaluated doc, keep n.
            let draw = if fewshot_rows.is_some() { fs.n } else { fs.n + 1 };
            let picked: Vec<usize> = rng.sample(shot_rows.len(), draw).into_iter().filter(|&j| shot_rows[j].fields != row.fields).take(fs.n).collect();
            for j in picked {
                if shot_cache[j].is_none() {
                    let sloc = format!("{}:{}", shot_path.display(), shot_rows[j].line);
                    shot_cache[j] = Some(render_row(&compiled, task, &shot_rows[j], &sloc, true)?);
                }
                let ex = shot_cache[j].as_ref().expect("rendered above");
                let answer = ex.example_answer().ok_or_else(|| {
                    Error::data(format!("{}:{}", shot_path.display(), shot_rows[j].line), format!("task {:?}: a few-shot example needs a target or gold choice", task.name))
                })?;
                prompt.push_str(&ex.prompt);
                prompt.push_str(&task.target_delimiter);
                prompt.push_str(answer);
                prompt.push_str(&fs.delimiter);
            }
        }
        prompt.push_str(&r.prompt);
        let id = match row.fields.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(x)) => x.to_string(),
            _ => index.to_string(),
        };
        let doc_hash = crate::util::sha256_hex(serde_json::to_string(&row.fields).expect("JSON map serializes").as_bytes());
        items.push(Item { index, id, doc_hash, category: r.category, prompt, target: r.target, choices: r.choices, gold: r.gold, human: r.human, turns: r.turns });
    }
    Ok(items)
}
