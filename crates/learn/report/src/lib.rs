//! The run report for people: one self-contained HTML page (inline SVG plots,
//! thumbnails as data URIs, no external resource) with the explained-variance
//! curve, per-classifier scores, a confusion-matrix heat map, per-class F1
//! bars, the most confused pairs with example images, and the run timings.
//!
//! Must not depend on an engine, a store or a model runtime: figures in,
//! HTML out.

mod svg;

use std::fmt::Write;

use base64::Engine;
use fruits_classify::metrics::Evaluation;

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    /// Class names, indexed like the evaluations.
    pub classes: Vec<String>,
    pub train_rows: usize,
    pub test_rows: usize,
    pub pca_k: usize,
    pub explained_variance_ratio: Vec<f64>,
    /// `(name, evaluation on the test split)`; the first is the one served.
    pub classifiers: Vec<(String, Evaluation)>,
    /// `(stage, seconds)`.
    pub timings: Vec<(String, f64)>,
    /// Example images per `(true, predicted)` class pair.
    pub examples: Vec<((usize, usize), Vec<Example>)>,
}

/// One image shown in the report: its path and its JPEG or PNG bytes.
pub type Example = (String, Vec<u8>);

/// Confused pairs shown with examples.
pub const WORST_PAIRS: usize = 12;

impl Report {
    pub fn html(&self) -> String {
        let mut page = String::with_capacity(1 << 20);
        let _ = write!(
            page,
            "<!doctype html><html lang=en><head><meta charset=utf-8>\
             <meta name=viewport content=\"width=device-width,initial-scale=1\">\
             <title>{}</title><style>{}</style></head><body><h1>{}</h1>",
            escape(&self.title),
            STYLE,
            escape(&self.title)
        );
        self.summary(&mut page);
        self.variance(&mut page);
        for (name, eval) in &self.classifiers {
            self.classifier(&mut page, name, eval);
        }
        self.timings(&mut page);
        page.push_str("</body></html>\n");
        page
    }

    fn summary(&self, page: &mut String) {
        let _ = write!(
            page,
            "<section><h2>Summary</h2><table><tr><th>classes</th><td>{}</td></tr>\
             <tr><th>training rows</th><td>{}</td></tr><tr><th>test rows</th><td>{}</td></tr>\
             <tr><th>PCA components</th><td>{} ({:.1} % of the variance)</td></tr></table>",
            self.classes.len(),
            self.train_rows,
            self.test_rows,
            self.pca_k,
            100.0 * self.explained_variance_ratio[..self.pca_k].iter().sum::<f64>()
        );
        page.push_str(
            "<table><tr><th>classifier</th><th>accuracy</th><th>top-5</th><th>precision (weighted)</th>\
             <th>recall (weighted)</th><th>F1 (macro)</th></tr>",
        );
        for (name, e) in &self.classifiers {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{:.2} %</td><td>{:.2} %</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                escape(name),
                100.0 * e.accuracy,
                100.0 * e.top5_accuracy,
                e.precision_weighted,
                e.recall_weighted,
                e.f1_macro
            );
        }
        page.push_str("</table></section>");
    }

    fn variance(&self, page: &mut String) {
        page.push_str("<section><h2>PCA: explained variance</h2>");
        page.push_str(&svg::variance_curve(&self.explained_variance_ratio, self.pca_k));
        page.push_str("</section>");
    }

    fn classifier(&self, page: &mut String, name: &str, e: &Evaluation) {
        let _ = write!(page, "<section><h2>{}</h2>", escape(name));
        page.push_str("<h3>Confusion matrix (rows: true class, columns: predicted; log colour scale)</h3>");
        page.push_str(&svg::confusion(&e.confusion, &self.classes));
        page.push_str("<h3>F1 per class, lowest first</h3>");
        page.push_str(&svg::f1_bars(e, &self.classes));
        page.push_str("<h3>Most confused pairs</h3><table><tr><th>true</th><th>predicted as</th><th>rows</th><th>examples</th></tr>");
        for (t, p, count) in e.worst_confusions(WORST_PAIRS) {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{count}</td><td>",
                escape(&self.classes[t]),
                escape(&self.classes[p])
            );
            for (path, bytes) in self.examples_of(t, p) {
                let _ = write!(
                    page,
                    "<img class=thumb alt=\"{}\" title=\"{}\" src=\"data:{};base64,{}\">",
                    escape(path),
                    escape(path),
                    mime(bytes),
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                );
            }
            page.push_str("</td></tr>");
        }
        page.push_str("</table></section>");
    }

    fn examples_of(&self, t: usize, p: usize) -> &[Example] {
        self.examples
            .iter()
            .find(|(pair, _)| *pair == (t, p))
            .map_or(&[], |(_, v)| v.as_slice())
    }

    fn timings(&self, page: &mut String) {
        page.push_str("<section><h2>Run timings</h2><table><tr><th>stage</th><th>seconds</th></tr>");
        for (stage, s) in &self.timings {
            let _ = write!(page, "<tr><td>{}</td><td>{s:.1}</td></tr>", escape(stage));
        }
        page.push_str("</table></section>");
    }
}

fn mime(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:1100px;padding:0 1rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}\
section{margin-bottom:2rem}svg{max-width:100%;height:auto;display:block}.thumb{width:64px;height:64px;margin:2px}";

#[cfg(test)]
mod tests;
