//! `llmeval leaderboard`: a suite run against loopback models (one always right on arithmetic and
//! wrong on echoing, one the other way round, and a pairwise judge, so there is an arena), then
//! the plain table (asked for, and when stdout is a pipe), the errors, and the real binary in a
//! pseudo-terminal, driven through tmux as a person would: sort, drill down, search, resize, quit.

use crate::server::FakeServer;
use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Right on every sum; echoes nothing.
fn steady(prompt: &str) -> String {
    if prompt.starts_with("Repeat: ") {
        return "no.".into();
    }
    format!(" {}", sum_of(prompt))
}

/// Right when the sum is a multiple of 4; echoes exactly.
fn shaky(prompt: &str) -> String {
    if let Some(text) = prompt.strip_prefix("Repeat: ") {
        return text.to_string();
    }
    let sum = sum_of(prompt);
    format!(" {}", if sum % 4 == 0 { sum } else { sum + 1 })
}

/// Prefers the answer holding the right sum.
fn judge(prompt: &str) -> String {
    let right = sum_of(prompt).to_string();
    let between = |s: &str, e: &str| -> String {
        let i = prompt.find(s).map(|i| i + s.len()).unwrap_or(0);
        prompt[i..].split(e).next().unwrap_or("").to_string()
    };
    let has = |a: &str| a.split(|c: char| !c.is_ascii_digit()).any(|t| t == right);
    let verdict = match (has(&between("[Assistant A's answer]", "[End of assistant A's answer]")), has(&between("[Assistant B's answer]", "[End of assistant B's answer]"))) {
        (true, false) => "[[A]]",
        (false, true) => "[[B]]",
        _ => "[[C]]",
    };
    format!("Compared. {verdict}")
}

fn suite(steady: &str, shaky: &str, judge: &str) -> String {
    format!(
        r#"name = "board"

{}{}{}
{}
[[task]]
name = "echo"
kind = "generate"
data = "data/echo.jsonl"
prompt = "Repeat: {{{{ text }}}}"
target = "{{{{ text }}}}"
max-tokens = 16
metrics = ["exact-match"]
"#,
        remote_model("steady", steady, "s", ""),
        remote_model("shaky", shaky, "k", ""),
        remote_model("judge", judge, "j", "evaluate = false"),
        arith_task(r#"max-tokens = 16
extract = { regex = "(-?\\d+)" }
metrics = ["exact-match", { judge = "pairwise", model = "judge", baseline = "steady" }]"#),
    )
}

struct Fixture {
    dir: TempDir,
    run_id: String,
    results: Value,
    _servers: [FakeServer; 3],
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let servers = [FakeServer::start(steady), FakeServer::start(shaky), FakeServer::start(judge)];
        let dir = TempDir::new(name);
        dir.write("data/arith.jsonl", &arith_rows(6));
        dir.write("data/echo.jsonl", "{\"text\": \"red fox\"}\n{\"text\": \"blue whale\"}\n{\"text\": \"green frog\"}\n{\"text\": \"grey owl\"}\n");
        let s = dir.write("suite.toml", &suite(&servers[0].base_url(), &servers[1].base_url(), &servers[2].base_url()));
        let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let results = json_out(&out);
        let run_id = results["run_id"].as_str().unwrap().to_string();
        Fixture { dir, run_id, results, _servers: servers }
    }

    fn db(&self) -> String {
        self.dir.db().to_str().unwrap().to_string()
    }

    /// `value ± half-width` of a stored result, as the table shows it.
    fn cell(&self, model: &str, task: &str) -> String {
        let r = result(&self.results, model, task, "exact-match");
        let (v, lo, hi) = (r["value"].as_f64().unwrap(), r["ci95"][0].as_f64().unwrap(), r["ci95"][1].as_f64().unwrap());
        format!("{v:.3} ± {:.3}", (hi - lo) / 2.0)
    }
}

