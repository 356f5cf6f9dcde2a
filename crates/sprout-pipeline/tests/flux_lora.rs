//! LoRA adapters merged into the FLUX.1 transformer (`--lora`): the merged weight is
//! `W + strength · (alpha / rank) · B·A` (closed form); the same adapter written with Black
//! Forest Labs names, kohya's flattened names or diffusers' separate q/k/v layers gives the
//! same weights over either base layout, and so the same image; an adapter for another model
//! is an error naming its layer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::Init;
use sprout_models::flux::components::Components;
use sprout_models::flux::convert::Renamed;
use sprout_models::flux::lora::{Lora, WithLora};
use sprout_models::ops::max_abs_diff;
use sprout_pipeline::testing::{flux_dev_run, flux_fixture, flux_snapshot};

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(flux_fixture(name), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect()
}

fn rand(rows: usize, cols: usize, seed: u64) -> Tensor {
    // Deterministic values in [-0.5, 0.5) from a small LCG (no RNG state shared with others).
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// The adapted BFL layers: (module, out, in); and the rank and alpha.
const LAYERS: [(&str, usize); 4] = [
    ("double_blocks.0.img_attn.qkv", 96),
    ("single_blocks.0.linear1", 224),
    ("double_blocks.1.txt_mlp.0", 128),
    ("final_layer.adaLN_modulation.1", 64),
];
const RANK: usize = 4;
const ALPHA: f32 = 2.0;
const HIDDEN: usize = 32;

/// (down, up) of each adapted layer, in BFL terms.
fn pairs() -> Vec<(&'static str, Tensor, Tensor)> {
    LAYERS
        .iter()
        .enumerate()
        .map(|(i, (m, out))| {
            (
                *m,
                rand(RANK, HIDDEN, 2 * i as u64),
                rand(*out, RANK, 2 * i as u64 + 1),
            )
        })
        .collect()
}

fn write(path: &Path, t: Vec<(String, Tensor)>) {
    candle_core::safetensors::save(&t.into_iter().collect::<HashMap<_, _>>(), path).unwrap();
}

/// The adapter with BFL names (PEFT's lora_A / lora_B, alpha stored).
fn bfl_file(path: &Path) {
    let mut t = Vec::new();
    for (m, down, up) in pairs() {
        t.push((format!("diffusion_model.{m}.lora_A.weight"), down));
        t.push((format!("diffusion_model.{m}.lora_B.weight"), up));
        t.push((
            format!("diffusion_model.{m}.alpha"),
            Tensor::new(&[ALPHA], &Device::Cpu).unwrap(),
        ));
    }
    write(path, t);
}

/// The same adapter with kohya's flattened names.
fn kohya_file(path: &Path) {
    let mut t = Vec::new();
    for (m, down, up) in pairs() {
        let k = format!("lora_unet_{}", m.replace('.', "_"));
        t.push((format!("{k}.lora_down.weight"), down));
        t.push((format!("{k}.lora_up.weight"), up));
        t.push((
            format!("{k}.alpha"),
            Tensor::new(&[ALPHA], &Device::Cpu).unwrap(),
        ));
    }
    write(path, t);
}

/// The same adapter as diffusers' layers: fused rows split into their q/k/v(/mlp) layers,
/// the last layer's halves swapped (diffusers emits scale, shift); no alpha stored, so the
/// up matrices carry alpha / rank.
fn diffusers_file(path: &Path) {
    let s = ALPHA as f64 / RANK as f64;
    let mut t = Vec::new();
    let mut put = |layer: String, down: &Tensor, up: Tensor| {
        t.push((format!("transformer.{layer}.lora_A.weight"), down.clone()));
        t.push((
            format!("transformer.{layer}.lora_B.weight"),
            (up * s).unwrap(),
        ));
    };
    for (m, down, up) in pairs() {
        let rows = |a: usize, n: usize| up.narrow(0, a, n).unwrap();
        match m {
            "double_blocks.0.img_attn.qkv" => {
                for (i, p) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                    put(
                        format!("transformer_blocks.0.attn.{p}"),
                        &down,
                        rows(i * HIDDEN, HIDDEN),
                    );
                }
            }
            "single_blocks.0.linear1" => {
                for (i, p) in ["attn.to_q", "attn.to_k", "attn.to_v"].iter().enumerate() {
                    put(
                        format!("single_transformer_blocks.0.{p}"),
                        &down,
                        rows(i * HIDDEN, HIDDEN),
                    );
                }
                put(
                    "single_transformer_blocks.0.proj_mlp".into(),
                    &down,
                    rows(3 * HIDDEN, 224 - 3 * HIDDEN),
                );
            }
            "double_blocks.1.txt_mlp.0" => put(
                "transformer_blocks.1.ff_context.net.0.proj".into(),
                &down,
                up.clone(),
            ),
            _ => put(
                "norm_out.linear".into(),
                &down,
                Tensor::cat(&[rows(32, 32), rows(0, 32)], 0).unwrap(),
            ),
        }
    }
    write(path, t);
}

