"""Parity fixtures for Sprout's FLUX.2 transformer, made with the reference implementation.

Builds tiny random-initialised `Flux2Transformer2DModel`s from fixed seeds with diffusers
(klein's layout without guidance input, dev's with it), runs them on fixed inputs (a target
and, for dev, two reference images at FLUX.2's time offsets 10 and 20) and writes weights
(diffusers naming and Black Forest Labs naming) plus inputs and outputs as safetensors into
crates/sprout-models/tests/fixtures/flux2/. Needs no download; CI never runs it.

    python -m venv venv && venv/bin/pip install torch diffusers transformers safetensors
    venv/bin/python tools/flux-parity/make_flux2_fixtures.py
"""

import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402  (save, randomise, pack)

mf.OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "sprout-models", "tests", "fixtures", "flux2")

# 4 latent channels × 2×2 patches = 16 per token; 2 heads of 16 = 4 rotary axes of 4.
TINY = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=24, timestep_guidance_channels=256, mlp_ratio=3.0,
            axes_dims_rope=(4, 4, 4, 4), rope_theta=2000, eps=1e-6)


def flux2_diffusers_to_bfl(sd, num_layers, num_single_layers):
    """diffusers Flux2Transformer2DModel keys → the Black Forest Labs checkpoint layout (the
    inverse of diffusers' `convert_flux2_transformer_checkpoint_to_diffusers`)."""
    out = {}

    def mv(src, dst):
        out[f"{dst}.weight"] = sd[f"{src}.weight"]

    mv("x_embedder", "img_in")
    mv("context_embedder", "txt_in")
    mv("time_guidance_embed.timestep_embedder.linear_1", "time_in.in_layer")
    mv("time_guidance_embed.timestep_embedder.linear_2", "time_in.out_layer")
    if "time_guidance_embed.guidance_embedder.linear_1.weight" in sd:
        mv("time_guidance_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
        mv("time_guidance_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    for m in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
        mv(f"{m}.linear", f"{m}.lin")
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        out[f"{b}.img_attn.qkv.weight"] = torch.cat([sd[f"{d}.attn.to_{x}.weight"] for x in "qkv"], 0)
        out[f"{b}.txt_attn.qkv.weight"] = torch.cat([sd[f"{d}.attn.add_{x}_proj.weight"] for x in "qkv"], 0)
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        mv(f"{d}.attn.to_out.0", f"{b}.img_attn.proj")
        mv(f"{d}.attn.to_add_out", f"{b}.txt_attn.proj")
        mv(f"{d}.ff.linear_in", f"{b}.img_mlp.0")
        mv(f"{d}.ff.linear_out", f"{b}.img_mlp.2")
        mv(f"{d}.ff_context.linear_in", f"{b}.txt_mlp.0")
        mv(f"{d}.ff_context.linear_out", f"{b}.txt_mlp.2")
    for i in range(num_single_layers):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        mv(f"{d}.attn.to_qkv_mlp_proj", f"{b}.linear1")
        mv(f"{d}.attn.to_out", f"{b}.linear2")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
    # AdaLayerNormContinuous emits (scale, shift); BFL's final layer chunks (shift, scale).
    scale, shift = sd["norm_out.linear.weight"].chunk(2, 0)
    out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], 0)
    mv("proj_out", "final_layer.linear")
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values()), "lost weights"
    return out


def ids(t, h, w, l):
    """Position ids (t, h, w, l) over the cartesian product, as diffusers' FLUX.2 pipelines
    build them."""
    return torch.cartesian_prod(torch.tensor(t), torch.tensor(h), torch.tensor(w), torch.tensor(l)).float()


def transformer_fixtures():
    from diffusers import Flux2Transformer2DModel

    g = torch.Generator().manual_seed(2024)
    latents = torch.randn(2, 4, 8, 6, generator=g)
    refs = [torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 6, 2, generator=g)]
    txt = torch.randn(2, 5, TINY["joint_attention_dim"], generator=g)
    timesteps = torch.tensor([0.3, 0.85])
    guidance = torch.tensor([3.5, 5.0])
    img = mf.pack(latents)
    # Target: t = 0, its rows and columns, l = 0. Text: t = h = w = 0, l = the token index.
    img_ids = ids([0], list(range(4)), list(range(3)), [0])
    txt_ids = ids([0], [0], [0], list(range(5)))
    for variant, guided, seed in (("klein", False, 21), ("dev", True, 22)):
        model = Flux2Transformer2DModel(guidance_embeds=guided, **TINY).eval()
        mf.randomise(model, seed, std=0.1)
        sd = model.state_dict()
        args = dict(encoder_hidden_states=txt, timestep=timesteps, txt_ids=txt_ids,
                    guidance=guidance if guided else None, return_dict=False)
        with torch.no_grad():
            out = model(hidden_states=img, img_ids=img_ids, **args)[0]
            bf = copy.deepcopy(model).to(torch.bfloat16)
            out_bf16 = bf(hidden_states=img.bfloat16(), img_ids=img_ids,
                          **dict(args, encoder_hidden_states=txt.bfloat16()))[0].float()
        cfg = dict(TINY, guidance_embeds=guided)
        mf.save(f"transformer_{variant}_diffusers.safetensors", sd, {"config": cfg}, torch.bfloat16)
        mf.save(f"transformer_{variant}_bfl.safetensors",
                flux2_diffusers_to_bfl(sd, TINY["num_layers"], TINY["num_single_layers"]), {"config": cfg},
                torch.bfloat16)
        io = dict(latents=latents, img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, timesteps=timesteps,
                  out=out, out_bf16=out_bf16)
        if guided:
            io["guidance"] = guidance
        # References enter as extra tokens after the target, reference k at time 10·(k + 1); the
        # output keeps the target tokens only (as Flux2Pipeline slices it).
        ref_tokens = [mf.pack(r) for r in refs]
        ref_ids = [ids([10 * (k + 1)], list(range(r.shape[2] // 2)), list(range(r.shape[3] // 2)), [0])
                   for k, r in enumerate(refs)]
        with torch.no_grad():
            full = model(hidden_states=torch.cat([img] + ref_tokens, 1), img_ids=torch.cat([img_ids] + ref_ids, 0),
                         **args)[0]
        io["ref0"], io["ref1"] = refs
        io["ref0_ids"], io["ref1_ids"] = ref_ids
        io["refs_out"] = full[:, : img.shape[1]]
        mf.save(f"transformer_{variant}_io.safetensors", io)


if __name__ == "__main__":
    torch.manual_seed(0)
    transformer_fixtures()
