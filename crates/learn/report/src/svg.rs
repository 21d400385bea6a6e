//! The report's plots, drawn as inline SVG.

use std::fmt::Write;

use fruits_classify::metrics::Evaluation;

use crate::escape;

/// Cumulative explained variance against the number of components, with
/// the chosen `k` marked.
pub fn variance_curve(ratios: &[f64], k: usize) -> String {
    let (w, h, m) = (640.0, 320.0, 48.0);
    let shown = ratios.len().min((k * 4).max(64)).max(2);
    let x = |i: usize| m + (w - 2.0 * m) * i as f64 / (shown - 1) as f64;
    let y = |v: f64| h - m - (h - 2.0 * m) * v;
    let mut acc = 0.0;
    let mut points = String::new();
    for (i, r) in ratios[..shown].iter().enumerate() {
        acc += r;
        let _ = write!(points, "{:.1},{:.1} ", x(i), y(acc));
    }
    let kept: f64 = ratios[..k].iter().sum();
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {h}\" role=img aria-label=\"explained variance\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>"
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            s,
            "<line x1=\"{m}\" x2=\"{}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{:.0} %</text>",
            w - m,
            m - 6.0,
            y(tick) + 4.0,
            tick * 100.0,
            yv = y(tick)
        );
    }
    for i in [1, shown / 4, shown / 2, 3 * shown / 4, shown] {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{i}</text>",
            x(i.max(1) - 1),
            h - m + 16.0
        );
    }
    let _ = write!(
        s,
        "<polyline fill=\"none\" stroke=\"#2a7\" stroke-width=\"2\" points=\"{points}\"/>\
         <line x1=\"{kx:.1}\" x2=\"{kx:.1}\" y1=\"{m}\" y2=\"{}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#c33\">k = {k}: {:.1} %</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">components</text></svg>",
        h - m,
        x(k - 1) + 6.0,
        y(kept) + 16.0,
        kept * 100.0,
        w / 2.0,
        h - 10.0,
        kx = x(k - 1)
    );
    s
}

/// Heat map of `confusion[true][predicted]`, colour on a log scale so that
/// single mistakes show beside full diagonals.
pub fn confusion(confusion: &[Vec<u32>], classes: &[String]) -> String {
    let n = confusion.len();
    let cell = (900.0 / n.max(1) as f64).clamp(4.0, 40.0);
    let side = cell * n as f64;
    let max = confusion.iter().flatten().copied().max().unwrap_or(1).max(1);
    let mut s = format!(
        "<svg viewBox=\"0 0 {side} {side}\" role=img aria-label=\"confusion matrix\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#fafafa\" stroke=\"#ccc\"/>"
    );
    for (t, row) in confusion.iter().enumerate() {
        for (p, &count) in row.iter().enumerate().filter(|(_, &c)| c > 0) {
            let level = (f64::from(count).ln_1p() / f64::from(max).ln_1p()).clamp(0.05, 1.0);
            let colour = if t == p {
                format!("rgba(34,136,85,{level:.2})")
            } else {
                format!("rgba(204,51,51,{:.2})", level.max(0.35))
            };
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"{colour}\">\
                 <title>{} → {}: {count}</title></rect>",
                p as f64 * cell,
                t as f64 * cell,
                escape(&classes[t]),
                escape(&classes[p])
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// One horizontal bar per class, sorted by F1, lowest first.
pub fn f1_bars(e: &Evaluation, classes: &[String]) -> String {
    let mut order: Vec<usize> = (0..classes.len()).filter(|&c| e.per_class[c].support > 0).collect();
    order.sort_by(|&a, &b| e.per_class[a].f1.total_cmp(&e.per_class[b].f1).then(a.cmp(&b)));
    let (bar, label_w, w) = (14.0, 220.0, 760.0);
    let h = bar * order.len() as f64 + 20.0;
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {h}\" role=img aria-label=\"F1 per class\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for (row, &c) in order.iter().enumerate() {
        let f1 = e.per_class[c].f1;
        let y = row as f64 * bar;
        let colour = if f1 < 0.9 { "#c33" } else { "#2a7" };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{f1:.3}</text>",
            label_w - 6.0,
            y + bar - 3.0,
            escape(&classes[c]),
            y + 1.0,
            (w - label_w - 50.0) * f1,
            bar - 2.0,
            label_w + (w - label_w - 50.0) * f1 + 4.0,
            y + bar - 3.0
        );
    }
    s.push_str("</svg>");
    s
}