fn lora(path: &Path, strength: f64) -> Lora {
    let mut l = Lora::default();
    l.add_file(path, strength).unwrap();
    l
}

fn get(b: &dyn SimpleBackend, name: &str, shape: &[usize]) -> Tensor {
    b.get(
        Shape::from(shape),
        name,
        Init::Const(0.),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn merged_weights_follow_the_closed_form_in_every_naming_and_base_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (fb, fk, fd) = (
        dir.path().join("bfl.safetensors"),
        dir.path().join("kohya.safetensors"),
        dir.path().join("diffusers.safetensors"),
    );
    bfl_file(&fb);
    kohya_file(&fk);
    diffusers_file(&fd);
    let bfl = load("transformer_dev_bfl.safetensors");
    let diffusers = load("transformer_dev_diffusers.safetensors");
    let strength = 0.7;
    let adapted: HashMap<&str, (Tensor, Tensor)> =
        pairs().into_iter().map(|(m, d, u)| (m, (d, u))).collect();
    let backends: Vec<(
        &str,
        Box<dyn SimpleBackend>,
        sprout_models::flux::lora::LoraUsage,
    )> = vec![
        {
            let (b, u) = WithLora::new(bfl.clone(), lora(&fb, strength));
            ("bfl adapter, bfl base", Box::new(b), u)
        },
        {
            let (b, u) = WithLora::new(bfl.clone(), lora(&fk, strength));
            ("kohya adapter, bfl base", Box::new(b), u)
        },
        {
            let (b, u) = WithLora::new(bfl.clone(), lora(&fd, strength));
            ("diffusers adapter, bfl base", Box::new(b), u)
        },
        {
            let (b, u) =
                WithLora::new(Renamed::transformer(diffusers.clone()), lora(&fk, strength));
            ("kohya adapter, diffusers base", Box::new(b), u)
        },
        {
            let (b, u) =
                WithLora::new(Renamed::transformer(diffusers.clone()), lora(&fd, strength));
            ("diffusers adapter, diffusers base", Box::new(b), u)
        },
    ];
    for (what, b, usage) in &backends {
        for (name, base) in &bfl {
            let got = get(b.as_ref(), name, base.dims());
            let module = name.strip_suffix(".weight").unwrap_or(name);
            let want = match adapted.get(module) {
                // W + strength · alpha / rank · B·A
                Some((down, up)) => (base
                    + (up.matmul(down).unwrap() * (strength * ALPHA as f64 / RANK as f64))
                        .unwrap())
                .unwrap(),
                None => base.clone(),
            };
            let d = max_abs_diff(&got, &want).unwrap();
            assert!(d <= 1e-5, "{what}: {name} differs by {d}");
        }
        usage.check_all_used().unwrap();
    }

    // Strength 0 leaves the weights as they are.
    let (b, _) = WithLora::new(bfl.clone(), lora(&fk, 0.0));
    for (name, base) in &bfl {
        assert_eq!(
            max_abs_diff(&get(&b, name, base.dims()), base).unwrap(),
            0.0
        );
    }

    // An adapter for another model: its layers are named, not silently ignored.
    let other = dir.path().join("sdxl.safetensors");
    write(
        &other,
        vec![
            (
                "lora_unet_input_blocks_4_1_proj_in.lora_down.weight".into(),
                rand(RANK, HIDDEN, 9),
            ),
            (
                "lora_unet_input_blocks_4_1_proj_in.lora_up.weight".into(),
                rand(HIDDEN, RANK, 10),
            ),
        ],
    );
    let (b, u) = WithLora::new(bfl.clone(), lora(&other, 1.0));
    for (name, base) in &bfl {
        get(&b, name, base.dims());
    }
    let e = u.check_all_used().unwrap_err().to_string();
    assert!(
        e.contains("sdxl.safetensors") && e.contains("lora_unet_input_blocks_4_1_proj_in"),
        "{e}"
    );
    // T5 parts (kohya's lora_te2_*) are not applied, and the error says so.
    let te = dir.path().join("with_te.safetensors");
    let k = "lora_te2_encoder_block_0_layer_0_SelfAttention_q";
    write(
        &te,
        vec![
            (format!("{k}.lora_down.weight"), rand(RANK, HIDDEN, 11)),
            (format!("{k}.lora_up.weight"), rand(HIDDEN, RANK, 12)),
        ],
    );
    let (b, u) = WithLora::new(bfl.clone(), lora(&te, 1.0));
    for (name, base) in &bfl {
        get(&b, name, base.dims());
    }
    let e = u.check_all_used().unwrap_err().to_string();
    assert!(e.contains("adapts T5 too") && e.contains(k), "{e}");
    // Not a LoRA file at all, and mismatched ranks.
    let mut l = Lora::default();
    let e = l
        .add_file(&flux_fixture("vae_bfl.safetensors"), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a LoRA tensor"), "{e}");
    let odd = dir.path().join("odd.safetensors");
    write(
        &odd,
        vec![
            ("x.lora_A.weight".into(), rand(4, HIDDEN, 1)),
            ("x.lora_B.weight".into(), rand(HIDDEN, 3, 2)),
        ],
    );
    let e = l.add_file(&odd, 1.0).unwrap_err().to_string();
    assert!(e.contains("do not share a rank"), "{e}");
    // An alpha that is not one number.
    write(
        &odd,
        vec![
            ("x.lora_A.weight".into(), rand(4, HIDDEN, 1)),
            ("x.lora_B.weight".into(), rand(HIDDEN, 4, 2)),
            (
                "x.alpha".into(),
                Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
            ),
        ],
    );
    let e = l.add_file(&odd, 1.0).unwrap_err().to_string();
    assert!(
        e.contains("x.alpha: alpha is not one positive number"),
        "{e}"
    );
}

#[test]
fn the_pipeline_draws_the_same_image_with_the_adapter_in_any_naming() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snap");
    flux_snapshot(&root, "FluxPipeline").unwrap();
    let (fk, fd) = (
        dir.path().join("kohya.safetensors"),
        dir.path().join("diffusers.safetensors"),
    );
    kohya_file(&fk);
    diffusers_file(&fd);
    let image = |loras: Vec<(std::path::PathBuf, f64)>| {
        let parts = Components {
            loras,
            ..Default::default()
        };
        flux_dev_run(&root, &parts).unwrap().1
    };
    let plain = image(vec![]);
    let k = image(vec![(fk.clone(), 1.0)]);
    let d = image(vec![(fd.clone(), 1.0)]);
    assert!(max_abs_diff(&k, &d).unwrap() <= 1e-5);
    assert!(max_abs_diff(&k, &plain).unwrap() > 1e-3);
    // Two adapters at half strength each are the one at full strength.
    let halves = image(vec![(fk.clone(), 0.5), (fd, 0.5)]);
    assert!(max_abs_diff(&k, &halves).unwrap() <= 1e-5);
    assert_eq!(max_abs_diff(&image(vec![(fk, 0.0)]), &plain).unwrap(), 0.0);
}

/// Over a GGUF transformer the adapter is applied unmerged, beside each (quantized) product:
/// with the weights stored as f32 it draws the image of the merged adapter over the dense
/// weights; stored as Q8_0, an image near it.
#[test]
fn a_gguf_transformer_takes_the_adapter_unmerged() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    flux_snapshot(&snap, "FluxPipeline").unwrap();
    let fk = dir.path().join("kohya.safetensors");
    kohya_file(&fk);
    let with = |root: &Path| {
        let parts = Components {
            loras: vec![(fk.clone(), 1.0)],
            ..Default::default()
        };
        flux_dev_run(root, &parts).unwrap().1
    };
    let merged = with(&snap);
    for (q, tol) in [(GgmlDType::F32, 1e-5), (GgmlDType::Q8_0, 0.05)] {
        // A Black Forest Labs folder: the GGUF transformer at its root, the rest beside it.
        let root = dir.path().join(format!("gguf-{q:?}"));
        flux_snapshot(&root, "FluxPipeline").unwrap();
        std::fs::remove_dir_all(root.join("transformer")).unwrap();
        std::fs::remove_file(root.join("model_index.json")).unwrap();
        sprout_pipeline::flux_quantize::quantize_transformer(
            &snap,
            &Components::default(),
            sprout_models::flux::files::Variant::Dev,
            q,
            &root.join("flux1-dev-test.gguf"),
            |_, _| {},
        )
        .unwrap();
        let got = with(&root);
        let d = max_abs_diff(&got, &merged).unwrap();
        eprintln!("{q:?} GGUF with the adapter unmerged: max abs difference {d:.2e}");
        assert!(d <= tol, "{q:?}: {d} > {tol}");
        let plain = flux_dev_run(&root, &Components::default()).unwrap().1;
        assert!(max_abs_diff(&got, &plain).unwrap() > 1e-3);
    }
}

