//! The kernels against candle's dequantization (an independent reading of each block layout),
//! the SIMD kernels against the portable ones, and row invariance bit for bit.

use super::blocks::{Act256, Act8x32, Activations};
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [GgmlDType; 7] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// One column's results through an entry point that takes a run of columns.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
macro_rules! column {
    ($f:expr, $w:expr, $xs:expr) => {{
        let xs = $xs;
        let mut out = xs.map(|_| 0f32);
        $f($w, $w.len(), xs, &mut out, 1);
        out
    }};
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    // Mostly small values with a few outliers, as activations are.
    (0..n)
        .map(|i| {
            let x = rng.random::<f32>() * 2.0 - 1.0;
            if i % 97 == 0 {
                8.0 * x
            } else {
                x
            }
        })
        .collect()
}

/// A `[rows, cols]` matrix quantized by candle, with its dequantized values.
fn matrix(rng: &mut StdRng, dtype: GgmlDType, rows: usize, cols: usize) -> (QTensor, Vec<f32>) {
    let dense = Tensor::from_vec(random(rng, rows * cols), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&dense, dtype).unwrap();
    let values = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (q, values)
}

fn forward(m: &QuantMatrix, lhs: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let xs = Tensor::from_vec(lhs.to_vec(), (rows, cols), &Device::Cpu).unwrap();
    m.forward(&xs)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// The k-quants, whose blocks are 256 wide; the others are 32 wide.
fn is_k(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
}

/// Every type with two row widths: for the 32-wide types, with 3 and with 6 blocks left over
/// after the last group of eight (the leftover blocks' sums are reduced four or eight at a time).
fn cases() -> impl Iterator<Item = (GgmlDType, usize)> {
    TYPES.into_iter().flat_map(|dtype| {
        let widths = if is_k(dtype) { [768, 1280] } else { [864, 960] };
        widths.map(|k| (dtype, k))
    })
}

/// A row of activations as the kernels see it after quantization.
fn quantized(dtype: GgmlDType, row: &[f32]) -> Vec<f64> {
    if is_k(dtype) {
        return row
            .chunks_exact(256)
            .flat_map(|block| {
                let a = Act256::quantize(block);
                a.qs.map(|q| f64::from(a.d) * f64::from(q))
            })
            .collect();
    }
    row.chunks(256)
        .flat_map(|group| {
            let a = Act8x32::quantize(group);
            let (blocks, interleaved) = (group.len() / 32, group.len() == 256);
            (0..blocks)
                .flat_map(move |j| {
                    a.block(j, interleaved)
                        .map(|q| f64::from(a.d[j]) * f64::from(q))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Each kernel computes `Σ w·x̂` (x̂: the 8-bit activations) to float rounding: checked against
/// the same sum in f64 over candle's dequantized weights, within 1e-5 of `Σ|w·x̂|`.
#[test]
fn products_match_dequantized_weights() {
    let mut rng = StdRng::seed_from_u64(7);
    let (out, m) = (37, 6);
    for (dtype, k) in cases() {
        let (q, w) = matrix(&mut rng, dtype, out, k);
        let matrix = QuantMatrix::from_qtensor(&q).unwrap().expect("a kernel");
        let lhs = random(&mut rng, m * k);
        let got = forward(&matrix, &lhs, m, k);
        assert_eq!(got.len(), m * out);
        for r in 0..m {
            let x = quantized(dtype, &lhs[r * k..(r + 1) * k]);
            assert_eq!(x.len(), k);
            for c in 0..out {
                let wc = &w[c * k..(c + 1) * k];
                let exact: f64 = (0..k).map(|i| f64::from(wc[i]) * x[i]).sum();
                let scale: f64 = (0..k).map(|i| (f64::from(wc[i]) * x[i]).abs()).sum();
                let diff = (f64::from(got[r * out + c]) - exact).abs();
                assert!(
                    diff <= 1e-5 * scale + 1e-6,
                    "{dtype:?} row {r} col {c}: {} vs {exact} (scale {scale})",
                    got[r * out + c]
                );
            }
        }
    }
}

/// Quantizing activations moves each by at most half a step (`amax / 254` of its block), so the
/// product differs from the f32 one by at most `Σ |w| · step/2`.
#[test]
fn activation_quantization_error_is_bounded() {
    let mut rng = StdRng::seed_from_u64(11);
    let (out, k) = (16, 512);
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q6K] {
        let (q, w) = matrix(&mut rng, dtype, out, k);
        let matrix = QuantMatrix::from_qtensor(&q).unwrap().expect("a kernel");
        let width = if dtype == GgmlDType::Q8_0 { 32 } else { 256 };
        let lhs = random(&mut rng, k);
        let got = forward(&matrix, &lhs, 1, k);
        for c in 0..out {
            let wc = &w[c * k..(c + 1) * k];
            let exact: f64 = (0..k).map(|i| f64::from(wc[i]) * f64::from(lhs[i])).sum();
            let bound: f64 = lhs
                .chunks_exact(width)
                .enumerate()
                .map(|(b, block)| {
                    let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
                    let step = f64::from(amax) / 127.0;
                    (0..width)
                        .map(|i| f64::from(wc[b * width + i]).abs())
                        .sum::<f64>()
                        * step
                        / 2.0
                })
                .sum();
            let diff = (f64::from(got[c]) - exact).abs();
            assert!(
                diff <= 1.001 * bound + 1e-5,
                "{dtype:?} col {c}: off by {diff}, bound {bound}"
            );
        }
    }
}

/// A row's results are the same bits alone, in a full tile, or in a ragged last tile.
#[test]
fn a_row_does_not_depend_on_the_batch() {
    let mut rng = StdRng::seed_from_u64(3);
    let (out, m) = (40, 11);
    for (dtype, k) in cases() {
        let (q, _) = matrix(&mut rng, dtype, out, k);
        let matrix = QuantMatrix::from_qtensor(&q).unwrap().expect("a kernel");
        let lhs = random(&mut rng, m * k);
        let all = forward(&matrix, &lhs, m, k);
        for r in 0..m {
            let alone = forward(&matrix, &lhs[r * k..(r + 1) * k], 1, k);
            let in_batch = &all[r * out..(r + 1) * out];
            assert_eq!(alone.len(), in_batch.len());
            let same = alone
                .iter()
                .zip(in_batch)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype:?}: row {r} alone differs from row {r} of {m}");
        }
    }
}

/// A column's results are the same bits computed in a pair of columns (as every matrix of more
/// than one column is) and alone, for tiles of one row and of several.
#[test]
fn a_column_does_not_depend_on_its_pair() {
    let mut rng = StdRng::seed_from_u64(4);
    let (out, m) = (5, 6);
    for (dtype, k) in cases() {
        let dense = random(&mut rng, out * k);
        let quantize = |rows: &[f32], n: usize| {
            let t = Tensor::from_vec(rows.to_vec(), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, dtype).unwrap();
            QuantMatrix::from_qtensor(&q).unwrap().expect("a kernel")
        };
        let all = quantize(&dense, out);
        let lhs = random(&mut rng, m * k);
        for rows in [1, m] {
            let paired = forward(&all, &lhs[..rows * k], rows, k);
            assert_eq!(paired.len(), rows * out);
            for col in 0..out {
                let alone = forward(
                    &quantize(&dense[col * k..(col + 1) * k], 1),
                    &lhs[..rows * k],
                    rows,
                    k,
                );
                assert_eq!(alone.len(), rows);
                for (r, a) in alone.iter().enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        paired[r * out + col].to_bits(),
                        "{dtype:?}: column {col}, row {r} of {rows}"
                    );
                }
            }
        }
    }
}

/// The SIMD kernels and the portable ones agree to float rounding.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[test]
fn simd_matches_portable() {
    let mut rng = StdRng::seed_from_u64(5);
    let out = 9;
    for (dtype, k) in cases() {
        let (q, _) = matrix(&mut rng, dtype, out, k);
        let matrix = QuantMatrix::from_qtensor(&q).unwrap().expect("a kernel");
        let lhs = random(&mut rng, 3 * k);
        let check = |simd: [f32; 3], portable: [f32; 3]| {
            for (a, b) in simd.iter().zip(&portable) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{dtype:?}: {a} vs {b}"
                );
            }
        };
        macro_rules! compare {
            ($blocks:expr, $act:ty, $simd:expr, $portable:expr) => {{
                let acts: Vec<$act> = lhs
                    .chunks_exact(k)
                    .flat_map(|row| row.chunks(<$act>::WIDTH).map(<$act>::quantize))
                    .collect();
                let rows: Vec<&[$act]> = acts.chunks_exact(k.div_ceil(<$act>::WIDTH)).collect();
                let per_row = k / if is_k(dtype) { 256 } else { 32 };
                for c in 0..out {
                    let w = &$blocks.blocks[c * per_row..(c + 1) * per_row];
                    check(
                        column!($simd, w, [rows[0], rows[1], rows[2]]),
                        column!($portable, w, [rows[0], rows[1], rows[2]]),
                    );
                }
            }};
        }
        match &matrix {
            QuantMatrix::Q4_0(b) => compare!(b, Act8x32, avx2::unsigned32, portable::unsigned32),
            QuantMatrix::Q4_1(b) => compare!(b, Act8x32, avx2::unsigned32, portable::unsigned32),
            QuantMatrix::Q5_0(b) => compare!(b, Act8x32, avx2::unsigned32, portable::unsigned32),
            QuantMatrix::Q8_0(b) => compare!(b, Act8x32, avx2::q8_0, portable::q8_0),
            QuantMatrix::Q4K(b) => compare!(b, Act256, avx2::q4k, portable::q4k),
            QuantMatrix::Q5K(b) => compare!(b, Act256, avx2::q5k, portable::q5k),
            QuantMatrix::Q6K(b) => compare!(b, Act256, avx2::q6k, portable::q6k),
        }
    }
}

