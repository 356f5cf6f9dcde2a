//! Vectorised elementwise math for the CPU kernels: `exp` as a polynomial (libm's `expf` is
//! one scalar call per element, and the attention softmax takes about a billion of them per
//! FLUX.1 block pair at 1024²), row maxima and sums, and the tanh-approximated GELU.
//!
//! Each slice function is compiled three times, for AVX-512F, for AVX2 + FMA and for the
//! baseline, and the widest form this CPU runs is chosen at run time (the compiler
//! vectorises the branch-free loop bodies to the width each form allows).

use std::sync::OnceLock;

/// 2: AVX-512F, 1: AVX2 + FMA, 0: neither.
#[inline]
fn level() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return 2;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return 1;
            }
        }
        0
    })
}

/// A slice function whose body is compiled per instruction set and chosen at run time.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match level() {
                    // SAFETY: the CPU has the features each form was compiled for.
                    2 => return unsafe { v4($($arg),*) },
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// Lanes of the explicit accumulators in reductions (a sum of floats is not reassociated by
/// the compiler, so the lanes are written out).
const LANES: usize = 16;

/// `eˣ` to about 2 ulp, branch-free: `x = n ln 2 + r` with |r| ≤ ln 2 / 2, a degree-6
/// polynomial for `eʳ` (Cephes' `expf` coefficients), scaled by `2ⁿ` through the exponent
/// bits. Below −87.3 the result is 0 (so a masked score, −∞, gives exactly 0), above 88.7
/// it is +∞; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.7);
    // Rounded to the nearest integer by the 1.5·2²³ trick (exact for |n| < 2²²), which
    // vectorises on every instruction set.
    const ROUND: f32 = 12_582_912.0;
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from the bits of t, whose low mantissa bits hold n (t = 1.5·2²³ + n): integer
    // arithmetic that vectorises, where `n as i32` (a saturating cast) compiles to one
    // scalar conversion per lane.
    let scaled =
        y * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        scaled
    }
}

multiversion! {
    /// The largest element (−∞ for an empty slice; NaNs are skipped).
    pub fn max(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a = if v > *a { v } else { *a };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for &v in acc.iter().chain(chunks.remainder()) {
            m = if v > m { v } else { m };
        }
        m
    }
}

/// `xs[i] = e(xs[i] − shift)` in place, returning the sum of the new values: the body of
/// the exp slice functions, inlined into each instruction set's form.
#[inline(always)]
fn shifted_sum_with(xs: &mut [f32], shift: f32, e: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = e(*v - shift);
            *a += *v;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = e(*v - shift);
        sum += *v;
    }
    acc.iter().sum::<f32>() + sum
}

multiversion! {
    /// `xs[i] = e^(xs[i] − shift)` in place; returns the sum of the new values.
    pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
        shifted_sum_with(xs, shift, exp)
    }
}

/// `eˣ` for `x ≤ 0` (a score minus its row's maximum) to within 10⁻⁵ relative error, for
/// probabilities that are rounded to bf16 (2⁻⁹) next: one reduction constant and a degree-5
/// polynomial where [`exp`] spends two and degree 7, and no overflow path. Below −87.3 the
/// result is 0, NaN stays NaN; positive `x` is not its domain.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2: f32 = std::f32::consts::LN_2;
    const ROUND: f32 = 12_582_912.0;
    let xc = if x > -87.3 { x } else { -87.3 };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2;
    let mut p = 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    let y = p * r + 1.0;
    let scaled =
        y * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x.is_nan() {
        x
    } else if x > -87.3 {
        scaled
    } else {
        0.0
    }
}

multiversion! {
    /// [`exp_shifted_sum`] through [`exp_nonpositive`] (`shift` at least every element):
    /// for probabilities rounded to bf16 afterwards.
    pub fn exp_shifted_sum_coarse(xs: &mut [f32], shift: f32) -> f32 {
        shifted_sum_with(xs, shift, exp_nonpositive)
    }
}

