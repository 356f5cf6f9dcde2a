//! Autoencoder latents of a pooled stream's batches, kept in memory and on disk.
//!
//! A pooled stream repeats the same images every epoch, so their latents need computing once
//! per run, not once per process: the disk copy (one safetensors file per batch, f32, written
//! atomically) lets a resumed run skip the encoder from its first step. Values are exactly
//! what encoding computed, so a cached run stays bit-identical to an uncached one. The
//! directory's name carries a fingerprint of the autoencoder, so latents of another
//! autoencoder are never read.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::TrainError;

/// (first sample, count, height, width, hash of the first scene — stages differ in it).
pub type LatentKey = (u64, usize, usize, usize, u64);

pub struct LatentCache {
    mem: HashMap<LatentKey, Tensor>,
    dir: Option<PathBuf>,
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl LatentCache {
    /// In memory only.
    pub fn memory() -> LatentCache {
        LatentCache {
            mem: HashMap::new(),
            dir: None,
        }
    }

    /// In memory and under `run_dir/latents-<fingerprint of ae_identity>/`.
    pub fn on_disk(run_dir: &Path, ae_identity: &[u8]) -> Result<LatentCache, TrainError> {
        let dir = run_dir.join(format!("latents-{:016x}", fingerprint(ae_identity)));
        std::fs::create_dir_all(&dir)?;
        Ok(LatentCache {
            mem: HashMap::new(),
            dir: Some(dir),
        })
    }

    fn file(&self, key: &LatentKey) -> Option<PathBuf> {
        let (first, n, h, w, scene) = key;
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{first}-{n}-{h}x{w}-{scene:016x}.safetensors")))
    }

    /// The latents of `key`, from memory or disk (a file that cannot be read is ignored:
    /// the caller recomputes and rewrites it).
    pub fn get(&mut self, key: &LatentKey, device: &Device) -> Option<Tensor> {
        if let Some(z) = self.mem.get(key) {
            return Some(z.clone());
        }
        let file = self.file(key)?;
        let z = candle_core::safetensors::load(&file, device)
            .ok()?
            .remove("latents")?;
        self.mem.insert(*key, z.clone());
        Some(z)
    }

    pub fn insert(&mut self, key: LatentKey, z: &Tensor) -> Result<(), TrainError> {
        if let Some(file) = self.file(&key) {
            let tmp = file.with_extension("tmp");
            candle_core::safetensors::save(
                &HashMap::from([("latents".to_string(), z.to_device(&Device::Cpu)?)]),
                &tmp,
            )?;
            std::fs::rename(&tmp, &file)?;
        }
        self.mem.insert(key, z.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_copies_survive_a_new_cache_and_are_exact() {
        let d = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let z = Tensor::randn(0f32, 1.0, (2, 4, 3, 5), &dev).unwrap();
        let key = (64, 2, 96, 160, 0xABCD);
        let mut a = LatentCache::on_disk(d.path(), b"ae v1").unwrap();
        assert!(a.get(&key, &dev).is_none());
        a.insert(key, &z).unwrap();
        let mut b = LatentCache::on_disk(d.path(), b"ae v1").unwrap();
        let back = b.get(&key, &dev).unwrap();
        let same = back
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(z.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same);
        // Another autoencoder never sees these latents; another key misses.
        let mut c = LatentCache::on_disk(d.path(), b"ae v2").unwrap();
        assert!(c.get(&key, &dev).is_none());
        assert!(b.get(&(0, 2, 96, 160, 0xABCD), &dev).is_none());
        // A damaged file is a miss, not an error.
        let f = b.file(&key).unwrap();
        std::fs::write(&f, b"junk").unwrap();
        assert!(LatentCache::on_disk(d.path(), b"ae v1")
            .unwrap()
            .get(&key, &dev)
            .is_none());
    }
}
