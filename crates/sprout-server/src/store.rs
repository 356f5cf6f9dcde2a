//! Images answered with `response_format: "url"`: kept in memory under an unguessable name
//! for a limited time and total size, served at `GET /v1/images/files/{name}`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::encode::OutputFormat;

struct Item {
    name: String,
    bytes: Vec<u8>,
    format: OutputFormat,
    stored: Instant,
}

pub struct Store {
    items: Mutex<VecDeque<Item>>,
    ttl: Duration,
    max_bytes: usize,
}

impl Store {
    pub fn new(ttl: Duration, max_bytes: usize) -> Store {
        Store {
            items: Mutex::new(VecDeque::new()),
            ttl,
            max_bytes,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keep `bytes` and return its file name; expired items, then the oldest ones beyond
    /// the size limit, are dropped.
    pub fn put(&self, bytes: Vec<u8>, format: OutputFormat) -> String {
        let name = format!("{}.{}", random_name(), format.name());
        let mut items = self.items.lock().expect("store");
        while items.front().is_some_and(|i| i.stored.elapsed() > self.ttl) {
            items.pop_front();
        }
        let mut total: usize = items.iter().map(|i| i.bytes.len()).sum::<usize>() + bytes.len();
        while total > self.max_bytes {
            match items.pop_front() {
                Some(old) => total -= old.bytes.len(),
                None => break,
            }
        }
        items.push_back(Item {
            name: name.clone(),
            bytes,
            format,
            stored: Instant::now(),
        });
        name
    }

    pub fn get(&self, name: &str) -> Option<(Vec<u8>, OutputFormat)> {
        let items = self.items.lock().expect("store");
        items
            .iter()
            .find(|i| i.name == name && i.stored.elapsed() <= self.ttl)
            .map(|i| (i.bytes.clone(), i.format))
    }
}

/// 128 random bits from the OS, as hex.
fn random_name() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        // Without /dev/urandom: the clock and a counter, hashed (names stay unique).
        use std::hash::{BuildHasher, Hasher};
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) ^ i as u64);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_expire_and_the_oldest_go_first_beyond_the_size_limit() {
        let s = Store::new(Duration::from_secs(60), 10);
        let a = s.put(vec![1; 4], OutputFormat::Png);
        let b = s.put(vec![2; 4], OutputFormat::Jpeg);
        assert!(a.ends_with(".png") && b.ends_with(".jpeg") && a != b);
        assert_eq!(s.get(&a).unwrap().0, vec![1; 4]);
        let c = s.put(vec![3; 4], OutputFormat::Png);
        assert!(s.get(&a).is_none(), "over 10 bytes: the oldest goes");
        assert!(s.get(&b).is_some() && s.get(&c).is_some());
        let short = Store::new(Duration::from_millis(1), 100);
        let d = short.put(vec![1], OutputFormat::Png);
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(&d).is_none());
    }
}
