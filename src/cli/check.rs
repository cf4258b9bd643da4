//! `hone check`: the engine on this machine's GPU against the CPU engine on the same weights,
//! and the exactness properties speculative decoding relies on. It prints one line per check
//! and exits non-zero on any failure, so a GPU machine can run it without cargo.
//!
//! Tolerance of the logits comparison: both engines quantize activations to 8 bits before each
//! product, the CPU engine as llama.cpp's CPU code does (blocks of 256 values for K-quant
//! weights) and the CUDA kernels in blocks of 32, so the two differ by about what hone and
//! llama.cpp differ by. The bounds are the ones tests/reference.rs holds
//! hone to against llama.cpp: over the CPU's 32 most likely tokens of every position, the mean
//! |difference| of log-probabilities at most 0.3 and the largest at most 2.0.

use super::{policies_dir, resolve_model};
use anyhow::{bail, Result};
use clap::Args;
use policies::{
    read_scores, GenerateParams, Logits, Message, Policy, Readout, Role, Sampler, SamplingParams,
    Scores, Speculation,
};

const MEAN_TOL: f32 = 0.3;
const MAX_TOL: f32 = 2.0;
const TOP: usize = 32;

#[derive(Args)]
pub struct CheckArgs {
    /// A policy manifest name, a GGUF file, or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Decoding steps compared in the batch and speculation checks.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Also write both engines' log-probabilities of every prompt position (their top 32
    /// tokens each) to this JSONL file, to compare them with a third implementation.
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
}

const PROMPTS: [&str; 4] = [
    "Name three colors.",
    "Rewrite this sentence in plain words: the meeting has been postponed until further notice.",
    "Hi",
    "Write a short poem about the sea, with a title, in four lines.",
];

