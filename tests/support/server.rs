//! A fake OpenAI-compatible server on 127.0.0.1 for tests and benchmarks: real HTTP/1.1 with
//! keep-alive, one thread per connection, scripted faults, a request log and an in-flight gauge.
//! It stands in for a remote service only; everything else under test is the real thing.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does with one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    None,
    /// 429 with a `Retry-After` header (seconds).
    RateLimited(String),
    /// 500 with a JSON error.
    ServerError,
    /// 400: a permanent client error.
    BadRequest,
    /// 400 with this error message.
    Refused(String),
    /// Close the connection without answering.
    Drop,
    /// 200 with an HTML body.
    NotJson,
    /// Answer only after this long.
    Slow(Duration),
    /// 200 with this body.
    Body(String),
}

pub type FaultFn = dyn Fn(&str, usize) -> Fault + Send + Sync;
pub type AnswerFn = dyn Fn(&str) -> String + Send + Sync;

#[derive(Clone, Debug)]
pub struct Record {
    /// Unique per request (the log can be cleared while requests are in flight).
    pub id: usize,
    pub path: String,
    pub body: Value,
    /// The prompt text (last user message for chat).
    pub key: String,
    pub authorization: Option<String>,
    /// Whether a complete successful response was written.
    pub answered: bool,
}