/// Adapters for CLIP (kohya's `lora_te1_*`, PEFT's `text_encoder.*`) are merged into CLIP:
/// both namings draw the same image, which differs from the plain one.
#[test]
fn clip_adapters_are_merged_into_clip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snap");
    flux_snapshot(&root, "FluxPipeline").unwrap();
    let clip = load("clip.safetensors");
    let m = "text_model.encoder.layers.0.self_attn.q_proj";
    let (out, inp) = clip[&format!("{m}.weight")].dims2().unwrap();
    let (down, up) = (rand(RANK, inp, 21), rand(out, RANK, 22));
    let (fk, fp) = (
        dir.path().join("te_kohya.safetensors"),
        dir.path().join("te_peft.safetensors"),
    );
    let k = format!("lora_te1_{}", m.replace('.', "_"));
    write(
        &fk,
        vec![
            (format!("{k}.lora_down.weight"), down.clone()),
            (format!("{k}.lora_up.weight"), up.clone()),
            (
                format!("{k}.alpha"),
                Tensor::new(&[RANK as f32], &Device::Cpu).unwrap(),
            ),
        ],
    );
    write(
        &fp,
        vec![
            (format!("text_encoder.{m}.lora_A.weight"), down),
            (format!("text_encoder.{m}.lora_B.weight"), up),
        ],
    );
    let image = |loras: Vec<(std::path::PathBuf, f64)>| {
        let parts = Components {
            loras,
            ..Default::default()
        };
        flux_dev_run(&root, &parts).unwrap().1
    };
    let (a, b, plain) = (
        image(vec![(fk, 1.0)]),
        image(vec![(fp, 1.0)]),
        image(vec![]),
    );
    assert!(max_abs_diff(&a, &b).unwrap() <= 1e-6);
    assert!(max_abs_diff(&a, &plain).unwrap() > 1e-4);
}