pub fn run(a: CheckArgs) -> Result<()> {
    let path = resolve_model(&policies_dir(), &a.model)?;
    let gpu = super::device(false)?;
    if gpu.is_cpu() {
        bail!("no CUDA device: hone must be built with `--features cuda` and run on a GPU");
    }
    let on_gpu = Policy::load(&path, &gpu)?;
    let on_cpu = Policy::load(&path, &candle_core::Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| on_gpu.encode_chat(&[Message::new(Role::User, *p)]))
        .collect::<Result<_, _>>()?;
    println!("hone check: {} on {:?}", path.display(), gpu);
    let results = [
        (
            "logits against the CPU engine",
            against_cpu(&on_gpu, &on_cpu, &prompts, a.dump.as_deref()),
        ),
        (
            "rows alone = rows in a batch",
            batch_invariance(&on_gpu, &prompts, a.steps),
        ),
        (
            "a chunk of k = k single steps",
            chunk_equals_steps(&on_gpu, &prompts),
        ),
        (
            "a prompt in one call = token by token",
            prefill_equals_steps(&on_gpu, &prompts),
        ),
        (
            "greedy tokens and heads taken on the GPU = from the whole logits",
            readouts_on_device(&on_gpu, &prompts, a.steps),
        ),
        (
            "speculative greedy and sampled = plain, seed for seed",
            speculation(&on_gpu, &prompts, a.steps),
        ),
        (
            "speculative sampling = the policy's distribution",
            sampled_speculation(&on_gpu, &prompts[0]),
        ),
    ];
    let mut failed = 0;
    for (name, result) in results {
        match result {
            Ok(detail) => println!("PASS  {name}: {detail}"),
            Err(e) => {
                failed += 1;
                println!("FAIL  {name}: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// Every prompt position's log-probabilities but the first, GPU against CPU; the worst is
/// named.
///
/// The first position is left out: in models with massive activations (Qwen2.5-1.5B's
/// residual reaches ~4,400 in a few channels from the second layer on, at the first token,
/// which every later token attends to as a sink), its row cannot be quantized to 8 bits
/// without losing the rest of its values, and both engines' logits there are far from a
/// float computation's (llama.cpp's by up to 7.8 in log-probability, measured with a float32
/// forward of the dequantized weights), while every later position agrees with it within
/// 0.5. Its logits predict the prompt's second token, which generation never samples.
fn against_cpu(
    gpu: &Policy,
    cpu: &Policy,
    prompts: &[Vec<u32>],
    dump: Option<&std::path::Path>,
) -> Result<String> {
    let (mut worst, mut total, mut n, mut agree, mut positions) = (0f32, 0f64, 0usize, 0, 0);
    let mut at = (0, 0, 0);
    let mut lines = String::new();
    for (pi, p) in prompts.iter().enumerate() {
        let all = |policy: &Policy| -> Result<Vec<Vec<f32>>> {
            let mut cache = policy.model().new_cache(1);
            let logits = policy
                .model()
                .forward(&[p.as_slice()], &mut cache, Logits::All)?;
            Ok(logits.to_vec2()?)
        };
        let (ours, theirs) = (all(gpu)?, all(cpu)?);
        if ours.len() != theirs.len() || ours.len() != p.len() {
            bail!(
                "{} positions on the GPU, {} on the CPU, for a prompt of {}",
                ours.len(),
                theirs.len(),
                p.len()
            );
        }
        for (t, (g, c)) in ours.iter().zip(&theirs).enumerate().skip(1) {
            let (lg, lc) = (log_softmax(g), log_softmax(c));
            let top = top_ids(&lc, TOP);
            for &i in &top {
                let d = (lg[i] - lc[i]).abs();
                if d > worst {
                    (worst, at) = (d, (pi, t, i));
                }
                total += d as f64;
                n += 1;
            }
            positions += 1;
            agree += usize::from(policies::sampling::argmax(g) == top[0] as u32);
            if dump.is_some() {
                let mut ids = top.clone();
                ids.extend(top_ids(&lg, TOP).into_iter().filter(|i| !top.contains(i)));
                let line = serde_json::json!({
                    "prompt": pi, "position": t, "tokens": &p[..=t], "ids": ids,
                    "gpu": ids.iter().map(|&i| lg[i]).collect::<Vec<_>>(),
                    "cpu": ids.iter().map(|&i| lc[i]).collect::<Vec<_>>(),
                });
                lines.push_str(&format!("{line}\n"));
            }
        }
    }
    if let Some(path) = dump {
        std::fs::write(path, lines)?;
    }
    let mean = total / n.max(1) as f64;
    let detail = format!(
        "log-prob |diff| over the top {TOP} of {positions} positions: mean {mean:.4} \
         (bound {MEAN_TOL}), max {worst:.4} (bound {MAX_TOL}; prompt {}, position {}, token \
         {}); top-1 agrees at {agree}/{positions}",
        at.0, at.1, at.2
    );
    if mean > MEAN_TOL as f64 || worst > MAX_TOL {
        bail!("{detail}");
    }
    Ok(detail)
}

/// The indices of the `k` largest entries, largest first.
fn top_ids(xs: &[f32], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..xs.len()).collect();
    ids.sort_by(|&i, &j| xs[j].total_cmp(&xs[i]));
    ids.truncate(k);
    ids
}

fn log_softmax(xs: &[f32]) -> Vec<f32> {
    let max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let lse = max + xs.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    xs.iter().map(|x| x - lse).collect()
}

/// Greedy decoding of every prompt alone and of all of them (and 16 rows) in one batch: the
/// logits of every step must be the same bits.
fn batch_invariance(policy: &Policy, prompts: &[Vec<u32>], steps: usize) -> Result<String> {
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|p| greedy_logits(policy, std::slice::from_ref(p), steps).map(|mut r| r.remove(0)))
        .collect::<Result<_>>()?;
    let mut checked = 0;
    for rows in [prompts.len(), 16] {
        let batch: Vec<Vec<u32>> = (0..rows)
            .map(|i| prompts[i % prompts.len()].clone())
            .collect();
        let together = greedy_logits(policy, &batch, steps)?;
        for (i, row) in together.iter().enumerate() {
            let reference = &alone[i % prompts.len()];
            if row.len() != reference.len() {
                bail!(
                    "row {i} of {rows}: {} steps, alone {}",
                    row.len(),
                    reference.len()
                );
            }
            for (step, (a, b)) in row.iter().zip(reference).enumerate() {
                identical(a, b, &format!("row {i} of {rows}, step {step}"))?;
                checked += 1;
            }
        }
    }
    Ok(format!(
        "{checked} steps' logits bit-identical (batches of {} and 16)",
        prompts.len()
    ))
}

/// Each row's logits at every greedy step (the prefill's last position first).
fn greedy_logits(policy: &Policy, rows: &[Vec<u32>], steps: usize) -> Result<Vec<Vec<Vec<f32>>>> {
    let model = policy.model();
    let mut cache = model.new_cache(rows.len());
    let slices: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let mut logits: Vec<Vec<f32>> = model
        .forward(&slices, &mut cache, Logits::Last)?
        .to_vec2()?;
    let mut out: Vec<Vec<Vec<f32>>> = logits.iter().map(|l| vec![l.clone()]).collect();
    for _ in 1..steps {
        let next: Vec<[u32; 1]> = logits
            .iter()
            .map(|l| [policies::sampling::argmax(l)])
            .collect();
        let slices: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        logits = model
            .forward(&slices, &mut cache, Logits::Last)?
            .to_vec2()?;
        for (row, l) in out.iter_mut().zip(&logits) {
            row.push(l.clone());
        }
    }
    Ok(out)
}

/// What decoding reads back instead of the logits, taken on the GPU, against the same taken
/// from the logits read back whole, at every step of 16 rows decoding greedily: each row's
/// greedy token must be the argmax, and each row's head under TPO's sampling (T = 0.7, top-p
/// 0.95) must give the distribution of the whole logits, within float rounding (a total
/// variation distance under 1e-4, or the nucleus' tail alone on the other side of top-p,
/// see [`boundary_tokens`]).
fn readouts_on_device(policy: &Policy, prompts: &[Vec<u32>], steps: usize) -> Result<String> {
    let model = policy.model();
    let sampler = Sampler::new(SamplingParams {
        temperature: 0.7,
        top_p: 0.95,
        ..SamplingParams::default()
    });
    let heads = Readout::of(sampler.params(), false);
    let mut feed: Vec<Vec<u32>> = (0..16)
        .map(|i| prompts[i % prompts.len()].clone())
        .collect();
    let mut cache = model.new_cache(feed.len());
    let (mut checked, mut taken, mut flips, mut worst) = (0, 0, 0, 0f32);
    for step in 0..steps {
        let slices: Vec<&[u32]> = feed.iter().map(Vec::as_slice).collect();
        let logits = model.forward(&slices, &mut cache, Logits::Last)?;
        let picked = read_scores(&logits, Readout::Greedy)?;
        let headed = read_scores(&logits, heads)?;
        let whole: Vec<Vec<f32>> = logits.to_vec2()?;
        if picked.len() != whole.len() || headed.len() != whole.len() {
            bail!(
                "step {step}: {} picks and {} heads for {} rows",
                picked.len(),
                headed.len(),
                whole.len()
            );
        }
        feed.clear();
        for (row, ((pick, head), l)) in picked.iter().zip(&headed).zip(&whole).enumerate() {
            let argmax = policies::sampling::argmax(l);
            if *pick != Scores::Greedy(argmax) {
                bail!("row {row}, step {step}: picked {pick:?}, the logits' argmax is {argmax}");
            }
            if let Scores::Head(_) = head {
                taken += 1;
                let (ours, theirs) = (sampler.distribution_of(head), sampler.distribution(l));
                match boundary_tokens(&ours, &theirs) {
                    Ok(0) => {
                        let distance = total_variation(&ours, &theirs, l.len());
                        if distance > 1e-4 {
                            bail!("row {row}, step {step}: the head's draw is {distance} from the logits'");
                        }
                        worst = worst.max(distance);
                    }
                    Ok(n) => flips += n,
                    Err(e) => bail!("row {row}, step {step}: {e}"),
                }
            }
            feed.push(vec![argmax]);
        }
        checked += whole.len();
    }
    Ok(format!(
        "{checked} positions ({steps} steps of 16 rows): argmax identical, {taken} heads taken \
         (the rest too wide, read whole), largest distance {worst:.1e}, {flips} tokens of \
         nuclei' tails on the other side of top-p"
    ))
}

/// How many tokens two top-p draws' supports do not share, when those tokens are the tail of
/// the nucleus that has them: the float sums of the vocabulary (the GPU's and the host's
/// differ in the last bits) can reach top-p a token or a few tokens apart, and where the
/// tail's tokens are about equally likely several can fall on either side. So the tokens in
/// one nucleus only must all be in the same one, none likelier than any token both share,
/// and, beyond a single token, together under 1e-3 of the probability. Anything else is an
/// error.
fn boundary_tokens(a: &[(u32, f32)], b: &[(u32, f32)]) -> Result<usize> {
    let ids = |d: &[(u32, f32)]| {
        d.iter()
            .map(|x| x.0)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (ia, ib) = (ids(a), ids(b));
    let (side, other) = match (ia.is_subset(&ib), ib.is_subset(&ia)) {
        (true, true) => return Ok(0),
        (false, true) => (a, &ib),
        (true, false) => (b, &ia),
        _ => bail!("the head's nucleus and the logits' each hold tokens the other does not"),
    };
    let shared_least = side
        .iter()
        .filter(|x| other.contains(&x.0))
        .map(|x| x.1)
        .fold(f32::INFINITY, f32::min);
    let tail: Vec<f32> = side
        .iter()
        .filter(|x| !other.contains(&x.0))
        .map(|x| x.1)
        .collect();
    if let Some(p) = tail.iter().find(|&&p| p > shared_least) {
        bail!("a token of probability {p} is in one nucleus only but likelier than one in both");
    }
    let mass: f32 = tail.iter().sum();
    if tail.len() > 1 && mass > 1e-3 {
        bail!(
            "the nuclei differ in {} tokens holding {mass} of the probability",
            tail.len()
        );
    }
    Ok(tail.len())
}

/// Half the L1 distance between two distributions over `vocab` tokens.
fn total_variation(a: &[(u32, f32)], b: &[(u32, f32)], vocab: usize) -> f32 {
    let mut diff = vec![0f32; vocab];
    let mut outside = 0f32;
    for (dist, sign) in [(a, 1f32), (b, -1f32)] {
        for &(t, p) in dist {
            match diff.get_mut(t as usize) {
                Some(d) => *d += sign * p,
                None => outside += p,
            }
        }
    }
    (diff.iter().map(|d| d.abs()).sum::<f32>() + outside) / 2.0
}

/// Five tokens fed in one call (as speculative verification does) against the same five fed
/// one at a time: every position's logits must be the same bits.
fn chunk_equals_steps(policy: &Policy, prompts: &[Vec<u32>]) -> Result<String> {
    let model = policy.model();
    let mut checked = 0;
    for p in prompts {
        let ids: Vec<u32> = p.iter().rev().take(5).copied().collect();
        let mut cache = model.new_cache(1);
        model.forward(&[p.as_slice()], &mut cache, Logits::Last)?;
        let mut stepped = cache.select_rows(&[0])?;
        let chunk: Vec<Vec<f32>> = model
            .forward(&[ids.as_slice()], &mut cache, Logits::All)?
            .to_vec2()?;
        for (i, id) in ids.iter().enumerate() {
            let one: Vec<Vec<f32>> = model
                .forward(&[&[*id]], &mut stepped, Logits::Last)?
                .to_vec2()?;
            identical(&chunk[i], &one[0], &format!("position {i} of the chunk"))?;
            checked += 1;
        }
    }
    Ok(format!("{checked} positions bit-identical"))
}

/// A whole prompt in one call (a prefill: the widest kernels) against the same prompt fed one
/// token per call (decode steps: the narrowest): the last position's logits must be the same
/// bits, so a row's text never depends on how its prompt was cut into calls.
fn prefill_equals_steps(policy: &Policy, prompts: &[Vec<u32>]) -> Result<String> {
    let model = policy.model();
    let mut tokens = 0;
    for p in prompts {
        let mut cache = model.new_cache(1);
        let whole: Vec<Vec<f32>> = model
            .forward(&[p.as_slice()], &mut cache, Logits::Last)?
            .to_vec2()?;
        let mut cache = model.new_cache(1);
        let mut last = Vec::new();
        for id in p {
            last = model
                .forward(&[std::slice::from_ref(id)], &mut cache, Logits::Last)?
                .to_vec2()?;
        }
        let (Some(a), Some(b)) = (whole.first(), last.first()) else {
            bail!("no logits for a prompt of {} tokens", p.len());
        };
        identical(a, b, &format!("the last of {} prompt tokens", p.len()))?;
        tokens += p.len();
    }
    Ok(format!(
        "{} prompts ({tokens} tokens) bit-identical",
        prompts.len()
    ))
}

/// Generation with and without speculative decoding, greedy and sampled (top-p, so that
/// sampled rows read heads taken on the device): the same tokens, seed for seed.
fn speculation(policy: &Policy, prompts: &[Vec<u32>], steps: usize) -> Result<String> {
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: 7,
        ..SamplingParams::default()
    };
    let mut tokens = 0;
    for sampling in [SamplingParams::default(), sampled] {
        let plain = GenerateParams {
            max_tokens: steps,
            sampling,
            ..Default::default()
        };
        let drafted = GenerateParams {
            // Every proposed draft verified: this checks verification, not what pays.
            speculation: Speculation::drafts(5).unpaced(),
            ..plain.clone()
        };
        for p in prompts {
            let (a, _) = policy.generate(p, 1, &plain)?;
            let (b, _) = policy.generate(p, 1, &drafted)?;
            if a[0].tokens != b[0].tokens {
                bail!(
                    "the texts differ at temperature {}: {:?} vs {:?}",
                    plain.sampling.temperature,
                    a[0].text,
                    b[0].text
                );
            }
            tokens += a[0].tokens.len();
        }
    }
    Ok(format!(
        "{tokens} tokens identical over {} prompts, greedy and at temperature 0.8 with top-p 0.95",
        prompts.len()
    ))
}

/// Draws of [`sampled_speculation`]: enough that a sampler off by a few percent on a likely
/// token fails, few enough that the host's sampling over the vocabulary takes seconds.
const DRAWS: u64 = 10_000;

/// Sampling with two drafts verified in one call of this device, through the rejection
/// sampling of `policies::speculative`, many times over: the first token produced must follow
/// the plain step's distribution, and the token after an accepted first draft the distribution
/// after it, whatever was drafted (chi-square, 0.1% level). One draft is the likeliest token,
/// so the second position is reached; the other is unlikely there, so the replacement path is
/// taken too. The temperature is the highest (from 1) at which each position's likeliest
/// token has a fifth of the mass: a flat distribution (random weights) gives no test.
fn sampled_speculation(policy: &Policy, prompt: &[u32]) -> Result<String> {
    let model = policy.model();
    let Some((&last, head)) = prompt.split_last() else {
        bail!("an empty prompt");
    };
    let mut cache = model.new_cache(1);
    let plain: Vec<Vec<f32>> = model
        .forward(&[prompt], &mut cache, Logits::Last)?
        .to_vec2()?;
    let Some(plain) = plain.into_iter().next() else {
        bail!("no logits for the prompt");
    };
    let first = policies::sampling::argmax(&plain);
    let mut cache = model.new_cache(1);
    model.forward(&[head], &mut cache, Logits::Last)?;
    let after_first: Vec<Vec<f32>> = model
        .forward(
            &[&[last, first]],
            &mut cache.select_rows(&[0])?,
            Logits::All,
        )?
        .to_vec2()?;
    let Some(after_first) = after_first.get(1) else {
        bail!("no logits after the first draft");
    };
    let mut temperature = 1.0f32;
    while temperature > 0.01
        && [&plain, after_first].iter().any(|l| {
            softmax(l, temperature)
                .iter()
                .fold(0.0, |m: f64, &p| m.max(p))
                < 0.2
        })
    {
        temperature *= 0.7;
    }
    let p1 = softmax(&plain, temperature);
    let p2 = softmax(after_first, temperature);
    let mut ranked: Vec<u32> = (0..p2.len() as u32).collect();
    ranked.sort_by(|&a, &b| p2[b as usize].total_cmp(&p2[a as usize]));
    let drafts = [first, ranked[ranked.len().min(5) - 1]];
    let chunk: Vec<Scores> = model
        .forward(&[&[last, drafts[0], drafts[1]]], &mut cache, Logits::All)?
        .to_vec2::<f32>()?
        .into_iter()
        .map(Scores::Logits)
        .collect();
    let mut firsts = vec![0u64; p1.len()];
    let mut seconds = vec![0u64; p2.len()];
    for seed in 0..DRAWS {
        let mut sampler = Sampler::new(SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            seed,
        });
        let v = policies::speculative::verify(&mut sampler, &chunk, &drafts);
        let token = if v.accepted == 0 { v.next } else { drafts[0] };
        firsts[token as usize] += 1;
        if v.accepted >= 1 {
            let after = if v.accepted == 1 { v.next } else { drafts[1] };
            seconds[after as usize] += 1;
        }
    }
    let (x1, crit1) = chi_square(&firsts, &p1)?;
    let (x2, crit2) = chi_square(&seconds, &p2)?;
    let detail = format!(
        "{DRAWS} draws at temperature {temperature:.2}, drafts {drafts:?}: first token chi2 \
         {x1:.1} (0.1% bound {crit1:.1}), second {x2:.1} over {} draws (bound {crit2:.1})",
        seconds.iter().sum::<u64>()
    );
    if x1 > crit1 || x2 > crit2 {
        bail!("{detail}");
    }
    Ok(detail)
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let e: Vec<f64> = logits
        .iter()
        .map(|&x| ((x - max) as f64 / temperature as f64).exp())
        .collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|x| x / total).collect()
}

/// Pearson's statistic of `counts` against `probs` over the tokens expected at least 5 times
/// (the rest pooled), and its 0.1% critical value.
fn chi_square(counts: &[u64], probs: &[f64]) -> Result<(f64, f64)> {
    if counts.len() != probs.len() {
        bail!("{} counts for {} probabilities", counts.len(), probs.len());
    }
    let n: u64 = counts.iter().sum();
    if n < 1000 {
        bail!("only {n} draws reached this position");
    }
    let (mut cells, mut rest_count, mut rest_p) = (Vec::new(), 0u64, 0f64);
    for (&c, &p) in counts.iter().zip(probs) {
        if p * n as f64 >= 5.0 {
            cells.push((c, p));
        } else {
            rest_count += c;
            rest_p += p;
        }
    }
    if rest_p * n as f64 >= 5.0 {
        cells.push((rest_count, rest_p));
    } else if let Some(last) = cells.last_mut() {
        *last = (last.0 + rest_count, last.1 + rest_p);
    }
    if cells.len() < 2 {
        bail!("one token holds the whole distribution");
    }
    let x: f64 = cells
        .iter()
        .map(|&(c, p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    Ok((x, policies::speculative::chi_square_bound(cells.len() - 1)))
}

fn identical(a: &[f32], b: &[f32], what: &str) -> Result<()> {
    if a.len() != b.len() {
        bail!("{what}: {} vs {} logits", a.len(), b.len());
    }
    let differing = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    if differing > 0 {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        bail!(
            "{what}: {differing} of {} logits differ, by up to {diff}",
            a.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::boundary_tokens;

    #[test]
    fn nuclei_may_differ_in_their_tails_only() {
        let both = [(1, 0.5), (2, 0.3), (3, 0.1995)];
        let with = |extra: &[(u32, f32)]| [&both[..], extra].concat();
        assert_eq!(boundary_tokens(&both, &both).unwrap(), 0);
        // One token at the edge, whatever its size; several only as a light tail.
        assert_eq!(boundary_tokens(&with(&[(4, 0.09)]), &both).unwrap(), 1);
        assert_eq!(
            boundary_tokens(&both, &with(&[(4, 2e-4), (5, 2e-4)])).unwrap(),
            2
        );
        assert!(boundary_tokens(&with(&[(4, 0.09), (5, 0.08)]), &both).is_err());
        // Not a tail: likelier than a token both hold, or on both sides.
        assert!(boundary_tokens(&with(&[(4, 0.3)]), &both).is_err());
        assert!(boundary_tokens(&with(&[(4, 1e-4)]), &with(&[(5, 1e-4)])).is_err());
    }
}