multiversion! {
    /// `xs[i] *= s`.
    pub fn scale(xs: &mut [f32], s: f32) {
        for v in xs.iter_mut() {
            *v *= s;
        }
    }
}

/// √(2/π) and the cubic coefficient of the tanh-approximated GELU.
pub const GELU_A: f32 = 0.797_884_6;
pub const GELU_B: f32 = 0.044_715;

/// tanh through one [`exp`]: accurate to a few ulp away from 0 and to ~1e-7 absolute near
/// 0, which is all GELU needs.
#[inline(always)]
pub fn tanh(u: f32) -> f32 {
    let e = exp(-2.0 * u.abs());
    ((1.0 - e) / (1.0 + e)).copysign(u)
}

multiversion! {
    /// `out[i] = gelu_tanh(x[i])`.
    pub fn gelu(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + tanh(GELU_A * (v + GELU_B * v * v * v)));
        }
    }
}

multiversion! {
    /// `out[i] = dy[i] · gelu_tanh′(x[i])`.
    pub fn gelu_backward(out: &mut [f32], x: &[f32], dy: &[f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(dy) {
            let t = tanh(GELU_A * (v + GELU_B * v * v * v));
            let du = GELU_A * (1.0 + 3.0 * GELU_B * v * v);
            *o = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm_over_the_float_range() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn the_coarse_exp_is_within_its_bound_below_zero() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.00731;
        }
        assert!(worst < 1e-5, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-1e9), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        let mut xs: Vec<f32> = (0..37).map(|i| -(i as f32) * 0.3).collect();
        let want: f64 = xs.iter().map(|&v| ((v - 0.5) as f64).exp()).sum();
        let sum = exp_shifted_sum_coarse(&mut xs, 0.5);
        assert!(((sum as f64 - want) / want).abs() < 1e-5, "{sum} vs {want}");
    }

    #[test]
    fn slice_functions_equal_their_scalar_definitions() {
        // Lengths around the lane count exercise the remainders.
        for n in [0usize, 1, 15, 16, 17, 100] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
                .collect();
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want_max, "{n}");
            let mut e = xs.clone();
            let sum = exp_shifted_sum(&mut e, want_max);
            let want: Vec<f32> = xs.iter().map(|v| (v - want_max).exp()).collect();
            for (g, w) in e.iter().zip(&want) {
                assert!((g - w).abs() <= 4.0 * f32::EPSILON * w.abs(), "{g} vs {w}");
            }
            let want_sum: f32 = want.iter().sum();
            assert!(
                (sum - want_sum).abs() <= 1e-5 * want_sum.max(1.0),
                "{sum} vs {want_sum}"
            );
            let mut s = xs.clone();
            scale(&mut s, 0.5);
            assert!(s.iter().zip(&xs).all(|(a, b)| *a == 0.5 * b));
        }
    }

    #[test]
    fn gelu_matches_its_closed_form_and_its_derivative_the_difference_quotient() {
        let xs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.02).collect();
        let mut y = vec![0f32; xs.len()];
        gelu(&mut y, &xs);
        for (&v, &g) in xs.iter().zip(&y) {
            let want = 0.5 * v as f64 * (1.0 + ((GELU_A * (v + GELU_B * v * v * v)) as f64).tanh());
            assert!(
                (g as f64 - want).abs() < 2e-6 * (1.0 + want.abs()),
                "{v}: {g} vs {want}"
            );
        }
        let ones = vec![1f32; xs.len()];
        let mut d = vec![0f32; xs.len()];
        gelu_backward(&mut d, &xs, &ones);
        let h = 1e-3f64;
        for (&v, &g) in xs.iter().zip(&d) {
            let f = |x: f64| {
                0.5 * x * (1.0 + ((GELU_A as f64) * (x + GELU_B as f64 * x * x * x)).tanh())
            };
            let want = (f(v as f64 + h) - f(v as f64 - h)) / (2.0 * h);
            assert!((g as f64 - want).abs() < 1e-4, "{v}: {g} vs {want}");
        }
    }
}
