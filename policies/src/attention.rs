//! Attention on the CPU, computed so that a query's result depends on nothing but its own
//! vector and the keys and values it may see.
//!
//! A general matrix library picks its kernel, blocking and summation order from the shapes of
//! the call and from the features of the CPU it finds at run time (AVX2 on one machine,
//! AVX-512 on the next). Attention through it then gives a row bits that depend on how many
//! other rows, query positions or masked-out slots the call held, and those bits differ by
//! machine. Here every query is reduced on its own, in one fixed order: the dot products over
//! `head_dim` in eight fixed lanes, the softmax and the weighted sum of values key after key
//! over exactly the visible keys. A token therefore gets the same bits whether it is decoded
//! alone, in a batch, after a rollback that left holes in the cache, or as one of several
//! drafted tokens being verified: batch invariance by construction, on every CPU.

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// The keys one packed query sees: `slots[lo..hi]` of its row's held slots, in slot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueryKeys {
    pub row: usize,
    pub lo: usize,
    pub hi: usize,
}

/// Scaled dot-product attention for packed queries.
///
/// `q` is `[1, heads, tokens, head_dim]`; `k` and `v` are the cache's `[batch, kv_heads,
/// slots, head_dim]` (any strides, f32); `held[row]` lists the slots that row holds, in order;
/// `queries[i]` says which of them token `i` sees. Returns `[1, tokens, heads × head_dim]`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    held: &[Vec<usize>],
    queries: &[QueryKeys],
    scale: f32,
) -> candle_core::Result<Tensor> {
    let (_, h, n, d) = q.dims4()?;
    let (_, hkv, _, dk) = k.dims4()?;
    if queries.len() != n || dk != d || h % hkv != 0 {
        candle_core::bail!(
            "attention: {} query plans for {n} tokens, head_dim {d} vs {dk}, {h} heads over {hkv}",
            queries.len()
        );
    }
    let q = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (k_store, k_layout) = k.storage_and_layout();
    let (v_store, v_layout) = v.storage_and_layout();
    let keys = Strided::new(&k_store, k_layout)?;
    let values = Strided::new(&v_store, v_layout)?;
    let group = h / hkv;
    let mut out = vec![0f32; n * h * d];
    let visible = |token: usize| {
        let plan = queries[token];
        held.get(plan.row)
            .and_then(|s| s.get(plan.lo..plan.hi))
            .map(|slots| (plan.row, slots))
            .ok_or_else(|| candle_core::Error::Msg("attention: bad key range".into()))
    };
    let query = |head: usize, token: usize| &q[(head * n + token) * d..][..d];
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    if pairs_pay(n, group, d) {
        // Runs of up to two tokens of one row that see keys from the same first slot, and
        // a key head: the run's query heads go through `pairs` two at a time, each pair
        // sharing every key's loads and multiplies. Items write their queries side by side
        // in `items`, copied into place after.
        let runs = runs_of_tokens(queries);
        let size = 2 * group * d;
        let mut items = vec![0f32; runs.len() * hkv * size];
        crate::cpu::for_each_chunk(&mut items, size, |i, item| {
            let (tokens, kv_head) = (runs[i / hkv].clone(), i % hkv);
            let (row, _) = visible(tokens.start)?;
            let key = |s| keys.row(row, kv_head, s, d);
            let value = |s| values.row(row, kv_head, s, d);
            let mut sees = Vec::with_capacity(tokens.len() * group);
            for token in tokens.clone() {
                let (_, slots) = visible(token)?;
                for head in kv_head * group..(kv_head + 1) * group {
                    sees.push((query(head, token), slots));
                }
            }
            pairs(&sees, key, value, scale, item);
            Ok(())
        })?;
        for (i, item) in items.chunks_exact(size).enumerate() {
            let (tokens, kv_head) = (runs[i / hkv].clone(), i % hkv);
            for (t, from) in tokens.zip(item.chunks_exact(group * d)) {
                let at = (t * h + kv_head * group) * d;
                out[at..at + group * d].copy_from_slice(from);
            }
        }
        return Tensor::from_vec(out, (1, n, h * d), &candle_core::Device::Cpu);
    }
    crate::cpu::for_each_chunk(&mut out, d, |i, out| {
        let (token, head) = (i / h, i % h);
        let (row, slots) = visible(token)?;
        let kv_head = head / group;
        one_query(
            query(head, token),
            slots,
            |s| keys.row(row, kv_head, s, d),
            |s| values.row(row, kv_head, s, d),
            scale,
            out,
        );
        Ok(())
    })?;
    Tensor::from_vec(out, (1, n, h * d), &candle_core::Device::Cpu)
}

