//! Reports: per-prompt results, per-category accuracy and the overall score (the unweighted
//! mean of category accuracies, as GenEval reports it), as JSON and as a markdown table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::prompts::{Category, Prompt};
use crate::reader::Reading;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptResult {
    pub id: String,
    pub category: Category,
    pub prompt: String,
    /// Images of this prompt that satisfied every constraint.
    pub correct: usize,
    pub images: usize,
    /// Failed constraints of the first failing image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// What the reader saw in the first image.
    pub reading: Option<Reading>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoryScore {
    pub prompts: usize,
    pub images: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub version: String,
    /// What was scored: "ground_truth", "degraded", "blank", "noise", "wrong_prompt", or a directory.
    pub source: String,
    pub overall: f64,
    pub categories: BTreeMap<String, CategoryScore>,
    pub results: Vec<PromptResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// Image files whose names match no prompt id of the set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

impl Report {
    pub fn new(version: &str, source: &str, results: Vec<PromptResult>) -> Report {
        let mut categories = BTreeMap::new();
        for cat in Category::ALL {
            let rs: Vec<&PromptResult> = results
                .iter()
                .filter(|r| r.category == cat && r.images > 0)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let acc = rs
                .iter()
                .map(|r| r.correct as f64 / r.images as f64)
                .sum::<f64>()
                / rs.len() as f64;
            categories.insert(
                cat.name().to_string(),
                CategoryScore {
                    prompts: rs.len(),
                    images: rs.iter().map(|r| r.images).sum(),
                    accuracy: acc,
                },
            );
        }
        let overall = if categories.is_empty() {
            0.0
        } else {
            categories.values().map(|c| c.accuracy).sum::<f64>() / categories.len() as f64
        };
        Report {
            version: version.to_string(),
            source: source.to_string(),
            overall,
            categories,
            results,
            missing: Vec::new(),
            unreadable: Vec::new(),
            unknown: Vec::new(),
        }
    }

    /// The one-line summary: overall, one key per category, image count, version.
    pub fn summary(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("overall".into(), json!(round4(self.overall)));
        for (k, v) in &self.categories {
            m.insert(k.clone(), json!(round4(v.accuracy)));
        }
        m.insert(
            "images".into(),
            json!(self.results.iter().map(|r| r.images).sum::<usize>()),
        );
        m.insert("source".into(), json!(self.source));
        m.insert("version".into(), json!(self.version));
        Value::Object(m)
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("# WorldEval ({}) — {}\n\n| category | prompts | images | accuracy |\n|---|---:|---:|---:|\n", self.version, self.source);
        for (k, v) in &self.categories {
            s.push_str(&format!(
                "| {k} | {} | {} | {:.4} |\n",
                v.prompts, v.images, v.accuracy
            ));
        }
        s.push_str(&format!(
            "| **overall** (mean of categories) | | | **{:.4}** |\n",
            self.overall
        ));
        let failures: Vec<&PromptResult> = self
            .results
            .iter()
            .filter(|r| r.correct < r.images)
            .collect();
        if !failures.is_empty() {
            s.push_str(&format!(
                "\n{} prompts with failures; first ones:\n\n",
                failures.len()
            ));
            for r in failures.iter().take(20) {
                s.push_str(&format!(
                    "- `{}` \"{}\": {}/{} — {}\n",
                    r.id,
                    r.prompt,
                    r.correct,
                    r.images,
                    r.failed.join("; ")
                ));
            }
        }
        if !self.missing.is_empty() {
            s.push_str(&format!(
                "\nMissing images: {} (first: `{}`)\n",
                self.missing.len(),
                self.missing[0]
            ));
        }
        s
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

pub(crate) fn result_for(p: &Prompt) -> PromptResult {
    PromptResult {
        id: p.id.clone(),
        category: p.category,
        prompt: p.text.clone(),
        correct: 0,
        images: 0,
        failed: Vec::new(),
        reading: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_is_the_unweighted_mean_of_categories() {
        let mk = |cat, correct, images| PromptResult {
            id: "x".into(),
            category: cat,
            prompt: String::new(),
            correct,
            images,
            failed: vec![],
            reading: None,
        };
        // Text: 1 prompt fully right; colors: 3 prompts, 1 right -> 1/3. Mean = (1 + 1/3) / 2.
        let r = Report::new(
            "v",
            "t",
            vec![
                mk(Category::Text, 2, 2),
                mk(Category::Colors, 1, 1),
                mk(Category::Colors, 0, 1),
                mk(Category::Colors, 0, 1),
            ],
        );
        assert!((r.overall - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
        let s = r.summary();
        assert_eq!(s["text"], 1.0);
        assert_eq!(s["images"], 5);
        assert!(r.markdown().contains("| colors | 3 | 3 | 0.3333 |"));
    }
}
