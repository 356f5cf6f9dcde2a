//! Embeds the default model (`models/default` at the repository root) when its files exist.
use std::path::PathBuf;

const FILES: [&str; 5] = [
    "model.json",
    "tokenizer.json",
    "ae.safetensors",
    "dit.safetensors",
    "text.safetensors",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sprout_embedded)");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../../models/default");
    println!("cargo::rerun-if-changed={}", dir.display());
    for f in FILES {
        println!("cargo::rerun-if-changed={}", dir.join(f).display());
    }
    if FILES.iter().all(|f| dir.join(f).is_file()) {
        println!("cargo::rustc-cfg=sprout_embedded");
    }
}