pub struct State {
    pub latency: Mutex<Duration>,
    pub faults: Mutex<Arc<FaultFn>>,
    pub answer: Mutex<Arc<AnswerFn>>,
    pub required_key: Mutex<Option<String>>,
    pub log: Mutex<Vec<Record>>,
    attempts: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    next_id: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    stop: AtomicBool,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl FakeServer {
    /// Starts a server answering with `answer(prompt)`, no faults, no latency.
    pub fn start(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            latency: Mutex::new(Duration::ZERO),
            faults: Mutex::new(Arc::new(|_: &str, _: usize| Fault::None)),
            answer: Mutex::new(Arc::new(answer)),
            required_key: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            next_id: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        FakeServer { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_latency(&self, d: Duration) {
        *self.state.latency.lock().unwrap() = d;
    }

    /// `faults(prompt, attempt)` with attempt counted from 0 per prompt.
    pub fn set_faults(&self, f: impl Fn(&str, usize) -> Fault + Send + Sync + 'static) {
        *self.state.faults.lock().unwrap() = Arc::new(f);
    }

    pub fn require_key(&self, key: &str) {
        *self.state.required_key.lock().unwrap() = Some(key.to_string());
    }

    pub fn accept_any_key(&self) {
        *self.state.required_key.lock().unwrap() = None;
    }

    pub fn log(&self) -> Vec<Record> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
        self.state.attempts.lock().unwrap().clear();
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }

    pub fn answered(&self) -> usize {
        self.state.log.lock().unwrap().iter().filter(|r| r.answered).count()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// The whitespace-led pieces the fake "tokenizer" splits text into.
pub fn fake_tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_whitespace() && !cur.is_empty() && !cur.chars().all(char::is_whitespace) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x1000_0000_01b3);
    }
    h
}

/// The fake model's log-probability of token `i` of `tokens` (depends on the token and its
/// predecessor, so a choice's score depends on its context).
pub fn fake_logprob(tokens: &[String], i: usize) -> f64 {
    let prev = if i == 0 { "" } else { &tokens[i - 1] };
    -((fnv(&format!("{prev}|{}", tokens[i])) % 1000) as f64) / 250.0 - 0.01
}

/// Whether the fake model's top token at position `i` is the token itself.
pub fn fake_is_top(tokens: &[String], i: usize) -> bool {
    !fnv(&tokens[i]).is_multiple_of(3)
}

/// The `/completions` answer to `prompt` (echoed with log-probabilities).
pub fn echo_body(prompt: &str) -> Value {
    let mut tokens = fake_tokens(prompt);
    tokens.push(" zz".into()); // the one generated token
    let mut offsets = Vec::new();
    let mut off = 0;
    for t in &tokens {
        offsets.push(off);
        off += t.chars().count();
    }
    let lps: Vec<Value> = (0..tokens.len()).map(|i| if i == 0 { Value::Null } else { json!(fake_logprob(&tokens, i)) }).collect();
    let tops: Vec<Value> = (0..tokens.len())
        .map(|i| {
            if i == 0 {
                return Value::Null;
            }
            let lp = fake_logprob(&tokens, i);
            if fake_is_top(&tokens, i) { json!({ tokens[i].clone(): lp }) } else { json!({ "<other>": lp + 0.5, tokens[i].clone(): lp }) }
        })
        .collect();
    json!({"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": format!("{prompt} zz"), "finish_reason": "length",
        "logprobs": {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}

fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &str) -> bool {
    let msg = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len());
    stream.write_all(msg.as_bytes()).is_ok() && stream.flush().is_ok()
}

fn serve(stream: TcpStream, st: &State) {
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    while let Some((path, headers, body)) = read_request(&mut reader) {
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let keep = handle(&mut writer, st, &path, &headers, &body);
        st.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

fn handle(w: &mut TcpStream, st: &State, path: &str, headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let key = match body.get("messages").and_then(Value::as_array) {
        Some(msgs) => msgs.iter().rev().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or("").to_string(),
        None => body.get("prompt").and_then(Value::as_str).unwrap_or("").to_string(),
    };
    let id = st.next_id.fetch_add(1, Ordering::SeqCst);
    {
        let mut log = st.log.lock().unwrap();
        log.push(Record { id, path: path.to_string(), body: body.clone(), key: key.clone(), authorization: headers.get("authorization").cloned(), answered: false });
    }
    let attempt = {
        let mut a = st.attempts.lock().unwrap();
        let e = a.entry(format!("{path}|{key}")).or_insert(0);
        *e += 1;
        *e - 1
    };
    let latency = *st.latency.lock().unwrap();
    if !latency.is_zero() {
        std::thread::sleep(latency);
    }
    if let Some(required) = st.required_key.lock().unwrap().clone()
        && headers.get("authorization") != Some(&format!("Bearer {required}"))
    {
        return respond(w, "401 Unauthorized", "", r#"{"error":{"message":"bad key"}}"#);
    }
    let fault = (st.faults.lock().unwrap().clone())(&key, attempt);
    match fault {
        Fault::None => {}
        Fault::RateLimited(after) => return respond(w, "429 Too Many Requests", &format!("Retry-After: {after}\r\n"), r#"{"error":{"message":"rate limited"}}"#),
        Fault::ServerError => return respond(w, "500 Internal Server Error", "", r#"{"error":{"message":"boom"}}"#),
        Fault::BadRequest => return respond(w, "400 Bad Request", "", r#"{"error":{"message":"this model does not exist"}}"#),
        Fault::Refused(m) => return respond(w, "400 Bad Request", "", &json!({"error": {"message": m, "type": "invalid_request_error"}}).to_string()),
        Fault::Drop => return false,
        Fault::NotJson => return respond(w, "200 OK", "", "<html>bad gateway</html>"),
        Fault::Slow(d) => std::thread::sleep(d),
        Fault::Body(b) => return respond(w, "200 OK", "", &b),
    }
    let out = if path.ends_with("/chat/completions") {
        let text = (st.answer.lock().unwrap().clone())(&key);
        json!({"id": "chat-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": key.len() / 4 + 1, "completion_tokens": text.len() / 4 + 1, "total_tokens": 0}})
    } else if path.ends_with("/completions") {
        if body.get("echo") == Some(&Value::Bool(true)) {
            echo_body(&key)
        } else {
            let text = (st.answer.lock().unwrap().clone())(&key);
            json!({"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": key.len() / 4 + 1, "completion_tokens": text.len() / 4 + 1, "total_tokens": 0}})
        }
    } else {
        return respond(w, "404 Not Found", "", r#"{"error":{"message":"not found"}}"#);
    };
    let ok = respond(w, "200 OK", "", &out.to_string());
    if ok
        && let Some(r) = st.log.lock().unwrap().iter_mut().rev().find(|r| r.id == id)
    {
        r.answered = true;
    }
    ok
}

/// The arithmetic answer the fake model gives to `Q: a+b` (wrong for every seventh question).
pub fn arith_answer(prompt: &str) -> String {
    let last = prompt.rsplit("Q:").next().unwrap_or("");
    let expr = last.lines().next().unwrap_or("").trim();
    let (a, b) = expr.split_once('+').unwrap_or(("0", "0"));
    let (a, b): (i64, i64) = (a.trim().parse().unwrap_or(0), b.trim().parse().unwrap_or(0));
    let right = a + b;
    if (a * 31 + b) % 7 == 0 { format!(" I think it is {}.", right + 1) } else { format!(" {right}") }
}
