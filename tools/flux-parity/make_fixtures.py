"""Parity fixtures for Sprout's FLUX.1 code, made with the reference implementation.

Builds tiny random-initialised models from fixed seeds with diffusers / transformers
(FluxTransformer2DModel with and without guidance embedding, AutoencoderKL in the FLUX
configuration, CLIP and T5 text encoders), runs them on fixed inputs and writes weights
(diffusers naming and Black Forest Labs naming) plus inputs and outputs as safetensors into
crates/sprout-models/tests/fixtures/flux/. Needs no download; CI never runs it.

    python -m venv venv && venv/bin/pip install torch diffusers transformers safetensors peft
    venv/bin/python tools/flux-parity/make_fixtures.py
"""

import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "sprout-models", "tests", "fixtures", "flux")

torch.use_deterministic_algorithms(True)
MODELS = {}
torch.set_default_dtype(torch.float32)


# When set, `save` writes nothing and instead checks that the committed file holds what this
# run computed: the parts are rebuilt this way for fixtures made on top of them (`lora`).
REBUILD = False


def save(name, tensors, meta=None, dtype=torch.float32):
    """Weights are stored as bf16 (they are bf16-representable by construction, see
    `randomise`), inputs and outputs as f32."""
    path = os.path.join(OUT, name)
    if REBUILD:
        from safetensors.torch import load_file

        stored = load_file(path)
        assert stored.keys() == tensors.keys(), f"{name}: other tensors than committed"
        worst = max(float((stored[k].float() - v.detach().to(dtype).float()).abs().max()) for k, v in tensors.items())
        print(f"{name}: rebuilt, max abs difference to the committed file {worst:.1e}")
        assert worst <= 1e-5, f"{name}: this environment does not reproduce the committed fixture"
        return
    save_file({k: v.detach().contiguous().to(dtype) for k, v in tensors.items()}, path,
              metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    print(f"{name}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


def randomise(module, seed, std=0.2):
    """Every parameter gets seeded random values (zero-initialised gates would hide bugs),
    rounded to bf16 so that the fixture can store them in half the bytes while the reference
    still computes in f32 with exactly the stored values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("norm.weight") or "norm" in name.split(".")[-2] and name.endswith("weight"):
                p.copy_((1.0 + 0.1 * torch.randn(p.shape, generator=g)).bfloat16().float())
            else:
                p.copy_((std * torch.randn(p.shape, generator=g)).bfloat16().float())


# ---------------------------------------------------------------- transformer


def flux_diffusers_to_bfl(sd, num_layers, num_single_layers):
    """diffusers FluxTransformer2DModel keys → the Black Forest Labs checkpoint layout
    (the inverse of diffusers' conversion script)."""
    out = {}

    def mv(src, dst):
        for suffix in ("weight", "bias"):
            if f"{src}.{suffix}" in sd:
                out[f"{dst}.{suffix}"] = sd[f"{src}.{suffix}"]

    def cat(srcs, dst):
        for suffix in ("weight", "bias"):
            if f"{srcs[0]}.{suffix}" in sd:
                out[f"{dst}.{suffix}"] = torch.cat([sd[f"{s}.{suffix}"] for s in srcs], 0)

    mv("x_embedder", "img_in")
    mv("context_embedder", "txt_in")
    mv("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    mv("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    mv("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    mv("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    mv("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
    mv("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        mv(f"{d}.norm1.linear", f"{b}.img_mod.lin")
        mv(f"{d}.norm1_context.linear", f"{b}.txt_mod.lin")
        cat([f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], f"{b}.img_attn.qkv")
        cat([f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"], f"{b}.txt_attn.qkv")
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        mv(f"{d}.attn.to_out.0", f"{b}.img_attn.proj")
        mv(f"{d}.attn.to_add_out", f"{b}.txt_attn.proj")
        mv(f"{d}.ff.net.0.proj", f"{b}.img_mlp.0")
        mv(f"{d}.ff.net.2", f"{b}.img_mlp.2")
        mv(f"{d}.ff_context.net.0.proj", f"{b}.txt_mlp.0")
        mv(f"{d}.ff_context.net.2", f"{b}.txt_mlp.2")
    for i in range(num_single_layers):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        mv(f"{d}.norm.linear", f"{b}.modulation.lin")
        cat([f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"], f"{b}.linear1")
        mv(f"{d}.proj_out", f"{b}.linear2")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
    # AdaLayerNormContinuous emits (scale, shift); BFL's final layer chunks (shift, scale).
    for suffix in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{suffix}"].chunk(2, 0)
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale], 0)
    mv("proj_out", "final_layer.linear")
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values()), "lost weights"
    return out


def pack(z, p=2):
    """(B, C, H, W) latents → (B, H/p·W/p, C·p·p) tokens, FLUX order (c, ph, pw)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // p) * (w // p), c * p * p)


def grid_ids(index, h, w):
    ids = torch.zeros(h, w, 3)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


# Sized so that the tiny parts compose into a whole pipeline: T5 width 32 = joint_attention_dim,
# CLIP width 32 = pooled_projection_dim, VAE latent channels 4 × 2×2 patches = in_channels.
TINY = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))


def transformer_fixtures():
    from diffusers import FluxTransformer2DModel

    g = torch.Generator().manual_seed(1234)
    latents = torch.randn(2, 4, 8, 6, generator=g)  # 4 channels, 2×2 patches → 16 per token
    refs = [torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 6, 2, generator=g)]
    txt = torch.randn(2, 5, TINY["joint_attention_dim"], generator=g)
    pooled = torch.randn(2, TINY["pooled_projection_dim"], generator=g)
    timesteps = torch.tensor([0.3, 0.85])
    guidance = torch.tensor([3.5, 5.0])
    img = pack(latents)
    img_ids = grid_ids(0, 4, 3)
    txt_ids = torch.zeros(5, 3)
    for variant, guided, seed in (("schnell", False, 11), ("dev", True, 12)):
        model = FluxTransformer2DModel(guidance_embeds=guided, **TINY).eval()
        randomise(model, seed, std=0.1)
        MODELS[variant] = model
        sd = model.state_dict()
        with torch.no_grad():
            out = model(hidden_states=img, encoder_hidden_states=txt, pooled_projections=pooled,
                        timestep=timesteps, img_ids=img_ids, txt_ids=txt_ids,
                        guidance=guidance if guided else None, return_dict=False)[0]
        # The reference's own bf16 result (weights and activations in bf16, times in f32), the
        # yardstick for Sprout's bf16 path.
        import copy
        with torch.no_grad():
            out_bf16 = copy.deepcopy(model).to(torch.bfloat16)(
                hidden_states=img.bfloat16(), encoder_hidden_states=txt.bfloat16(),
                pooled_projections=pooled.bfloat16(), timestep=timesteps, img_ids=img_ids, txt_ids=txt_ids,
                guidance=guidance if guided else None, return_dict=False)[0].float()
        cfg = dict(TINY, guidance_embeds=guided)
        save(f"transformer_{variant}_diffusers.safetensors", sd, {"config": cfg}, torch.bfloat16)
        save(f"transformer_{variant}_bfl.safetensors",
             flux_diffusers_to_bfl(sd, TINY["num_layers"], TINY["num_single_layers"]), {"config": cfg},
             torch.bfloat16)
        io = dict(latents=latents, img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=pooled,
                  timesteps=timesteps, out=out, out_bf16=out_bf16)
        if guided:
            io["guidance"] = guidance
            # Kontext: reference latents enter as extra tokens after the target, with image index
            # k on the first rotary axis; the output keeps the target tokens only.
            ref_tokens = [pack(r) for r in refs]
            ref_ids = [grid_ids(k + 1, r.shape[2] // 2, r.shape[3] // 2) for k, r in enumerate(refs)]
            with torch.no_grad():
                full = model(hidden_states=torch.cat([img] + ref_tokens, 1), encoder_hidden_states=txt,
                             pooled_projections=pooled, timestep=timesteps,
                             img_ids=torch.cat([img_ids] + ref_ids, 0), txt_ids=txt_ids, guidance=guidance,
                             return_dict=False)[0]
            io["ref0"], io["ref1"] = refs
            io["ref0_ids"], io["ref1_ids"] = ref_ids
            io["kontext_out"] = full[:, : img.shape[1]]
        save(f"transformer_{variant}_io.safetensors", io)


# ---------------------------------------------------------------- scheduler


def scheduler_fixtures():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    out = {}
    # schnell: 4 steps, no shift. dev: 28 steps, shift from the image's token count (1024² → 4096).
    for name, steps, dynamic, seq in (("schnell", 4, False, 4096), ("dev", 28, True, 4096), ("dev_512", 28, True, 1024)):
        sched = FlowMatchEulerDiscreteScheduler(
            shift=1.0, use_dynamic_shifting=dynamic, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096)
        sigmas = torch.linspace(1.0, 1.0 / steps, steps).numpy()
        mu = calculate_shift(seq, 256, 4096, 0.5, 1.15) if dynamic else None
        sched.set_timesteps(sigmas=sigmas, mu=mu)
        out[f"{name}_sigmas"] = sched.sigmas.float()
        out[f"{name}_mu"] = torch.tensor([mu if mu is not None else 0.0])
    g = torch.Generator().manual_seed(99)
    x = torch.randn(1, 12, 16, generator=g)
    v = torch.randn(1, 12, 16, generator=g)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=torch.linspace(1.0, 0.25, 4).numpy())
    sched._step_index = 1
    out["step_x"], out["step_v"] = x, v
    out["step_sigma"], out["step_sigma_next"] = sched.sigmas[1:2].float(), sched.sigmas[2:3].float()
    out["step_out"] = sched.step(v, sched.timesteps[1], x, return_dict=False)[0]
    save("scheduler.safetensors", out)


# ---------------------------------------------------------------- autoencoder


def vae_diffusers_to_bfl(sd, levels, layers):
    """diffusers AutoencoderKL keys → the Black Forest Labs `ae.safetensors` layout."""
    out = {}

    def mv(src, dst, conv=False):
        for suffix in ("weight", "bias"):
            k = f"{src}.{suffix}"
            if k in sd:
                t = sd[k]
                if conv and suffix == "weight" and t.dim() == 2:
                    t = t[:, :, None, None]
                out[f"{dst}.{suffix}"] = t

    def resnet(src, dst):
        for a in ("norm1", "conv1", "norm2", "conv2"):
            mv(f"{src}.{a}", f"{dst}.{a}")
        mv(f"{src}.conv_shortcut", f"{dst}.nin_shortcut")

    def mid(side):
        resnet(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
        resnet(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
        a = f"{side}.mid_block.attentions.0"
        mv(f"{a}.group_norm", f"{side}.mid.attn_1.norm")
        mv(f"{a}.to_q", f"{side}.mid.attn_1.q", conv=True)
        mv(f"{a}.to_k", f"{side}.mid.attn_1.k", conv=True)
        mv(f"{a}.to_v", f"{side}.mid.attn_1.v", conv=True)
        mv(f"{a}.to_out.0", f"{side}.mid.attn_1.proj_out", conv=True)

    mv("encoder.conv_in", "encoder.conv_in")
    for i in range(levels):
        for j in range(layers):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        mv(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    mid("encoder")
    mv("encoder.conv_norm_out", "encoder.norm_out")
    mv("encoder.conv_out", "encoder.conv_out")
    mv("decoder.conv_in", "decoder.conv_in")
    mid("decoder")
    for i in range(levels):
        for j in range(layers + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{levels - 1 - i}.block.{j}")
        mv(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{levels - 1 - i}.upsample.conv")
    mv("decoder.conv_norm_out", "decoder.norm_out")
    mv("decoder.conv_out", "decoder.conv_out")
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values()), "lost weights"
    return out


def vae_fixtures():
    from diffusers import AutoencoderKL

    cfg = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
               latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
               shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
    vae = AutoencoderKL(**cfg).eval()
    randomise(vae, 21, std=0.1)
    MODELS["vae"] = vae
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(image).latent_dist.mode()
        latents = (mean - cfg["shift_factor"]) * cfg["scaling_factor"]
        z = torch.randn(1, 4, 16, 24, generator=g)
        decoded = vae.decode(z / cfg["scaling_factor"] + cfg["shift_factor"]).sample
    sd = vae.state_dict()
    meta = {"config": {k: v for k, v in cfg.items()}}
    save("vae_diffusers.safetensors", sd, meta, torch.bfloat16)
    save("vae_bfl.safetensors", vae_diffusers_to_bfl(sd, 2, 1), meta, torch.bfloat16)
    save("vae_io.safetensors", dict(image=image, latents=latents, z=z, decoded=decoded))


# ---------------------------------------------------------------- text encoders


def text_fixtures():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    # The vocabulary is the tiny tokenizer's (below): start 532, end 533.
    clip_cfg = CLIPTextConfig(vocab_size=534, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                              projection_dim=32, bos_token_id=532, eos_token_id=533, pad_token_id=533)
    clip = CLIPTextModel(clip_cfg).eval()
    randomise(clip, 31, std=0.1)
    # FLUX pads CLIP prompts with the end token; the pooled state is the first end token's.
    ids = torch.tensor([[532, 5, 17, 42, 533, 533, 533, 533], [532, 7, 8, 9, 10, 11, 533, 533]])
    with torch.no_grad():
        o = clip(input_ids=ids)
    MODELS["clip"] = clip
    save("clip.safetensors", {f"text_model.{k}" if not k.startswith("text_model.") else k: v
                              for k, v in clip.state_dict().items()},
         {"config": {k: getattr(clip_cfg, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                       "num_hidden_layers", "num_attention_heads",
                                                       "max_position_embeddings", "hidden_act",
                                                       "projection_dim", "eos_token_id")}},
         torch.bfloat16)
    save("clip_io.safetensors", dict(input_ids=ids.float(), last_hidden_state=o.last_hidden_state,
                                     pooled=o.pooler_output))

    t5_cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=20,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                      tie_word_embeddings=False, dropout_rate=0.0)
    t5 = T5EncoderModel(t5_cfg).eval()
    randomise(t5, 41, std=0.1)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 1, 0, 0, 0], [27, 18, 28, 1, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        o = t5(input_ids=ids)
    # The token embedding is tied: checkpoints store it once, as `shared.weight`.
    sd = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save("t5.safetensors", sd, {"config": t5_cfg.to_dict()}, torch.bfloat16)
    save("t5_io.safetensors", dict(input_ids=ids.float(), last_hidden_state=o.last_hidden_state))
    MODELS["t5"] = t5


# ---------------------------------------------------------------- tokenizers


PROMPTS = ["a photo of a red circle", "A red  circle, and a BLUE star's photo 42!", "", "cat " * 20]


def tokenizer_fixtures():
    """A tiny CLIP BPE vocabulary (byte-level, `</w>` word ends) and a tiny T5 SentencePiece
    model, each in the files a diffusers snapshot has (`tokenizer/vocab.json` + `merges.txt`,
    `tokenizer_2/tokenizer.json`), with the ids transformers gives for some prompts, padded
    and truncated as FLUX pipelines do (to 16 tokens here)."""
    import sentencepiece as spm
    from transformers import CLIPTokenizer, T5TokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    clip_dir = os.path.join(OUT, "tokenizer")
    os.makedirs(clip_dir, exist_ok=True)
    b2u = bytes_to_unicode()
    chars = [b2u[b] for b in range(256)]
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for w in ["red", "circle", "blue", "star", "photo", "cat", "of"]:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        cur = parts[0]
        for p in parts[1:]:
            merges.append(f"{cur} {p}")
            cur = cur + p
            vocab.setdefault(cur, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(clip_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(clip_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    clip = CLIPTokenizer(os.path.join(clip_dir, "vocab.json"), os.path.join(clip_dir, "merges.txt"),
                         pad_token="<|endoftext|>")
    t5_dir = os.path.join(OUT, "tokenizer_2")
    os.makedirs(t5_dir, exist_ok=True)
    corpus = os.path.join(t5_dir, "corpus.txt")
    with open(corpus, "w") as f:
        for i in range(200):
            f.write(f"a photo of a red circle and a blue star number {i} with a cat\n")
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(t5_dir, "spiece"), vocab_size=48,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(t5_dir, "spiece.model"))
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    t5 = T5TokenizerFast(vocab=pieces, extra_ids=0)
    t5.backend_tokenizer.save(os.path.join(t5_dir, "tokenizer.json"))
    for f in ("corpus.txt", "spiece.model", "spiece.vocab"):
        os.remove(os.path.join(t5_dir, f))
    ids = {
        "prompts": PROMPTS,
        "clip": [clip(p, padding="max_length", max_length=16, truncation=True)["input_ids"] for p in PROMPTS],
        "t5": [t5(p, padding="max_length", max_length=16, truncation=True)["input_ids"] for p in PROMPTS],
    }
    with open(os.path.join(OUT, "tokenizer_ids.json"), "w") as f:
        json.dump(ids, f, indent=1)
    print("tokenizers:", ids)


# ---------------------------------------------------------------- whole pipelines


def pipeline_fixtures():
    """diffusers' FluxPipeline over the tiny parts, from given initial latents (its `latents=`
    argument), as images in [0, 1]: text-to-image for schnell (2 steps, no shift) and dev
    (3 steps, guidance 3.5, resolution-dependent shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_tok = CLIPTokenizer(os.path.join(OUT, "tokenizer", "vocab.json"),
                             os.path.join(OUT, "tokenizer", "merges.txt"), pad_token="<|endoftext|>",
                             model_max_length=77)
    t5_tok = T5TokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer_2", "tokenizer.json"))
    g = torch.Generator().manual_seed(77)
    out = {}
    for variant, steps, dynamic, guidance in (("schnell", 2, False, 0.0), ("dev", 3, True, 3.5)):
        sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=dynamic, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        pipe = FluxPipeline(scheduler=sched, vae=MODELS["vae"], text_encoder=MODELS["clip"], tokenizer=clip_tok,
                            text_encoder_2=MODELS["t5"], tokenizer_2=t5_tok, transformer=MODELS[variant])
        # 32×48 pixels → 16×24 latents (this VAE is f2) → 8×12 packed tokens.
        latents = torch.randn(1, 8 * 12, 16, generator=g)
        with torch.no_grad():
            image = pipe(prompt="a photo of a red circle", height=32, width=48, num_inference_steps=steps,
                         guidance_scale=guidance, latents=latents.clone(), max_sequence_length=16,
                         output_type="pt").images
        out[f"{variant}_latents"] = latents
        out[f"{variant}_image"] = image
    # Kontext editing: one input image (8-bit RGB, already a multiple of 4 so it is not
    # resized), encoded by the VAE's posterior mean, its tokens appended with image index 1.
    from diffusers import FluxKontextPipeline
    from PIL import Image

    pixels = (torch.rand(32, 48, 3, generator=g) * 255).round().to(torch.uint8)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxKontextPipeline(scheduler=sched, vae=MODELS["vae"], text_encoder=MODELS["clip"], tokenizer=clip_tok,
                               text_encoder_2=MODELS["t5"], tokenizer_2=t5_tok, transformer=MODELS["dev"])
    latents = torch.randn(1, 8 * 12, 16, generator=g)
    with torch.no_grad():
        image = pipe(image=Image.fromarray(pixels.numpy()), prompt="make the circle blue", height=32, width=48,
                     num_inference_steps=3, guidance_scale=2.5, latents=latents.clone(), max_sequence_length=16,
                     output_type="pt", _auto_resize=False, max_area=32 * 48).images
    out["kontext_input"] = pixels.float()
    out["kontext_latents"] = latents
    out["kontext_image"] = image
    # img2img (dev, 5 steps, strength 0.6: t_start = int(5 - 3.0) = 2, so the last 3 steps of the
    # shifted schedule run). diffusers
    # samples the VAE posterior and draws the noise itself; both are fixed here (the posterior
    # mean, as Sprout encodes, and a stored noise) by patching the pipeline module.
    import diffusers.pipelines.flux.pipeline_flux_img2img as i2i

    pixels = (torch.rand(32, 48, 3, generator=g) * 255).round().to(torch.uint8)
    noise = torch.randn(1, 4, 16, 24, generator=g)  # this VAE has 4 latent channels
    i2i.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()
    i2i.randn_tensor = lambda shape, generator=None, device=None, dtype=None, layout=None: noise.clone()
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = i2i.FluxImg2ImgPipeline(scheduler=sched, vae=MODELS["vae"], text_encoder=MODELS["clip"],
                                   tokenizer=clip_tok, text_encoder_2=MODELS["t5"], tokenizer_2=t5_tok,
                                   transformer=MODELS["dev"])
    with torch.no_grad():
        image = pipe(image=Image.fromarray(pixels.numpy()), prompt="a photo of a red circle", height=32, width=48,
                     strength=0.6, num_inference_steps=5, guidance_scale=3.5, max_sequence_length=16,
                     output_type="pt").images
    out["img2img_input"] = pixels.float()
    out["img2img_noise"] = noise
    out["img2img_image"] = image
    save("pipeline_io.safetensors", out)


# ---------------------------------------------------------------- LoRA adapters


def rebuilt_parts():
    """Rebuild the tiny parts into MODELS, checking each against its committed fixture (for
    fixtures made on top of them), and return the (CLIP, T5) tokenizers of the fixtures."""
    global REBUILD
    from transformers import CLIPTokenizer, T5TokenizerFast

    REBUILD = True
    try:
        transformer_fixtures()
        vae_fixtures()
        text_fixtures()
    finally:
        REBUILD = False
    clip_tok = CLIPTokenizer(os.path.join(OUT, "tokenizer", "vocab.json"),
                             os.path.join(OUT, "tokenizer", "merges.txt"), pad_token="<|endoftext|>",
                             model_max_length=77)
    t5_tok = T5TokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer_2", "tokenizer.json"))
    return clip_tok, t5_tok



def lora_fixtures():
    """LoRA adapters over the dev transformer, loaded the way diffusers loads them
    (`FluxPipeline.lora_state_dict`, `load_lora_into_transformer`, `load_lora_weights`):
    - lora_peft.safetensors: a PEFT adapter on every linear layer, written by
      `FluxPipeline.save_lora_weights` with its adapter config in the file's metadata (alpha 8
      over rank 4, and per-layer rank and alpha patterns);
    - lora_kohya.safetensors: kohya (sd-scripts) names over Black Forest Labs modules, fused
      qkv and linear1 included, each with its own alpha, plus CLIP parts (`lora_te1_*`).
    lora_io.safetensors holds the transformer's output on the transformer fixture's inputs with
    each adapter (the PEFT one also at strength 0.6) and the dev pipeline's image (the pipeline
    fixture's prompt, latents and settings) with the kohya adapter. The parts are rebuilt and
    checked against the committed fixtures first; only the lora_* files are written."""
    import copy
    import shutil
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    clip_tok, t5_tok = rebuilt_parts()
    base = MODELS["dev"]
    io = load_file(os.path.join(OUT, "transformer_dev_io.safetensors"))

    def forward(model):
        with torch.no_grad():
            return model(hidden_states=io["img"], encoder_hidden_states=io["txt"], pooled_projections=io["y"],
                         timestep=io["timesteps"], img_ids=io["img_ids"], txt_ids=io["txt_ids"],
                         guidance=io["guidance"], return_dict=False)[0]

    assert torch.allclose(forward(base), io["out"], atol=1e-5), "the rebuilt dev transformer differs from its fixture"

    def load_into(model, weight_name, strength=1.0):
        sd, alphas, meta = FluxPipeline.lora_state_dict(OUT, weight_name=weight_name, return_alphas=True,
                                                        return_lora_metadata=True)
        FluxPipeline.load_lora_into_transformer(sd, network_alphas=alphas, transformer=model, adapter_name="a",
                                                metadata=meta)
        if strength != 1.0:
            model.set_adapters(["a"], weights=[strength])
        return model

    out = {}
    # PEFT, every linear layer; B is random too, so that every layer changes the output.
    linears = sorted(n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=linears, init_lora_weights=False,
                     rank_pattern={"single_transformer_blocks.1.proj_mlp": 2},
                     alpha_pattern={"norm_out.linear": 2, "transformer_blocks.0.attn.to_k": 1})
    trained = copy.deepcopy(base)
    trained.add_adapter(cfg, adapter_name="default")
    g = torch.Generator().manual_seed(51)
    with torch.no_grad():
        for name, p in sorted(trained.named_parameters()):
            if ".lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=get_peft_model_state_dict(trained),
                                       # PEFT keeps target_modules as a set: sorted, the
                                       # file is the same from run to run.
                                       transformer_lora_adapter_metadata=dict(
                                           cfg.to_dict(), target_modules=sorted(cfg.target_modules)))
        shutil.move(os.path.join(tmp, "pytorch_lora_weights.safetensors"), os.path.join(OUT, "lora_peft.safetensors"))
    out["peft_out"] = forward(load_into(copy.deepcopy(base), "lora_peft.safetensors"))
    assert torch.allclose(out["peft_out"], forward(trained), atol=1e-5), "the saved adapter does not reload"
    out["peft_out_strength_0_6"] = forward(load_into(copy.deepcopy(base), "lora_peft.safetensors", 0.6))

    # kohya: every 2-D weight of the BFL layout's blocks, and every linear layer of CLIP. Only
    # the blocks: diffusers 0.42 converts kohya adapters of the embedders and the final layer
    # to names without the `transformer.` prefix and then silently loads none of them (and
    # drops the final layer's alpha); the PEFT adapter above covers those layers.
    bfl = flux_diffusers_to_bfl(base.state_dict(), TINY["num_layers"], TINY["num_single_layers"])
    kohya = {}
    g = torch.Generator().manual_seed(52)
    for i, (name, w) in enumerate(sorted(bfl.items())):
        if not name.endswith(".weight") or w.dim() != 2 or not name.startswith(("double_blocks.", "single_blocks.")):
            continue
        key = "lora_unet_" + name[: -len(".weight")].replace(".", "_")
        kohya[f"{key}.lora_down.weight"] = 0.3 * torch.randn(4, w.shape[1], generator=g)
        kohya[f"{key}.lora_up.weight"] = 0.3 * torch.randn(w.shape[0], 4, generator=g)
        # Alphas that differ from the rank and from each other.
        kohya[f"{key}.alpha"] = torch.tensor((2.0, 8.0, 1.0)[i % 3])
    for name, m in sorted(MODELS["clip"].named_modules()):
        if isinstance(m, torch.nn.Linear) and "text_projection" not in name:
            key = "lora_te1_" + ("text_model." + name if not name.startswith("text_model.") else name).replace(".", "_")
            kohya[f"{key}.lora_down.weight"] = 0.3 * torch.randn(4, m.in_features, generator=g)
            kohya[f"{key}.lora_up.weight"] = 0.3 * torch.randn(m.out_features, 4, generator=g)
            kohya[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(kohya, os.path.join(OUT, "lora_kohya.safetensors"))
    # diffusers' kohya converter splits single blocks' linear1 at FLUX.1's widths (3072 × 3 +
    # 12288); the same converter at the tiny model's widths:
    import inspect

    import diffusers.loaders.lora_conversion_utils as conv

    hidden = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    src = inspect.getsource(conv._convert_kohya_flux_lora_to_diffusers)
    assert "dims=[3072, 3072, 3072, 12288]" in src
    exec(src.replace("dims=[3072, 3072, 3072, 12288]", f"dims=[{hidden}, {hidden}, {hidden}, {4 * hidden}]"),
         conv.__dict__)
    import diffusers.loaders.lora_pipeline as lp

    lp._convert_kohya_flux_lora_to_diffusers = conv._convert_kohya_flux_lora_to_diffusers
    out["kohya_out"] = forward(load_into(copy.deepcopy(base), "lora_kohya.safetensors"))

    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=MODELS["vae"], text_encoder=copy.deepcopy(MODELS["clip"]),
                        tokenizer=clip_tok, text_encoder_2=MODELS["t5"], tokenizer_2=t5_tok,
                        transformer=copy.deepcopy(base))
    latents = load_file(os.path.join(OUT, "pipeline_io.safetensors"))["dev_latents"]
    with torch.no_grad():
        plain = pipe(prompt="a photo of a red circle", height=32, width=48, num_inference_steps=3,
                     guidance_scale=3.5, latents=latents.clone(), max_sequence_length=16, output_type="pt").images
    stored = load_file(os.path.join(OUT, "pipeline_io.safetensors"))["dev_image"]
    assert torch.allclose(plain, stored, atol=1e-5), "the rebuilt pipeline differs from its fixture"
    pipe.load_lora_weights(OUT, weight_name="lora_kohya.safetensors")
    assert sum("lora_" in n for n, _ in pipe.text_encoder.named_parameters()) == 2 * len(
        [k for k in kohya if k.startswith("lora_te1_") and k.endswith("lora_down.weight")]), "CLIP parts not loaded"
    assert forward(pipe.transformer).sub(out["kohya_out"]).abs().max() == 0
    with torch.no_grad():
        out["kohya_image"] = pipe(prompt="a photo of a red circle", height=32, width=48, num_inference_steps=3,
                                  guidance_scale=3.5, latents=latents.clone(), max_sequence_length=16,
                                  output_type="pt").images
    for k, v in out.items():
        print(f"{k}: max |difference| to the plain model's {float((v - (plain if 'image' in k else io['out'])).abs().max()):.3f}")
    save("lora_io.safetensors", out)


# ---------------------------------------------------------------- inpainting


def inpaint_fixtures():
    """diffusers' FluxInpaintPipeline (dev, 4 steps, strength 0.85) and FluxKontextInpaintPipeline
    (Kontext over the dev transformer: the image is also the reference, 3 steps, strength 1)
    over the tiny parts, from a fixed image, mask and noise. The mask is aligned to the
    autoencoder's 2-pixel cells, where diffusers' nearest-neighbour mask resize and Sprout's
    "a cell is redrawn when any of its pixels is" agree. The parts are rebuilt and checked
    against the committed fixtures first; only inpaint_io.safetensors is written."""
    import diffusers.pipelines.flux.pipeline_flux_inpaint as inp
    import diffusers.pipelines.flux.pipeline_flux_kontext_inpaint as kinp
    from diffusers import FlowMatchEulerDiscreteScheduler
    from PIL import Image

    clip_tok, t5_tok = rebuilt_parts()
    g = torch.Generator().manual_seed(91)
    pixels = (torch.rand(32, 48, 3, generator=g) * 255).round().to(torch.uint8)
    # Redraw a 16×20-pixel box and a 4×6 one (both on even pixels), keep the rest.
    mask = torch.zeros(32, 48, dtype=torch.uint8)
    mask[6:22, 10:30] = 255
    mask[24:28, 36:42] = 255
    noise = torch.randn(1, 4, 16, 24, generator=g)  # this VAE has 4 latent channels
    out = dict(input=pixels.float(), mask=mask.float() / 255, noise=noise)
    for module in (inp, kinp):
        module.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()
        module.randn_tensor = lambda shape, generator=None, device=None, dtype=None, layout=None: noise.clone()

    def sched():
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)

    parts = dict(vae=MODELS["vae"], text_encoder=MODELS["clip"], tokenizer=clip_tok, text_encoder_2=MODELS["t5"],
                 tokenizer_2=t5_tok, transformer=MODELS["dev"])
    image, mask_image = Image.fromarray(pixels.numpy()), Image.fromarray(mask.numpy())
    with torch.no_grad():
        out["inpaint_image"] = inp.FluxInpaintPipeline(scheduler=sched(), **parts)(
            prompt="a photo of a red circle", image=image, mask_image=mask_image, height=32, width=48,
            strength=0.85, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=16,
            output_type="pt").images
        out["kontext_inpaint_image"] = kinp.FluxKontextInpaintPipeline(scheduler=sched(), **parts)(
            prompt="make the circle blue", image=image, mask_image=mask_image, height=32, width=48,
            strength=1.0, num_inference_steps=3, guidance_scale=2.5, max_sequence_length=16,
            output_type="pt", _auto_resize=False, max_area=32 * 48).images
        # A separate reference image (`image_reference`): its tokens are the context, the
        # image is only inpainted.
        reference = (torch.rand(32, 48, 3, generator=g) * 255).round().to(torch.uint8)
        out["kontext_reference"] = reference.float()
        out["kontext_inpaint_reference_image"] = kinp.FluxKontextInpaintPipeline(scheduler=sched(), **parts)(
            prompt="make the circle blue", image=image, mask_image=mask_image,
            image_reference=Image.fromarray(reference.numpy()), height=32, width=48, strength=1.0,
            num_inference_steps=3, guidance_scale=2.5, max_sequence_length=16, output_type="pt",
            _auto_resize=False, max_area=32 * 48).images
    save("inpaint_io.safetensors", out)


# ---------------------------------------------------------------- Fill, Canny / Depth


def conditioned_fixtures():
    """FLUX.1 Fill and FLUX.1 Canny / Depth: the dev transformer's design with extra input
    channels per token. Fill takes the masked image's latents and the mask (pixel-unshuffled
    by the autoencoder's factor) beside the latents: in_channels 4·C + 4·C + 4·f² = 48 here
    (384 at full size); Canny / Depth take the control image's latents: 4·C + 4·C = 32 (128).
    Writes tiny random transformers of both (both layouts) and, in conditioned_io.safetensors,
    FluxFillPipeline's image (strength 1, 3 steps, guidance 30) and FluxControlPipeline's
    (3 steps, guidance 10) over the other tiny parts, from a fixed image, mask, control image
    and noise. The autoencoder's posterior is read at its mean, as Sprout encodes."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlPipeline, FluxFillPipeline, FluxTransformer2DModel
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    import diffusers.pipelines.flux.pipeline_flux_fill as fill
    from PIL import Image

    clip_tok, t5_tok = rebuilt_parts()
    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mode()
    g = torch.Generator().manual_seed(101)
    out = {}
    models = {}
    for name, in_channels, seed in (("fill", 48, 15), ("control", 32, 16)):
        cfg = dict(TINY, in_channels=in_channels, out_channels=16, guidance_embeds=True)
        model = FluxTransformer2DModel(**cfg).eval()
        randomise(model, seed, std=0.1)
        models[name] = model
        sd = model.state_dict()
        save(f"transformer_{name}_diffusers.safetensors", sd, {"config": cfg}, torch.bfloat16)
        save(f"transformer_{name}_bfl.safetensors",
             flux_diffusers_to_bfl(sd, TINY["num_layers"], TINY["num_single_layers"]), {"config": cfg},
             torch.bfloat16)

    def sched():
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)

    parts = dict(vae=MODELS["vae"], text_encoder=MODELS["clip"], tokenizer=clip_tok, text_encoder_2=MODELS["t5"],
                 tokenizer_2=t5_tok)
    pixels = (torch.rand(32, 48, 3, generator=g) * 255).round().to(torch.uint8)
    mask = torch.zeros(32, 48, dtype=torch.uint8)
    mask[5:21, 9:31] = 255  # odd edges: cells half inside the mask
    noise = torch.randn(1, 4, 16, 24, generator=g)
    fill.randn_tensor = lambda shape, generator=None, device=None, dtype=None, layout=None: noise.clone()
    control = (torch.rand(32, 48, 3, generator=g) * 255).round().to(torch.uint8)
    latents = torch.randn(1, 8 * 12, 16, generator=g)
    with torch.no_grad():
        out["fill_image"] = FluxFillPipeline(scheduler=sched(), transformer=models["fill"], **parts)(
            prompt="a photo of a red circle", image=Image.fromarray(pixels.numpy()),
            mask_image=Image.fromarray(mask.numpy()), height=32, width=48, strength=1.0, num_inference_steps=3,
            guidance_scale=30.0, max_sequence_length=16, output_type="pt").images
        out["control_image"] = FluxControlPipeline(scheduler=sched(), transformer=models["control"], **parts)(
            prompt="a photo of a red circle", control_image=Image.fromarray(control.numpy()), height=32, width=48,
            num_inference_steps=3, guidance_scale=10.0, latents=latents.clone(), max_sequence_length=16,
            output_type="pt").images
    out.update(fill_input=pixels.float(), fill_mask=mask.float() / 255, fill_noise=noise, control_input=control.float(),
               control_latents=latents)
    save("conditioned_io.safetensors", out)


# ---------------------------------------------------------------- true classifier-free guidance


def true_cfg_fixtures():
    """diffusers' FluxPipeline (dev, 3 steps, guidance 3.5) with a negative prompt and
    true_cfg_scale 2 (each step runs both prompts: v_neg + 2·(v − v_neg)), from the pipeline
    fixture's latents; and FluxKontextPipeline likewise (its fixture's image and latents,
    guidance 2.5, true_cfg_scale 1.5). Writes true_cfg_io.safetensors."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline
    from PIL import Image
    from safetensors.torch import load_file

    clip_tok, t5_tok = rebuilt_parts()
    io = load_file(os.path.join(OUT, "pipeline_io.safetensors"))

    def sched():
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)

    parts = dict(vae=MODELS["vae"], text_encoder=MODELS["clip"], tokenizer=clip_tok, text_encoder_2=MODELS["t5"],
                 tokenizer_2=t5_tok, transformer=MODELS["dev"])
    out = {}
    with torch.no_grad():
        out["dev_image"] = FluxPipeline(scheduler=sched(), **parts)(
            prompt="a photo of a red circle", negative_prompt="a blue square", true_cfg_scale=2.0, height=32,
            width=48, num_inference_steps=3, guidance_scale=3.5, latents=io["dev_latents"].clone(),
            max_sequence_length=16, output_type="pt").images
        pixels = io["kontext_input"].to(torch.uint8)
        out["kontext_image"] = FluxKontextPipeline(scheduler=sched(), **parts)(
            image=Image.fromarray(pixels.numpy()), prompt="make the circle blue", negative_prompt="blurry",
            true_cfg_scale=1.5, height=32, width=48, num_inference_steps=3, guidance_scale=2.5,
            latents=io["kontext_latents"].clone(), max_sequence_length=16, output_type="pt", _auto_resize=False,
            max_area=32 * 48).images
    for k in ("dev_image", "kontext_image"):
        print(f"{k}: max |difference| to the plain pipeline's {float((out[k] - io[k]).abs().max()):.3f}")
    save("true_cfg_io.safetensors", out)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    which = sys.argv[1:] or ["transformer", "scheduler", "vae", "text", "tokenizer", "pipeline", "lora", "inpaint", "conditioned", "true_cfg"]
    for w in which:
        globals()[f"{w}_fixtures"]()
