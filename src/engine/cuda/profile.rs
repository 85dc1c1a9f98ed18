//! A pass timed launch by launch, summarised: operations with the same label (kernel and shape)
//! are one row, largest total first, with the bandwidth at which the row's products read their
//! weights. The one decision: group by the whole label, so the q/k/v product and the LM head are
//! separate rows even though both are `matvec`.

use super::driver::Timed;
use super::{GemmChoice, MvTiming};
use serde::Serialize;

/// Operations of one label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub label: String,
    pub count: usize,
    /// total microseconds
    pub us: f64,
    /// weight bytes read in all
    pub weight_bytes: f64,
}

impl Group {
    /// GB/s at which the weights were read (None for operations that read none).
    pub fn weight_gbps(&self) -> Option<f64> {
        (self.weight_bytes > 0.0 && self.us > 0.0).then(|| self.weight_bytes / (self.us * 1e-6) / 1e9)
    }
}

/// `ops` grouped by label, largest total first (ties keep the first seen first); weights are
/// counted at `elem_bytes` a weight.
pub fn group(ops: &[Timed], elem_bytes: usize) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for o in ops {
        let bytes = (o.weights * elem_bytes) as f64;
        match groups.iter_mut().find(|g| g.label == o.label) {
            Some(g) => {
                g.count += 1;
                g.us += o.ms * 1e3;
                g.weight_bytes += bytes;
            }
            None => groups.push(Group { label: o.label.clone(), count: 1, us: o.ms * 1e3, weight_bytes: bytes }),
        }
    }
    groups.sort_by(|a, b| b.us.total_cmp(&a.us));
    groups
}

/// The table as text: a heading line (`whole_us`: the same work timed as a whole, e.g. a decode
/// step replayed from its graph), then one line a group.
pub fn render(title: &str, ops: &[Timed], groups: &[Group], whole_us: f64) -> String {
    let total: f64 = groups.iter().map(|g| g.us).sum();
    let mut out = format!("{title}: {} launches, {total:.1} µs timed one by one, {whole_us:.1} µs as a whole\n", ops.len());
    for g in groups {
        let bw = g.weight_gbps().map_or(String::new(), |b| format!(", weights at {b:.0} GB/s"));
        out += &format!("  {:>5.1}%  {:>9.1} µs  {:>4} × {}{bw}\n", 100.0 * g.us / total.max(1e-12), g.us, g.count, g.label);
    }
    out
}

/// What timing the decode product kernel's shapes found when the model loaded, one line a
/// product: each shape's µs for one input row and the bandwidth at which it read the weights
/// (`elem_bytes` a weight), `*` on the one the decode steps run.
pub fn render_shapes(timing: &[MvTiming], elem_bytes: usize) -> String {
    let mut out = String::from("decode products, each kernel shape (warps, rows a warp, loads in flight) timed on one row when the model loaded; * runs:\n");
    for t in timing {
        let bytes = (t.n * t.k * elem_bytes) as f64;
        let shapes: Vec<String> = t.micros.iter().map(|(s, us)| format!("{}{} {us:.1} µs {:.0} GB/s", s.name(), if *s == t.chosen { "*" } else { "" }, bytes / (us * 1e-6) / 1e9)).collect();
        out += &format!("  {} {}×{}: {}\n", t.product.name(), t.n, t.k, shapes.join(" · "));
    }
    out
}

/// The same as JSON: `[{"product", "n", "k", "chosen", "micros": {shape: µs}}]`.
pub fn shapes_json(timing: &[MvTiming]) -> serde_json::Value {
    let rows = timing.iter().map(|t| {
        let micros: serde_json::Map<String, serde_json::Value> = t.micros.iter().map(|(s, us)| (s.name(), serde_json::json!(us))).collect();
        serde_json::json!({"product": t.product.name(), "n": t.n, "k": t.k, "chosen": t.chosen.name(), "micros": micros})
    });
    serde_json::Value::Array(rows.collect())
}

/// How each product's prefill GEMM calls run: the ways tried when the model loaded, each with
/// whether a row came out the same bits wherever it sat in a call; * runs.
pub fn render_gemm_choices(choices: &[GemmChoice]) -> String {
    let mut out = String::from("prefill GEMM calls, the ways tried when the model loaded (same: a row's bits do not depend on its place in the call); * runs:\n");
    for c in choices {
        let (m, n, k) = c.shape;
        let tried: Vec<String> = c
            .tried
            .iter()
            .enumerate()
            .map(|(i, (name, r))| {
                let star = if c.chosen == Some(i) || (c.chosen.is_none() && i == 0) { "*" } else { "" };
                match r {
                    Ok(true) => format!("{name}{star}: same"),
                    Ok(false) => format!("{name}{star}: DIFFERS"),
                    Err(e) => format!("{name}: failed ({e})"),
                }
            })
            .collect();
        out += &format!("  {} {m}×{n}×{k}: {}\n", c.product.name(), tried.join(" · "));
    }
    out
}