/// Whether queries go to the kernels in pairs: with 512-bit vectors, several tokens (one
/// token's items would be too few to share over the threads) and two query heads or more per
/// key head.
fn pairs_pay(tokens: usize, group: usize, d: usize) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    if avx512::available() {
        return tokens > 1 && group > 1 && (d == 64 || d == 128);
    }
    let _ = (tokens, group, d);
    false
}

/// One query head over its visible keys: softmax(q·k × scale) · v, into `out`.
fn one_query<'a>(
    q: &[f32],
    slots: &[usize],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    out: &mut [f32],
) {
    out.fill(0.0);
    if slots.is_empty() {
        return;
    }
    // Four keys at a time: each key's dot product is the same arithmetic as `dot`'s, but four
    // independent chains of additions keep the CPU busy where one would wait on the last add.
    let mut scores = Vec::with_capacity(slots.len());
    let mut quads = slots.chunks_exact(4);
    for s in &mut quads {
        let dots = dots4(q, [key(s[0]), key(s[1]), key(s[2]), key(s[3])]);
        scores.extend(dots.map(|x| x * scale));
    }
    scores.extend(quads.remainder().iter().map(|&s| dot(q, key(s)) * scale));
    softmax_sum(slots, scores, value, out);
}

/// The tokens cut into runs of up to two that share a row and a first visible slot (a
/// prompt's or a verification's consecutive tokens; a batch's rows stay apart).
fn runs_of_tokens(queries: &[QueryKeys]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (t, plan) in queries.iter().enumerate() {
        match runs.last_mut() {
            Some(run)
                if run.len() < 2
                    && queries[run.start].row == plan.row
                    && queries[run.start].lo == plan.lo =>
            {
                run.end = t + 1
            }
            _ => runs.push(t..t + 1),
        }
    }
    runs
}

/// Queries of one key head (their vectors and the slots each sees, all from the same first
/// slot), each with `one_query`'s arithmetic, into `out` side by side: on 512-bit vectors two
/// at a time, each key's loads and multiplies serving both (the dot products were half of a
/// verification's attention). A pair's scores run over the longer of its two ranges; each
/// query's softmax reads only its own.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
fn pairs<'a>(
    sees: &[(&[f32], &[usize])],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    out: &mut [f32],
) {
    let d = sees.first().map_or(0, |(q, _)| q.len());
    let mut outs = out.chunks_exact_mut(d.max(1));
    let mut sees = sees.chunks_exact(2);
    for pair in &mut sees {
        let [(qa, a), (qb, b)] = [pair[0], pair[1]];
        let (Some(out_a), Some(out_b)) = (outs.next(), outs.next()) else {
            return;
        };
        let slots = if a.len() >= b.len() { a } else { b };
        // SAFETY: `pairs_pay` sends queries here only where the CPU has AVX-512 F and DQ,
        // and only with head sizes 64 and 128.
        let [mut sa, mut sb] = unsafe {
            match d {
                64 => avx512_dots::scores_pair::<64>([qa, qb], slots, &key, scale),
                _ => avx512_dots::scores_pair::<128>([qa, qb], slots, &key, scale),
            }
        };
        sa.truncate(a.len());
        sb.truncate(b.len());
        softmax_sum(a, sa, &value, out_a);
        softmax_sum(b, sb, &value, out_b);
    }
    if let ([(q, slots)], Some(out)) = (sees.remainder(), outs.next()) {
        one_query(q, slots, &key, &value, scale, out);
    }
}

/// `out` = softmax(scores) · v over the visible keys, in one fixed order.
fn softmax_sum<'a>(
    slots: &[usize],
    mut scores: Vec<f32>,
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    crate::exp::exp_minus(&mut scores, max);
    let total = scores.iter().sum::<f32>();
    match out.len() {
        64 => weighted_sum::<64>(slots, &scores, value, out),
        128 => weighted_sum::<128>(slots, &scores, value, out),
        _ => {
            for (&s, &p) in slots.iter().zip(&scores) {
                for (o, x) in out.iter_mut().zip(value(s)) {
                    *o += p * x;
                }
            }
        }
    }
    let inv = 1.0 / total;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// `out` = Σ p·v over the keys in order, in a local array the compiler keeps in registers
