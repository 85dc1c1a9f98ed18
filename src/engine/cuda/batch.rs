//! Packing requests into the GPU engine's forward passes: paged KV blocks, variable-length
//! batches without padding, shared prefixes, and continuous batching — plain Rust over a
//! [`Forward`] that any model (the GPU, or a test's toy) implements.
//!
//! The one design decision: a sequence's KV lives in fixed-size blocks named by its block table,
//! so sharing a prefix is sharing the table's first entries (whole blocks only: a request reuses
//! the previous request's blocks up to the largest multiple of [`BLOCK`] within their common
//! prefix, and recomputes the rest), and a batch is a list of spans (new tokens of a sequence at
//! known positions) flattened into index arrays (`cu_seqlens`-style), never padded.

use super::super::session::{common_prefix, gen_prompt, score_input, GenOptions, GenState, Generated, Logits, ScoreRequest, ScoreResult};

/// Tokens per KV block.
pub const BLOCK: usize = 16;

/// Reference-counted KV blocks.
pub struct BlockPool {
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl BlockPool {
    pub fn new(blocks: usize) -> BlockPool {
        BlockPool { refs: vec![0; blocks], free: (0..blocks as u32).rev().collect() }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// `n` fresh blocks (one reference each), or `None` when fewer are free.
    pub fn alloc(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let ids = self.free.split_off(self.free.len() - n);
        for &b in &ids {
            self.refs[b as usize] = 1;
        }
        Some(ids)
    }

    pub fn retain(&mut self, ids: &[u32]) {
        for &b in ids {
            self.refs[b as usize] += 1;
        }
    }

    pub fn release(&mut self, ids: &[u32]) {
        for &b in ids {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "block {b} released more often than taken");
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
            }
        }
    }
}

/// One sequence's share of a forward pass: `tokens` at positions `start..` of a sequence whose KV
/// blocks are `table`, and the indices into `tokens` whose logits are wanted, with the token each
/// should be scored against (`None`: argmax only).
#[derive(Debug, Clone)]
pub struct Span {
    pub table: Vec<u32>,
    pub start: usize,
    pub tokens: Vec<u32>,
    pub want: Vec<(usize, Option<u32>)>,
}

/// A forward pass's index arrays, as the kernels read them (i32 for the device).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    /// [n] token ids, spans one after another
    pub tok: Vec<i32>,
    /// [n] position of each token in its sequence
    pub pos: Vec<i32>,
    /// [n] span index of each token
    pub seq_of: Vec<i32>,
    /// [spans] offset of each span's block table in `tables`
    pub blk_off: Vec<i32>,
    /// the block tables, concatenated
    pub tables: Vec<i32>,
    /// [tiles × 4] attention work: span, first packed token, token count, 0
    pub tiles: Vec<i32>,
    /// [w] packed index of each wanted row
    pub want: Vec<i32>,
    /// [w] target of each wanted row (-1: none)
    pub target: Vec<i32>,
    /// `cu_seqlens`: [spans + 1] first packed token of each span, then n
    pub cu_seqlens: Vec<i32>,
}

impl Packed {
    pub fn tokens(&self) -> usize {
        self.tok.len()
    }
    pub fn tiles(&self) -> usize {
        self.tiles.len() / 4
    }
    /// The last position any token of the pass attends to.
    pub fn max_pos(&self) -> usize {
        self.pos.iter().copied().max().unwrap_or(0).max(0) as usize
    }
}

/// Flattens spans into a pass; attention tiles hold at most `tile_tokens` consecutive tokens of
/// one span (so a tile never mixes sequences, and its causal masks are per row).
pub fn pack(spans: &[Span], tile_tokens: usize) -> Packed {
    let tile_tokens = tile_tokens.max(1);
    let mut p = Packed::default();
    for (s, span) in spans.iter().enumerate() {
        let first = p.tok.len();
        debug_assert!(span.table.len() * BLOCK >= span.start + span.tokens.len(), "block table too short");
        p.cu_seqlens.push(first as i32);
        p.blk_off.push(p.tables.len() as i32);
        p.tables.extend(span.table.iter().map(|&b| b as i32));
        for (i, &t) in span.tokens.iter().enumerate() {
            p.tok.push(t as i32);
            p.pos.push((span.start + i) as i32);
            p.seq_of.push(s as i32);
        }
        let mut i = 0;
        while i < span.tokens.len() {
            let n = tile_tokens.min(span.tokens.len() - i);
            p.tiles.extend([s as i32, (first + i) as i32, n as i32, 0]);
            i += n;
        }
        for &(i, target) in &span.want {
            p.want.push((first + i) as i32);
            p.target.push(target.map_or(-1, |t| t as i32));
        }
    }
    p.cu_seqlens.push(p.tok.len() as i32);
    p
}