/// The same as JSON: `[{"product", "m", "n", "k", "chosen", "tried": [{"way", "same", "error"}]}]`.
pub fn gemm_choices_json(choices: &[GemmChoice]) -> serde_json::Value {
    let rows = choices.iter().map(|c| {
        let tried: Vec<serde_json::Value> = c.tried.iter().map(|(name, r)| serde_json::json!({"way": name, "same": r.as_ref().ok(), "error": r.as_ref().err()})).collect();
        serde_json::json!({"product": c.product.name(), "m": c.shape.0, "n": c.shape.1, "k": c.shape.2, "chosen": c.chosen, "tried": tried})
    });
    serde_json::Value::Array(rows.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_choices_name_each_way_tried_and_mark_the_one_that_runs() {
        use super::super::Product;
        let c = GemmChoice { product: Product::LmHead, shape: (512, 32000, 2048), tried: vec![("a".into(), Ok(false)), ("b".into(), Err("no".into())), ("c".into(), Ok(true))], chosen: Some(2) };
        let text = render_gemm_choices(std::slice::from_ref(&c));
        assert!(text.ends_with("\n  LM head 512×32000×2048: a: DIFFERS · b: failed (no) · c*: same\n"), "{text}");
        let none = GemmChoice { tried: vec![("a".into(), Ok(false))], chosen: None, ..c.clone() };
        assert!(render_gemm_choices(&[none]).ends_with(": a*: DIFFERS\n"));
        let j = gemm_choices_json(&[c]);
        assert_eq!((j[0]["chosen"].as_u64(), j[0]["m"].as_u64()), (Some(2), Some(512)));
        assert_eq!((j[0]["tried"][0]["same"].as_bool(), j[0]["tried"][1]["error"].as_str()), (Some(false), Some("no")));
    }

    #[test]
    fn shape_timing_names_each_shape_and_marks_the_chosen() {
        use super::super::{Product, MV_SHAPES};
        let t = MvTiming { product: Product::Down, n: 1000, k: 500, micros: vec![(MV_SHAPES[0], 2.0), (MV_SHAPES[2], 1.0)], chosen: MV_SHAPES[2] };
        let text = render_shapes(std::slice::from_ref(&t), 2);
        // 1 MB in 1 µs = 1000 GB/s
        assert!(text.ends_with("\n  down 1000×500: w8 r2 u4 2.0 µs 500 GB/s · w8 r1 u8* 1.0 µs 1000 GB/s\n"), "{text}");
        let j = shapes_json(&[t]);
        assert_eq!(j[0]["chosen"], "w8 r1 u8");
        assert_eq!(j[0]["micros"]["w8 r2 u4"], 2.0);
        assert_eq!((j[0]["product"].as_str(), j[0]["n"].as_u64()), (Some("down"), Some(1000)));
    }

    fn op(label: &str, weights: usize, ms: f64) -> Timed {
        Timed { label: label.into(), weights, ms }
    }

    #[test]
    fn groups_by_label_largest_first_with_weight_bandwidth() {
        let ops = [op("embed", 0, 0.001), op("matvec 10×4", 40, 0.002), op("attention", 0, 0.003), op("matvec 10×4", 40, 0.002), op("matvec 7×4", 28, 0.0005)];
        let g = group(&ops, 2);
        let labels: Vec<&str> = g.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["matvec 10×4", "attention", "embed", "matvec 7×4"]);
        assert_eq!((g[0].count, g[0].weight_bytes), (2, 160.0));
        assert!((g[0].us - 4.0).abs() < 1e-9);
        // 160 bytes in 4 µs = 0.04 GB/s
        assert!((g[0].weight_gbps().unwrap() - 0.04).abs() < 1e-12);
        assert_eq!(g[1].weight_gbps(), None);
        let text = render("decode", &ops, &g, 5.0);
        assert!(text.starts_with("decode: 5 launches, 8.5 µs timed one by one, 5.0 µs as a whole\n"), "{text}");
        assert!(text.contains("   47.1%        4.0 µs     2 × matvec 10×4, weights at 0 GB/s\n"), "{text}");
        assert_eq!(text.lines().count(), 5);
    }
}