/// (the same additions as into `out` directly, which would go through memory every key).
/// On 512-bit vectors where the CPU has them: each element's multiply and add are its own,
/// so the vector width changes no bit and halves the instructions (the sum was most of a
/// verification's attention).
fn weighted_sum<'a, const D: usize>(
    slots: &[usize],
    weights: &[f32],
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F (checked).
        return unsafe { avx512::weighted_sum::<D>(slots, weights, value, out) };
    }
    weighted_sum_scalar::<D>(slots, weights, value, out)
}

fn weighted_sum_scalar<'a, const D: usize>(
    slots: &[usize],
    weights: &[f32],
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    debug_assert_eq!(slots.len(), weights.len());
    let mut acc = [0f32; D];
    for (&s, &p) in slots.iter().zip(weights) {
        let Some(v) = value(s).first_chunk::<D>() else {
            return;
        };
        for (a, x) in acc.iter_mut().zip(v) {
            *a += p * x;
        }
    }
    out.copy_from_slice(&acc);
}

/// A dot product in a fixed order: eight lanes over the vector, then the lanes pairwise.
/// (The compiler may vectorize it but never reorders it: Rust does not reassociate floats.)
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dots::<1>(a, [b])[0]
}

/// `dot(a, b)` for four `b`s at once, each with exactly `dot`'s arithmetic.
fn dots4(a: &[f32], bs: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    if a.len().is_multiple_of(LANES) && bs.iter().all(|b| b.len() == a.len()) {
        return avx::dots4(a, bs);
    }
    dots::<4>(a, bs)
}

fn dots<const N: usize>(a: &[f32], bs: [&[f32]; N]) -> [f32; N] {
    let mut acc = [[0f32; LANES]; N];
    let main = a.len() - a.len() % LANES;
    for (acc, b) in acc.iter_mut().zip(&bs) {
        for (x, y) in a[..main]
            .chunks_exact(LANES)
            .zip(b[..main].chunks_exact(LANES))
        {
            for l in 0..LANES {
                acc[l] += x[l] * y[l];
            }
        }
        for (l, (x, y)) in a[main..].iter().zip(&b[main..]).enumerate() {
            acc[l] += x * y;
        }
    }
    acc.map(|acc| {
        let quads = [
            acc[0] + acc[4],
            acc[1] + acc[5],
            acc[2] + acc[6],
            acc[3] + acc[7],
        ];
        (quads[0] + quads[2]) + (quads[1] + quads[3])
    })
}

const LANES: usize = 8;

/// `dots4` in AVX registers: the four keys' eight lanes and their reduction, in `dot`'s order
/// (a multiply, then an add, never fused; lanes `l` and `l + 4`, then quads 0 + 2 and 1 + 3).
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
mod avx {
    use super::LANES;
    use std::arch::x86_64::*;

    pub(super) fn dots4(a: &[f32], bs: [&[f32]; 4]) -> [f32; 4] {
        assert!(bs.iter().all(|b| b.len() == a.len()) && a.len().is_multiple_of(LANES));
        // SAFETY: the build has AVX (cfg above); every load reads `c..c + 8` of a slice at
        // least that long (checked above); loads and the store are unaligned.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in (0..a.len()).step_by(LANES) {
                let x = _mm256_loadu_ps(a.as_ptr().add(c));
                for (acc, b) in acc.iter_mut().zip(&bs) {
                    let y = _mm256_loadu_ps(b.as_ptr().add(c));
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(x, y));
                }
            }
            reduce4(acc)
        }
    }

    /// Each accumulator's eight lanes summed in `dot`'s order.
    #[inline(always)]
    pub(super) fn reduce4(acc: [__m256; 4]) -> [f32; 4] {
        // SAFETY: the build has AVX (cfg above); the store covers `out`'s four floats.
        unsafe {
            // Quads: lane l plus lane l + 4, for each key.
            let q =
                acc.map(|v| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)));
            // Transposed: quad l of the four keys in one vector.
            let (t0, t1) = (_mm_unpacklo_ps(q[0], q[1]), _mm_unpacklo_ps(q[2], q[3]));
            let (t2, t3) = (_mm_unpackhi_ps(q[0], q[1]), _mm_unpackhi_ps(q[2], q[3]));
            let (r0, r1) = (_mm_movelh_ps(t0, t1), _mm_movehl_ps(t1, t0));
            let (r2, r3) = (_mm_movelh_ps(t2, t3), _mm_movehl_ps(t3, t2));
            let sums = _mm_add_ps(_mm_add_ps(r0, r2), _mm_add_ps(r1, r3));
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), sums);
            out
        }
    }
}

