//! Tiled decoding shared by the autoencoders: large latents decode in overlapping tiles whose
//! seams are blended linearly, so memory stays bounded at 2K/4K.

use candle_core::{Result, Tensor};

/// Decode `z` (B, C, h, w) with `decode` in tiles of `tile`×`tile` latent cells that overlap
/// by `overlap` cells; each latent cell decodes to `px`×`px` pixels. Equal to `decode(z)`
/// where the decoder's receptive field fits inside a tile.
pub fn decode_tiled(
    z: &Tensor,
    tile: usize,
    overlap: usize,
    px: usize,
    decode: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    if h <= tile && w <= tile {
        return decode(z);
    }
    if overlap >= tile {
        candle_core::bail!("tile overlap {overlap} must be smaller than the tile {tile}");
    }
    let starts = |n: usize| -> Vec<usize> {
        if n <= tile {
            return vec![0];
        }
        let stride = tile - overlap;
        let mut v: Vec<usize> = (0..)
            .map(|i| i * stride)
            .take_while(|s| s + tile < n)
            .collect();
        v.push(n - tile);
        v
    };
    let (ys, xs) = (starts(h), starts(w));
    let mut acc: Option<Tensor> = None;
    let mut wsum = Tensor::zeros((1, 1, h * px, w * px), z.dtype(), z.device())?;
    for &y0 in &ys {
        for &x0 in &xs {
            let th = tile.min(h);
            let tw = tile.min(w);
            let part = decode(&z.narrow(2, y0, th)?.narrow(3, x0, tw)?)?;
            let wy = ramp(th * px, overlap * px, y0 > 0, y0 + th < h);
            let wx = ramp(tw * px, overlap * px, x0 > 0, x0 + tw < w);
            let wt = Tensor::from_vec(wy, (th * px, 1), z.device())?
                .broadcast_mul(&Tensor::from_vec(wx, (1, tw * px), z.device())?)?
                .reshape((1, 1, th * px, tw * px))?
                .to_dtype(part.dtype())?;
            let pad = |t: &Tensor| -> Result<Tensor> {
                t.pad_with_zeros(2, y0 * px, (h - y0 - th) * px)?
                    .pad_with_zeros(3, x0 * px, (w - x0 - tw) * px)
            };
            let weighted = pad(&part.broadcast_mul(&wt)?)?;
            acc = Some(match acc {
                Some(a) => (a + weighted)?,
                None => weighted,
            });
            wsum = (wsum + pad(&wt)?)?;
        }
    }
    acc.expect("at least one tile").broadcast_div(&wsum)
}

/// Blend weights along one axis of a tile: linear ramps over `overlap` pixels on sides that
/// have a neighbour, 1 elsewhere (never 0, so every pixel has weight).
fn ramp(n: usize, overlap: usize, lead: bool, trail: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut w = 1.0f32;
            if lead && i < overlap {
                w = w.min((i as f32 + 0.5) / overlap as f32);
            }
            if trail && n - i <= overlap {
                w = w.min(((n - i) as f32 - 0.5) / overlap as f32);
            }
            w
        })
        .collect()
}