/// What a forward pass returns per wanted row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowOut {
    /// log-softmax of the logits at the row's target (0 without one)
    pub logprob: f64,
    pub argmax: u32,
    /// the first vocabulary index whose logit is NaN (then `argmax` means nothing)
    pub nan: Option<u32>,
}

impl RowOut {
    /// What a generation step learns from this row without downloading the logits.
    fn reduced(&self) -> Logits<'static> {
        Logits::Reduced { argmax: self.argmax, nan: self.nan }
    }
}

/// A model that runs packed passes; its KV cache is addressed by the spans' block tables.
pub trait Forward {
    type Error;
    /// Runs a pass. `decode`: every span is one token after a prompt already processed (the
    /// engine may run those with a different attention split; the choice depends on the token's
    /// role, never on the batch).
    fn run(&mut self, p: &Packed, decode: bool) -> Result<Vec<RowOut>, Self::Error>;
    /// The logits of wanted row `row` of the last pass (for sampling).
    fn logits(&mut self, row: usize) -> Result<Vec<f32>, Self::Error>;
    /// An error for a request that cannot fit the KV pool even alone.
    fn too_long(&self, tokens: usize, blocks: usize) -> Self::Error;
}

/// How much one pass may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// tokens per pass
    pub tokens: usize,
    /// spans (sequences) per pass
    pub seqs: usize,
    /// tokens per attention tile
    pub tile_tokens: usize,
}

fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK)
}

/// One scoring request in sorted order, with its KV blocks.
struct Item {
    req: usize,
    input: Vec<u32>,
    first_pred: usize,
    table: Vec<u32>,
    /// fed so far (the first `shared` were reused, not fed)
    done: usize,
    result: ScoreResult,
    continuation: Vec<u32>,
}

