//! ⑤ Metrics: each one turns a finished sample into per-sample statistics, and statistics into an
//! aggregate.
//!
//! Per-sample statistics are a vector, not a number: for a mean metric it holds the score; for a
//! corpus metric (a perplexity, BLEU) it holds the sufficient statistics that the aggregate sums.
//! That one shape lets the store keep every sample, lets the bootstrap resample corpus metrics,
//! and lets the gate pair items across runs.

pub mod basic;
pub mod chatglm;
pub mod chatglm_core;
pub mod jieba;
pub mod reference;
pub mod diversity;
pub mod porter;
pub mod rouge;
pub mod sacrebleu;
pub mod text;

use crate::model::Loglikelihood;
use crate::prompt::Item;
use crate::suite::TaskKind;

/// What a model produced for one item.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Evidence {
    /// A generated response and the answer extracted from it.
    Generation { response: String, answer: String },
    /// One log-likelihood per choice (multiple choice).
    Choices { results: Vec<Loglikelihood> },
    /// Multiple choice answered by generating a letter (chat-only endpoints).
    Letter { response: String, answer: String, picked: Option<usize> },
    /// Log-likelihood of the target continuation.
    Continuation { result: Loglikelihood },
    /// Rolling log-likelihood of the whole prompt text.
    Rolling { result: Loglikelihood },
}

/// A metric.
pub trait Metric: Send + Sync {
    /// Name used in suites and results (kebab-case).
    fn name(&self) -> &'static str;
    /// Per-sample statistics, or an error when the evidence does not fit the metric.
    fn score(&self, item: &Item, evidence: &Evidence) -> Result<Vec<f64>, String>;
    /// Whether `aggregate` is something other than the mean of the first statistic; the standard
    /// error then comes from a bootstrap.
    fn is_corpus(&self) -> bool {
        false
    }
    /// The metric over a set of samples' statistics.
    fn aggregate(&self, stats: &[&[f64]]) -> f64 {
        stats.iter().map(|s| s[0]).sum::<f64>() / stats.len() as f64
    }
    /// A strictly increasing function of [`Metric::aggregate`] that stays finite where the
    /// aggregate overflows (a perplexity's log); paired tests compare runs on it.
    fn test_statistic(&self, stats: &[&[f64]]) -> f64 {
        self.aggregate(stats)
    }
    /// A single sample's score, for display and paired comparisons.
    fn sample_value(&self, stats: &[f64]) -> f64 {
        self.aggregate(&[stats])
    }
}

const GENERATE_METRICS: &[&str] = &[
    "exact-match", "contains", "f1", "bleu", "bleu-intl", "bleu-zh", "bleu-char", "bleu-none", "chrf", "chrf++", "rouge1", "rouge2", "rougeL", "rougeLsum", "rouge1-stem", "rouge2-stem",
    "rougeL-stem", "rougeLsum-stem", "chatglm-rouge-1", "chatglm-rouge-2", "chatglm-rouge-l", "chatglm-bleu-4", "distinct-1", "distinct-2",
];

/// The metric names a kind of task accepts, defaults first.
pub fn names_for(kind: TaskKind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        TaskKind::Generate => (&["exact-match"], GENERATE_METRICS),
        TaskKind::MultipleChoice => (&["acc", "acc-norm"], &["acc", "acc-norm"]),
        TaskKind::Loglikelihood => (&["loglikelihood", "acc"], &["loglikelihood", "acc", "perplexity"]),
        TaskKind::Perplexity => (&["word-perplexity", "byte-perplexity", "bits-per-byte"], &["word-perplexity", "byte-perplexity", "bits-per-byte"]),
    }
}

/// Checks that `name` is a metric a task of `kind` can report.
pub fn check_metric(name: &str, kind: TaskKind) -> Result<(), String> {
    let (_, allowed) = names_for(kind);
    if allowed.contains(&name) {
        Ok(())
    } else {
        Err(format!("unknown metric {name:?} for a {} task{}; expected one of: {}", crate::suite::kind_name(kind), crate::util::did_you_mean(name, allowed.iter().copied()), allowed.join(", ")))
    }
}

/// Builds a metric by name (checked by [`check_metric`] first).
pub fn by_name(name: &str) -> Option<Box<dyn Metric>> {
    use basic::*;
    Some(match name {
        "exact-match" => Box::new(ExactMatch),
        "contains" => Box::new(Contains),
        "f1" => Box::new(TokenF1),
        "acc" => Box::new(Acc),
        "acc-norm" => Box::new(AccNorm),
        "loglikelihood" => Box::new(LoglikelihoodMetric),
        "perplexity" => Box::new(Perplexity),
        "word-perplexity" => Box::new(RollingPerplexity::Word),
        "byte-perplexity" => Box::new(RollingPerplexity::Byte),
        "bits-per-byte" => Box::new(RollingPerplexity::BitsPerByte),
        "bleu" => Box::new(reference::Bleu(sacrebleu::Tokenize::Thirteen)),
        r if r.starts_with("bleu-") => Box::new(reference::Bleu(r["bleu-".len()..].parse().ok()?)),
        "chrf" => Box::new(reference::Chrf(0)),
        "chrf++" => Box::new(reference::Chrf(2)),
        "chatglm-rouge-1" => Box::new(reference::ChatGlm(0)),
        "chatglm-rouge-2" => Box::new(reference::ChatGlm(1)),
        "chatglm-rouge-l" => Box::new(reference::ChatGlm(2)),
        "chatglm-bleu-4" => Box::new(reference::ChatGlm(3)),
        "distinct-1" => Box::new(reference::Distinct(1)),
        "distinct-2" => Box::new(reference::Distinct(2)),
        r if r.starts_with("rouge") => {
            let stem = r.ends_with("-stem");
            let kind: rouge::RougeType = r.trim_end_matches("-stem").parse().ok()?;
            let name = *GENERATE_METRICS.iter().find(|n| **n == r)?;
            Box::new(reference::Rouge { name, kind, stem })
        }
        _ => return None,
    })
}

/// The metrics of a task: the ones it names (judges included), or its kind's defaults.
pub fn for_task(task: &crate::suite::TaskConfig) -> Vec<Box<dyn Metric>> {
    use crate::suite::MetricSpec;
    if task.metrics.is_empty() {
        return names_for(task.kind).0.iter().filter_map(|n| by_name(n)).collect();
    }
    task.metrics
        .iter()
        .filter_map(|m| match MetricSpec::parse(m.get_ref()).ok()? {
            MetricSpec::Name(n) => by_name(&n),
            MetricSpec::Judge(j) => Some(Box::new(crate::judge::JudgeMetric(j.metric_name().leak())) as Box<dyn Metric>),
        })
        .collect()
}