/// diffusers' FluxPipeline with the kohya fixture adapter (blocks and CLIP, each layer with its
/// alpha) loaded by `load_lora_weights` draws the same image as Sprout loading it with
/// `--lora` (`tools/flux-parity/make_fixtures.py lora`; the same prompt, latents and
/// settings as the plain dev pipeline fixture).
#[test]
fn the_pipeline_with_a_kohya_adapter_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snap");
    flux_snapshot(&root, "FluxPipeline").unwrap();
    let want = &load("lora_io.safetensors")["kohya_image"];
    let parts = Components {
        loras: vec![(flux_fixture("lora_kohya.safetensors"), 1.0)],
        ..Default::default()
    };
    let got = flux_dev_run(&root, &parts).unwrap().1;
    let d = max_abs_diff(&got, want).unwrap();
    eprintln!("kohya adapter, whole pipeline: max abs error {d:.2e} on a [0, 1] image");
    assert!(d <= 1e-4, "{d}");
    // Without its CLIP parts the adapter draws another image: they are applied, not skipped.
    let blocks = dir.path().join("blocks.safetensors");
    write(
        &blocks,
        load("lora_kohya.safetensors")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("lora_te1_"))
            .collect(),
    );
    let parts = Components {
        loras: vec![(blocks, 1.0)],
        ..Default::default()
    };
    let without_clip = flux_dev_run(&root, &parts).unwrap().1;
    assert!(max_abs_diff(&without_clip, want).unwrap() > 0.05);
}