/// Scores `reqs` (see `Engine::score_batch` for the semantics) in packed passes. Requests are
/// sorted by their tokens; each reuses the previous one's KV blocks over their common prefix
/// (a multiple-choice context is computed once); `sink(i, result)` runs as each finishes.
pub fn score<F: Forward>(f: &mut F, pool: &mut BlockPool, lim: Limits, reqs: &[ScoreRequest], max_len: usize, sink: &mut dyn FnMut(usize, ScoreResult)) -> Result<(), F::Error> {
    let full: Vec<Vec<u32>> = reqs.iter().map(|r| [r.context.as_slice(), r.continuation.as_slice()].concat()).collect();
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|&a, &b| full[a].cmp(&full[b]));
    let mut items: Vec<Item> = Vec::new(); // live: in the pending pass, or the previous request
    let mut pending: Vec<(usize, usize, usize)> = Vec::new(); // (item index, from, to) fed this pass
    let mut pass_tokens = 0;
    let mut prev: Option<usize> = None; // item whose blocks the next request may share
    for &i in &order {
        let r = &reqs[i];
        if r.continuation.is_empty() {
            sink(i, ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: vec![] });
            continue;
        }
        let (input, first_pred) = score_input(&full[i], r.continuation.len(), max_len);
        if input.is_empty() {
            sink(i, ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: vec![] });
            continue;
        }
        let input = input.to_vec();
        let keep = prev.map_or(0, |p| common_prefix(&items[p].input, &input).min(first_pred) / BLOCK * BLOCK);
        let shared: Vec<u32> = prev.map_or(Vec::new(), |p| items[p].table[..keep / BLOCK].to_vec());
        let need = blocks_for(input.len()) - shared.len();
        let fresh = match pool.alloc(need) {
            Some(b) => b,
            None => {
                flush(f, &mut items, &mut pending, &mut pass_tokens, pool, prev, lim.tile_tokens, sink)?;
                match pool.alloc(need) {
                    Some(b) => b,
                    None => return Err(f.too_long(input.len(), pool.capacity())),
                }
            }
        };
        pool.retain(&shared);
        let n_cont = input.len() - first_pred;
        let table = [shared, fresh].concat();
        // the previous request's blocks are no longer needed for sharing
        if let Some(p) = prev.take()
            && !pending.iter().any(|&(it, _, _)| it == p)
        {
            let t = std::mem::take(&mut items[p].table);
            pool.release(&t);
        }
        items.push(Item { req: i, input, first_pred, table, done: keep, result: ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: Vec::with_capacity(n_cont) }, continuation: r.continuation[r.continuation.len() - n_cont..].to_vec() });
        let it = items.len() - 1;
        prev = Some(it);
        while items[it].done < items[it].input.len() {
            if pass_tokens == lim.tokens || pending.len() == lim.seqs {
                flush(f, &mut items, &mut pending, &mut pass_tokens, pool, prev, lim.tile_tokens, sink)?;
            }
            let from = items[it].done;
            let to = items[it].input.len().min(from + lim.tokens - pass_tokens);
            pending.push((it, from, to));
            pass_tokens += to - from;
            items[it].done = to;
        }
    }
    flush(f, &mut items, &mut pending, &mut pass_tokens, pool, None, lim.tile_tokens, sink)?;
    if let Some(p) = prev {
        let t = std::mem::take(&mut items[p].table);
        pool.release(&t);
    }
    Ok(())
}

/// Runs the pending pass; requests whose last tokens were in it go to `sink` and give back their
/// blocks (except `keep`, the one the next request may share).
#[allow(clippy::too_many_arguments)]
fn flush<F: Forward>(f: &mut F, items: &mut [Item], pending: &mut Vec<(usize, usize, usize)>, pass_tokens: &mut usize, pool: &mut BlockPool, keep: Option<usize>, tile_tokens: usize, sink: &mut dyn FnMut(usize, ScoreResult)) -> Result<(), F::Error> {
    if pending.is_empty() {
        return Ok(());
    }
    let spans: Vec<Span> = pending
        .iter()
        .map(|&(it, from, to)| {
            let item = &items[it];
            let want = (from.max(item.first_pred)..to).map(|p| (p - from, Some(item.continuation[p - item.first_pred]))).collect();
            Span { table: item.table.clone(), start: from, tokens: item.input[from..to].to_vec(), want }
        })
        .collect();
    let packed = pack(&spans, tile_tokens);
    let out = f.run(&packed, false)?;
    let mut row = 0;
    for (&(it, _, to), span) in pending.iter().zip(&spans) {
        let item = &mut items[it];
        for &(_, target) in &span.want {
            let o = out[row];
            row += 1;
            item.result.logprob += o.logprob;
            item.result.is_greedy &= Some(o.argmax) == target;
            item.result.token_logprobs.push(o.logprob);
        }
        if to == item.input.len() {
            sink(item.req, std::mem::replace(&mut item.result, ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: vec![] }));
            if keep != Some(it) {
                let t = std::mem::take(&mut item.table);
                pool.release(&t);
            }
        }
    }
    pending.clear();
    *pass_tokens = 0;
    Ok(())
}


/// One generation in flight.
struct Running<'a> {
    job: usize,
    table: Vec<u32>,
    /// positions in the cache (and the position of `next`)
    len: usize,
    /// the token to feed at position `len`
    next: u32,
    state: GenState<'a>,
}

