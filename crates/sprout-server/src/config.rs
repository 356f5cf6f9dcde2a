//! Server settings: where to listen, the queue, and the limits enforced before any work.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Jobs waiting behind the running one; a request beyond this gets 429.
    pub queue_capacity: usize,
    /// Largest request body in bytes (JSON or multipart).
    pub max_body_bytes: usize,
    /// Longest prompt in characters.
    pub max_prompt_chars: usize,
    /// Most images per request (OpenAI's limit is 10).
    pub max_n: usize,
    /// Largest side of an uploaded image, in pixels.
    pub max_input_side: u32,
    /// Largest decoded size of an uploaded image, in bytes.
    pub max_input_alloc: u64,
    /// A job still unfinished this long after it was accepted is stopped (504).
    pub deadline: Duration,
    /// Run the largest size once at start, so memory problems show at boot.
    pub warmup: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            queue_capacity: 16,
            max_body_bytes: 32 << 20,
            max_prompt_chars: 4000,
            max_n: 10,
            max_input_side: 4096,
            max_input_alloc: 256 << 20,
            deadline: Duration::from_secs(600),
            warmup: true,
        }
    }
}