#[test]
fn leaderboard_prints_the_table_when_asked_or_piped_and_names_bad_values() {
    let f = Fixture::new("board-plain");
    let db = f.db();
    let plain = llmeval(&["leaderboard", "--db", &db, "--plain"]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    let text = stdout(&plain);
    assert!(!text.contains('\u{1b}'), "no terminal control codes:\n{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("leaderboard of 1 run(s): {} (board)", f.run_id));
    // Columns: model, overall, arena (the judged pairs are battles), then the task metrics.
    let header: Vec<&str> = lines[1].split("  ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["model", "overall", "arena", "arith · exact-match", "arith · judge-pairwise-vs-steady", "echo · exact-match"]);
    assert!(lines[2].chars().all(|c| c == '-' || c == ' '));
    // Overall: shaky (3 of 6 sums, 4 of 4 echoes) 0.750 above steady (6 of 6, 0 of 4) 0.500.
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[3].starts_with("shaky ") && lines[4].starts_with("steady "), "{text}");
    for (line, model, overall) in [(lines[3], "shaky", "0.750"), (lines[4], "steady", "0.500")] {
        assert!(line.contains(overall), "{line}");
        for task in ["arith", "echo"] {
            assert!(line.contains(&f.cell(model, task)), "{model} {task}: {} in {line}", f.cell(model, task));
        }
    }
    // Columns line up: every row's cells end where the header's do.
    let ends = |l: &str| -> Vec<usize> {
        let chars: Vec<char> = l.chars().collect();
        (0..chars.len()).filter(|&i| chars[i] != ' ' && chars.get(i + 1).is_none_or(|c| *c == ' ') && chars.get(i + 2).is_none_or(|c| *c == ' ')).collect()
    };
    // (The model column is text, aligned left; the figures are aligned right.)
    assert_eq!(ends(lines[3])[1..], ends(lines[1])[1..], "{text}");
    assert_eq!(ends(lines[4])[1..], ends(lines[1])[1..], "{text}");
    assert_eq!(lines[3].find(" 0.750"), lines[4].find(" 0.500"), "{text}");
    // The baseline has no pairwise score against itself: an em dash.
    assert!(lines[4].contains(" — "), "{}", lines[4]);

    // A pipe gets the same table without --plain.
    let piped = llmeval(&["leaderboard", "--db", &db]);
    assert_eq!(piped.status.code(), Some(0), "{}", stderr(&piped));
    assert_eq!(stdout(&piped), text);
    let by_tag_and_suite = llmeval(&["leaderboard", "--db", &db, "--suite", "board", "--runs", "latest"]);
    assert_eq!(stdout(&by_tag_and_suite), text);

    // Errors: exit 2, naming the bad value.
    let missing = f.dir.path().join("none.db");
    let o = llmeval(&["leaderboard", "--db", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("none.db does not exist"), "{}", stderr(&o));
    assert!(!missing.exists(), "no database is created");
    let o = llmeval(&["leaderboard", "--db", &db, "--runs", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("\"nope\""), "{}", stderr(&o));
    let o = llmeval(&["leaderboard", "--db", &db, "--suite", "other"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no run of suite \"other\"") && stderr(&o).contains("board"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

/// A tmux server of its own (socket in the test's directory), killed on drop.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    /// Starts `command` in a detached `w` × `h` session, or fails saying how to get tmux.
    fn start(dir: &Path, w: u16, h: u16, command: &str) -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("tmux -V failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("the leaderboard's terminal test drives llmeval in a pseudo-terminal with tmux (tmux: {e}); install it with `apt-get install -y tmux` (as .ci/run does)"),
        }
        let t = Tmux { socket: dir.join("tmux.sock") };
        let o = t.cmd(&["new-session", "-d", "-s", "board", "-x", &w.to_string(), "-y", &h.to_string(), command]);
        assert!(o.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&o.stderr));
        t
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-S").arg(&self.socket).args(["-f", "/dev/null"]).args(args).env_remove("TMUX").stdin(Stdio::null()).output().expect("run tmux")
    }

    /// Types keys (tmux key names: `Enter`, `Escape`, or literal text with `-l`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "board"];
        args.extend(keys);
        assert!(self.cmd(&args).status.success());
    }

    fn text(&self, text: &str) {
        assert!(self.cmd(&["send-keys", "-t", "board", "-l", text]).status.success());
    }

    /// The screen as text, one string per line.
    fn screen(&self) -> Vec<String> {
        let o = self.cmd(&["capture-pane", "-p", "-t", "board"]);
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
    }

    fn format(&self, f: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["display-message", "-p", "-t", "board", f]).stdout).trim().to_string()
    }

    /// Waits (up to 20 s) until the screen satisfies `ok`; fails with the screen.
    fn wait(&self, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if t.elapsed() > Duration::from_secs(20) {
                panic!("waited 20 s for {what}; the screen:\n{}", s.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every one of `wants` starts a line of the screen (a frame can be caught half
    /// drawn, so a check waits for all it needs at once).
    fn wait_for(&self, wants: &[&str]) -> Vec<String> {
        self.wait(&format!("{wants:?}"), |s| wants.iter().all(|w| s.iter().any(|l| l.starts_with(w))))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Whether the line starting with `a` is above the one starting with `b`.
fn above(screen: &[String], a: &str, b: &str) -> bool {
    let at = |p: &str| screen.iter().position(|l| l.starts_with(p));
    matches!((at(a), at(b)), (Some(x), Some(y)) if x < y)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn leaderboard_in_a_terminal_sorts_drills_down_searches_and_restores_the_terminal() {
    let f = Fixture::new("board-pty");
    // After llmeval exits: its status and the terminal's modes, then wait to be read.
    let command = format!("{} leaderboard --db {}; echo \"exit=$?\"; stty -a; sleep 600", quote(BIN), quote(&f.db()));
    let tmux = Tmux::start(f.dir.path(), 120, 30, &command);

    // The board, by overall: shaky above steady, with the arena column.
    const KEYS: &str = "←↓↑→/hjkl move";
    let title = "llmeval leaderboard · suite: all · run: all (1) · sort:";
    let s = tmux.wait("the board by overall", |s| above(s, &format!("{title} overall ▼"), "shaky") && above(s, "shaky", "steady") && above(s, "steady", KEYS));
    assert!(s[1].contains("arena") && s[1].contains("arith") && s[1].contains("echo"), "{}", s[1]);
    assert!(s.iter().any(|l| l.starts_with("steady") && l.contains(&f.cell("steady", "arith"))), "{}", s.join("\n"));

    // Right to arith · exact-match (past overall and arena), sort: steady (6 of 6) first.
    tmux.keys(&["l", "l", "l", "s"]);
    let s = tmux.wait("steady above shaky", |s| above(s, &format!("{title} arith · exact-match ▼"), "steady") && above(s, "steady", "shaky") && above(s, "shaky", KEYS));
    assert!(s[1].contains("arith ▼"), "{}", s[1]);
    // Again: reversed.
    tmux.keys(&["s"]);
    tmux.wait("shaky above steady", |s| above(s, &format!("{title} arith · exact-match ▲"), "shaky") && above(s, "shaky", "steady") && above(s, "steady", KEYS));

    // The keys overlay, closed by any key.
    tmux.keys(&["?"]);
    tmux.wait("the keys", |s| s.iter().any(|l| l.contains("sort by the column; again reverses")));
    tmux.keys(&["x"]);
    tmux.wait("the keys to close", |s| !s.iter().any(|l| l.contains("again reverses")) && above(s, "shaky", "steady"));

    // Enter on the cursor's cell (shaky stayed under it): shaky's arithmetic samples, every field.
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for(&[
        "shaky × arith · exact-match · 6 sample(s) · at 1 of 6",
        "── 1/6 · shaky · arith #q0 · incorrect",
        "prompt    Q: 11+7",
        "          A:",
        "response   19",
        "answer    19",
        "target    18",
        "scores    exact-match 0.0000",
        "judge     judge-pairwise-vs-steady: judge vs steady (this answer as A) → verdict ",
        "judge     judge-pairwise-vs-steady: judge vs steady (this answer as B) → verdict ",
        "  said    Compared. [[",
        "j/k scroll",
    ]);
    // Search for the fourth item's question, below the screen: it comes to the top, once.
    assert!(!s.iter().any(|l| l.contains("122+166")), "{}", s.join("\n"));
    tmux.text("/122+166");
    tmux.wait_for(&["/122+166"]);
    tmux.keys(&["Enter"]);
    let s = tmux.wait("the match at the top", |s| s.len() > 2 && s[1].starts_with("prompt    Q: 122+166") && s.iter().any(|l| l.starts_with("match 1 of 1 for \"122+166\"")));
    assert!(s[0].contains("at 4 of 6"), "{}", s[0]);
    // Scrolling from there, and back to the top.
    tmux.keys(&["j"]);
    tmux.wait("a line down", |s| s.len() > 2 && s[1].starts_with("          A:") && s[2].starts_with("response   288"));
    tmux.keys(&["g"]);
    tmux.wait("the top", |s| s.len() > 1 && s[1].starts_with("── 1/6"));
    // Esc clears the search; q goes back to the board.
    tmux.keys(&["Escape"]);
    tmux.wait_for(&["j/k scroll"]);
    tmux.keys(&["q"]);
    tmux.wait("the board", |s| above(s, title, "shaky") && above(s, "shaky", KEYS));

    // A tiny terminal, then a normal one again: still running, redrawn.
    assert!(tmux.cmd(&["resize-window", "-t", "board", "-x", "10", "-y", "3"]).status.success());
    tmux.wait("the tiny redraw", |s| s.first().is_some_and(|l| l.starts_with("llmeval le")) && s.len() <= 3);
    assert!(tmux.cmd(&["resize-window", "-t", "board", "-x", "120", "-y", "30"]).status.success());
    tmux.wait("the board again", |s| above(s, &format!("{title} arith · exact-match ▲"), "shaky") && above(s, "steady", KEYS));

    // q leaves: exit status 0, the main screen back, the cursor shown, the line discipline cooked.
    tmux.keys(&["q"]);
    let s = tmux.wait("the exit status and modes", |s| s.iter().any(|l| l.starts_with("exit=")) && s.iter().any(|l| l.contains("icanon")));
    assert!(s.iter().any(|l| l == "exit=0"), "{}", s.join("\n"));
    assert!(!s.iter().any(|l| l.contains("llmeval leaderboard")), "the alternate screen was left:\n{}", s.join("\n"));
    assert_eq!(tmux.format("#{alternate_on} #{cursor_flag}"), "0 1", "main screen, cursor visible");
    let modes: Vec<String> = s.join(" ").split([' ', ';']).map(str::to_string).collect();
    for m in ["icanon", "echo", "isig"] {
        assert!(modes.iter().any(|x| x == m) && !modes.iter().any(|x| *x == format!("-{m}")), "raw mode left on ({m}):\n{}", s.join("\n"));
    }
}

/// Commands that read the results database neither create it nor overwrite it, and a tag never
/// shadows a run.
#[test]
fn reading_commands_leave_the_database_alone_and_tags_stay_unambiguous() {
    let dir = TempDir::new("db-safety");
    let missing = dir.path().join("typo.db");
    for args in [vec!["runs", "list"], vec!["leaderboard", "--plain"], vec!["report", "--out", "r.html"]] {
        let mut a = args.clone();
        a.extend(["--db", missing.to_str().unwrap()]);
        let out = llmeval(&a);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("typo.db does not exist"), "{args:?}: {}", stderr(&out));
    }
    assert!(!missing.exists(), "a read did not create the database");

    let server = crate::server::FakeServer::start(crate::server::arith_answer);
    dir.write("data/arith.jsonl", &arith_rows(3));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let db = dir.db();
    let db = db.to_str().unwrap();
    let run = |_| json_out(&llmeval(&["run", suite.to_str().unwrap(), "--db", db, "--json"]))["run_id"].as_str().unwrap().to_string();
    let (first, second) = (run(0), run(1));
    // --out naming the database is refused, and the database still reads
    let out = llmeval(&["report", "--db", db, "--out", db]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is the database itself"), "{}", stderr(&out));
    assert_eq!(llmeval(&["runs", "list", "--db", db]).status.code(), Some(0));
    // tags that would read as a run, `latest`, nothing, or control characters are refused
    for bad in [second.as_str(), &second[..6], "latest", "", "a\u{1b}b"] {
        let out = llmeval(&["runs", "tag", &first, bad, "--db", db]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr(&out).contains("a tag must not be empty, `latest`, a run id"), "{}", stderr(&out));
    }
    // moving a tag says so
    assert_eq!(stdout(&llmeval(&["runs", "tag", &first, "baseline", "--db", db])).trim(), format!("tagged {first} as baseline"));
    assert_eq!(stdout(&llmeval(&["runs", "tag", &second, "baseline", "--db", db])).trim(), format!("moved tag baseline from {first} to {second}"));
}

/// A reader that stops early (`| head`) ends the command quietly, exit 0, not with a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: a fresh pipe; its read end is closed before the child writes.
    unsafe { assert_eq!(libc::pipe(fds.as_mut_ptr()), 0) };
    // SAFETY: both descriptors were just made and are owned here once each.
    let (read, write) = unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = std::process::Command::new(BIN).args(["metrics", "--help"]).stdout(std::process::Stdio::from(write)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let dir = TempDir::new("pipe");
    dir.write("h.txt", "a b c\n");
    let mut fds = [0i32; 2];
    // SAFETY: as above.
    unsafe { assert_eq!(libc::pipe(fds.as_mut_ptr()), 0) };
    let (read, write) = unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let h = dir.path().join("h.txt");
    let out = std::process::Command::new(BIN).args(["metrics", "bleu", "--hyp", h.to_str().unwrap(), "--ref", h.to_str().unwrap()]).stdout(std::process::Stdio::from(write)).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
