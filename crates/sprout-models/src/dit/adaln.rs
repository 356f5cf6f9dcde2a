//! The blocks' adaLN steps in one pass each (inference on the CPU): the layer norm with
//! its modulation, `norm(x)·(1 + scale) + shift`, and the gated residual, `x + y·gate`.
//! Composed from candle's ops these are three and two full passes over the activations,
//! each into a fresh tensor. Where a graph is recorded (training) or the tensors are not
//! f32 on the CPU, the caller composes (`None`); tests check both agree.

use candle_core::{Result, Tensor};

use super::views::{applies, rows_written, with_values};

/// Per batch entry, a (B, 1, C) modulation vector's C values.
fn per_batch(v: &Tensor, b: usize, c: usize, what: &str) -> Result<Vec<f32>> {
    let (vb, one, vc) = v.dims3()?;
    if one != 1 || vc != c || (vb != b && vb != 1) {
        candle_core::bail!(
            "adaLN: {what} {:?} does not fit ({b}, L, {c}) activations",
            v.shape()
        );
    }
    let x = v.flatten_all()?.to_vec1::<f32>()?;
    Ok(if vb == b {
        x
    } else {
        x.iter().copied().cycle().take(b * c).collect()
    })
}

/// `(x − mean) / √(var + eps) · (1 + scale) + shift` over the last dimension of `x`
/// (B, L, C), with `shift`, `scale` (B or 1, 1, C).
pub fn modulated_norm(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f32,
) -> Option<Result<Tensor>> {
    applies([x, shift, scale]).then(|| {
        let (b, l, c) = x.dims3()?;
        let (sh, sc) = (
            per_batch(shift, b, c, "the shift")?,
            per_batch(scale, b, c, "the scale")?,
        );
        let out = with_values(x, |xs| {
            Ok(rows_written(xs.len(), c, |r, y| {
                let xr = &xs[r * c..(r + 1) * c];
                let bi = r / l;
                let (sh, sc) = (&sh[bi * c..(bi + 1) * c], &sc[bi * c..(bi + 1) * c]);
                let mean = xr.iter().sum::<f32>() / c as f32;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for i in 0..c {
                    y[i].write((xr[i] - mean) * inv * (1.0 + sc[i]) + sh[i]);
                }
            }))
        })?;
        Tensor::from_vec(out, (b, l, c), x.device())
    })
}

/// `x + y · gate` for `x`, `y` (B, L, C) and `gate` (B or 1, 1, C).
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Option<Result<Tensor>> {
    applies([x, y, gate]).then(|| {
        let (b, l, c) = x.dims3()?;
        if y.dims3()? != (b, l, c) {
            candle_core::bail!(
                "adaLN: the residual {:?} and the update {:?} differ",
                x.shape(),
                y.shape()
            );
        }
        let g = per_batch(gate, b, c, "the gate")?;
        let out = with_values(x, |xs| {
            with_values(y, |ys| {
                Ok(rows_written(xs.len(), c, |r, o| {
                    let (xr, yr) = (&xs[r * c..(r + 1) * c], &ys[r * c..(r + 1) * c]);
                    let g = &g[(r / l) * c..(r / l + 1) * c];
                    for i in 0..c {
                        o[i].write(xr[i] + yr[i] * g[i]);
                    }
                }))
            })
        })?;
        Tensor::from_vec(out, (b, l, c), x.device())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{layer_norm, max_abs_diff, modulate};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::test_util::hashed(shape, seed)
    }

    #[test]
    fn one_pass_equals_the_composed_steps() {
        let x = randn(&[2, 7, 24], 1);
        for vb in [2, 1] {
            let (shift, scale) = (randn(&[vb, 1, 24], 2), randn(&[vb, 1, 24], 3));
            let got = modulated_norm(&x, &shift, &scale, 1e-6).unwrap().unwrap();
            let want = modulate(&layer_norm(&x, 1e-6).unwrap(), &shift, &scale).unwrap();
            assert!(max_abs_diff(&got, &want).unwrap() < 1e-5);
            let y = randn(&[2, 7, 24], 4);
            let got = gated_residual(&x, &y, &scale).unwrap().unwrap();
            let want = (&x + y.broadcast_mul(&scale).unwrap()).unwrap();
            assert!(max_abs_diff(&got, &want).unwrap() < 1e-6);
        }
        // A recorded graph is left to the composed ops; a misfit is named.
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let s = randn(&[1, 1, 24], 5);
        assert!(modulated_norm(var.as_tensor(), &s, &s, 1e-6).is_none());
        let bad = randn(&[1, 1, 23], 6);
        let e = modulated_norm(&x, &bad, &s, 1e-6)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("the shift"), "{e}");
        let e = gated_residual(&x, &x.narrow(1, 0, 3).unwrap(), &s)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("differ"), "{e}");
    }
}
