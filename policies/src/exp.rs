//! `e^x` for `x <= 0`, in one fixed arithmetic on every CPU: softmax's weights in attention
//! and the gated MLP's SiLU take it. libm's `expf` is one call per value (6% of a long
//! prefill's attention, and in a 5-position verification more time than the SiLU's other
//! arithmetic); this one runs eight values at a time in AVX registers, and its lanes give the
//! scalar code's bits, so a value's result does not depend on where in a vector it fell.

const LANES: usize = 8;

/// `e^(x - max)` for every `x <= max`, in place, eight at a time in AVX registers where the
/// build has AVX, with `exp_below`'s arithmetic either way.
pub(crate) fn exp_minus(xs: &mut [f32], max: f32) {
    let mut eights = xs.chunks_exact_mut(LANES);
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
/// gives `e^-87.3`, a value no sum with 1 or with other weights can notice. Multiplies and adds never fused, in one
/// order, so the AVX lanes (`avx::exp_below`) give these bits.
pub(crate) fn exp_below(x: f32) -> f32 {
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

#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
mod avx {
    use super::LANES;
    use std::arch::x86_64::*;

    /// `exp_below(s - max)` for eight values, lane by lane with its arithmetic.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64's `exp` over the range it takes, and the AVX lanes against the scalar
    /// arithmetic, bit for bit.
    #[test]
    fn exp_is_within_two_ulp() {
        let xs: Vec<f32> = (0..=87_000).map(|i| -(i as f32) * 1e-3).collect();
        let mut w = xs.clone();
        exp_minus(&mut w, 0.0);
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
        exp_minus(&mut far, 0.0);
        assert!(far.iter().all(|&y| y > 0.0 && y < 1e-37));
    }
}
