//! Dequantization of GGML tensor data to `f32`, bit-exact with ggml's reference `dequantize_row_*`
//! because it does the same f32 operations in the same order (`q * d`, then `+ m` or `- m`; Rust
//! never fuses them into an FMA). Sizes are checked once per call and a mismatch is an error, not a
//! panic; the per-block code then works on fixed-size arrays, so its indexing cannot fail.

use half::f16;

use super::gguf::GgmlType;

/// `src` and `dst` do not describe the same number of whole blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot dequantize {ty}: {src_len} bytes into {dst_len} values (a {ty} block is {} values in {} bytes)",
    ty.block_size(),
    ty.block_bytes()
)]
pub struct SizeMismatch {
    pub ty: GgmlType,
    pub src_len: usize,
    pub dst_len: usize,
}

/// Decodes `src` (whole blocks of `ty`) into `dst`. Requires `dst.len()` to be a multiple of the
/// block size and `src.len()` to be exactly the bytes of those blocks; otherwise nothing is written
/// and [`SizeMismatch`] is returned.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), SizeMismatch> {
    let blocks = dst.len() / ty.block_size();
    if !dst.len().is_multiple_of(ty.block_size()) || blocks.checked_mul(ty.block_bytes()) != Some(src.len()) {
        return Err(SizeMismatch { ty, src_len: src.len(), dst_len: dst.len() });
    }
    match ty {
        GgmlType::F32 => each(src, dst, |b: &[u8; 4], y: &mut [f32; 1]| y[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => each(src, dst, |b: &[u8; 2], y: &mut [f32; 1]| y[0] = half(*b)),
        // Plain widening: half's bf16::to_f32 sets the quiet bit of NaNs, ggml keeps them as they are.
        GgmlType::BF16 => each(src, dst, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)
        }),
        GgmlType::Q4_0 => each(src, dst, q4_0),
        GgmlType::Q4_1 => each(src, dst, q4_1),
        GgmlType::Q5_0 => each(src, dst, q5_0),
        GgmlType::Q5_1 => each(src, dst, q5_1),
        GgmlType::Q8_0 => each(src, dst, q8_0),
        GgmlType::Q4K => each(src, dst, q4_k),
        GgmlType::Q5K => each(src, dst, q5_k),
        GgmlType::Q6K => each(src, dst, q6_k),
    }
    Ok(())
}

/// Q4_0 or Q5_0 blocks re-encoded as Q8_0 blocks, losslessly: the same f16 scale and each
/// value's `q − 8` or `q − 16` as an int8. Where llama.cpp does not repack them, its Q4_0 and
/// Q5_0 dot products are its Q8_0 one on these bytes (sign-and-abs byte products summed per four,
/// an fma per block into eight lanes), so the Q8_0 kernels give its results bit for bit. `src` is
/// whole blocks; `None` for another type.
pub fn as_q8_0(ty: GgmlType, src: &[u8]) -> Option<Vec<u8>> {
    let (bs, qs, offset) = match ty {
        GgmlType::Q4_0 => (18, 2, 8),
        GgmlType::Q5_0 => (22, 6, 16),
        _ => return None,
    };
    let mut out = Vec::with_capacity(src.len() / bs * 34);
    for b in src.chunks_exact(bs) {
        out.extend_from_slice(&b[0..2]);
        let qh = if ty == GgmlType::Q5_0 { u32::from_le_bytes(field(b, 2)) } else { 0 };
        out.extend((0..32).map(|j| (i32::from(q5_value(&b[qs..qs + 16], qh, j)) - offset) as i8 as u8));
    }
    Some(out)
}

/// Value `j` (0..32) of a Q4/Q5 block as stored, before its offset or scale: nibble `j` of the
/// 16 bytes `qs` (low nibbles first, then high), with bit `j` of `qh` (0 for Q4) on top.
pub fn q5_value(qs: &[u8], qh: u32, j: usize) -> u8 {
    let nibble = if j < 16 { qs[j] & 0xf } else { qs[j - 16] >> 4 };
    nibble | (((qh >> j) & 1) << 4) as u8
}

