//! The transformer blocks of the MMDiT: double-stream (separate weights for text and image
//! tokens, joint attention) and single-stream (one fused block over the joint sequence).

use crate::ops::Linear;
use crate::weights::Weights;
use candle_core::{Result, Tensor, D};
use candle_nn::Module;

use super::adaln;
use super::config::{DitConfig, MlpKind};
use super::heads::{joint_heads, merge_heads, HeadPart, Rotary};
use crate::flash::Precision;
use crate::ops::{attention_with, layer_norm, modulate, rms_norm, rope_interleaved};

const NORM_EPS: f64 = 1e-6;

/// What every block of one forward pass shares: rotary tables, the optional additive key
/// mask (B, 1, 1, L) that hides text padding, and the model's attention precision.
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    pub mask: Option<Tensor>,
    pub precision: Precision,
}

/// `layer_norm(x)·(1 + scale) + shift`: in one pass ([`adaln`]) where it applies.
fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    match adaln::modulated_norm(x, shift, scale, NORM_EPS as f32) {
        Some(r) => r,
        None => modulate(&layer_norm(x, NORM_EPS)?, shift, scale),
    }
}

/// `x + y·gate`: in one pass ([`adaln`]) where it applies.
fn gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    match adaln::gated_residual(x, y, gate) {
        Some(r) => r,
        None => x + y.broadcast_mul(gate)?,
    }
}

/// adaLN-Zero modulation: `lin(silu(vec))` split into 3 (single) or 6 (double) vectors,
/// each (shift, scale, gate).
#[derive(Debug, Clone)]
pub struct Modulation {
    lin: Linear,
    chunks: usize,
}

impl Modulation {
    pub fn new(dim: usize, double: bool, bias: bool, vb: Weights) -> Result<Self> {
        let chunks = if double { 6 } else { 3 };
        Ok(Modulation {
            lin: crate::ops::linear_zero_b(dim, chunks * dim, bias, vb.pp("lin"))?,
            chunks,
        })
    }

    /// The modulation vectors, each (B, 1, dim).
    pub fn forward(&self, vec: &Tensor) -> Result<Vec<Tensor>> {
        self.lin
            .forward(&vec.silu()?)?
            .unsqueeze(1)?
            .chunk(self.chunks, D::Minus1)
    }
}

/// RMS norms of queries and keys with learned scales.
#[derive(Debug, Clone)]
pub struct QkNorm {
    query_scale: Tensor,
    key_scale: Tensor,
}

impl QkNorm {
    pub fn new(dim: usize, vb: Weights) -> Result<Self> {
        let init = candle_nn::Init::Const(1.0);
        Ok(QkNorm {
            query_scale: vb.pp("query_norm").get_with_hints(dim, "scale", init)?,
            key_scale: vb.pp("key_norm").get_with_hints(dim, "scale", init)?,
        })
    }

    /// A fused qkv product of this norm's stream, as a part of a joint sequence.
    fn part<'a>(&'a self, qkv: &'a Tensor) -> HeadPart<'a> {
        HeadPart {
            qkv,
            query_scale: &self.query_scale,
            key_scale: &self.key_scale,
        }
    }
}

