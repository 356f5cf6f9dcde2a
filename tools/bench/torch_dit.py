#!/usr/bin/env python3
"""One forward of diffusers' FLUX.1 or FLUX.2 transformer at a preset's full width with
random weights, under a given thread count: the PyTorch side of `sprout bench --dit`.

    tools/bench/torch_dit.py --preset flux-schnell --blocks 1,1 --size 1024x1024 \
        --dtype f32 --threads 2

The shapes are those `sprout bench --dit` runs (image tokens from the canvas at 16 pixels a
token, 256 text tokens by default for FLUX.1, 512 for FLUX.2). Prints one JSON line: seconds, GFLOP/s (counted as Sprout
counts them) and peak resident memory. Needs `pip install torch diffusers` (a tool, never run
in CI).
"""

import argparse
import json
import resource
import time

PRESETS = {
    # (guidance embedding, pooled text width, text width, hidden, heads); pooled None: FLUX.2
    "flux-schnell": (False, 768, 4096, 3072, 24),
    "flux-dev": (True, 768, 4096, 3072, 24),
    "flux2-klein-4b": (False, None, 7680, 3072, 24),
    "flux2-klein-9b": (False, None, 12288, 4096, 32),
    "flux2-dev": (True, None, 15360, 6144, 48),
}


def forward_flops(hidden, mlp, double, single, li, lt, in_ch, ctx, mlp_in=None):
    """The same count as Sprout's DitConfig::forward_flops (batch 1); `mlp_in` is the MLP's
    input projection width (twice `mlp` for FLUX.2's SwiGLU)."""
    h, m, l = float(hidden), float(mlp), float(li + lt)
    mi = float(mlp_in or mlp)
    per_double = 2 * (3 * h * h + h * h + h * (mi + m))
    per_single = 2 * (h * (3 * h + mi) + (h + m) * h)
    attn = 4 * l * l * h
    embed = 2 * (li * in_ch * h + lt * ctx * h + li * in_ch * h)
    return double * (per_double * l + attn) + single * (per_single * l + attn) + embed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="flux-schnell", choices=sorted(PRESETS))
    ap.add_argument("--blocks", default="1,1")
    ap.add_argument("--size", default="1024x1024")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--txt", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    guidance, pooled, ctx, hidden, heads = PRESETS[a.preset]
    flux2 = pooled is None
    double, single = (int(x) for x in a.blocks.split(","))
    w, h = (int(x) for x in a.size.split("x"))
    rows, cols = h // 16, w // 16
    li, lt = rows * cols, a.txt or (512 if flux2 else 256)
    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    in_ch = 128 if flux2 else 64
    shape = dict(patch_size=1, in_channels=in_ch, num_layers=double, num_single_layers=single,
                 attention_head_dim=hidden // heads, num_attention_heads=heads, joint_attention_dim=ctx,
                 guidance_embeds=guidance)
    ids = torch.zeros(rows, cols, 4 if flux2 else 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    img_ids = ids.reshape(rows * cols, -1)
    if flux2:
        from diffusers import Flux2Transformer2DModel

        model = Flux2Transformer2DModel(**shape).to(dtype).eval()
        txt_ids = torch.zeros(lt, 4)
        txt_ids[:, 3] = torch.arange(lt)
        extra = {}
    else:
        from diffusers import FluxTransformer2DModel

        model = FluxTransformer2DModel(pooled_projection_dim=pooled, axes_dims_rope=(16, 56, 56),
                                       **shape).to(dtype).eval()
        txt_ids = torch.zeros(lt, 3)
        extra = {"pooled_projections": torch.randn(1, pooled, dtype=dtype)}
    img = torch.randn(1, li, in_ch, dtype=dtype)
    txt = torch.randn(1, lt, ctx, dtype=dtype)
    t = torch.tensor([0.5], dtype=dtype)
    g = torch.tensor([3.5], dtype=dtype) if guidance else None
    times = []
    with torch.inference_mode():
        for _ in range(max(1, a.repeat)):
            start = time.perf_counter()
            model(hidden_states=img, encoder_hidden_states=txt, timestep=t, img_ids=img_ids,
                  txt_ids=txt_ids, guidance=g, return_dict=False, **extra)
            times.append(time.perf_counter() - start)
    secs = sorted(times)[len(times) // 2]
    if flux2:
        flops = forward_flops(hidden, 3 * hidden, double, single, li, lt, in_ch, ctx, mlp_in=6 * hidden)
    else:
        flops = forward_flops(hidden, 4 * hidden, double, single, li, lt, in_ch, ctx)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "impl": "diffusers+torch " + torch.__version__,
        "preset": a.preset, "blocks": [double, single], "size": a.size,
        "tokens": {"image": li, "text": lt}, "dtype": a.dtype, "threads": a.threads,
        "seconds": secs, "gflops_per_s": flops / secs / 1e9, "peak_rss_bytes": peak,
    }))


if __name__ == "__main__":
    main()
