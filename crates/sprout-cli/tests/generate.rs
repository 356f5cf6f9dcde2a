//! `sprout generate` end to end with a tiny model bundle written to disk.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use sprout_models::ae::{AeConfig, Autoencoder};
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::init::seeded_varbuilder;
use sprout_models::text::{build_tokenizer, SmallTextEncoder, TextConfig};
use sprout_pipeline::bundle::BundleMeta;
use sprout_pipeline::flow::{Sampler, ShiftConfig};

fn sprout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sprout"))
        .args(args)
        .output()
        .expect("runs")
}

fn save(vm: &VarMap, path: &Path) {
    let t: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&t, path).unwrap();
}

fn write_tiny_bundle(dir: &Path) {
    let dev = Device::Cpu;
    let tok = build_tokenizer(["a", "red", "circle"]).unwrap();
    let text = TextConfig::tiny(tok.get_vocab_size(true));
    let dit = DitConfig {
        context_in_dim: text.dim,
        vec_in_dim: text.dim,
        ..DitConfig::tiny()
    };
    let ae = AeConfig::tiny();
    let (va, vd, vt) = (VarMap::new(), VarMap::new(), VarMap::new());
    Autoencoder::new(&ae, seeded_varbuilder(&va, 1, DType::F32, &dev)).unwrap();
    Dit::new(&dit, seeded_varbuilder(&vd, 2, DType::F32, &dev)).unwrap();
    SmallTextEncoder::new(
        &text,
        tok.clone(),
        seeded_varbuilder(&vt, 3, DType::F32, &dev),
    )
    .unwrap();
    save(&va, &dir.join("ae.safetensors"));
    save(&vd, &dir.join("dit.safetensors"));
    save(&vt, &dir.join("text.safetensors"));
    std::fs::write(dir.join("tokenizer.json"), tok.to_string(false).unwrap()).unwrap();
    let meta = BundleMeta {
        name: "tiny".into(),
        ae,
        dit,
        text,
        shift: ShiftConfig::default(),
        default_steps: 2,
        default_guidance: 2.0,
        sampler: Sampler::Heun,
        max_side: 512,
        trained: serde_json::Value::Null,
    };
    std::fs::write(
        dir.join("model.json"),
        serde_json::to_string(&meta).unwrap(),
    )
    .unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn generate_writes_pngs_with_their_parameters() {
    let model = tempfile::tempdir().unwrap();
    write_tiny_bundle(model.path());
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("x.png");
    let m = model.path().to_str().unwrap();
    let o = sprout(&[
        "generate",
        "a red circle",
        "--model",
        m,
        "-n",
        "2",
        "--seed",
        "5",
        "--aspect",
        "16:9",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (i, name) in ["x_0.png", "x_1.png"].iter().enumerate() {
        let file = std::fs::File::open(out.path().join(name)).unwrap();
        let reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (352, 192));
        let text: HashMap<String, String> = info
            .utf8_text
            .iter()
            .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
            .collect();
        assert_eq!(text["prompt"], "a red circle");
        assert_eq!(text["seed"], (5 + i).to_string());
        assert_eq!(text["steps"], "2");
        assert_eq!(text["guidance"], "2");
        assert_eq!(text["size"], "352x192");
        assert!(text["model"].contains("tiny"));
    }
    // Image 1 of seed 5 is image 0 of seed 6.
    let single = out.path().join("y.png");
    let o = sprout(&[
        "generate",
        "a red circle",
        "--model",
        m,
        "--seed",
        "6",
        "--aspect",
        "16:9",
        "-o",
        single.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = image::open(out.path().join("x_1.png")).unwrap().to_rgb8();
    let b = image::open(&single).unwrap().to_rgb8();
    assert!(a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .all(|(p, q)| p.abs_diff(*q) <= 1));
}

#[test]
fn generate_rejects_bad_input_clearly() {
    let model = tempfile::tempdir().unwrap();
    write_tiny_bundle(model.path());
    let m = model.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("x.png");
    let p = png.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "", "--model", m, "-o", p],
            "prompt is empty",
        ),
        (
            vec![
                "generate", "a circle", "--model", m, "--size", "100x96", "-o", p,
            ],
            "width 100 is not a positive multiple of 32",
        ),
        (
            vec![
                "generate",
                "a circle",
                "--model",
                m,
                "--size",
                "1024x1024",
                "-o",
                p,
            ],
            "exceeds this model's maximum of 512",
        ),
        (
            vec!["generate", "a circle", "--model", "no-such-model", "-o", p],
            "unknown model \"no-such-model\"",
        ),
        (
            vec![
                "generate",
                "a circle",
                "--model",
                m,
                "--sampler",
                "ddim",
                "-o",
                p,
            ],
            "unknown sampler",
        ),
    ];
    for (args, want) in cases {
        let o = sprout(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    assert!(!png.exists());
    // Missing and corrupted weight files name the file.
    std::fs::write(model.path().join("dit.safetensors"), b"not safetensors").unwrap();
    let o = sprout(&["generate", "a circle", "--model", m, "-o", p]);
    assert!(
        stderr(&o).contains("dit.safetensors") && stderr(&o).contains("not a readable safetensors"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(model.path().join("dit.safetensors")).unwrap();
    let o = sprout(&["generate", "a circle", "--model", m, "-o", p]);
    assert!(stderr(&o).contains("missing weight file"), "{}", stderr(&o));
    // A tensor of the wrong shape is named.
    write_tiny_bundle(model.path());
    let mut t =
        candle_core::safetensors::load(model.path().join("dit.safetensors"), &Device::Cpu).unwrap();
    t.insert(
        "img_in.weight".into(),
        Tensor::zeros((3, 3), DType::BF16, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, model.path().join("dit.safetensors")).unwrap();
    let o = sprout(&["generate", "a circle", "--model", m, "-o", p]);
    assert!(stderr(&o).contains("img_in.weight"), "{}", stderr(&o));
}