/// `weighted_sum` on 512-bit vectors: sixteen elements per instruction, each element's
/// arithmetic (`acc + p * v`, unfused, key after key) the scalar code's.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Whether the CPU has AVX-512 F and DQ (every CPU with AVX-512 but the Xeon Phi),
    /// detected once.
    pub(super) fn available() -> bool {
        static F: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")
        });
        *F
    }

    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_sum<'a, const D: usize>(
        slots: &[usize],
        weights: &[f32],
        value: impl Fn(usize) -> &'a [f32],
        out: &mut [f32],
    ) {
        const {
            assert!(
                D.is_multiple_of(16) && D <= 128,
                "16 to 128 elements in sixteens"
            )
        };
        debug_assert_eq!(slots.len(), weights.len());
        let mut acc = [_mm512_setzero_ps(); 8];
        for (&s, &p) in slots.iter().zip(weights) {
            let Some(v) = value(s).first_chunk::<D>() else {
                return;
            };
            let p = _mm512_set1_ps(p);
            for (i, acc) in acc.iter_mut().enumerate().take(D / 16) {
                // SAFETY: `v` holds `D` floats, `16 * i + 16 <= D`; unaligned load.
                let x = unsafe { _mm512_loadu_ps(v.as_ptr().add(16 * i)) };
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(p, x));
            }
        }
        let Some(out) = out.first_chunk_mut::<D>() else {
            return;
        };
        for (i, acc) in acc.iter().enumerate().take(D / 16) {
            // SAFETY: `out` holds `D` floats, `16 * i + 16 <= D`; unaligned store.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), *acc) };
        }
    }
}

/// `dots4` for two queries at once on 512-bit vectors, each key's eight values in both halves;
/// every lane's multiply and add, and the reduction, are `dot`'s.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
mod avx512_dots {
    use super::LANES;
    use std::arch::x86_64::*;

    /// Two queries' scaled dot products with the keys of `slots`, in slot order: query 0's
    /// eight lanes in the low half of each vector, query 1's in the high, held in registers
    /// over all the keys (`D / 8` vectors); four keys at a time as `dots4`, the rest as `dot`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and DQ.
    #[target_feature(enable = "avx,avx512f,avx512dq")]
    pub(crate) unsafe fn scores_pair<'a, const D: usize>(
        q: [&[f32]; 2],
        slots: &[usize],
        key: impl Fn(usize) -> &'a [f32],
        scale: f32,
    ) -> [Vec<f32>; 2] {
        const { assert!(D.is_multiple_of(LANES) && D <= 128, "up to 128 in eights") };
        let (Some(q0), Some(q1)) = (q[0].first_chunk::<D>(), q[1].first_chunk::<D>()) else {
            panic!("scores_pair: queries shorter than {D}");
        };
        let mut qv = [_mm512_setzero_ps(); 16];
        for (i, qv) in qv.iter_mut().enumerate().take(D / LANES) {
            // SAFETY: `8i + 8 <= D`, the length of both queries; unaligned loads.
            unsafe {
                let low = _mm512_castps256_ps512(_mm256_loadu_ps(q0.as_ptr().add(i * LANES)));
                *qv = _mm512_insertf32x8::<1>(low, _mm256_loadu_ps(q1.as_ptr().add(i * LANES)));
            }
        }
        let mut scores = [
            Vec::with_capacity(slots.len()),
            Vec::with_capacity(slots.len()),
        ];
        let mut quads = slots.chunks_exact(4);
        for s in &mut quads {
            let keys = [key(s[0]), key(s[1]), key(s[2]), key(s[3])].map(|k| {
                k.first_chunk::<D>()
                    .unwrap_or_else(|| panic!("scores_pair: keys shorter than {D}"))
            });
            let mut acc = [_mm512_setzero_ps(); 4];
            for (i, &qv) in qv.iter().enumerate().take(D / LANES) {
                for (acc, k) in acc.iter_mut().zip(&keys) {
                    // SAFETY: `8i + 8 <= D`, the key's length; unaligned load.
                    let kv = _mm512_broadcast_f32x8(unsafe {
                        _mm256_loadu_ps(k.as_ptr().add(i * LANES))
                    });
                    *acc = _mm512_add_ps(*acc, _mm512_mul_ps(qv, kv));
                }
            }
            let low = super::avx::reduce4(acc.map(|v| _mm512_castps512_ps256(v)));
            let high = super::avx::reduce4(acc.map(|v| _mm512_extractf32x8_ps::<1>(v)));
            scores[0].extend(low.map(|x| x * scale));
            scores[1].extend(high.map(|x| x * scale));
        }
        for &s in quads.remainder() {
            for (scores, q) in scores.iter_mut().zip(q) {
                scores.push(super::dot(q, key(s)) * scale);
            }
        }
        scores
    }
}

