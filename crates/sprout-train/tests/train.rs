//! Training end to end on tiny configs: bit-exact resume for both kinds, and overfitting a
//! handful of world samples.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use sprout_data::{make_batch, StreamPos};
use sprout_train::ckpt;
use sprout_train::config::TrainConfig;
use sprout_train::optim::{AdamW, OptimConfig};
use sprout_train::run::{stream_config, Task};
use sprout_train::{train, Options};

fn ae_config(out: &Path) -> TrainConfig {
    TrainConfig::from_toml(&format!(
        r#"
        kind = "ae"
        out = "{}"
        seed = 3
        log_every = 1
        ckpt_every = 2
        [optim]
        lr = 0.002
        warmup = 2
        [ae]
        preset = "tiny"
        crop = 32
        [[stage]]
        steps = 3
        side = 64
        batch = 2
        [[stage]]
        steps = 3
        side = 64
        aspect = "any"
        pixel_budget = 8192
        "#,
        out.display()
    ))
    .unwrap()
}

fn dit_config(out: &Path, ae: &Path) -> TrainConfig {
    TrainConfig::from_toml(&format!(
        r#"
        kind = "dit"
        out = "{}"
        seed = 5
        log_every = 1
        ckpt_every = 100
        [optim]
        lr = 0.001
        warmup = 2
        [dit]
        preset = "tiny"
        ae = "{}"
        text_dim = 16
        text_layers = 1
        text_heads = 2
        text_max_len = 24
        vocab_samples = 200
        [[stage]]
        steps = 2
        side = 64
        batch = 2
        [[stage]]
        steps = 3
        side = 96
        aspect = "any"
        pixel_budget = 20000
        "#,
        out.display(),
        ae.display()
    ))
    .unwrap()
}

fn weights(out: &Path) -> HashMap<String, Vec<u32>> {
    let dir = ckpt::find(out).unwrap();
    let mut all = HashMap::new();
    for f in ["model", "ema", "optim"] {
        for (k, v) in ckpt::load_tensors(&dir, f).unwrap() {
            let bits: Vec<u32> = v
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            all.insert(format!("{f}/{k}"), bits);
        }
    }
    all
}

fn assert_resume_is_bit_exact(cfg_for: impl Fn(&Path) -> TrainConfig, stop: u64) {
    let part = Options {
        stop_after: Some(stop),
        ..Default::default()
    };
    assert_resume_after_is_bit_exact(cfg_for, &part, stop);
}