/// Split fused qkv (B, L, 3·H·D) into q, k, v of (B, H, L, D).
fn split_qkv(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, three_hd) = qkv.dims3()?;
    let d = three_hd / 3 / heads;
    let qkv = qkv.reshape((b, l, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    Ok((
        qkv.get(0)?.contiguous()?,
        qkv.get(1)?.contiguous()?,
        qkv.get(2)?.contiguous()?,
    ))
}

/// The joint sequence's q, k and v (B, H, L, D) from the fused qkv products of its parts
/// (text, then image; each (B, Lᵢ, 3·H·D)): split into heads, q and k RMS-normalised by
/// each part's scales, all rotated. In one pass ([`joint_heads`]) where it applies, else
/// composed.
fn joint_qkv(parts: &[HeadPart], heads: usize, rope: &Rope) -> Result<(Tensor, Tensor, Tensor)> {
    let n = Rotary {
        eps: NORM_EPS as f32,
        cos: &rope.cos,
        sin: &rope.sin,
    };
    if let Some(r) = joint_heads(parts, heads, &n) {
        return r;
    }
    let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
    for p in parts {
        let (q, k, v) = split_qkv(p.qkv, heads)?;
        qs.push(rms_norm(&q, p.query_scale, NORM_EPS)?);
        ks.push(rms_norm(&k, p.key_scale, NORM_EPS)?);
        vs.push(v);
    }
    let cat = |xs: Vec<Tensor>| -> Result<Tensor> {
        if xs.len() == 1 {
            Ok(xs.into_iter().next().expect("one part"))
        } else {
            Tensor::cat(&xs, 2)
        }
    };
    let (q, k, v) = (cat(qs)?, cat(ks)?, cat(vs)?);
    // The rotation is computed in the tables' f32 and cast back (as the reference
    // implementation does for bf16/f16 models).
    let rotate = |x: &Tensor| -> Result<Tensor> {
        let dt = x.dtype();
        if dt == rope.cos.dtype() {
            rope_interleaved(x, &rope.cos, &rope.sin)
        } else {
            rope_interleaved(&x.to_dtype(rope.cos.dtype())?, &rope.cos, &rope.sin)?.to_dtype(dt)
        }
    };
    Ok((rotate(&q)?, rotate(&k)?, v))
}

/// The MLP activation: GELU (tanh) or SwiGLU.
fn activate(x: &Tensor, kind: MlpKind) -> Result<Tensor> {
    match kind {
        MlpKind::Gelu => crate::ops::gelu(x),
        MlpKind::SwiGlu => crate::ops::swiglu(x),
    }
}

/// Attention over the joint (B, H, L, D) q, k, v of [`joint_qkv`]; returns its token rows
/// (B, L, H·D), each followed by the activation of `mlp` (B, L, M) where it is given (the
/// single block's input to its output product). In one pass ([`merge_heads`]) where it
/// applies.
fn joint_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &Rope,
    mlp: Option<(&Tensor, MlpKind)>,
) -> Result<Tensor> {
    let x = attention_with(q, k, v, rope.mask.as_ref(), rope.precision)?;
    if let Some(r) = merge_heads(&x, mlp) {
        return r;
    }
    let (b, h, l, d) = x.dims4()?;
    let rows = x.transpose(1, 2)?.reshape((b, l, h * d))?;
    match mlp {
        Some((mlp, kind)) => Tensor::cat(&[rows, activate(mlp, kind)?], D::Minus1),
        None => Ok(rows),
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Linear,
    norm: QkNorm,
    proj: Linear,
}

impl SelfAttention {
    fn new(cfg: &DitConfig, vb: Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(SelfAttention {
            qkv: crate::ops::linear_b(h, 3 * h, cfg.qkv_bias, vb.pp("qkv"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            proj: crate::ops::linear_b(h, h, cfg.linear_bias, vb.pp("proj"))?,
        })
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    kind: MlpKind,
}

impl Mlp {
    fn new(cfg: &DitConfig, vb: Weights) -> Result<Self> {
        let (h, b) = (cfg.hidden_size, cfg.linear_bias);
        Ok(Mlp {
            fc1: crate::ops::linear_b(h, cfg.mlp_in(), b, vb.pp("0"))?,
            fc2: crate::ops::linear_b(cfg.mlp_hidden(), h, b, vb.pp("2"))?,
            kind: cfg.mlp,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&activate(&self.fc1.forward(x)?, self.kind)?)
    }
}

/// Modulation vectors computed once per forward for all blocks (a preset with
/// `shared_modulation`, FLUX.2): each double block's image and text streams, and each
/// single block.
pub struct SharedModulation {
    pub img: Vec<Tensor>,
    pub txt: Vec<Tensor>,
    pub single: Vec<Tensor>,
}

/// A block's modulation vectors: its own module's, or the shared ones.
fn modulation(
    own: Option<&Modulation>,
    shared: Option<&[Tensor]>,
    vec: &Tensor,
) -> Result<Vec<Tensor>> {
    match (own, shared) {
        (Some(m), _) => m.forward(vec),
        (None, Some(s)) => Ok(s.to_vec()),
        (None, None) => candle_core::bail!("a block without modulation got no shared modulation"),
    }
}

/// One stream (text or image) of a double block.
#[derive(Debug, Clone)]
struct Stream {
    /// None with shared modulation.
    modulation: Option<Modulation>,
    attn: SelfAttention,
    mlp: Mlp,
}

impl Stream {
    fn new(cfg: &DitConfig, prefix: &str, vb: &Weights) -> Result<Self> {
        let vm = vb.pp(format!("{prefix}_mod"));
        Ok(Stream {
            modulation: (!cfg.shared_modulation)
                .then(|| Modulation::new(cfg.hidden_size, true, cfg.linear_bias, vm))
                .transpose()?,
            attn: SelfAttention::new(cfg, vb.pp(format!("{prefix}_attn")))?,
            mlp: Mlp::new(cfg, vb.pp(format!("{prefix}_mlp")))?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct DoubleStreamBlock {
    img: Stream,
    txt: Stream,
    heads: usize,
}

impl DoubleStreamBlock {
    pub fn new(cfg: &DitConfig, vb: Weights) -> Result<Self> {
        Ok(DoubleStreamBlock {
            img: Stream::new(cfg, "img", &vb)?,
            txt: Stream::new(cfg, "txt", &vb)?,
            heads: cfg.num_heads,
        })
    }

    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        rope: &Rope,
        shared: Option<&SharedModulation>,
    ) -> Result<(Tensor, Tensor)> {
        let im = modulation(
            self.img.modulation.as_ref(),
            shared.map(|s| &s.img[..]),
            vec,
        )?;
        let tm = modulation(
            self.txt.modulation.as_ref(),
            shared.map(|s| &s.txt[..]),
            vec,
        )?;
        let img_in = norm_modulate(img, &im[0], &im[1])?;
        let txt_in = norm_modulate(txt, &tm[0], &tm[1])?;
        let img_qkv = self.img.attn.qkv.forward(&img_in)?;
        let txt_qkv = self.txt.attn.qkv.forward(&txt_in)?;
        // Text then image, each stream's q and k normalised by its own scales.
        let (q, k, v) = joint_qkv(
            &[
                self.txt.attn.norm.part(&txt_qkv),
                self.img.attn.norm.part(&img_qkv),
            ],
            self.heads,
            rope,
        )?;
        let attn = joint_attention(&q, &k, &v, rope, None)?;
        let lt = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, lt)?;
        let img_attn = attn.narrow(1, lt, attn.dim(1)? - lt)?;
        let img = gated(img, &self.img.attn.proj.forward(&img_attn)?, &im[2])?;
        let img_mlp = self
            .img
            .mlp
            .forward(&norm_modulate(&img, &im[3], &im[4])?)?;
        let img = gated(&img, &img_mlp, &im[5])?;
        let txt = gated(txt, &self.txt.attn.proj.forward(&txt_attn)?, &tm[2])?;
        let txt_mlp = self
            .txt
            .mlp
            .forward(&norm_modulate(&txt, &tm[3], &tm[4])?)?;
        let txt = gated(&txt, &txt_mlp, &tm[5])?;
        Ok((img, txt))
    }
}

#[derive(Debug, Clone)]
pub struct SingleStreamBlock {
    linear1: Linear,
    linear2: Linear,
    norm: QkNorm,
    /// None with shared modulation.
    modulation: Option<Modulation>,
    hidden: usize,
    heads: usize,
    mlp: MlpKind,
}

impl SingleStreamBlock {
    pub fn new(cfg: &DitConfig, vb: Weights) -> Result<Self> {
        let (h, b) = (cfg.hidden_size, cfg.linear_bias);
        let m = cfg.mlp_hidden();
        Ok(SingleStreamBlock {
            linear1: crate::ops::linear_b(h, 3 * h + cfg.mlp_in(), b, vb.pp("linear1"))?,
            linear2: crate::ops::linear_b(h + m, h, b, vb.pp("linear2"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            modulation: (!cfg.shared_modulation)
                .then(|| Modulation::new(h, false, b, vb.pp("modulation")))
                .transpose()?,
            hidden: h,
            heads: cfg.num_heads,
            mlp: cfg.mlp,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        vec: &Tensor,
        rope: &Rope,
        shared: Option<&SharedModulation>,
    ) -> Result<Tensor> {
        let m = modulation(self.modulation.as_ref(), shared.map(|s| &s.single[..]), vec)?;
        let x_in = norm_modulate(x, &m[0], &m[1])?;
        let h1 = self.linear1.forward(&x_in)?;
        drop(x_in);
        let qkv = h1.narrow(D::Minus1, 0, 3 * self.hidden)?;
        let mlp = h1.narrow(
            D::Minus1,
            3 * self.hidden,
            h1.dim(D::Minus1)? - 3 * self.hidden,
        )?;
        let (q, k, v) = joint_qkv(&[self.norm.part(&qkv)], self.heads, rope)?;
        drop(qkv);
        let input = joint_attention(&q, &k, &v, rope, Some((&mlp, self.mlp)))?;
        drop((q, k, v, mlp, h1));
        let out = self.linear2.forward(&input)?;
        gated(x, &out, &m[2])
    }
}

/// Final adaLN (shift, then scale) and projection back to token channels.
#[derive(Debug, Clone)]
pub struct LastLayer {
    linear: Linear,
    ada: Linear,
}

impl LastLayer {
    pub fn new(hidden: usize, out: usize, bias: bool, vb: Weights) -> Result<Self> {
        let ada = vb.pp("adaLN_modulation.1");
        Ok(LastLayer {
            linear: crate::ops::linear_zero_b(hidden, out, bias, vb.pp("linear"))?,
            ada: crate::ops::linear_zero_b(hidden, 2 * hidden, bias, ada)?,
        })
    }

    pub fn forward(&self, x: &Tensor, vec: &Tensor) -> Result<Tensor> {
        let m = self
            .ada
            .forward(&vec.silu()?)?
            .unsqueeze(1)?
            .chunk(2, D::Minus1)?;
        self.linear.forward(&norm_modulate(x, &m[0], &m[1])?)
    }
}
