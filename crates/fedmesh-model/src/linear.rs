//! Ordinary least squares, solved exactly: the baseline a regression model has to beat.
//!
//! A network that scores below a linear fit of the same columns has learned less than the
//! normal equations give for free, so every regression job reports one beside its models.

/// A linear map `ŷ = w·x + b`, fitted by least squares with a small ridge term (one-hot
/// columns and the intercept are collinear; the ridge keeps the system solvable and changes
/// nothing else measurably).
#[derive(Debug, Clone, PartialEq)]
pub struct LeastSquares {
    pub weights: Vec<f64>,
    pub intercept: f64,
}

impl LeastSquares {
    /// Fits `rows × width` inputs `x` (row-major) to `y`. `None` when the inputs are empty or
    /// the system cannot be solved (a value that is not finite).
    pub fn fit(x: &[f64], width: usize, y: &[f64], ridge: f64) -> Option<Self> {
        let rows = y.len();
        if rows == 0 || x.len() != rows * width {
            return None;
        }
        // The normal equations over [x | 1].
        let d = width + 1;
        let mut gram = vec![0.0; d * d];
        let mut xty = vec![0.0; d];
        let mut row = vec![0.0; d];
        for (r, &target) in y.iter().enumerate() {
            row[..width].copy_from_slice(&x[r * width..(r + 1) * width]);
            row[width] = 1.0;
            for i in 0..d {
                let v = row[i];
                if v == 0.0 {
                    continue;
                }
                xty[i] += v * target;
                for j in i..d {
                    gram[i * d + j] += v * row[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..i {
                gram[i * d + j] = gram[j * d + i];
            }
        }
        for i in 0..width {
            gram[i * d + i] += ridge * rows as f64;
        }
        let solution = solve_symmetric(&mut gram, &xty, d)?;
        Some(Self {
            intercept: solution[width],
            weights: solution[..width].to_vec(),
        })
    }

    /// The prediction for one row.
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.intercept + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
    }
}

/// Solves `a·s = b` for a symmetric positive-definite `a` (`d × d`, overwritten) by Cholesky.
fn solve_symmetric(a: &mut [f64], b: &[f64], d: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let original = a[j * d + j];
        let mut diagonal = original;
        for k in 0..j {
            diagonal -= a[j * d + k] * a[j * d + k];
        }
        // What is left of the diagonal after the columns before it: next to nothing means the
        // column is (numerically) a combination of them.
        if !(diagonal > 1e-10 * original && diagonal.is_finite()) {
            return None;
        }
        let diagonal = diagonal.sqrt();
        a[j * d + j] = diagonal;
        for i in j + 1..d {
            let mut v = a[i * d + j];
            for k in 0..j {
                v -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = v / diagonal;
        }
    }
    // L·z = b, then Lᵀ·s = z.
    let mut z = b.to_vec();
    for i in 0..d {
        for k in 0..i {
            z[i] -= a[i * d + k] * z[k];
        }
        z[i] /= a[i * d + i];
    }
    for i in (0..d).rev() {
        for k in i + 1..d {
            z[i] -= a[k * d + i] * z[k];
        }
        z[i] /= a[i * d + i];
    }
    Some(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_linear_map() {
        // y = 3·x0 − 2·x1 + 0.5·x2 + 7, on 50 rows of varied inputs.
        let rows = 50;
        let x: Vec<f64> = (0..rows * 3)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 10.0)
            .collect();
        let y: Vec<f64> = x
            .chunks(3)
            .map(|r| 3.0 * r[0] - 2.0 * r[1] + 0.5 * r[2] + 7.0)
            .collect();
        let fit = LeastSquares::fit(&x, 3, &y, 0.0).unwrap();
        for (w, want) in fit.weights.iter().zip([3.0, -2.0, 0.5]) {
            assert!((w - want).abs() < 1e-9, "{:?}", fit);
        }
        assert!((fit.intercept - 7.0).abs() < 1e-9);
        assert!((fit.predict(&[1.0, 1.0, 2.0]) - 9.0).abs() < 1e-9);
    }

    #[test]
    fn collinear_one_hot_columns_are_solved_with_a_ridge_and_refused_without() {
        // Two one-hot columns that always sum to 1, like the intercept.
        let x: Vec<f64> = (0..20)
            .flat_map(|i| if i % 2 == 0 { [1.0, 0.0] } else { [0.0, 1.0] })
            .collect();
        let y: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 5.0 } else { 1.0 })
            .collect();
        assert!(LeastSquares::fit(&x, 2, &y, 0.0).is_none());
        let fit = LeastSquares::fit(&x, 2, &y, 1e-9).unwrap();
        assert!((fit.predict(&[1.0, 0.0]) - 5.0).abs() < 1e-6);
        assert!((fit.predict(&[0.0, 1.0]) - 1.0).abs() < 1e-6);
    }
}
