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


# ---------------------------------------------------------------- autoencoder


VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
           latent_channels=4, norm_num_groups=32, sample_size=32, use_quant_conv=True, use_post_quant_conv=True,
           mid_block_add_attention=True, batch_norm_eps=1e-4, batch_norm_momentum=0.1, patch_size=(2, 2))


def tiny_vae():
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(**VAE).eval()
    mf.randomise(vae, 23, std=0.1)
    g = torch.Generator().manual_seed(24)
    c = 4 * VAE["latent_channels"]
    # The batch norm's running statistics are buffers: seeded, bf16-representable values.
    vae.bn.running_mean.copy_((0.3 * torch.randn(c, generator=g)).bfloat16().float())
    vae.bn.running_var.copy_((0.5 + torch.rand(c, generator=g)).bfloat16().float())
    return vae


def vae_flux2_to_bfl(sd):
    """diffusers AutoencoderKLFlux2 keys → Black Forest Labs' FLUX.2 `ae.safetensors` layout:
    FLUX.1's names, the 1×1 convolutions inside the networks, the batch norm as it is."""
    rest = {k: v for k, v in sd.items() if not k.startswith(("quant_conv.", "post_quant_conv.", "bn."))}
    out = mf.vae_diffusers_to_bfl(rest, 2, VAE["layers_per_block"])
    for k, v in sd.items():
        if k.startswith("quant_conv."):
            out["encoder." + k] = v
        elif k.startswith("post_quant_conv."):
            out["decoder." + k] = v
        elif k in ("bn.running_mean", "bn.running_var"):
            out[k] = v
    return out


def vae_fixtures(vae):
    """The autoencoder as Flux2KleinPipeline uses it: `_encode_vae_image` (posterior mean,
    2×2 patches, normalised by the batch norm's statistics) and the decode at the end of
    `__call__` (un-normalised, unpatched, decoded)."""
    from types import SimpleNamespace

    from diffusers import Flux2KleinPipeline

    g = torch.Generator().manual_seed(25)
    image = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    tokens = torch.randn(1, 16, 8, 12, generator=g)
    ns = SimpleNamespace(vae=vae, _patchify_latents=Flux2KleinPipeline._patchify_latents)
    with torch.no_grad():
        latents = Flux2KleinPipeline._encode_vae_image(ns, image, None)
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + VAE["batch_norm_eps"])
        decoded = vae.decode(Flux2KleinPipeline._unpatchify_latents(tokens * std + mean)).sample
    sd = {k: v for k, v in vae.state_dict().items() if k != "bn.num_batches_tracked"}
    meta = {"config": dict(VAE)}
    # The diffusers layout is the snapshot's `vae/` (written by `pipeline_fixtures`).
    mf.save("vae_bfl.safetensors", vae_flux2_to_bfl(sd), meta, torch.bfloat16)
    mf.save("vae_io.safetensors", dict(image=image, latents=latents, tokens=tokens, decoded=decoded))


# ---------------------------------------------------------------- Qwen3 text encoder


SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Qwen3's chat template for one user message with the generation prompt and thinking off,
# which is all FLUX.2's pipelines apply.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")
QWEN3 = dict(vocab_size=None, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=False,
             max_position_embeddings=128, tie_word_embeddings=True, hidden_act="silu")
# Tapped layers of the tiny encoder: inner ones and the last (whose state transformers
# returns normed). klein taps 9, 18, 27 of 36.
TAPS = (2, 4, 6)
MAX_LEN = 40


