//! SMOTE and random undersampling of training rows, for heavily imbalanced binary tasks (the
//! seed paper's option for credit-card fraud).
//!
//! In a vertical mesh no party holds a whole row, so SMOTE is planned jointly and applied per
//! domain: a synthetic row is a triple (i, j, λ) of a minority row, one of its k nearest minority
//! neighbours (by the sum of every domain's squared distances) and a mix factor; each domain
//! builds its part as x_i + λ·(x_j − x_i) from its own columns (categories are taken from x_i).
//! Planning reveals which training rows are minority rows, which is why a job may only use it
//! when the label owner allows label sharing.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::FeatureMatrix;

/// Target class ratios (minority / majority) after each step, as imbalanced-learn's
/// `sampling_strategy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResampleSpec {
    /// Oversample the minority class with SMOTE up to this ratio (e.g. 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smote: Option<f64>,
    /// Then drop majority rows at random down to this ratio (e.g. 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undersample: Option<f64>,
    /// Neighbours SMOTE draws from.
    #[serde(default = "default_k")]
    pub k: usize,
}

fn default_k() -> usize {
    5
}

/// Which training rows to keep and which synthetic rows to add.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResamplePlan {
    /// Real training rows kept, sorted.
    pub kept: Vec<u32>,
    /// Synthetic minority rows: (row, neighbour, λ).
    pub synthetic: Vec<(u32, u32, f32)>,
}

/// Plans SMOTE then undersampling over the training rows `train` with binary `labels`
/// (1 = minority); `domains` are every domain's features of all aligned rows.
pub fn plan(
    domains: &[&FeatureMatrix],
    labels: &[i64],
    train: &[u32],
    spec: &ResampleSpec,
    seed: u64,
) -> ResamplePlan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (minority, majority): (Vec<u32>, Vec<u32>) =
        train.iter().partition(|&&r| labels[r as usize] == 1);
    let mut synthetic = Vec::new();
    if let Some(ratio) = spec.smote {
        let wanted = (ratio * majority.len() as f64).round() as usize;
        let extra = wanted.saturating_sub(minority.len());
        if extra > 0 && minority.len() > 1 {
            let neighbours = nearest_neighbours(domains, &minority, spec.k.max(1));
            for _ in 0..extra {
                let a = rng.random_range(0..minority.len());
                let b = neighbours[a][rng.random_range(0..neighbours[a].len())];
                synthetic.push((minority[a], minority[b], rng.random::<f32>()));
            }
        }
    }
    let mut kept_majority = majority.clone();
    if let Some(ratio) = spec.undersample {
        let minority_total = minority.len() + synthetic.len();
        let wanted = (minority_total as f64 / ratio).round() as usize;
        if wanted < kept_majority.len() {
            kept_majority.shuffle(&mut rng);
            kept_majority.truncate(wanted);
        }
    }
    let mut kept: Vec<u32> = minority.into_iter().chain(kept_majority).collect();
    kept.sort_unstable();
    ResamplePlan { kept, synthetic }
}

/// For each minority row, the indices (into `rows`) of its k nearest other minority rows by the
/// squared Euclidean distance over every domain's numeric features.
fn nearest_neighbours(domains: &[&FeatureMatrix], rows: &[u32], k: usize) -> Vec<Vec<usize>> {
    let n = rows.len();
    let mut distance = vec![0f32; n * n];
    for m in domains {
        let w = m.numeric_width;
        for a in 0..n {
            let xa = &m.numeric[rows[a] as usize * w..(rows[a] as usize + 1) * w];
            for b in (a + 1)..n {
                let xb = &m.numeric[rows[b] as usize * w..(rows[b] as usize + 1) * w];
                let d: f32 = xa.iter().zip(xb).map(|(p, q)| (p - q) * (p - q)).sum();
                distance[a * n + b] += d;
                distance[b * n + a] += d;
            }
        }
    }
    (0..n)
        .map(|a| {
            let mut others: Vec<usize> = (0..n).filter(|&b| b != a).collect();
            others.sort_unstable_by(|&p, &q| distance[a * n + p].total_cmp(&distance[a * n + q]));
            others.truncate(k);
            others
        })
        .collect()
}

impl FeatureMatrix {
    /// This domain's part of the synthetic rows, appended after the existing rows.
    pub fn with_synthetic(&self, synthetic: &[(u32, u32, f32)]) -> FeatureMatrix {
        let mut out = self.clone();
        let (w, c) = (self.numeric_width, self.embeddings.len());
        for &(i, j, lambda) in synthetic {
            let (i, j) = (i as usize, j as usize);
            for f in 0..w {
                let (xi, xj) = (self.numeric[i * w + f], self.numeric[j * w + f]);
                out.numeric.push(xi + lambda * (xj - xi));
            }
            out.categorical
                .extend_from_slice(&self.categorical[i * c..(i + 1) * c]);
        }
        out.rows += synthetic.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(values: &[f32]) -> FeatureMatrix {
        FeatureMatrix {
            rows: values.len(),
            numeric: values.to_vec(),
            numeric_width: 1,
            categorical: vec![],
            embeddings: vec![],
        }
    }

    #[test]
    fn smote_then_undersample_reach_the_ratios() {
        // 10 minority rows near 100, 990 majority rows near 0.
        let values: Vec<f32> = (0..1000)
            .map(|i| {
                if i < 10 {
                    100.0 + i as f32
                } else {
                    (i % 7) as f32
                }
            })
            .collect();
        let labels: Vec<i64> = (0..1000).map(|i| (i < 10) as i64).collect();
        let train: Vec<u32> = (0..1000).collect();
        let m = matrix(&values);
        let spec = ResampleSpec {
            smote: Some(0.1),
            undersample: Some(0.5),
            k: 3,
        };
        let p = plan(&[&m], &labels, &train, &spec, 1);
        assert_eq!(p.synthetic.len(), 99 - 10);
        let minority = 10 + p.synthetic.len();
        let majority = p.kept.iter().filter(|&&r| labels[r as usize] == 0).count();
        assert_eq!(majority, (minority as f64 / 0.5).round() as usize);
        // Synthetic rows lie between two minority rows.
        let extended = m.with_synthetic(&p.synthetic);
        assert_eq!(extended.rows, 1000 + p.synthetic.len());
        for x in &extended.numeric[1000..] {
            assert!((100.0..=109.0).contains(x), "{x}");
        }
        for &(i, j, _) in &p.synthetic {
            assert!(i < 10 && j < 10 && i != j);
            assert!(
                (i as i64 - j as i64).abs() <= 3,
                "a nearest neighbour: {i} {j}"
            );
        }
    }
}