/// The SIMD quantization of activations gives the portable one's values, in order, ties
/// (x · inv exactly halfway) and the clamp included.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[test]
fn activation_rounding_matches_portable() {
    let mut rng = StdRng::seed_from_u64(11);
    for case in 0..200 {
        let xs: [f32; 32] = std::array::from_fn(|i| match (case % 3, i % 5) {
            // Exact halves: -2.5, 3.5, ... round to even either way.
            (0, _) => (rng.random_range(-300i32..300) as f32) / 2.0,
            // Beyond the clamp.
            (1, 0) => rng.random_range(-500.0..500.0),
            _ => rng.random_range(-130.0..130.0),
        });
        let simd = avx2::scaled_i8(&xs, 1.0);
        assert_eq!(simd, portable::scaled_i8(&xs, 1.0), "{xs:?}");
        let inv = rng.random_range(0.01..3.0);
        assert_eq!(avx2::scaled_i8(&xs, inv), portable::scaled_i8(&xs, inv));
        if case % 3 == 0 {
            assert!(simd
                .iter()
                .zip(&xs)
                .all(|(&q, &x)| q as f32 == x.round_ties_even().clamp(-127.0, 127.0)));
        }
    }
}

/// With AVX-512 VNNI the kernels give AVX2's bits: their integer sums are exact either way.
/// Activations at the ends of their range (±127) and weights at theirs are where AVX2's 16-bit
/// sums would saturate first.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[test]
fn vnni_gives_the_avx2_bits() {
    if !avx2::has_vnni() {
        eprintln!("this CPU has no AVX-512 VNNI: nothing to compare");
        return;
    }
    let mut rng = StdRng::seed_from_u64(11);
    let out = 9;
    for (dtype, k) in cases() {
        let (q, _) = matrix(&mut rng, dtype, out, k);
        let matrix = QuantMatrix::from_qtensor(&q).unwrap().expect("a kernel");
        // Row 0 random; rows 1 and 2 all +1 and alternating ±1, so every block's largest
        // value quantizes to ±127.
        let mut lhs = random(&mut rng, k);
        lhs.extend(std::iter::repeat_n(1.0, k));
        lhs.extend((0..k).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }));
        macro_rules! compare {
            ($blocks:expr, $act:ty, $avx2:expr, $vnni:expr) => {{
                let acts: Vec<$act> = lhs
                    .chunks_exact(k)
                    .flat_map(|row| row.chunks(<$act>::WIDTH).map(<$act>::quantize))
                    .collect();
                let rows: Vec<&[$act]> = acts.chunks_exact(k.div_ceil(<$act>::WIDTH)).collect();
                assert_eq!(rows.len(), 3);
                let per_row = k / if is_k(dtype) { 256 } else { 32 };
                let all = &$blocks.blocks[..];
                assert_eq!(all.len(), out * per_row);
                // The whole matrix as one run of columns (in pairs where the kernel pairs them).
                let (mut three, mut one) = (vec![0f32; 3 * out], vec![0f32; out]);
                // SAFETY: AVX2 by the build; VNNI checked above.
                unsafe {
                    $vnni(all, per_row, &[rows[0], rows[1], rows[2]], &mut three, out);
                    $vnni(all, per_row, &[rows[1]], &mut one, 1);
                }
                for c in 0..out {
                    let w = &all[c * per_row..(c + 1) * per_row];
                    // SAFETY: AVX2 by the build.
                    let (a, b) =
                        unsafe { ($avx2(w, [rows[0], rows[1], rows[2]]), $avx2(w, [rows[1]])) };
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&a),
                        bits(&[three[c], three[out + c], three[2 * out + c]]),
                        "{dtype:?} column {c}"
                    );
                    assert_eq!(
                        bits(&b),
                        bits(&one[c..c + 1]),
                        "{dtype:?} column {c}, one row"
                    );
                }
            }};
        }
        use avx2::*;
        match &matrix {
            QuantMatrix::Q4_0(b) => {
                compare!(
                    b,
                    Act8x32,
                    unsigned32_at::<_, _, false>,
                    super::avx512::unsigned32
                )
            }
            QuantMatrix::Q4_1(b) => {
                compare!(
                    b,
                    Act8x32,
                    unsigned32_at::<_, _, false>,
                    super::avx512::unsigned32
                )
            }
            QuantMatrix::Q5_0(b) => {
                compare!(
                    b,
                    Act8x32,
                    unsigned32_at::<_, _, false>,
                    super::avx512::unsigned32
                )
            }
            QuantMatrix::Q8_0(b) => compare!(b, Act8x32, q8_0_at::<_, false>, super::avx512::q8_0),
            QuantMatrix::Q4K(b) => compare!(b, Act256, q4k_at::<_, false>, q4k_vnni),
            QuantMatrix::Q5K(b) => compare!(b, Act256, q5k_at::<_, false>, q5k_vnni),
            QuantMatrix::Q6K(b) => compare!(b, Act256, q6k_at::<_, false>, q6k_vnni),
        }
    }
}