/// Train part of a run with `part`'s options, which must end it at step `stop`, resume it to
/// the end, and compare every weight with an uninterrupted run.
fn assert_resume_after_is_bit_exact(
    cfg_for: impl Fn(&Path) -> TrainConfig,
    part: &Options,
    stop: u64,
) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let full = train(
        &cfg_for(a.path()),
        &Options {
            resume: false,
            stop_after: None,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let part = train(&cfg_for(b.path()), part, |_| {}).unwrap();
    assert_eq!(part.steps, stop);
    assert!(part.steps < full.steps);
    let rest = train(
        &cfg_for(b.path()),
        &Options {
            resume: true,
            stop_after: None,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!((rest.steps, rest.samples), (full.steps, full.samples));
    let (wa, wb) = (weights(a.path()), weights(b.path()));
    assert_eq!(wa.len(), wb.len());
    for (k, v) in &wa {
        assert!(wb[k] == *v, "{k} differs after resume");
    }
}

#[test]
fn autoencoder_resume_is_bit_exact_across_stages() {
    // Stop in the middle of the first stage; the second stage packs batches by pixel budget.
    assert_resume_is_bit_exact(ae_config, 1);
    assert_resume_is_bit_exact(ae_config, 4);
}

#[test]
fn a_time_limit_or_a_stop_request_ends_the_run_with_a_checkpoint_it_resumes_from() {
    // A zero time limit has passed when the first step ends; a stop flag already raised (as
    // Ctrl-C raises it) likewise ends the run after the step in progress. Both leave a
    // checkpoint at step 1 (not a multiple of ckpt_every) that resumes bit-exactly.
    let timed = Options {
        time_limit: Some(std::time::Duration::ZERO),
        ..Default::default()
    };
    assert_resume_after_is_bit_exact(ae_config, &timed, 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let stopped = Options {
        stop: Some(stop),
        ..Default::default()
    };
    assert_resume_after_is_bit_exact(ae_config, &stopped, 1);
    let run = tempfile::tempdir().unwrap();
    let s = train(&ae_config(run.path()), &timed, |_| {}).unwrap();
    assert_eq!((s.steps, s.stopped_early), (1, Some("time limit")));
    let s = train(
        &ae_config(run.path()),
        &Options {
            resume: true,
            ..stopped
        },
        |_| {},
    )
    .unwrap();
    assert_eq!((s.steps, s.stopped_early), (2, Some("interrupted")));
    let s = train(
        &ae_config(run.path()),
        &Options {
            resume: true,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(s.stopped_early, None);
}

fn tiny_ae_dir() -> tempfile::TempDir {
    let ae_run = tempfile::tempdir().unwrap();
    let cfg = ae_config(ae_run.path());
    train(
        &cfg,
        &Options {
            resume: false,
            stop_after: Some(2),
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let export = tempfile::tempdir().unwrap();
    sprout_train::export::export(&cfg, export.path()).unwrap();
    drop(ae_run);
    export
}

#[test]
fn dit_resume_is_bit_exact_and_exports_a_bundle() {
    let ae = tiny_ae_dir();
    assert_resume_is_bit_exact(|out| dit_config(out, ae.path()), 3);
    let run = tempfile::tempdir().unwrap();
    let cfg = dit_config(run.path(), ae.path());
    train(
        &cfg,
        &Options {
            resume: false,
            stop_after: None,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let bundle = tempfile::tempdir().unwrap();
    sprout_train::export::export(&cfg, bundle.path()).unwrap();
    let b = sprout_pipeline::bundle::Bundle::load_dir(bundle.path(), &Device::Cpu).unwrap();
    assert_eq!(b.meta.dit.latent_channels, 4);
    // A resume with a different seed is refused with a clear message.
    let mut other = dit_config(run.path(), ae.path());
    other.seed = 99;
    let e = train(
        &other,
        &Options {
            resume: true,
            stop_after: None,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("different kind, seed or stages"), "{e}");
}

#[test]
fn pooled_dit_run_caches_latents_and_resumes_bit_exactly() {
    // A pool of 2 batches: the third stage-2 step reuses batch 0's latents from the cache in
    // the uninterrupted run and recomputes them after the resume; both must agree exactly.
    let ae = tiny_ae_dir();
    let pooled = |out: &Path| {
        let mut c = dit_config(out, ae.path());
        c.data.pool = Some(2);
        c
    };
    assert_resume_is_bit_exact(pooled, 4);
}

/// `steps` AdamW steps (no decay, no clipping) of `task` on `batch`, step `i` drawing its
/// noise and timesteps from key `key(i)`; the first and last losses.
fn train_on<T: Task>(
    task: &mut T,
    batch: &sprout_data::Batch,
    steps: usize,
    lr: f64,
    key: impl Fn(usize) -> u64,
) -> (f64, f64) {
    let mut opt = AdamW::new(
        OptimConfig {
            weight_decay: 0.0,
            grad_clip: 0.0,
            ..OptimConfig::default()
        },
        task.params(),
    )
    .unwrap();
    let mut first = 0.0;
    let mut last = 0.0;
    for i in 0..steps {
        let (loss, _) = task.loss(batch, key(i)).unwrap();
        let v = loss.to_scalar::<f32>().unwrap() as f64;
        if i == 0 {
            first = v;
        }
        last = v;
        let g = loss.backward().unwrap();
        opt.step(&g, lr).unwrap();
    }
    (first, last)
}

/// [`train_on`] with the same step key every time: fixed noise and timesteps, so the loss
/// can go to zero.
fn overfit<T: Task>(task: &mut T, batch: &sprout_data::Batch, steps: usize, lr: f64) -> (f64, f64) {
    train_on(task, batch, steps, lr, |_| 0)
}

#[test]
fn tiny_models_overfit_a_handful_of_world_samples() {
    let ae_out = tempfile::tempdir().unwrap();
    let cfg = ae_config(ae_out.path());
    let sc = stream_config(&cfg, 0, &cfg.stages[0]);
    let sc = sprout_data::StreamConfig {
        batch_size: 4,
        ..sc
    };
    let batch = make_batch(&sc, StreamPos::default()).unwrap();
    let mut ae = sprout_train::ae_task::AeTask::new(&TrainConfig {
        ae: sprout_train::config::AeSection {
            crop: 0,
            ..cfg.ae.clone()
        },
        ..cfg.clone()
    })
    .unwrap();
    let (first, last) = overfit(&mut ae, &batch, 150, 3e-3);
    assert!(first / last >= 10.0, "autoencoder loss {first} -> {last}");

    let ae_dir = tiny_ae_dir();
    let dcfg = dit_config(tempfile::tempdir().unwrap().path(), ae_dir.path());
    let mut dit = sprout_train::dit_task::DitTask::new(&TrainConfig {
        dit: sprout_train::config::DitSection {
            caption_dropout: 0.0,
            ..dcfg.dit.clone()
        },
        ..dcfg.clone()
    })
    .unwrap();
    let (first, last) = overfit(&mut dit, &batch, 150, 3e-3);
    assert!(first / last >= 10.0, "DiT loss {first} -> {last}");
}

#[test]
fn one_config_trains_identically_twice() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    train(
        &ae_config(a.path()),
        &Options {
            resume: false,
            stop_after: Some(2),
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    train(
        &ae_config(b.path()),
        &Options {
            resume: false,
            stop_after: Some(2),
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let (wa, wb) = (weights(a.path()), weights(b.path()));
    let mut bad = 0;
    for (k, v) in &wa {
        if wb[k] != *v {
            bad += 1;
            eprintln!("{k} differs between identical runs");
        }
    }
    assert_eq!(bad, 0);
}

#[test]
fn init_from_starts_at_another_runs_ema_weights() {
    let a = tempfile::tempdir().unwrap();
    train(
        &ae_config(a.path()),
        &Options {
            resume: false,
            stop_after: Some(2),
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut cfg = ae_config(b.path());
    cfg.init_from = Some(a.path().to_path_buf());
    cfg.optim.lr = 0.0; // no movement: the new run's weights stay at the source's EMA
    cfg.optim.weight_decay = 0.0;
    train(
        &cfg,
        &Options {
            resume: false,
            stop_after: Some(1),
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let src = ckpt::load_tensors(&ckpt::find(a.path()).unwrap(), "ema").unwrap();
    let dst = ckpt::load_tensors(&ckpt::find(b.path()).unwrap(), "model").unwrap();
    for (k, v) in &src {
        let d = sprout_models::ops::max_abs_diff(v, &dst[k]).unwrap();
        assert_eq!(d, 0.0, "{k}");
    }
}

/// The first batch of `dcfg`'s stream, at 8 samples.
fn eight_sample_batch(dcfg: &TrainConfig) -> sprout_data::Batch {
    let sc = sprout_data::StreamConfig {
        batch_size: 8,
        ..stream_config(dcfg, 0, &dcfg.stages[0])
    };
    make_batch(&sc, StreamPos::default()).unwrap()
}

/// A DiT task of `dcfg` without caption dropout, with this object weight.
fn dit_task(dcfg: &TrainConfig, object_weight: f64) -> sprout_train::dit_task::DitTask {
    sprout_train::dit_task::DitTask::new(&TrainConfig {
        dit: sprout_train::config::DitSection {
            caption_dropout: 0.0,
            object_weight,
            ..dcfg.dit.clone()
        },
        ..dcfg.clone()
    })
    .unwrap()
}

#[test]
fn grouping_samples_by_caption_length_keeps_the_loss() {
    // Padding is masked, so running a batch in caption-length groups must give the loss of
    // one pass over the whole padded batch.
    let ae_dir = tiny_ae_dir();
    let dcfg = dit_config(tempfile::tempdir().unwrap().path(), ae_dir.path());
    let batch = eight_sample_batch(&dcfg);
    let mut task = dit_task(&dcfg, 0.0);
    let (ids, _) = task.text.tokenize(&batch.captions).unwrap();
    let lens: Vec<usize> = ids.iter().map(|v| v.len()).collect();
    assert!(
        lens.iter().max() > lens.iter().min(),
        "captions of one length: {lens:?}"
    );
    let mut loss_with = |group: usize| {
        task.text_group = group;
        task.loss(&batch, 7).unwrap().0.to_scalar::<f32>().unwrap()
    };
    let (whole, grouped) = (loss_with(8), loss_with(3));
    assert!(
        (whole - grouped).abs() <= 1e-5 * whole.abs(),
        "{whole} vs {grouped}"
    );
}

#[test]
fn object_weighted_loss_is_grouping_invariant_and_plain_without_objects() {
    let ae_dir = tiny_ae_dir();
    let dcfg = dit_config(tempfile::tempdir().unwrap().path(), ae_dir.path());
    let batch = eight_sample_batch(&dcfg);
    assert!(batch.scenes.iter().any(|s| !s.objects.is_empty()));
    let loss = |task: &mut sprout_train::dit_task::DitTask, b: &sprout_data::Batch, g: usize| {
        task.text_group = g;
        task.loss(b, 7).unwrap().0.to_scalar::<f32>().unwrap()
    };
    let (mut plain, mut weighted) = (dit_task(&dcfg, 0.0), dit_task(&dcfg, 4.0));
    // Grouping by caption length keeps the weighted loss too.
    let (whole, grouped) = (
        loss(&mut weighted, &batch, 8),
        loss(&mut weighted, &batch, 3),
    );
    assert!(
        (whole - grouped).abs() <= 1e-5 * whole.abs(),
        "{whole} vs {grouped}"
    );
    // Objects change the loss; without objects every weight is 1 and it is the plain mean.
    let base = loss(&mut plain, &batch, 8);
    assert!(
        (whole - base).abs() > 1e-4 * base.abs(),
        "{whole} vs {base}"
    );
    let mut empty = batch.clone();
    for s in &mut empty.scenes {
        s.objects.clear();
    }
    let (a, b) = (loss(&mut plain, &empty, 8), loss(&mut weighted, &empty, 8));
    assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
}

#[test]
fn parallel_halves_give_the_serial_gradient() {
    let ae_dir = tiny_ae_dir();
    let dcfg = dit_config(tempfile::tempdir().unwrap().path(), ae_dir.path());
    let batch = eight_sample_batch(&dcfg);
    let grads_of = |parallel: bool| {
        let mut task = sprout_train::dit_task::DitTask::new(&TrainConfig {
            dit: sprout_train::config::DitSection {
                data_parallel: parallel,
                text_group: 2,
                ..dcfg.dit.clone()
            },
            ..dcfg.clone()
        })
        .unwrap();
        let (loss, grads, _) = task.loss_and_grads(&batch, 3).unwrap();
        let g: std::collections::BTreeMap<String, Vec<f32>> = task
            .params()
            .iter()
            .map(|(n, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .map(|t| t.flatten_all().unwrap().to_vec1().unwrap());
                (n.clone(), g.unwrap_or_default())
            })
            .collect();
        (loss, g)
    };
    let (ls, gs) = grads_of(false);
    let (lp, gp) = grads_of(true);
    assert!((ls - lp).abs() <= 1e-6 * ls.abs(), "{ls} vs {lp}");
    let mut seen = 0;
    assert_eq!(gs.len(), gp.len());
    for (n, a) in &gs {
        let b = &gp[n];
        assert_eq!(a.len(), b.len(), "{n}");
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * scale, "{n}: {x} vs {y}");
        }
        seen += usize::from(!a.is_empty());
    }
    assert!(seen > 10, "only {seen} parameters have gradients");
}

/// A two-step request for "a red circle" on a `width`×`height` canvas.
fn red_circle(width: u32, height: u32) -> sprout_pipeline::request::Request {
    sprout_pipeline::request::Request {
        prompt: "a red circle".into(),
        n: 1,
        seed: 4,
        steps: 2,
        guidance: 2.0,
        width,
        height,
        sampler: sprout_pipeline::flow::Sampler::Euler,
        init: None,
        negative_prompt: None,
        true_cfg: None,
        images: Vec::new(),
        latents: None,
        max_sequence_length: None,
    }
}

#[test]
fn a_semantic_run_exports_a_model_that_draws_and_a_deterministic_proxy() {
    let ae = tiny_ae_dir();
    let run = tempfile::tempdir().unwrap();
    let mut cfg = dit_config(run.path(), ae.path());
    cfg.dit.semantic = true;
    cfg.dit.semantic_weight = 0.5;
    cfg.dit.shift = Some(3.0);
    train(&cfg, &Options::default(), |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    sprout_train::export::export(&cfg, dir.path()).unwrap();
    let b = sprout_pipeline::bundle::Bundle::load_dir(dir.path(), &Device::Cpu).unwrap();
    let sem = sprout_world::semantic::CHANNELS;
    assert_eq!(b.meta.semantic_channels, sem);
    assert_eq!(b.meta.dit.latent_channels, 4 + sem);
    assert!((b.meta.shift.mu(64) - 3f64.ln()).abs() < 1e-12);
    // It draws an RGB image of the asked size (the semantic channels are not decoded), and
    // img2img starts from the image's latents plus its estimated semantic map.
    let req = red_circle(64, 96);
    let imgs = sprout_pipeline::generate::generate(&b, &req, |_, _| {}).unwrap();
    assert_eq!((imgs[0].width(), imgs[0].height()), (64, 96));
    let init = sprout_pipeline::request::Request {
        init: Some(sprout_pipeline::request::InitImage {
            image: sprout_pipeline::image_io::from_image(&imgs[0], &Device::Cpu).unwrap(),
            strength: 0.5,
            mask: None,
        }),
        ..req.clone()
    };
    assert_eq!(
        sprout_pipeline::generate::generate(&b, &init, |_, _| {})
            .unwrap()
            .len(),
        1
    );
    // A model.json whose channels disagree is refused by name.
    let meta = std::fs::read_to_string(dir.path().join("model.json")).unwrap();
    std::fs::write(
        dir.path().join("model.json"),
        meta.replace(
            &format!("\"semantic_channels\": {sem}"),
            "\"semantic_channels\": 0",
        ),
    )
    .unwrap();
    let e = sprout_pipeline::bundle::Bundle::load_dir(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("semantic_channels"), "{e}");
    // The proxy is deterministic, and its caption gain is a difference of real errors.
    let p1 = sprout_train::proxy::velocity_proxy(&b, 2).unwrap();
    let p2 = sprout_train::proxy::velocity_proxy(&b, 2).unwrap();
    assert_eq!(p1.probes, 12);
    assert_eq!(
        serde_json::to_string(&p1).unwrap(),
        serde_json::to_string(&p2).unwrap()
    );
    assert!(p1
        .velocity_error
        .iter()
        .all(|(_, e)| e.is_finite() && *e > 0.0));
    assert!(p1
        .caption_gain
        .iter()
        .all(|(_, g)| g.is_finite() && *g != 0.0));
}

#[test]
fn a_decoder_fine_tune_reads_the_semantic_map_keeps_the_encoder_and_serves_a_semantic_dit() {
    let ae = tiny_ae_dir();
    let run = tempfile::tempdir().unwrap();
    let mut cfg = ae_config(run.path());
    cfg.ae.from = Some(ae.path().to_path_buf());
    cfg.ae.semantic = true;
    cfg.ae.train_encoder = false;
    cfg.ae.latent_noise = 1.0;
    cfg.ae.semantic_noise = 0.3;
    train(&cfg, &Options::default(), |_| {}).unwrap();
    let tuned = tempfile::tempdir().unwrap();
    sprout_train::export::export(&cfg, tuned.path()).unwrap();
    let read = |d: &Path| {
        sprout_pipeline::bundle::read_tensors(&d.join("ae.safetensors"), &Device::Cpu).unwrap()
    };
    let (before, after) = (read(ae.path()), read(tuned.path()));
    let diff = |k: &str| sprout_models::ops::max_abs_diff(&before[k], &after[k]).unwrap();
    let sem = sprout_world::semantic::CHANNELS;
    let mut decoder_moved = false;
    for k in before.keys() {
        if k.starts_with("encoder.") {
            assert_eq!(diff(k), 0.0, "{k} changed although the encoder stays");
        } else {
            decoder_moved |= diff(k) > 0.0;
        }
    }
    assert!(decoder_moved, "no decoder weight learned");
    let s = after["decoder.semantic.weight"].clone();
    assert_eq!(s.dims()[1], sem);
    assert!(
        s.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    // The latent statistics the DiTs were trained with are kept.
    let cfg_of = |d: &Path| -> sprout_models::ae::AeConfig {
        serde_json::from_str(&std::fs::read_to_string(d.join("ae.json")).unwrap()).unwrap()
    };
    let (c0, c1) = (cfg_of(ae.path()), cfg_of(tuned.path()));
    assert_eq!(c0.channel_shift, c1.channel_shift);
    assert_eq!(c0.channel_scale, c1.channel_scale);
    assert_eq!((c0.semantic_channels, c1.semantic_channels), (0, sem));
    // A semantic DiT over the tuned autoencoder decodes its semantic channels.
    let dit_run = tempfile::tempdir().unwrap();
    let mut dcfg = dit_config(dit_run.path(), tuned.path());
    dcfg.dit.semantic = true;
    train(&dcfg, &Options::default(), |_| {}).unwrap();
    let bundle = tempfile::tempdir().unwrap();
    sprout_train::export::export(&dcfg, bundle.path()).unwrap();
    let b = sprout_pipeline::bundle::Bundle::load_dir(bundle.path(), &Device::Cpu).unwrap();
    assert_eq!(b.meta.ae.semantic_channels, sem);
    let req = red_circle(64, 64);
    let imgs = sprout_pipeline::generate::generate(&b, &req, |_, _| {}).unwrap();
    assert_eq!((imgs[0].width(), imgs[0].height()), (64, 64));
    // Without ae.from the encoder cannot be kept.
    let mut bad = ae_config(run.path());
    bad.ae.train_encoder = false;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("ae.from"), "{e}");
}

/// The DiT reads its captions: trained on four scenes with fresh noise and times at every
/// step (so that it cannot memorise noise → image), its loss with the true captions ends
/// well under its loss on the same images with the captions rotated among them.
#[test]
fn the_dit_tells_scenes_apart_by_their_captions() {
    let ae_dir = tiny_ae_dir();
    let out = tempfile::tempdir().unwrap();
    let dcfg = dit_config(out.path(), ae_dir.path());
    let sc = sprout_data::StreamConfig {
        batch_size: 4,
        ..stream_config(&dcfg, 0, &dcfg.stages[0])
    };
    let batch = make_batch(&sc, StreamPos::default()).unwrap();
    let mut distinct = batch.captions.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{:?}", batch.captions);
    let mut dit = sprout_train::dit_task::DitTask::new(&TrainConfig {
        dit: sprout_train::config::DitSection {
            caption_dropout: 0.0,
            ..dcfg.dit.clone()
        },
        ..dcfg.clone()
    })
    .unwrap();
    // Fresh noise and timesteps each step: the captions are all that tells the scenes apart.
    train_on(&mut dit, &batch, 400, 3e-3, |i| i as u64);
    let mut rotated = batch.clone();
    rotated.captions.rotate_left(1);
    let mean = |dit: &mut sprout_train::dit_task::DitTask, b: &sprout_data::Batch| {
        (0..16)
            .map(|k| {
                let (l, _) = dit.loss(b, 1_000_000 + k).unwrap();
                l.to_scalar::<f32>().unwrap() as f64
            })
            .sum::<f64>()
            / 16.0
    };
    let (right, wrong) = (mean(&mut dit, &batch), mean(&mut dit, &rotated));
    eprintln!("loss with the true captions {right:.4}, rotated {wrong:.4}");
    assert!(wrong > 1.5 * right, "true {right}, rotated {wrong}");
}