/// Decodes whole blocks of `ty` into a new vector; `src.len()` must be a multiple of the block bytes.
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8]) -> Result<Vec<f32>, SizeMismatch> {
    let n = src.len() / ty.block_bytes() * ty.block_size();
    let mut out = vec![0.0; n];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

/// Runs `f` on each (block, output) pair; lengths were checked by the caller.
#[inline(always)]
fn each<const B: usize, const N: usize>(src: &[u8], dst: &mut [f32], f: impl Fn(&[u8; B], &mut [f32; N])) {
    let (blocks, _) = src.as_chunks::<B>();
    let (outs, _) = dst.as_chunks_mut::<N>();
    for (b, y) in blocks.iter().zip(outs) {
        f(b, y);
    }
}

#[inline(always)]
fn half(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// `N` bytes of `b` starting at `at` (a constant in every caller, so this compiles to nothing).
#[inline(always)]
fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

// 32-element blocks: low nibbles (or bytes) give elements 0..16, high nibbles 16..32.

fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = half(field(b, 0));
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = (i32::from(q & 0xf) - 8) as f32 * d;
        y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (half(field(b, 0)), half(field(b, 2)));
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = f32::from(q & 0xf) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// Bit `j` of `qh` is the fifth bit of element `j`.
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = half(field(b, 0));
    let qh = u32::from_le_bytes(field(b, 2));
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0xf) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = (lo as i32 - 16) as f32 * d;
        y[j + 16] = (hi as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (half(field(b, 0)), half(field(b, 2)));
    let qh = u32::from_le_bytes(field(b, 4));
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 0xf) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = lo as f32 * d + m;
        y[j + 16] = hi as f32 * d + m;
    }
}

fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = half(field(b, 0));
    for j in 0..32 {
        y[j] = f32::from(b[2 + j] as i8) * d;
    }
}

// 256-element super-blocks, in eight sub-blocks of 32 (Q4_K, Q5_K) or sixteen of 16 (Q6_K).

/// Scale and min of sub-block `j` (0..8), six bits each, packed in 12 bytes: sub-blocks 0..4 in the
/// low six bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8 take their low four bits
/// from the nibbles of bytes 8..12 and their top two from the spare bits of bytes 0..8.
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xf) | (s[j - 4] >> 6) << 4, (s[j + 4] >> 4) | (s[j] >> 6) << 4)
    }
}

/// Layout: d, dmin (f16), scales[12], qs[128]. Each 32 bytes of qs hold two sub-blocks: low
/// nibbles, then high nibbles.
fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let (d, min) = (half(field(b, 0)), half(field(b, 2)));
    let scales = &b[4..16];
    for (i, (qs, y)) in b[16..].chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * i, scales);
        let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        for l in 0..32 {
            y[l] = d1 * f32::from(qs[l] & 0xf) - m1;
            y[l + 32] = d2 * f32::from(qs[l] >> 4) - m2;
        }
    }
}

/// Layout: d, dmin (f16), scales[12], qh[32], qs[128]. As Q4_K, plus a fifth bit per element:
/// bit `2i` of `qh[l]` for the low-nibble sub-block of pair `i`, bit `2i + 1` for the high one.
fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let (d, min) = (half(field(b, 0)), half(field(b, 2)));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (i, (qs, y)) in b[48..].chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * i, scales);
        let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        for l in 0..32 {
            let h1 = (qh[l] >> (2 * i)) & 1;
            let h2 = (qh[l] >> (2 * i + 1)) & 1;
            y[l] = d1 * f32::from((qs[l] & 0xf) | h1 << 4) - m1;
            y[l + 32] = d2 * f32::from((qs[l] >> 4) | h2 << 4) - m2;
        }
    }
}