/// A read-only view of a 4-D f32 CPU tensor of any strides whose last axis is contiguous.
struct Strided<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 3],
}

impl<'a> Strided<'a> {
    fn new(storage: &'a Storage, layout: &Layout) -> candle_core::Result<Self> {
        let Storage::Cpu(CpuStorage::F32(data)) = storage else {
            candle_core::bail!("attention: keys and values must be f32 on the CPU");
        };
        let s = layout.stride();
        if s.len() != 4 || s[3] != 1 {
            candle_core::bail!("attention: keys and values need a contiguous last axis");
        }
        Ok(Self {
            data,
            start: layout.start_offset(),
            stride: [s[0], s[1], s[2]],
        })
    }

    fn row(&self, b: usize, head: usize, slot: usize, d: usize) -> &'a [f32] {
        let at = self.start + b * self.stride[0] + head * self.stride[1] + slot * self.stride[2];
        &self.data[at..at + d]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A plain reference: softmax over the visible keys in f64.
    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f32> {
        assert_eq!(keys.len(), values.len());
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                assert_eq!(k.len(), q.len());
                q.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..q.len())
            .map(|j| {
                (w.iter()
                    .zip(values)
                    .map(|(p, v)| p * v[j] as f64)
                    .sum::<f64>()
                    / total) as f32
            })
            .collect()
    }

    fn filled(shape: (usize, usize, usize, usize), seed: u32) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n as u32)
            .map(|i| {
                ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Two rows, grouped-query heads, holes in row 0's slots, strided (narrowed) caches.
    #[test]
    fn matches_a_reference_and_ignores_everything_it_may_not_see() {
        let (h, hkv, d, slots) = (4, 2, 12, 7);
        let k_full = filled((2, hkv, slots + 3, d), 1);
        let v_full = filled((2, hkv, slots + 3, d), 2);
        let (k, v) = (
            k_full.narrow(2, 0, slots).unwrap(),
            v_full.narrow(2, 0, slots).unwrap(),
        );
        let held = vec![vec![0, 1, 4, 6], vec![2, 3, 4, 5, 6]];
        let queries = [
            QueryKeys {
                row: 0,
                lo: 0,
                hi: 3,
            },
            QueryKeys {
                row: 0,
                lo: 1,
                hi: 4,
            },
            QueryKeys {
                row: 1,
                lo: 0,
                hi: 5,
            },
        ];
        let q = filled((1, h, queries.len(), d), 3);
        let out = attend(&q, &k, &v, &held, &queries, 0.3).unwrap();
        assert_eq!(out.dims3().unwrap(), (1, 3, h * d));
        let out = out.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let q = q.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        let per_row = |t: &Tensor| -> Vec<Vec<Vec<Vec<f32>>>> {
            (0..2)
                .map(|r| t.get(r).unwrap().to_vec3::<f32>().unwrap())
                .collect()
        };
        let (k, v) = (per_row(&k), per_row(&v));
        for (t, plan) in queries.iter().enumerate() {
            for head in 0..h {
                let kvh = head / (h / hkv);
                let seen = &held[plan.row][plan.lo..plan.hi];
                let keys: Vec<_> = seen.iter().map(|&s| k[plan.row][kvh][s].clone()).collect();
                let vals: Vec<_> = seen.iter().map(|&s| v[plan.row][kvh][s].clone()).collect();
                let want = reference(&q[head][t], &keys, &vals, 0.3);
                let got = &out[t][head * d..(head + 1) * d];
                let diff = want
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-5, "token {t} head {head}: {diff}");
            }
        }
    }

    /// Four keys at a time are four single dot products, bit for bit, at every length.
    #[test]
    fn four_dot_products_are_four_single_ones() {
        for d in [8, 24, 64, 67, 128] {
            let v = filled((1, 1, 5, d), d as u32)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let (q, keys) = v.split_at(d);
            let keys: Vec<&[f32]> = keys.chunks_exact(d).collect();
            assert_eq!(keys.len(), 4);
            let four = dots4(q, [keys[0], keys[1], keys[2], keys[3]]);
            for (k, got) in keys.iter().zip(four) {
                assert_eq!(got.to_bits(), dot(q, k).to_bits(), "head_dim {d}");
            }
        }
    }

    /// The weighted sum on 512-bit vectors gives the scalar code's bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn wide_weighted_sum_is_the_scalar_one() {
        if !avx512::available() {
            eprintln!("this CPU has no AVX-512: nothing to compare");
            return;
        }
        let values = filled((1, 1, 50, 128), 9)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let slots: Vec<usize> = (0..50).rev().step_by(3).collect();
        let weights: Vec<f32> = slots.iter().map(|&s| 1.0 / (1.0 + s as f32)).collect();
        let value = |s: usize| &values[s * 128..][..128];
        let (mut wide, mut scalar) = ([0f32; 128], [0f32; 128]);
        // SAFETY: AVX-512 F checked above.
        unsafe { avx512::weighted_sum::<128>(&slots, &weights, value, &mut wide) };
        weighted_sum_scalar::<128>(&slots, &weights, value, &mut scalar);
        assert_eq!(wide.map(f32::to_bits), scalar.map(f32::to_bits));
        let (mut wide, mut scalar) = ([0f32; 64], [0f32; 64]);
        let value = |s: usize| &values[s * 128 + 64..][..64];
        // SAFETY: as above.
        unsafe { avx512::weighted_sum::<64>(&slots, &weights, value, &mut wide) };
        weighted_sum_scalar::<64>(&slots, &weights, value, &mut scalar);
        assert_eq!(wide.map(f32::to_bits), scalar.map(f32::to_bits));
    }

    /// Two queries' scores at once are each query's single dot products, scaled, bit for
    /// bit, for four keys at a time and for the keys left over.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    #[test]
    fn paired_scores_are_single_dot_products() {
        if !avx512::available() {
            eprintln!("this CPU has no AVX-512: nothing to compare");
            return;
        }
        fn check<const D: usize>() {
            let v = filled((1, 1, 9, D), D as u32)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let rows: Vec<&[f32]> = v.chunks_exact(D).collect();
            assert_eq!(rows.len(), 9);
            let slots = [8, 2, 5, 3, 7, 4, 6];
            let q = [rows[0], rows[1]];
            // SAFETY: AVX-512 F and DQ checked above.
            let pair = unsafe { avx512_dots::scores_pair::<D>(q, &slots, |s| rows[s], 0.3) };
            for (q, got) in q.iter().zip(pair) {
                assert_eq!(got.len(), slots.len());
                for (&s, got) in slots.iter().zip(got) {
                    let want = dot(q, rows[s]) * 0.3;
                    assert_eq!(got.to_bits(), want.to_bits(), "head_dim {D}, key {s}");
                }
            }
        }
        check::<64>();
        check::<128>();
    }

    /// The same query and visible keys give the same bits whatever else the call holds.
    #[test]
    fn a_query_is_bit_identical_alone_and_in_company() {
        let (h, hkv, d) = (6, 2, 64);
        let k = filled((3, hkv, 40, d), 5);
        let v = filled((3, hkv, 40, d), 6);
        let held: Vec<Vec<usize>> = vec![
            (0..40).collect(),
            (0..40).step_by(2).collect(),
            (5..40).collect(),
        ];
        // A batch's rows one token each, then a verification's consecutive tokens of one row
        // (runs of two whose ranges differ by a key: a pair may join two tokens' heads).
        let crowd: Vec<QueryKeys> = (0..9)
            .map(|i| QueryKeys {
                row: i % 3,
                lo: i % 2,
                hi: 10 + i,
            })
            .chain((0..5).map(|i| QueryKeys {
                row: 1,
                lo: 0,
                hi: 14 + i,
            }))
            .collect();
        let q = filled((1, h, crowd.len(), d), 7);
        let together = attend(&q, &k, &v, &held, &crowd, 0.125).unwrap();
        for (t, plan) in crowd.iter().enumerate() {
            let alone =
                attend(&q.narrow(2, t, 1).unwrap(), &k, &v, &held, &[*plan], 0.125).unwrap();
            let a = alone.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = together
                .narrow(1, t, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(a, b, "token {t}");
        }
    }
}