def tiny_tokenizer():
    """A byte-level BPE vocabulary trained on a few captions, with Qwen's special tokens, as a
    Qwen2TokenizerFast (`tokenizer/tokenizer.json` + `tokenizer_config.json`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f"a photo of a red circle and a blue star number {i} with a cat" for i in range(50)]
    corpus += ["make the circle blue", "put the cat from the first image on the second"]
    tok.train_from_iterator(corpus, trainer)
    return Qwen2TokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                              unk_token=None, bos_token=None, chat_template=CHAT_TEMPLATE,
                              model_max_length=131072)


def tiny_qwen3(tok):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(**dict(QWEN3, vocab_size=len(tok)), pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(cfg).eval()
    mf.randomise(model, 26, std=0.1)
    return model


PROMPTS = ["a photo of a red circle", "make the circle blue and the star red, please"]


def qwen3_fixtures(tok, model):
    """Flux2KleinPipeline's prompt embedding (`_get_qwen3_prompt_embeds`: chat template,
    padding to the maximum length, the tapped layers' states stacked per token)."""
    from diffusers import Flux2KleinPipeline

    with torch.no_grad():
        embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(model, tok, PROMPTS, max_sequence_length=MAX_LEN,
                                                              hidden_states_layers=TAPS)
    enc = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
                                       enable_thinking=False), padding="max_length", truncation=True,
               max_length=MAX_LEN) for p in PROMPTS]
    # The weights are the snapshot's `text_encoder/` (written by `pipeline_fixtures`).
    mf.save("qwen3_io.safetensors", dict(input_ids=torch.tensor([e["input_ids"] for e in enc]).float(),
                                         attention_mask=torch.tensor([e["attention_mask"] for e in enc]).float(),
                                         embeds=embeds),
            {"taps": list(TAPS), "prompts": PROMPTS, "padding_side": tok.padding_side})


# ---------------------------------------------------------------- whole pipeline


def pipeline_fixtures(vae, tok, qwen):
    """diffusers' Flux2KleinPipeline over the tiny parts from given initial latents, as images
    in [0, 1]: text to image (distilled: 2 steps, no guidance; base: 3 steps, guidance 4 with
    the empty negative prompt), and an edit with two reference images. The pipeline is also
    saved as a snapshot directory (`save_pretrained`, bf16) for the loader and the CLI."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from PIL import Image

    tiny = dict(TINY, joint_attention_dim=len(TAPS) * QWEN3["hidden_size"])
    transformer = Flux2Transformer2DModel(guidance_embeds=False, **tiny).eval()
    mf.randomise(transformer, 27, std=0.1)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096,
                                            time_shift_type="exponential")
    g = torch.Generator().manual_seed(28)
    out = {}
    common = dict(height=32, width=48, max_sequence_length=MAX_LEN, text_encoder_out_layers=TAPS, output_type="pt")
    for name, distilled, steps, guidance in (("distilled", True, 2, 1.0), ("base", False, 3, 4.0)):
        pipe = Flux2KleinPipeline(scheduler=sched, vae=vae, text_encoder=qwen, tokenizer=tok, transformer=transformer,
                                  is_distilled=distilled)
        # 32×48 pixels → 16×24 latent cells (this autoencoder is f2) → 8×12 tokens of 16.
        latents = torch.randn(1, 16, 8, 12, generator=g)
        with torch.no_grad():
            image = pipe(prompt=PROMPTS[0], num_inference_steps=steps, guidance_scale=guidance,
                         latents=latents.clone(), **common).images
        out[f"{name}_latents"] = latents
        out[f"{name}_image"] = image
    # Two references of other sizes (multiples of 4, under 1 MP: used as they are).
    refs = [(torch.rand(64, 64, 3, generator=g) * 255).round().to(torch.uint8),
            (torch.rand(64, 96, 3, generator=g) * 255).round().to(torch.uint8)]
    pipe = Flux2KleinPipeline(scheduler=sched, vae=vae, text_encoder=qwen, tokenizer=tok, transformer=transformer,
                              is_distilled=True)
    latents = torch.randn(1, 16, 8, 12, generator=g)
    with torch.no_grad():
        image = pipe(image=[Image.fromarray(r.numpy()) for r in refs], prompt=PROMPTS[1], num_inference_steps=2,
                     guidance_scale=1.0, latents=latents.clone(), **common).images
    out["edit_ref0"], out["edit_ref1"] = (r.float() for r in refs)
    out["edit_latents"] = latents
    out["edit_image"] = image
    mf.save("pipeline_io.safetensors", out, {"prompts": PROMPTS, "taps": list(TAPS), "max_len": MAX_LEN})
    snap = os.path.join(mf.OUT, "snapshot")
    pipe.to(torch.bfloat16).save_pretrained(snap)
    pipe.to(torch.float32)
    for root, _, files in os.walk(snap):
        for f in files:
            print(os.path.relpath(os.path.join(root, f), snap), os.path.getsize(os.path.join(root, f)))


if __name__ == "__main__":
    torch.manual_seed(0)
    transformer_fixtures()
    vae = tiny_vae()
    vae_fixtures(vae)
    tok = tiny_tokenizer()
    qwen = tiny_qwen3(tok)
    qwen3_fixtures(tok, qwen)
    pipeline_fixtures(vae, tok, qwen)