/// Generates for every prompt, `slots` sequences at a time (continuous batching): prompts are
/// admitted while slots and KV blocks allow and prefilled in packed passes; the running sequences
/// then advance one token per pass together, and a finished sequence's slot is refilled from the
/// queue before the next pass. `sink(i, result)` runs as each finishes.
#[allow(clippy::too_many_arguments)]
pub fn generate<F: Forward>(f: &mut F, pool: &mut BlockPool, lim: Limits, slots: usize, prompts: &[Vec<u32>], opts: &[GenOptions], eos: &[u32], max_ctx: usize, decode: &dyn Fn(&[u32]) -> String, sink: &mut dyn FnMut(usize, Generated)) -> Result<(), F::Error> {
    let slots = slots.clamp(1, lim.seqs.max(1));
    let mut queue: std::collections::VecDeque<usize> = (0..prompts.len()).collect();
    let mut running: Vec<Running> = Vec::new();
    loop {
        // ── admit and prefill ──
        let mut admitted: Vec<(usize, Vec<u32>, &[u32])> = Vec::new(); // (job, table, prompt)
        let mut tokens = 0;
        while let Some(&job) = queue.front() {
            if running.len() + admitted.len() >= slots {
                break;
            }
            let prompt = gen_prompt(&prompts[job], opts[job].max_tokens, max_ctx);
            if prompt.is_empty() {
                queue.pop_front();
                sink(job, GenState::new(&opts[job], eos).finish(decode));
                continue;
            }
            if !admitted.is_empty() && tokens + prompt.len() > lim.tokens {
                break;
            }
            // room for the prompt and every token it may generate: decoding never waits for blocks
            let need = blocks_for((prompt.len() + opts[job].max_tokens).min(max_ctx.max(prompt.len())) + 1);
            let Some(table) = pool.alloc(need) else {
                if running.is_empty() && admitted.is_empty() {
                    return Err(f.too_long(prompt.len() + opts[job].max_tokens, pool.capacity()));
                }
                break;
            };
            queue.pop_front();
            tokens += prompt.len();
            admitted.push((job, table, prompt));
        }
        if !admitted.is_empty() {
            // prompts longer than a pass go through in chunks; only the last chunk wants a row
            let mut fed = vec![0usize; admitted.len()];
            while fed.iter().zip(&admitted).any(|(&d, a)| d < a.2.len()) {
                let mut spans = Vec::new();
                let mut ends = Vec::new(); // (admitted index, wanted row) of prompts fully fed now
                let mut room = lim.tokens;
                for (k, (_, table, prompt)) in admitted.iter().enumerate() {
                    if fed[k] == prompt.len() || room == 0 || spans.len() == lim.seqs {
                        continue;
                    }
                    let to = prompt.len().min(fed[k] + room);
                    let mut want = vec![];
                    if to == prompt.len() {
                        want.push((to - fed[k] - 1, None));
                        ends.push((k, ends.len()));
                    }
                    spans.push(Span { table: table.clone(), start: fed[k], tokens: prompt[fed[k]..to].to_vec(), want });
                    room -= to - fed[k];
                    fed[k] = to;
                }
                let rows = f.run(&pack(&spans, lim.tile_tokens), false)?;
                for (k, row) in ends {
                    let (job, ref mut table, prompt) = admitted[k];
                    let table = std::mem::take(table);
                    let mut state = GenState::new(&opts[job], eos);
                    let logits = if state.needs_logits() { Some(f.logits(row)?) } else { None };
                    match state.advance(logits.as_deref().map_or(rows[row].reduced(), Logits::Row), prompt.len(), max_ctx, decode) {
                        Some(next) => running.push(Running { job, table, len: prompt.len(), next, state }),
                        None => {
                            pool.release(&table);
                            sink(job, state.finish(decode));
                        }
                    }
                }
            }
            continue;
        }
        if running.is_empty() {
            debug_assert!(queue.is_empty());
            return Ok(());
        }
        // ── one decode step for every running sequence ──
        let spans: Vec<Span> = running.iter().map(|r| Span { table: r.table.clone(), start: r.len, tokens: vec![r.next], want: vec![(0, None)] }).collect();
        let rows = f.run(&pack(&spans, 1), true)?;
        let mut still = Vec::with_capacity(running.len());
        for (k, mut r) in std::mem::take(&mut running).into_iter().enumerate() {
            r.len += 1;
            let logits = if r.state.needs_logits() { Some(f.logits(k)?) } else { None };
            match r.state.advance(logits.as_deref().map_or(rows[k].reduced(), Logits::Row), r.len, max_ctx, decode) {
                Some(next) => {
                    r.next = next;
                    still.push(r);
                }
                None => {
                    pool.release(&r.table);
                    sink(r.job, r.state.finish(decode));
                }
            }
        }
        running = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 50;

    /// A model whose "logits" at a position are a hash of the tokens its KV cache holds for
    /// positions 0..=pos of that sequence, read through the block table: any mistake in tables,
    /// sharing, positions or chunking changes the outputs.
    struct Toy {
        kv: Vec<Option<u32>>,
        last: Vec<u64>,
        fed: usize,
        passes: usize,
        max_tokens_seen: usize,
    }

    fn hash(ctx: &[u32]) -> u64 {
        ctx.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| (h ^ u64::from(t) ^ 0x9e37).wrapping_mul(0x0100_0000_01b3))
    }

    fn toy_logits(h: u64) -> Vec<f32> {
        (0..VOCAB).map(|i| ((h.rotate_left(i as u32 * 7) % 1000) as f32) / 100.0).collect()
    }

    fn toy_row(h: u64, target: Option<u32>) -> RowOut {
        let l = toy_logits(h);
        let argmax = crate::engine::session::argmax(&l);
        let logprob = target.map_or(0.0, |t| crate::engine::llama::logprob_and_greedy(&l, t).0);
        RowOut { logprob, argmax, nan: l.iter().position(|x| x.is_nan()).map(|i| i as u32) }
    }

    impl Toy {
        fn new(blocks: usize) -> Toy {
            Toy { kv: vec![None; blocks * BLOCK], last: vec![], fed: 0, passes: 0, max_tokens_seen: 0 }
        }
    }

    impl Forward for Toy {
        type Error = String;
        fn run(&mut self, p: &Packed, _decode: bool) -> Result<Vec<RowOut>, String> {
            self.passes += 1;
            self.fed += p.tokens();
            self.max_tokens_seen = self.max_tokens_seen.max(p.tokens());
            let slot = |s: usize, pos: usize| p.tables[p.blk_off[s] as usize + pos / BLOCK] as usize * BLOCK + pos % BLOCK;
            // tiles cover every token once, inside one span, in order
            let mut covered = vec![0; p.tokens()];
            for t in p.tiles.chunks_exact(4) {
                let (s, t0, n) = (t[0] as usize, t[1] as usize, t[2] as usize);
                assert!(n >= 1 && t0 >= p.cu_seqlens[s] as usize && t0 + n <= p.cu_seqlens[s + 1] as usize);
                covered[t0..t0 + n].iter_mut().for_each(|c| *c += 1);
            }
            assert!(covered.iter().all(|&c| c == 1), "tiles cover each token once");
            for t in 0..p.tokens() {
                let k = slot(p.seq_of[t] as usize, p.pos[t] as usize);
                self.kv[k] = Some(p.tok[t] as u32);
            }
            self.last.clear();
            let mut out = Vec::new();
            for (&w, &target) in p.want.iter().zip(&p.target) {
                let (s, pos) = (p.seq_of[w as usize] as usize, p.pos[w as usize] as usize);
                let ctx: Vec<u32> = (0..=pos).map(|q| self.kv[slot(s, q)].ok_or(format!("position {q} of span {s} was never written"))).collect::<Result<_, _>>()?;
                let h = hash(&ctx);
                self.last.push(h);
                out.push(toy_row(h, (target >= 0).then_some(target as u32)));
            }
            Ok(out)
        }
        fn logits(&mut self, row: usize) -> Result<Vec<f32>, String> {
            Ok(toy_logits(self.last[row]))
        }
        fn too_long(&self, tokens: usize, blocks: usize) -> String {
            format!("{tokens} tokens do not fit {blocks} blocks")
        }
    }

    fn reference_score(r: &ScoreRequest, max_len: usize) -> ScoreResult {
        let full = [r.context.as_slice(), r.continuation.as_slice()].concat();
        let (input, first) = score_input(&full, r.continuation.len(), max_len);
        let mut res = ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: vec![] };
        for (j, &tok) in r.continuation[r.continuation.len() - (input.len() - first)..].iter().enumerate() {
            let o = toy_row(hash(&input[..=first + j]), Some(tok));
            res.logprob += o.logprob;
            res.is_greedy &= o.argmax == tok;
            res.token_logprobs.push(o.logprob);
        }
        res
    }

    fn requests() -> Vec<ScoreRequest> {
        let mut rng = crate::stats::SplitMix64::new(7);
        let mut reqs = Vec::new();
        for q in 0..12 {
            let ctx: Vec<u32> = (0..5 + q * 6).map(|_| rng.below(VOCAB) as u32).collect();
            for _ in 0..4 {
                let cont: Vec<u32> = (0..1 + rng.below(6)).map(|_| rng.below(VOCAB) as u32).collect();
                reqs.push(ScoreRequest { context: ctx.clone(), continuation: cont });
            }
        }
        reqs.push(ScoreRequest { context: vec![3], continuation: vec![] });
        reqs
    }

    fn run_score(reqs: &[ScoreRequest], lim: Limits, blocks: usize, max_len: usize) -> (Vec<Option<ScoreResult>>, Toy, BlockPool) {
        let mut toy = Toy::new(blocks);
        let mut pool = BlockPool::new(blocks);
        let mut got = vec![None; reqs.len()];
        score(&mut toy, &mut pool, lim, reqs, max_len, &mut |i, r| {
            assert!(got[i].is_none(), "request {i} delivered twice");
            got[i] = Some(r)
        })
        .unwrap();
        (got, toy, pool)
    }

    #[test]
    fn packing_lays_out_spans_without_padding() {
        let spans = vec![
            Span { table: vec![4, 9], start: 14, tokens: vec![1, 2, 3], want: vec![(2, Some(7))] },
            Span { table: vec![2], start: 0, tokens: vec![5, 6, 7, 8, 9], want: vec![(0, None), (4, Some(1))] },
        ];
        let p = pack(&spans, 2);
        assert_eq!(p.tok, vec![1, 2, 3, 5, 6, 7, 8, 9]);
        assert_eq!(p.pos, vec![14, 15, 16, 0, 1, 2, 3, 4]);
        assert_eq!(p.seq_of, vec![0, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(p.cu_seqlens, vec![0, 3, 8]);
        assert_eq!(p.blk_off, vec![0, 2]);
        assert_eq!(p.tables, vec![4, 9, 2]);
        assert_eq!(p.tiles, vec![0, 0, 2, 0, 0, 2, 1, 0, 1, 3, 2, 0, 1, 5, 2, 0, 1, 7, 1, 0]);
        assert_eq!(p.want, vec![2, 3, 7]);
        assert_eq!(p.target, vec![7, -1, 1]);
        assert_eq!(p.max_pos(), 16);
    }

    #[test]
    fn block_pool_counts_references() {
        let mut pool = BlockPool::new(4);
        let a = pool.alloc(3).unwrap();
        assert!(pool.alloc(2).is_none());
        pool.retain(&a[..2]);
        pool.release(&a);
        assert_eq!(pool.available(), 2, "two blocks still referenced");
        pool.release(&a[..2]);
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn scoring_in_packed_passes_equals_one_request_at_a_time() {
        let reqs = requests();
        for (lim, blocks) in [
            (Limits { tokens: 4096, seqs: 256, tile_tokens: 5 }, 512),
            (Limits { tokens: 24, seqs: 3, tile_tokens: 1 }, 512),
            (Limits { tokens: 7, seqs: 64, tile_tokens: 16 }, 12),
        ] {
            let (got, toy, pool) = run_score(&reqs, lim, blocks, 4096);
            for (i, r) in reqs.iter().enumerate() {
                assert_eq!(got[i].as_ref().unwrap(), &reference_score(r, 4096), "request {i} with {lim:?}");
            }
            assert_eq!(pool.available(), pool.capacity(), "every block given back ({lim:?})");
            assert!(toy.max_tokens_seen <= lim.tokens);
        }
    }

    #[test]
    fn shared_contexts_are_computed_once() {
        let reqs = requests();
        let (_, toy, _) = run_score(&reqs, Limits { tokens: 4096, seqs: 256, tile_tokens: 4 }, 512, 4096);
        let total: usize = reqs.iter().map(|r| r.context.len() + r.continuation.len() - 1).sum();
        let contexts: usize = reqs.chunks(4).map(|c| c[0].context.len()).sum();
        // each choice after the first skips its context's whole blocks
        let saved: usize = reqs.chunks(4).filter(|c| c.len() == 4).map(|c| 3 * (c[0].context.len() / BLOCK * BLOCK)).sum();
        assert!(saved > 0 && contexts > 0);
        assert!(toy.fed <= total - saved + 1, "fed {} tokens of {total}, expected to save {saved}", toy.fed);
    }

    #[test]
    fn long_inputs_keep_lm_eval_truncation() {
        let reqs = vec![ScoreRequest { context: (0..40).map(|i| i % VOCAB as u32).collect(), continuation: vec![1, 2, 3] }];
        let (got, _, _) = run_score(&reqs, Limits { tokens: 16, seqs: 4, tile_tokens: 3 }, 64, 20);
        assert_eq!(got[0].as_ref().unwrap(), &reference_score(&reqs[0], 20));
    }

    #[test]
    fn a_request_larger_than_the_pool_is_an_error() {
        let reqs = vec![ScoreRequest { context: vec![1; 100], continuation: vec![2] }];
        let mut toy = Toy::new(4);
        let err = score(&mut toy, &mut BlockPool::new(4), Limits { tokens: 64, seqs: 4, tile_tokens: 1 }, &reqs, 4096, &mut |_, _| {}).unwrap_err();
        assert_eq!(err, "100 tokens do not fit 4 blocks");
    }

    fn gen_reference(prompt: &[u32], opts: &GenOptions, eos: &[u32], max_ctx: usize) -> Generated {
        let decode = |t: &[u32]| t.iter().map(|x| char::from(b'a' + (*x % 26) as u8)).collect::<String>();
        let mut seq = gen_prompt(prompt, opts.max_tokens, max_ctx).to_vec();
        let mut state = GenState::new(opts, eos);
        loop {
            let l = toy_logits(hash(&seq));
            match state.advance(Logits::Row(&l), seq.len(), max_ctx, &decode) {
                Some(next) => seq.push(next),
                None => return state.finish(&decode),
            }
        }
    }

    #[test]
    fn continuous_batching_equals_one_generation_at_a_time() {
        let mut rng = crate::stats::SplitMix64::new(3);
        let prompts: Vec<Vec<u32>> = (0..11).map(|i| (0..3 + i * 5).map(|_| rng.below(VOCAB) as u32).collect()).collect();
        let opts: Vec<GenOptions> = (0..prompts.len())
            .map(|i| GenOptions { max_tokens: 2 + i * 3, temperature: if i % 3 == 2 { 0.8 } else { 0.0 }, top_k: None, top_p: None, seed: i as u64, stop: if i == 4 { vec!["q".into()] } else { vec![] } })
            .collect();
        let eos = [7u32];
        let decode = |t: &[u32]| t.iter().map(|x| char::from(b'a' + (*x % 26) as u8)).collect::<String>();
        for (lim, slots, blocks) in [(Limits { tokens: 4096, seqs: 64, tile_tokens: 4 }, 32, 256), (Limits { tokens: 10, seqs: 2, tile_tokens: 1 }, 2, 256), (Limits { tokens: 64, seqs: 8, tile_tokens: 2 }, 3, 12)] {
            let mut toy = Toy::new(blocks);
            let mut pool = BlockPool::new(blocks);
            let mut got = vec![None; prompts.len()];
            generate(&mut toy, &mut pool, lim, slots, &prompts, &opts, &eos, 60, &decode, &mut |i, g| got[i] = Some(g)).unwrap();
            for i in 0..prompts.len() {
                assert_eq!(got[i].as_ref().unwrap(), &gen_reference(&prompts[i], &opts[i], &eos, 60), "prompt {i}, {slots} slots, {lim:?}");
            }
            assert_eq!(pool.available(), blocks, "every block given back");
        }
    }
}