/// Layout: ql[128], qh[64], scales[16] (i8), d (f16). Two halves of 128 elements, each from 64 bytes
/// of ql (low nibbles of bytes 0..32, 32..64, then their high nibbles) and 32 bytes of qh (two-bit
/// pairs 0..4 for the four quarters); each 16 elements share a scale.
fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let d = half(field(b, 208));
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let sc = &b[192 + 8 * h..192 + 8 * h + 8];
        let y = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            let s = l / 16;
            let q = [
                (ql[l] & 0xf) | (qh[l] & 3) << 4,
                (ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4,
                (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4,
                (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4,
            ];
            for (k, q) in q.into_iter().enumerate() {
                let scale = f32::from(sc[s + 2 * k] as i8);
                y[l + 32 * k] = d * scale * f32::from(q as i8 - 32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_and_q5_0_as_q8_0_keep_every_value() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        };
        for (ty, bs, range) in [(GgmlType::Q4_0, 18, -8..=7), (GgmlType::Q5_0, 22, -16..=15)] {
            let mut src = Vec::new();
            for _ in 0..40 {
                src.extend_from_slice(&f16::from_f32(0.01 + f32::from(next()) / 1000.0).to_le_bytes());
                src.extend((2..bs).map(|_| next()));
            }
            let q8 = as_q8_0(ty, &src).unwrap();
            assert_eq!(q8.len(), 40 * 34);
            assert_eq!(dequantize_to_vec(ty, &src).unwrap(), dequantize_to_vec(GgmlType::Q8_0, &q8).unwrap(), "{ty}");
            assert!(q8.chunks_exact(34).all(|b| b[2..].iter().all(|&q| range.contains(&(q as i8)))), "{ty}");
        }
        assert!(as_q8_0(GgmlType::Q4_1, &[0; 20]).is_none());
    }

    #[test]
    fn size_checks() {
        let mut out = [0f32; 64];
        assert!(dequantize(GgmlType::Q4_0, &[0; 36], &mut out).is_ok());
        let e = dequantize(GgmlType::Q4_0, &[0; 35], &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot dequantize Q4_0: 35 bytes into 64 values (a Q4_0 block is 32 values in 18 bytes)"
        );
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut out[..33]).is_err());
        assert!(dequantize(GgmlType::Q6K, &[0; 210], &mut out).is_err());
        assert!(dequantize(GgmlType::F32, &[], &mut []).is_ok());
        assert!(dequantize_to_vec(GgmlType::Q8_0, &[0; 33]).is_err());
        assert_eq!(dequantize_to_vec(GgmlType::Q8_0, &[0; 68]).unwrap().len(), 64);
    }

    #[test]
    fn simple_blocks_by_hand() {
        // F16, BF16, F32.
        let v = dequantize_to_vec(GgmlType::F16, &[h(1.5), h(-0.25)].concat()).unwrap();
        assert_eq!(v, [1.5, -0.25]);
        let v = dequantize_to_vec(GgmlType::BF16, &[0x80, 0x3f, 0x01, 0xff]).unwrap();
        assert_eq!(v[0], 1.0);
        assert_eq!(v[1].to_bits(), 0xff01_0000); // NaN payload kept as is
        assert_eq!(dequantize_to_vec(GgmlType::F32, &2.5f32.to_le_bytes()).unwrap(), [2.5]);

        // Q8_0: d = 0.5, q = -16..16.
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let v = dequantize_to_vec(GgmlType::Q8_0, &b).unwrap();
        assert_eq!(v, (0..32).map(|j| (j - 16) as f32 * 0.5).collect::<Vec<_>>());

        // Q4_0 and Q4_1: nibble j low = j % 16, high = 15 - j % 16.
        let qs: Vec<u8> = (0..16).map(|j| j as u8 | (15 - j as u8) << 4).collect();
        let want: Vec<f32> = (0..16).chain((0..16).map(|j| 15 - j)).map(|q| q as f32).collect();
        let v = dequantize_to_vec(GgmlType::Q4_0, &[&h(2.0)[..], &qs].concat()).unwrap();
        assert_eq!(v, want.iter().map(|q| (q - 8.0) * 2.0).collect::<Vec<_>>());
        let v = dequantize_to_vec(GgmlType::Q4_1, &[&h(2.0)[..], &h(-1.0), &qs].concat()).unwrap();
        assert_eq!(v, want.iter().map(|q| q * 2.0 - 1.0).collect::<Vec<_>>());

        // Q5_0 / Q5_1: the high bit set on odd elements only.
        let qh = 0xaaaa_aaaau32.to_le_bytes();
        let want5: Vec<f32> =
            want.iter().enumerate().map(|(j, q)| q + if j % 2 == 1 { 16.0 } else { 0.0 }).collect();
        let v = dequantize_to_vec(GgmlType::Q5_0, &[&h(1.0)[..], &qh, &qs].concat()).unwrap();
        assert_eq!(v, want5.iter().map(|q| q - 16.0).collect::<Vec<_>>());
        let v = dequantize_to_vec(GgmlType::Q5_1, &[&h(1.0)[..], &h(0.5), &qh, &qs].concat()).unwrap();
        assert_eq!(v, want5.iter().map(|q| q + 0.5).collect::<Vec<_>>());
    }

    #[test]
    fn k_quants_by_hand() {
        // Q4_K with every sub-block scale s = j + 1 and min m = 2j, all nibbles 3 (low) and 5 (high).
        let (sc, mn): (Vec<u8>, Vec<u8>) = (0..8u8).map(|j| (j + 1 + 40, 2 * j + 30)).unzip();
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = (sc[j] & 63) | (sc[j + 4] >> 4) << 6;
            packed[j + 4] = (mn[j] & 63) | (mn[j + 4] >> 4) << 6;
            packed[j + 8] = (sc[j + 4] & 0xf) | (mn[j + 4] & 0xf) << 4;
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &packed), (sc[j], mn[j]));
        }
        let b = [&h(0.5)[..], &h(0.25), &packed, &[0x53; 128]].concat();
        let v = dequantize_to_vec(GgmlType::Q4K, &b).unwrap();
        for (k, x) in v.iter().enumerate() {
            let j = k / 32;
            let q = if j % 2 == 0 { 3.0 } else { 5.0 };
            assert_eq!(*x, 0.5 * sc[j] as f32 * q - 0.25 * mn[j] as f32, "element {k}");
        }
        // Q5_K: same, with the fifth bit set everywhere.
        let b = [&h(0.5)[..], &h(0.25), &packed, &[0xff; 32], &[0x53; 128]].concat();
        let v = dequantize_to_vec(GgmlType::Q5K, &b).unwrap();
        for (k, x) in v.iter().enumerate() {
            let j = k / 32;
            let q = if j % 2 == 0 { 19.0 } else { 21.0 };
            assert_eq!(*x, 0.5 * sc[j] as f32 * q - 0.25 * mn[j] as f32, "element {k}");
        }
        // Q6_K: all ql = 0x21, qh = 0b11_10_01_00, scales = 1..=16 alternating sign, d = 0.5.
        let scales: Vec<u8> =
            (0..16).map(|i| if i % 2 == 0 { i as u8 + 1 } else { (-(i as i8) - 1) as u8 }).collect();
        let b = [&[0x21u8; 128][..], &[0b11_10_01_00; 64], &scales, &h(0.5)].concat();
        let v = dequantize_to_vec(GgmlType::Q6K, &b).unwrap();
        for (k, x) in v.iter().enumerate() {
            let quarter = (k % 128) / 32; // which two bits of qh and which nibble
            let low = if quarter < 2 { 1 } else { 2 };
            let q = (low | (quarter as i32) << 4) - 32;
            let s = scales[k / 16] as i8 as f32;
            assert_eq!(*x, 0.5 * s * q as f32, "element {k}");
        }
    }
}
