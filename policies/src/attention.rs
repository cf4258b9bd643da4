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
    if pairs_pay(n, group, d) {
        // A key head's query heads of one token, side by side in `out`: pairs of them share
        // each key's loads and multiplies (`two_queries`).
        crate::cpu::for_each_chunk(&mut out, group * d, |i, out| {
            let (token, kv_head) = (i / hkv, i % hkv);
            let (row, slots) = visible(token)?;
            let key = |s| keys.row(row, kv_head, s, d);
            let value = |s| values.row(row, kv_head, s, d);
            let first = kv_head * group;
            let mut pairs = out.chunks_exact_mut(2 * d);
            for (p, pair) in (&mut pairs).enumerate() {
                let (a, b) = pair.split_at_mut(d);
                let head = first + 2 * p;
                let q = [query(head, token), query(head + 1, token)];
                two_queries(q, slots, key, value, scale, [a, b]);
            }
            let last = pairs.into_remainder();
            if !last.is_empty() {
                one_query(
                    query(first + group - 1, token),
                    slots,
                    key,
                    value,
                    scale,
                    last,
                );
            }
            Ok(())
        })?;
    } else {
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
    }
    Tensor::from_vec(out, (1, n, h * d), &candle_core::Device::Cpu)
}

/// Whether queries go to the kernels in pairs: with 512-bit vectors, several tokens (one
/// token's items would be too few to share over the threads) and two query heads or more per
/// key head.
fn pairs_pay(tokens: usize, group: usize, d: usize) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    if avx512::available() {
        return tokens > 1 && group > 1 && d.is_multiple_of(LANES) && d <= 128;
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

/// Two query heads of one key head over the same visible keys, each with `one_query`'s
/// arithmetic: on 512-bit vectors each key's loads and multiplies serve both (the dot products
/// were half of a verification's attention).
fn two_queries<'a>(
    q: [&[f32]; 2],
    slots: &[usize],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    out: [&mut [f32]; 2],
) {
    let [out_a, out_b] = out;
    out_a.fill(0.0);
    out_b.fill(0.0);
    if slots.is_empty() {
        return;
    }
    let mut scores = [
        Vec::with_capacity(slots.len()),
        Vec::with_capacity(slots.len()),
    ];
    let mut quads = slots.chunks_exact(4);
    for s in &mut quads {
        let keys = [key(s[0]), key(s[1]), key(s[2]), key(s[3])];
        #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
        // SAFETY: `pairs_pay` sends queries here only where the CPU has AVX-512.
        let dots = unsafe { avx512_dots::dots4_pair(q, keys) };
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx")))]
        let dots = [dots4(q[0], keys), dots4(q[1], keys)];
        for (scores, dots) in scores.iter_mut().zip(dots) {
            scores.extend(dots.map(|x| x * scale));
        }
    }
    for &s in quads.remainder() {
        for (scores, q) in scores.iter_mut().zip(q) {
            scores.push(dot(q, key(s)) * scale);
        }
    }
    let [a, b] = scores;
    softmax_sum(slots, a, &value, out_a);
    softmax_sum(slots, b, &value, out_b);
}

/// `out` = softmax(scores) · v over the visible keys, in one fixed order.
fn softmax_sum<'a>(
    slots: &[usize],
    mut scores: Vec<f32>,
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    weights(&mut scores, max);
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

/// `e^(s - max)` for every score, in place: softmax's weights, eight at a time in AVX
/// registers where the build has AVX, with `exp_below`'s arithmetic either way (libm's `expf`,
/// one call per key, was 6% of a long prefill).
fn weights(scores: &mut [f32], max: f32) {
    let mut eights = scores.chunks_exact_mut(LANES);
    for s in &mut eights {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
        avx::exp_below(s, max);
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx")))]
        s.iter_mut().for_each(|s| *s = exp_below(*s - max));
    }
    for s in eights.into_remainder() {
        *s = exp_below(*s - max);
    }
}