/// A group of eight blocks read back from its interleaved layout is the eight blocks.
#[test]
fn groups_read_back_as_their_blocks() {
    use super::groups::{group, interleave_row, Grouped};
    fn round_trip<B: Grouped + Kernel + std::fmt::Debug>(q: &QTensor) {
        let bytes = q.data().unwrap();
        let n = bytes.len() / std::mem::size_of::<B>();
        let blocks: Vec<B> = (0..n)
            // SAFETY: `n` whole blocks of a `repr(C)` type every bit pattern of which is a value.
            .map(|i| unsafe { bytes.as_ptr().cast::<B>().add(i).read_unaligned() })
            .collect();
        let mut row = blocks.clone();
        interleave_row(&mut row);
        for (b, want) in blocks.iter().enumerate().take(n / 8 * 8) {
            let got = B::block(group(&row, b / 8), b % 8);
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "{:?} block {b}",
                B::DTYPE
            );
        }
    }
    let mut rng = StdRng::seed_from_u64(13);
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
    ] {
        let (q, _) = matrix(&mut rng, dtype, 1, 512);
        match dtype {
            GgmlDType::Q4_0 => round_trip::<Q4_0>(&q),
            GgmlDType::Q4_1 => round_trip::<Q4_1>(&q),
            GgmlDType::Q5_0 => round_trip::<Q5_0>(&q),
            _ => round_trip::<Q8_0>(&q),
        }
    }
}

