//! Intel AMX tile products for bf16 operands (`tdpbf16ps`: a 16 × 16 f32 tile plus a
//! 16 × 32 bf16 tile times a 32 × 16 bf16 tile in one instruction, 16 times the work of
//! one `vdpbf16ps`), used by [`crate::bf16_gemm`] where the CPU has them.
//!
//! Written by hand because no crate on crates.io exposes AMX products, and the tile
//! instructions are not among Rust's stable intrinsics: the kernel is inline assembly.
//! Linux also requires a process to ask for the tile state before its first tile
//! instruction (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`available`] asks
//! once and says no where the CPU, the kernel or the environment (`SPROUT_AMX=0`) refuses.
//!
//! Layouts the kernel reads: the left operand row-major in bf16 pairs (one 32-bit word
//! holds the inputs `2p, 2p + 1` of a row), rows `lda` bytes apart; the right operand as
//! [`crate::bf16_gemm::PackedBf16`]'s panels, which already are AMX's pair-interleaved
//! ("VNNI") layout: for every input pair, 32 output columns' words side by side, so a
//! 16-column tile is every row's first or second 64 bytes at a stride of 128.

use std::sync::OnceLock;

/// Input pairs (32 inputs) one tile step reduces.
pub(crate) const PAIRS: usize = 16;
/// Rows of one output block (two tiles).
pub(crate) const ROWS: usize = 32;

/// Whether this CPU and OS run AMX bf16 tile products (CPUID's AMX-TILE and AMX-BF16, the
/// kernel's permission for the tile state), and `SPROUT_AMX` is not `0`; checked once per
/// process.
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var("SPROUT_AMX").is_ok_and(|v| v == "0") {
            return false;
        }
        detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA (18): the process-wide permission to use
    // the tile data state; 0 means granted.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// The tile configuration every kernel here uses: palette 1, eight tiles of 16 rows × 64
/// bytes (tmm0–1 left operand, tmm2–3 right operand, tmm4–7 the 2 × 2 output tiles).
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    Config(c)
};

/// Loads the tile configuration in this thread, and releases it when dropped: tile state is
/// per thread, so every task that runs [`block_32x32`] holds one. Nothing that can run
/// other rayon work on this thread (a nested parallel call) may run while it is held: that
/// work could load and release the configuration under it.
pub(crate) struct Tiles(());

impl Tiles {
    /// # Safety
    /// Needs [`available`].
    pub(crate) unsafe fn new() -> Tiles {
        #[cfg(target_arch = "x86_64")]
        std::arch::asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a `Tiles` exists only after the configuration was loaded.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// `c (32 × 32 f32, rows ldc bytes apart) = init + a · b` over `steps` × 32 inputs, where
/// `a` is 32 rows of the left operand packed by tiles (for each step, the 16 × 64-byte tile
/// of rows 0–15, then that of rows 16–31: 2 KiB per step, every tile load one contiguous
/// KiB, which keeps the hardware prefetchers streaming where a row-major operand's
/// strided loads measured half the rate), `b` one weight panel (128 bytes per input pair)
/// from its first pair, and `init` the old `c` (`accumulate`), the 32 floats
/// at `bias` added to every row (non-null), or zero. While it runs, about `steps · 256`
/// bytes at `prefetch` (the next panel's share, say) are fetched into L2.
///
/// # Safety
/// Needs [`available`] and a live [`Tiles`] in this thread; `a` must hold 32 rows of
/// `steps · 64` bytes, `b` `steps · 16` pairs of its panel, `c` 32 rows of 32 floats.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block_32x32(
    _tiles: &Tiles,
    a: *const u32,
    b: *const u32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
    prefetch: *const u8,
) {
    use std::arch::asm;
    debug_assert!(steps > 0);
    let (lda, a1, step) = (64usize, (a as *const u8).add(1024), 2048usize);
    let c1 = (c as *mut u8).add(16 * ldc);
    if accumulate {
        asm!(
            "tileloadd tmm4, [{c} + {ldc}*1]",
            "tileloadd tmm5, [{c} + {ldc}*1 + 64]",
            "tileloadd tmm6, [{c1} + {ldc}*1]",
            "tileloadd tmm7, [{c1} + {ldc}*1 + 64]",
            c = in(reg) c, c1 = in(reg) c1, ldc = in(reg) ldc,
            options(nostack, readonly),
        );
    } else if !bias.is_null() {
        // Every row of a tile from the same 64 bytes: a stride of zero.
        asm!(
            "tileloadd tmm4, [{bias} + {zero}*1]",
            "tileloadd tmm5, [{bias} + {zero}*1 + 64]",
            "tileloadd tmm6, [{bias} + {zero}*1]",
            "tileloadd tmm7, [{bias} + {zero}*1 + 64]",
            bias = in(reg) bias, zero = in(reg) 0usize,
            options(nostack, readonly),
        );
    } else {
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack, nomem),
        );
    }
    // Software-pipelined: each tile of the next step is loaded as soon as this step's last
    // product that reads its register has issued, so that loads overlap the products.
    asm!(
        "tileloadd tmm0, [{a} + {lda}*1]",
        "tileloadd tmm1, [{a1} + {lda}*1]",
        "tileloadd tmm2, [{b} + {ldb}*1]",
        "tileloadd tmm3, [{b} + {ldb}*1 + 64]",
        "dec {n}",
        "jz 3f",
        "2:",
        "add {a}, {step}",
        "add {a1}, {step}",
        "add {b}, 2048",
        "prefetcht1 [{pf}]",
        "prefetcht1 [{pf} + 64]",
        "prefetcht1 [{pf} + 128]",
        "prefetcht1 [{pf} + 192]",
        "add {pf}, 256",
        "tdpbf16ps tmm4, tmm0, tmm2",
        "tdpbf16ps tmm6, tmm1, tmm2",
        "tileloadd tmm2, [{b} + {ldb}*1]",
        "tdpbf16ps tmm5, tmm0, tmm3",
        "tileloadd tmm0, [{a} + {lda}*1]",
        "tdpbf16ps tmm7, tmm1, tmm3",
        "tileloadd tmm3, [{b} + {ldb}*1 + 64]",
        "tileloadd tmm1, [{a1} + {lda}*1]",
        "dec {n}",
        "jnz 2b",
        "3:",
        "tdpbf16ps tmm4, tmm0, tmm2",
        "tdpbf16ps tmm6, tmm1, tmm2",
        "tdpbf16ps tmm5, tmm0, tmm3",
        "tdpbf16ps tmm7, tmm1, tmm3",
        a = inout(reg) a => _, a1 = inout(reg) a1 => _, b = inout(reg) b => _,
        n = inout(reg) steps => _, lda = in(reg) lda, ldb = in(reg) 128usize, step = in(reg) step,
        pf = inout(reg) prefetch => _,
        options(nostack, readonly),
    );
    asm!(
        "tilestored [{c} + {ldc}*1], tmm4",
        "tilestored [{c} + {ldc}*1 + 64], tmm5",
        "tilestored [{c1} + {ldc}*1], tmm6",
        "tilestored [{c1} + {ldc}*1 + 64], tmm7",
        c = in(reg) c, c1 = in(reg) c1, ldc = in(reg) ldc,
        options(nostack),
    );
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block_32x32(
    _: &Tiles,
    _: *const u32,
    _: *const u32,
    _: usize,
    _: *mut f32,
    _: usize,
    _: bool,
    _: *const f32,
    _: *const u8,
) {
    unreachable!("AMX products need x86-64 (checked by `available`)")
}
