//! Atomic checkpoints: every file is written into `DIR/latest.tmp`, which then replaces
//! `DIR/latest` by renames (the previous checkpoint is kept as `latest.old` until the new one
//! is in place), so a crash at any moment leaves one complete checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::TrainError;

pub fn latest(dir: &Path) -> PathBuf {
    dir.join("latest")
}

/// The complete checkpoint directory to resume from, if any.
pub fn find(dir: &Path) -> Option<PathBuf> {
    let l = latest(dir);
    let old = dir.join("latest.old");
    if l.join("state.json").is_file() {
        Some(l)
    } else if old.join("state.json").is_file() {
        Some(old)
    } else {
        None
    }
}

/// Write a checkpoint: tensor files, extra files, and `state.json` last.
pub fn save(
    dir: &Path,
    tensors: &[(&str, HashMap<String, Tensor>)],
    extra: &[(&str, String)],
    state: &serde_json::Value,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("latest.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    for (name, t) in tensors {
        candle_core::safetensors::save(t, tmp.join(format!("{name}.safetensors")))?;
    }
    for (name, text) in extra {
        std::fs::write(tmp.join(name), text)?;
    }
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_string_pretty(state).expect("json"),
    )?;
    let l = latest(dir);
    let old = dir.join("latest.old");
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if l.exists() {
        std::fs::rename(&l, &old)?;
    }
    std::fs::rename(&tmp, &l)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

pub fn load_tensors(ckpt: &Path, name: &str) -> Result<HashMap<String, Tensor>, TrainError> {
    let p = ckpt.join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&p, &Device::Cpu)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))
}

pub fn load_state(ckpt: &Path) -> Result<serde_json::Value, TrainError> {
    let p = ckpt.join("state.json");
    let text = std::fs::read_to_string(&p)?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_replaces_atomically_and_finds_the_survivor() {
        let d = tempfile::tempdir().unwrap();
        let t: HashMap<String, Tensor> = [(
            "a".to_string(),
            Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap(),
        )]
        .into();
        save(
            d.path(),
            &[("model", t.clone())],
            &[],
            &serde_json::json!({"step": 1}),
        )
        .unwrap();
        save(
            d.path(),
            &[("model", t)],
            &[("note.txt", "x".into())],
            &serde_json::json!({"step": 2}),
        )
        .unwrap();
        let c = find(d.path()).unwrap();
        assert_eq!(load_state(&c).unwrap()["step"], 2);
        assert_eq!(
            load_tensors(&c, "model").unwrap()["a"]
                .to_vec1::<f32>()
                .unwrap(),
            vec![1., 2.]
        );
        // A crash between the two renames leaves only latest.old: it is found.
        std::fs::rename(latest(d.path()), d.path().join("latest.old")).unwrap();
        assert!(find(d.path()).unwrap().ends_with("latest.old"));
        assert!(find(&d.path().join("nothing")).is_none());
    }
}
