//! The test-time scaling chart: pass rate against the compute actually spent, one line per
//! strategy, written as plain SVG (a plotting library would be the largest dependency of the
//! crate for one chart).
//!
//! x is the mean compute units spent, not the budget asked for: a loop that stops early (a
//! verifier already satisfied, a converged search) sits left of its budget, which is the
//! point of comparing at equal compute. x is logarithmic, since budgets grow by factors.

use super::report::Cell;
use crate::strategy::Strategy;
use std::fmt::Write;

const WIDTH: f64 = 700.0;
const HEIGHT: f64 = 400.0;
/// The plot area: left, top, right, bottom. The legend sits right of it.
const PLOT: (f64, f64, f64, f64) = (64.0, 36.0, 470.0, 340.0);
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#555555",
];

/// One point of a strategy's line: mean units spent, pass rate and its interval.
#[derive(Debug, Clone, Copy)]
struct Point {
    x: f64,
    y: f64,
    lo: f64,
    hi: f64,
}

/// The points of each strategy, in budget order; cells without a pass rate or a compute
/// figure (every run refused, or no prompt with constraints) are left out.
fn series(cells: &[Cell]) -> Vec<(Strategy, Vec<Point>)> {
    let mut out: Vec<(Strategy, Vec<Point>)> = Vec::new();
    for c in cells {
        let (Some(pass), Some(x)) = (c.pass, c.mean_compute) else {
            continue;
        };
        if x <= 0.0 {
            continue;
        }
        let point = Point {
            x,
            y: pass.rate,
            lo: pass.lo,
            hi: pass.hi,
        };
        match out.iter_mut().find(|(s, _)| *s == c.strategy) {
            Some((_, points)) => points.push(point),
            None => out.push((c.strategy, vec![point])),
        }
    }
    for (_, points) in &mut out {
        points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    out
}

/// Log-scale ticks at 1, 2 and 5 times powers of ten within [lo, hi].
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t >= lo && t <= hi {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// The chart as an SVG document.
pub fn chart(title: &str, cells: &[Cell]) -> String {
    let series = series(cells);
    let (left, top, right, bottom) = PLOT;
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.x));
    let (min, max) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    // A little room either side, and a decade at least so that a lone point has an axis.
    let (x_lo, x_hi) = if min.is_finite() {
        let (lo, hi) = (min / 1.25, max * 1.25);
        if hi / lo < 10.0 {
            let mid = (lo * hi).sqrt();
            (mid / 10f64.sqrt(), mid * 10f64.sqrt())
        } else {
            (lo, hi)
        }
    } else {
        (10.0, 10_000.0)
    };
    let sx = |x: f64| left + (x.ln() - x_lo.ln()) / (x_hi.ln() - x_lo.ln()) * (right - left);
    let sy = |y: f64| bottom - y.clamp(0.0, 1.0) * (bottom - top);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        (left + right) / 2.0,
        escape(title)
    );
    // Axes, grid and ticks.
    for i in 0..=5 {
        let y = i as f64 / 5.0;
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{py:.1}" x2="{right}" y2="{py:.1}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
            left - 6.0,
            py + 4.0,
            y * 100.0
        );
    }
    for t in log_ticks(x_lo, x_hi) {
        let px = sx(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{bottom}" x2="{px:.1}" y2="{:.1}" stroke="#333"/>"##,
            bottom + 5.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{t}</text>"#,
            bottom + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<polyline points="{left},{top} {left},{bottom} {right},{bottom}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">mean compute units spent (log scale)</text>"#,
        (left + right) / 2.0,
        bottom + 38.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">pass rate (95% interval)</text>"#,
        (top + bottom) / 2.0,
        (top + bottom) / 2.0
    );
    // One line per strategy, with its markers and intervals, and its legend entry.
    for (i, (strategy, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.x), sy(p.y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<g class="series" data-strategy="{name}" stroke="{color}" fill="{color}">"#,
            name = strategy.name()
        );
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke-width="2"/>"#,
            path.join(" ")
        );
        for p in points {
            let (px, py) = (sx(p.x), sy(p.y));
            let _ = writeln!(
                svg,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke-width="1" opacity="0.5"/>"#,
                sy(p.lo),
                sy(p.hi)
            );
            let _ = writeln!(svg, r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5"/>"#);
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = right + 20.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke-width="2"/>"#,
            lx + 24.0
        );
        let _ = writeln!(svg, r#"<circle cx="{}" cy="{ly}" r="3.5"/>"#, lx + 12.0);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" stroke="none" fill="black">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(strategy.name())
        );
        let _ = writeln!(svg, "</g>");
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::report::Rate;

    fn cell(strategy: Strategy, budget: u64, units: f64, passed: f64) -> Cell {
        Cell {
            strategy,
            budget,
            runs: 10,
            refused: 0,
            pass: Rate::of(passed, 10),
            reward: None,
            exact: None,
            mean_compute: Some(units),
            mean_latency_ms: Some(1000.0),
            restated: 0,
            beats_plain: None,
            paired: None,
        }
    }

    /// Tags open and close in order; self-closing tags stand alone.
    fn well_formed(svg: &str) -> bool {
        let mut stack = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>') else {
                return false;
            };
            let tag = &rest[open + 1..open + close];
            rest = &rest[open + close + 1..];
            let name = tag
                .trim_start_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or("");
            if tag.starts_with('/') {
                if stack.pop() != Some(name.to_string()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                stack.push(name.to_string());
            }
        }
        stack.is_empty()
    }

    fn attribute_numbers(svg: &str, tag: &str, attribute: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| l.starts_with(&format!("<{tag} ")))
            .filter_map(|l| {
                let start = l.find(&format!("{attribute}=\""))? + attribute.len() + 2;
                let end = start + l[start..].find('"')?;
                Some(l[start..end].to_string())
            })
            .flat_map(|v| {
                v.split([' ', ','])
                    .filter_map(|n| n.parse::<f64>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn one_line_per_strategy_inside_the_plot() {
        let cells = [
            cell(Strategy::Plain, 300, 180.0, 6.0),
            cell(Strategy::Plain, 900, 181.0, 6.0),
            cell(Strategy::BestOfN, 300, 250.0, 6.0),
            cell(Strategy::BestOfN, 900, 820.0, 8.0),
            cell(Strategy::Tpo, 300, 240.0, 5.0),
            cell(Strategy::Tpo, 900, 700.0, 7.0),
        ];
        let svg = chart("SmolLM2 & co", &cells);
        assert!(well_formed(&svg), "{svg}");
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("SmolLM2 &amp; co"));
        assert_eq!(svg.matches("class=\"series\"").count(), 3);
        for name in ["plain", "best_of_n", "tpo"] {
            assert!(svg.contains(&format!("data-strategy=\"{name}\"")), "{name}");
        }
        // The series' polylines (the axes' is drawn before them) hold two points each.
        let series_lines: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width"))
            .collect();
        assert_eq!(series_lines.len(), 3);
        let (left, top, right, bottom) = PLOT;
        let coords = attribute_numbers(&svg, "circle", "cx");
        let ys = attribute_numbers(&svg, "circle", "cy");
        // 6 markers and 3 legend markers.
        assert_eq!((coords.len(), ys.len()), (9, 9));
        let markers: Vec<(f64, f64)> = coords
            .iter()
            .copied()
            .zip(ys.iter().copied())
            .take(2)
            .collect();
        for (x, y) in markers {
            assert!(
                (left..=right).contains(&x) && (top..=bottom).contains(&y),
                "{x},{y}"
            );
        }
        for line in &series_lines {
            let points = attribute_numbers(line, "polyline", "points");
            assert_eq!(points.len(), 4, "{line}");
            for xy in points.chunks(2) {
                assert!((left..=right).contains(&xy[0]), "{line}");
                assert!((top..=bottom).contains(&xy[1]), "{line}");
            }
        }
        // Ticks on the x axis at round numbers of the log scale.
        assert!(svg.contains(">200</text>") && svg.contains(">500</text>"));
        assert!(svg.contains(">100%</text>") && svg.contains(">0%</text>"));
    }

    #[test]
    fn more_pass_rate_is_higher_and_more_units_further_right() {
        let cells = [
            cell(Strategy::BestOfN, 300, 200.0, 2.0),
            cell(Strategy::BestOfN, 900, 800.0, 9.0),
        ];
        let svg = chart("t", &cells);
        let xs = attribute_numbers(&svg, "circle", "cx");
        let ys = attribute_numbers(&svg, "circle", "cy");
        assert!(xs[1] > xs[0], "{xs:?}");
        assert!(ys[1] < ys[0], "SVG y grows downwards: {ys:?}");
    }

    #[test]
    fn cells_without_a_pass_rate_draw_nothing_but_the_axes() {
        let mut c = cell(Strategy::Plain, 300, 100.0, 1.0);
        c.pass = None;
        let svg = chart("empty", &[c]);
        assert!(well_formed(&svg));
        assert_eq!(svg.matches("class=\"series\"").count(), 0);
    }

    #[test]
    fn log_ticks_are_round() {
        assert_eq!(log_ticks(150.0, 3000.0), [200.0, 500.0, 1000.0, 2000.0]);
    }
}