/// `e^x` for `x <= 0` (Cephes' `expf`: `x = n ln 2 + r`, `e^r` by a polynomial, times `2^n`),
/// within 2 units in the last place; below -87.3 (where `e^x` leaves the normal floats) it
/// gives `e^-87.3`, a weight no sum of them can notice. Multiplies and adds never fused, in one
/// order, so the AVX lanes (`avx::exp_below`) give these bits.
fn exp_below(x: f32) -> f32 {
    let x = x.max(EXP_MIN);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = (p * (r * r) + r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

const EXP_MIN: f32 = -87.3;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `dots4` in AVX registers: the four keys' eight lanes and their reduction, in `dot`'s order
/// (a multiply, then an add, never fused; lanes `l` and `l + 4`, then quads 0 + 2 and 1 + 3).
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
mod avx {
    use super::LANES;
    use std::arch::x86_64::*;

    /// `exp_below(s - max)` for eight scores, lane by lane with its arithmetic.
    pub(super) fn exp_below(s: &mut [f32], max: f32) {
        use super::{EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};
        assert_eq!(s.len(), LANES);
        // SAFETY: the build has AVX (cfg above); the load and the store cover `s`'s eight
        // floats (checked above), unaligned.
        unsafe {
            let x = _mm256_sub_ps(_mm256_loadu_ps(s.as_ptr()), _mm256_set1_ps(max));
            let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm256_sub_ps(
                _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
                _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
            );
            let mut p = _mm256_set1_ps(EXP_POLY[0]);
            for &c in &EXP_POLY[1..] {
                p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
            }
            let one = _mm256_set1_ps(1.0);
            let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), one);
            // 2^n from n's bits: (n + 127) << 23. AVX has no 256-bit integer shift; the
            // conversion and the shift run on the two 128-bit halves.
            let e = _mm256_cvtps_epi32(n);
            let bias = _mm_set1_epi32(127);
            let lo = _mm_slli_epi32::<23>(_mm_add_epi32(_mm256_castsi256_si128(e), bias));
            let hi = _mm_slli_epi32::<23>(_mm_add_epi32(_mm256_extractf128_si256::<1>(e), bias));
            let pow = _mm256_castsi256_ps(_mm256_set_m128i(hi, lo));
            _mm256_storeu_ps(s.as_mut_ptr(), _mm256_mul_ps(y, pow));
        }
    }

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

/// `dots4` for two queries at once on 512-bit vectors: query 0's eight lanes in the low half,
/// query 1's in the high, each key's eight values in both; every lane's multiply and add, and
/// the reduction, are `dot`'s.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
mod avx512_dots {
    use super::LANES;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX-512 F and DQ.
    #[target_feature(enable = "avx,avx512f,avx512dq")]
    pub(crate) unsafe fn dots4_pair(q: [&[f32]; 2], keys: [&[f32]; 4]) -> [[f32; 4]; 2] {
        let d = q[0].len();
        assert!(
            q[1].len() == d
                && keys.iter().all(|k| k.len() == d)
                && d.is_multiple_of(LANES)
                && d <= 128,
            "dots4_pair: lengths"
        );
        let mut qv = [_mm512_setzero_ps(); 16];
        let mut acc = [_mm512_setzero_ps(); 4];
        // SAFETY: every load reads `c..c + 8` of a slice of `d` floats, `c + 8 <= d`.
        unsafe {
            for (i, qv) in qv.iter_mut().enumerate().take(d / LANES) {
                let c = i * LANES;
                let low = _mm512_castps256_ps512(_mm256_loadu_ps(q[0].as_ptr().add(c)));
                *qv = _mm512_insertf32x8::<1>(low, _mm256_loadu_ps(q[1].as_ptr().add(c)));
            }
            for (i, &qv) in qv.iter().enumerate().take(d / LANES) {
                let c = i * LANES;
                for (acc, k) in acc.iter_mut().zip(&keys) {
                    let kv = _mm512_broadcast_f32x8(_mm256_loadu_ps(k.as_ptr().add(c)));
                    *acc = _mm512_add_ps(*acc, _mm512_mul_ps(qv, kv));
                }
            }
        }
        let low = acc.map(|v| _mm512_castps512_ps256(v));
        let high = acc.map(|v| _mm512_extractf32x8_ps::<1>(v));
        [super::avx::reduce4(low), super::avx::reduce4(high)]
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

    /// Softmax's weights against f64's `exp` over the range they take, and the AVX lanes
    /// against the scalar arithmetic, bit for bit.
    #[test]
    fn weights_are_exp_within_two_ulp() {
        let xs: Vec<f32> = (0..=87_000).map(|i| -(i as f32) * 1e-3).collect();
        let mut w = xs.clone();
        weights(&mut w, 0.0);
        assert_eq!(w.len(), xs.len());
        for (&x, &y) in xs.iter().zip(&w) {
            let exact = (x as f64).exp();
            let rel = ((y as f64 - exact) / exact).abs();
            assert!(
                rel < 2.5e-7,
                "e^{x}: {y} against {exact} (relative {rel:e})"
            );
            assert_eq!(y.to_bits(), exp_below(x).to_bits(), "e^{x}");
        }
        assert_eq!(exp_below(0.0), 1.0);
        let mut far = [-1e4f32; LANES];
        weights(&mut far, 0.0);
        assert!(far.iter().all(|&y| y > 0.0 && y < 1e-37));
    }

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

    /// Two queries' dot products at once are each query's single ones, bit for bit.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    #[test]
    fn paired_dot_products_are_single_ones() {
        if !avx512::available() {
            eprintln!("this CPU has no AVX-512: nothing to compare");
            return;
        }
        for d in [8, 24, 64, 128] {
            let v = filled((1, 1, 6, d), d as u32)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let rows: Vec<&[f32]> = v.chunks_exact(d).collect();
            assert_eq!(rows.len(), 6);
            let keys = [rows[2], rows[3], rows[4], rows[5]];
            // SAFETY: AVX-512 F and DQ checked above.
            let pair = unsafe { avx512_dots::dots4_pair([rows[0], rows[1]], keys) };
            for (q, got) in [rows[0], rows[1]].iter().zip(pair) {
                for (k, got) in keys.iter().zip(got) {
                    assert_eq!(got.to_bits(), dot(q, k).to_bits(), "head_dim {d}");
                }
            }
        }
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
        let crowd: Vec<QueryKeys> = (0..9)
            .map(|i| QueryKeys {
                row: i % 3,
                lo: i % 2,
                hi: 10 + i,
            })
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
