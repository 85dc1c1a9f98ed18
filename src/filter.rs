//! Response → answer: the `extract` regex, then the `filters` steps, in order.

use crate::suite::{FilterStep, TaskConfig};
use regex::Regex;

const INVALID: &str = "[invalid]";

enum Step {
    Strip,
    Lowercase,
    Uppercase,
    TakeFirst,
    Regex { re: Regex, group: usize, fallback: String },
    Map(std::collections::BTreeMap<String, String>),
}

/// A task's compiled filter pipeline.
pub struct Pipeline(Vec<Step>);

fn default_group(re: &Regex) -> usize {
    usize::from(re.captures_len() > 1)
}

impl Pipeline {
    /// Compiles the task's `extract` and `filters` (validated when the suite was loaded).
    pub fn new(task: &TaskConfig) -> Pipeline {
        let mut steps = Vec::new();
        if let Some(ex) = &task.extract {
            let re = Regex::new(ex.regex.get_ref()).expect("validated with the suite");
            let group = ex.group.unwrap_or_else(|| default_group(&re));
            steps.push(Step::Regex { re, group, fallback: ex.fallback.clone() });
        }
        for f in &task.filters {
            steps.push(match f {
                FilterStep::Strip => Step::Strip,
                FilterStep::Lowercase => Step::Lowercase,
                FilterStep::Uppercase => Step::Uppercase,
                FilterStep::TakeFirst => Step::TakeFirst,
                FilterStep::Regex(r) => {
                    let re = Regex::new(r.get_ref()).expect("validated with the suite");
                    let group = default_group(&re);
                    Step::Regex { re, group, fallback: INVALID.into() }
                }
                FilterStep::Map(m) => Step::Map(m.clone()),
            });
        }
        Pipeline(steps)
    }

    /// The answer for a response.
    pub fn apply(&self, response: &str) -> String {
        let mut s = response.to_string();
        for step in &self.0 {
            s = match step {
                Step::Strip => s.trim().to_string(),
                Step::Lowercase => s.to_lowercase(),
                Step::Uppercase => s.to_uppercase(),
                Step::TakeFirst => s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string(),
                Step::Regex { re, group, fallback } => match re.captures(&s) {
                    Some(c) => c.get(*group).map_or("", |m| m.as_str()).to_string(),
                    None => fallback.clone(),
                },
                Step::Map(m) => m.get(s.as_str()).cloned().unwrap_or(s),
            };
        }
        s
    }
}

/// The letter a chat model picked for a multiple-choice question: the first standalone capital
/// letter among the offered ones (`A`, `(B)`, `C.`, `Answer: D`).
pub fn pick_letter(response: &str, n_choices: usize) -> Option<usize> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\b([A-Z])\b").expect("valid regex"));
    re.captures_iter(response).filter_map(|c| {
        let b = c[1].as_bytes()[0];
        let i = usize::from(b - b'A');
        (i < n_choices).then_some(i)
    }).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: &str) -> TaskConfig {
        let text = format!("name='t'\nkind='generate'\ndata='d.jsonl'\nprompt='p'\ntarget='t'\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn regex_then_filters() {
        let p = Pipeline::new(&task("extract = { regex = '(-?\\d+)' }"));
        assert_eq!(p.apply("The answer is -12, not 3"), "-12");
        assert_eq!(p.apply("no number"), "[invalid]");
        let p = Pipeline::new(&task("filters = ['take-first', 'lowercase', { map = { yes = 'A' } }]"));
        assert_eq!(p.apply("\n  YES \nmore"), "A");
        let p = Pipeline::new(&task("extract = { regex = 'answer: \\w+' }"));
        assert_eq!(p.apply("final answer: blue!"), "answer: blue");
    }

    #[test]
    fn letters() {
        assert_eq!(pick_letter("The answer is (C).", 4), Some(2));
        assert_eq!(pick_letter("I think B", 2), Some(1));
        assert_eq!(pick_letter("Z is not offered, A is", 2), Some(0));
        assert_eq!(pick_letter("none", 4), None);
    }
}