/// Products that read the same rows, computed in one pass (q, k and v; gate and up), give each
/// matrix's own results bit for bit, whether the matrices share a type or not.
#[test]
fn shared_products_are_the_single_ones() {
    let mut rng = StdRng::seed_from_u64(17);
    let bits = |t: &Tensor| -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    };
    let k = 768;
    for types in [
        [GgmlDType::Q4_1; 3],
        [GgmlDType::Q8_0; 3],
        [GgmlDType::Q6K; 3],
        [GgmlDType::Q5_0, GgmlDType::Q5_0, GgmlDType::Q8_0],
    ] {
        let mats: Vec<QuantMatrix> = types
            .iter()
            .zip([24, 8, 9])
            .map(|(&dtype, out)| {
                let (q, _) = matrix(&mut rng, dtype, out, k);
                QuantMatrix::from_qtensor(&q).unwrap().expect("a kernel")
            })
            .collect();
        let xs = Tensor::from_vec(random(&mut rng, 5 * k), (5, k), &Device::Cpu).unwrap();
        let refs: Vec<&QuantMatrix> = mats.iter().collect();
        let each = QuantMatrix::forward_each(&refs, &xs).unwrap();
        assert_eq!(each.len(), mats.len());
        for (i, m) in mats.iter().enumerate() {
            let alone = m.forward(&xs).unwrap();
            assert_eq!(each[i].dims(), alone.dims(), "{types:?} matrix {i}");
            assert_eq!(bits(&each[i]), bits(&alone), "{types:?} matrix {i}");
        }
    }
}
