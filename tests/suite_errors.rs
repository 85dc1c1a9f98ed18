//! Malformed suites: one clear error each, naming the file, the line and the field; exit code 2.

use crate::support::*;

fn base(dir: &TempDir, task_extra: &str, model_extra: &str) -> std::path::PathBuf {
    dir.write("data/arith.jsonl", &arith_rows(3));
    let suite = arith_suite("http://127.0.0.1:9/v1", model_extra).replace("metrics = [\"exact-match\"]", &format!("metrics = [\"exact-match\"]\n{task_extra}"));
    dir.write("suite.toml", &suite)
}

/// The base suite with `edit` applied to its text.
fn edited(dir: &TempDir, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let suite = base(dir, "", "");
    std::fs::write(&suite, edit(std::fs::read_to_string(&suite).unwrap())).unwrap();
    suite
}

fn run_err(suite: &std::path::Path, dir: &TempDir) -> String {
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The 1-based line of the first line containing `needle`.
fn line_of(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path).unwrap().lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn unknown_field() {
    let dir = TempDir::new("unknown");
    let suite = base(&dir, "", "temprature = 0.5");
    let err = run_err(&suite, &dir);
    let line = line_of(&suite, "temprature");
    assert!(err.contains(&format!("suite.toml:{line}")), "{err}");
    assert!(err.contains("unknown field `temprature`"), "{err}");
    assert!(err.contains("expected one of"), "the error lists the valid keys: {err}");
}

#[test]
fn bad_template() {
    let dir = TempDir::new("template");
    let suite = edited(&dir, |t| t.replace("prompt = \"Q: {{ question }}", "prompt = \"Q: {{ question "));
    let err = run_err(&suite, &dir);
    let line = line_of(&suite, "prompt =");
    assert!(err.contains(&format!("suite.toml:{line}")) && err.contains("prompt") && err.contains("bad template"), "{err}");
}

#[test]
fn template_naming_a_missing_column() {
    let dir = TempDir::new("column");
    let suite = edited(&dir, |t| t.replace("{{ question }}", "{{ questoin }}"));
    let err = run_err(&suite, &dir);
    assert!(err.contains("arith.jsonl:1") && err.contains("prompt") && err.contains("undefined"), "{err}");
    assert!(err.contains("`questoin` is not a column of this row (did you mean `question`?); its columns are `answer`, `id`, `question`"), "the error names the missing one and the columns there are: {err}");
    // an undefined attribute of a column is not a missing column: only the columns are named
    let suite = edited(&dir, |t| t.replace("{{ question }}", "{{ question.text }}"));
    let err = run_err(&suite, &dir);
    assert!(err.contains("undefined") && err.contains("(the row's columns are `answer`, `id`, `question`)") && !err.contains("not a column"), "{err}");
}

#[test]
fn a_task_the_model_cannot_serve_is_refused_before_a_run_is_stored() {
    let dir = TempDir::new("needs-logprobs");
    let suite = edited(&dir, |t| t.replace("kind = \"generate\"", "kind = \"loglikelihood\"").replace("metrics = [\"exact-match\"]", "metrics = [\"loglikelihood\"]"));
    let err = run_err(&suite, &dir);
    assert!(err.contains("suite.toml: task \"arith\" needs log-probabilities, which model \"remote-x\" (api = \"chat\") cannot give"), "{err}");
    let list = llmeval(&["runs", "list", "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(json_out(&list).as_array().map(Vec::len), Some(0), "no run was left behind");
}

#[test]
fn choices_that_are_a_string_not_a_list() {
    let dir = TempDir::new("choices-string");
    let suite = edited(&dir, |t| t.replace("kind = \"generate\"", "kind = \"multiple-choice\"\nchoices = \"question\"\ngold = \"0\"").replace("metrics = [\"exact-match\"]", "metrics = [\"acc\"]"));
    let err = run_err(&suite, &dir);
    assert!(err.contains("arith.jsonl:1") && err.contains("choices: expected a list, got the string"), "{err}");
}

#[test]
fn missing_data_file() {
    let dir = TempDir::new("missing");
    let suite = edited(&dir, |t| t.replace("data/arith.jsonl", "data/nope.jsonl"));
    let err = run_err(&suite, &dir);
    let line = line_of(&suite, "nope.jsonl");
    assert!(err.contains(&format!("suite.toml:{line}")) && err.contains("nope.jsonl") && err.contains("does not exist"), "{err}");
}

#[test]
fn bad_regex() {
    let dir = TempDir::new("regex");
    let suite = edited(&dir, |t| t.replace("(-?\\\\d+)", "(-?\\\\d+"));
    let err = run_err(&suite, &dir);
    let line = line_of(&suite, "extract =");
    assert!(err.contains(&format!("suite.toml:{line}")) && err.contains("bad regex"), "{err}");
}

#[test]
fn duplicate_names_bad_limits_and_a_directory_for_data_name_their_table() {
    let dir = TempDir::new("tables");
    let suite = base(&dir, "", "");
    let text = std::fs::read_to_string(&suite).unwrap();
    let model = &text[text.find("[[model]]").unwrap()..text.find("[[task]]").unwrap()];
    let task = &text[text.find("[[task]]").unwrap()..];
    for (changed, want, table) in [
        (format!("{text}\n{model}"), "model name \"remote-x\" is used twice", ("[[model]]", 2)),
        (format!("{text}\n{task}"), "task name \"arith\" is used twice", ("[[task]]", 2)),
        (text.replacen("[[model]]", "[[model]]\nconcurrency = 0", 1), "concurrency must be at least 1", ("[[model]]", 1)),
        (text.replacen("[[model]]", "[[model]]\ntimeout-s = -1", 1), "timeout-s = -1: give seconds above 0, at most 604800", ("[[model]]", 1)),
        // these crashed: a Duration cannot hold them
        (text.replacen("[[model]]", "[[model]]\ntimeout-s = inf", 1), "timeout-s = inf: give seconds above 0", ("[[model]]", 1)),
        (text.replacen("[[model]]", "[[model]]\nrequests-per-minute = 1e-300", 1), "requests-per-minute = 0.000", ("[[model]]", 1)),
        // turn k of a multi-turn task is stored as task "NAME/turn-k"
        (text.replace("name = \"arith\"", "name = \"arith/turn-2\""), "ends like a turn of a multi-turn task", ("[[task]]", 1)),
        // an escape sequence in a name would drive the terminal of whoever reads the results
        (text.replace("name = \"remote-x\"", "name = \"x\\u001b[2J\""), "model name \"x\\u{1b}[2J\" holds the control character '\\u{1b}'", ("[[model]]", 1)),
    ] {
        std::fs::write(&suite, &changed).unwrap();
        let err = run_err(&suite, &dir);
        let line = changed.lines().enumerate().filter(|(_, l)| l.trim() == table.0).nth(table.1 - 1).unwrap().0 + 1;
        assert!(err.contains(&format!("suite.toml:{line}: ")) && err.contains(want), "{want}: {err}");
    }
    std::fs::write(&suite, text.replace("data/arith.jsonl", "data")).unwrap();
    let err = run_err(&suite, &dir);
    assert!(err.contains("is a directory; name a .jsonl, .json, .csv or .tsv file in it"), "{err}");
}

#[test]
fn unknown_metric_and_wrong_types() {
    let dir = TempDir::new("metric");
    let suite = edited(&dir, |t| t.replace("metrics = [\"exact-match\"]", "metrics = [\"exact-match\", \"acc-norm\"]"));
    let err = run_err(&suite, &dir);
    assert!(err.contains("unknown metric \"acc-norm\" for a generate task"), "{err}");

    let text = std::fs::read_to_string(&suite).unwrap().replace("concurrency", "x").replace("api = \"chat\"", "api = \"chat\"\nconcurrency = \"lots\"");
    std::fs::write(&suite, text).unwrap();
    let err = run_err(&suite, &dir);
    let line = line_of(&suite, "concurrency");
    assert!(err.contains(&format!("suite.toml:{line}")) && err.contains("invalid type"), "{err}");
}

/// The same metric twice in a task (two judges with one template among them) would write two
/// results under one name; a judge's max-tokens beyond u32 wrapped around to 0.
#[test]
fn a_metric_listed_twice_and_judge_max_tokens_out_of_range() {
    let dir = TempDir::new("metric-twice");
    for (metrics, want) in [
        (r#"["exact-match", "exact-match"]"#, "metric exact-match is listed twice; list it once"),
        (r#"["exact-match", { judge = "single", model = "remote-x" }, { judge = "single", model = "other" }]"#, "metric judge-single is listed twice; two judges with one template"),
        (r#"["exact-match", { judge = "single", model = "remote-x", max-tokens = 4294967296 }]"#, "`max-tokens` must be an integer from 1 to 4294967295, found 4294967296"),
    ] {
        let suite = edited(&dir, |t| {
            let other = t[t.find("[[model]]").unwrap()..t.find("[[task]]").unwrap()].replace("remote-x", "other");
            t.replace("metrics = [\"exact-match\"]", &format!("metrics = {metrics}")).replace("[[task]]", &format!("{other}[[task]]"))
        });
        let err = run_err(&suite, &dir);
        let line = line_of(&suite, "metrics =");
        assert!(err.contains(&format!("suite.toml:{line}")) && err.contains(want), "{want}: {err}");
    }
}

/// Errors that named no field or no line: a value of the wrong range, an unset environment
/// variable, a table header with a comment, a few-shot count the data cannot serve.
#[test]
fn errors_name_the_field_and_the_line() {
    let dir = TempDir::new("field-lines");
    let suite = edited(&dir, |t| t.replace("max-tokens = 8", "max-tokens = -1"));
    let err = run_err(&suite, &dir);
    assert!(err.contains(&format!("suite.toml:{}: `max-tokens`: invalid value", line_of(&suite, "max-tokens"))), "{err}");
    let suite = edited(&dir, |t| t.replace("model = \"served-model-name\"", "model = \"${LLMEVAL_TEST_SURELY_UNSET}\""));
    let err = run_err(&suite, &dir);
    assert!(err.contains(&format!("suite.toml:{}: ", line_of(&suite, "[[model]]"))) && err.contains("LLMEVAL_TEST_SURELY_UNSET is not set"), "{err}");
    let suite = edited(&dir, |t| {
        let model = t[t.find("[[model]]").unwrap()..t.find("[[task]]").unwrap()].replace("[[model]]", "[[model]] # again");
        t.replace("[[task]]", &format!("{model}[[task]]"))
    });
    let err = run_err(&suite, &dir);
    assert!(err.contains(&format!("suite.toml:{}: ", line_of(&suite, "[[model]] # again"))) && err.contains("used twice"), "{err}");
    let suite = edited(&dir, |t| t.replace("max-tokens = 8", "max-tokens = 8\nfew-shot = { n = 5 }"));
    let err = run_err(&suite, &dir);
    assert!(err.contains(&format!("suite.toml:{}: ", line_of(&suite, "few-shot"))) && err.contains("few-shot n = 5 needs 6 rows"), "{err}");
}

/// A judge of two answers with one evaluated model would never give a value.
#[test]
fn a_pairwise_judge_needs_two_answers() {
    let dir = TempDir::new("pairwise-one");
    let suite = edited(&dir, |t| t.replace("metrics = [\"exact-match\"]", "metrics = [\"exact-match\", { judge = \"pairwise\", model = \"remote-x\" }]"));
    let err = run_err(&suite, &dir);
    assert!(err.contains(&format!("suite.toml:{}", line_of(&suite, "metrics ="))) && err.contains("judge \"pairwise\" compares two answers, but the suite evaluates 1 (remote-x)"), "{err}");
}

/// An empty continuation has log-probability 0: it would win every multiple choice and score a
/// perfect log-likelihood, so the row is an error (lm-eval's default delimiter " " avoids it).
#[test]
fn an_empty_continuation_is_an_error_naming_the_row() {
    let dir = TempDir::new("empty-continuation");
    for (kind, extra, metric, want) in [
        ("multiple-choice", "choices = \"[question, '']\"\ngold = \"0\"\ntarget-delimiter = \"\"", "acc", "choice 1 is empty"),
        ("loglikelihood", "target-delimiter = \"\"", "loglikelihood", "the target is empty"),
    ] {
        let suite = edited(&dir, |t| {
            t.replace("api = \"chat\"", "api = \"completions\"")
                .replace("kind = \"generate\"", &format!("kind = \"{kind}\"\n{extra}"))
                .replace("target = \"{{ answer }}\"", "target = \"{{ '' if id == 'q1' else answer }}\"")
                .replace("extract = { regex = \"(-?\\\\d+)\" }\n", "")
                .replace("metrics = [\"exact-match\"]", &format!("metrics = [\"{metric}\"]"))
        });
        let err = run_err(&suite, &dir);
        let row = if kind == "multiple-choice" { 1 } else { 2 };
        assert!(err.contains(&format!("arith.jsonl:{row}: ")) && err.contains(want) && err.contains("target-delimiter"), "{kind}: {err}");
    }
}

/// Generation settings no request can use are errors at the task's table (they were sent as is:
/// empty answers scored as wrong, NaN temperature stored as null).
#[test]
fn generation_settings_out_of_range_name_the_task_table() {
    let dir = TempDir::new("gen-settings");
    for (extra, want) in [
        ("temperature = nan", "temperature = NaN: give 0 (greedy) or a positive number"),
        ("temperature = -1.0", "temperature = -1: give 0"),
        ("top-p = 7.0", "top-p = 7: give a probability above 0, at most 1"),
        ("stop = [\"\\n\", \"\"]", "stop has an empty string"),
    ] {
        let suite = edited(&dir, |t| t.replace("max-tokens = 8", &format!("max-tokens = 8\n{extra}")));
        let err = run_err(&suite, &dir);
        assert!(err.contains(&format!("suite.toml:{}: ", line_of(&suite, "[[task]]"))) && err.contains(want), "{extra}: {err}");
    }
    // a prompt that renders empty would be answered from nothing and scored
    let suite = edited(&dir, |t| t.replace("prompt = \"Q: {{ question }}\\nA:\"", "prompt = \"{{ '' if id == 'q2' else question }}\""));
    let err = run_err(&suite, &dir);
    assert!(err.contains("arith.jsonl:3: ") && err.contains("the prompt renders empty"), "{err}");
    // chat formatting was silently not applied to log-likelihood scoring
    let suite = edited(&dir, |t| t.replace("kind = \"generate\"", "kind = \"loglikelihood\"\nchat = true").replace("metrics = [\"exact-match\"]", "metrics = [\"loglikelihood\"]"));
    assert!(run_err(&suite, &dir).contains("chat = true is for generate tasks; a loglikelihood task scores the prompt as plain text"));
    let suite = edited(&dir, |t| t.replace("max-tokens = 8", "max-tokens = 0"));
    assert!(run_err(&suite, &dir).contains("max-tokens = 0 leaves every answer empty"));
    // A JSON null printed as "none" would be scored as text.
    let suite = edited(&dir, |t| t);
    dir.write("data/arith.jsonl", &arith_rows(3).replacen("\"answer\": \"18\"", "\"answer\": null", 1));
    let err = run_err(&suite, &dir);
    assert!(err.contains("arith.jsonl:1: ") && err.contains("target") && err.contains("a value is null"), "{err}");
}

#[test]
fn bad_data_row() {
    let dir = TempDir::new("row");
    let suite = base(&dir, "", "");
    dir.write("data/arith.jsonl", "{\"question\": \"1+1\", \"answer\": \"2\"}\n{\"question\": \"1+2\", \"answer\": 3,}\n");
    let err = run_err(&suite, &dir);
    assert!(err.contains("arith.jsonl:2") && err.contains("invalid JSON"), "{err}");
}

#[test]
fn unknown_task_selection() {
    let dir = TempDir::new("sel");
    let suite = base(&dir, "", "");
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--tasks", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no task named \"nope\"") && stderr(&out).contains("arith"), "{}", stderr(&out));
}

#[test]
fn bad_device() {
    let dir = TempDir::new("device");
    dir.write("data/arith.jsonl", &arith_rows(3));
    for bad in ["gpu", "cuda:x", "cuda:"] {
        let suite = arith_suite("http://127.0.0.1:9/v1", "")
            .replace("engine = \"openai\"\nbase-url = \"http://127.0.0.1:9/v1\"\nmodel = \"served-model-name\"\napi = \"chat\"", &format!("engine = \"builtin\"\npath = \"missing.gguf\"\ndevice = \"{bad}\""));
        let suite = dir.write("suite.toml", &suite);
        let err = run_err(&suite, &dir);
        let line = line_of(&suite, "device =");
        assert!(err.contains(&format!("suite.toml:{line}")), "{bad}: {err}");
        assert!(err.contains(&format!("device: unknown device \"{bad}\"")) && err.contains("\"cuda:N\""), "{bad}: {err}");
    }
}
