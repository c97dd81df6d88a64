//! MurmurHash3, the hash every polaris-go hash balancer uses.
//!
//! polaris-go registers one hash function, "murmur3" (`pkg/algorithm/hash/murmur3.go`), backed by
//! `spaolacci/murmur3`'s `New64WithSeed(seed).Sum64()`: the **x64_128** variant with both lanes
//! seeded with `seed`, keeping only the first 64-bit lane (`h1`). Keys, ring points and the maglev
//! offset use seed 0; the maglev skip uses seed 1. x86_32 is not used by any balancer, so it is not
//! here.

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

/// The first 64-bit half of MurmurHash3 x64_128: what polaris-go calls murmur3 with a seed.
pub fn murmur3_64(data: &[u8], seed: u32) -> u64 {
    murmur3_x64_128(data, seed).0
}

/// MurmurHash3 x64_128 as `(h1, h2)`, both lanes seeded with `seed` (the reference C code's
/// `MurmurHash3_x64_128`; the 16 output bytes are `h1` then `h2`, each little-endian).
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    let mut h1 = u64::from(seed);
    let mut h2 = u64::from(seed);

    let blocks = data.chunks_exact(16);
    let tail = blocks.remainder();
    for block in blocks {
        let (low, high) = block.split_at(8);
        h1 ^= mix_k1(<[u8; 8]>::try_from(low).map_or(0, u64::from_le_bytes));
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix_k2(<[u8; 8]>::try_from(high).map_or(0, u64::from_le_bytes));
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    // The tail (0..=15 bytes): up to 8 bytes into k1, the rest into k2. Mixing a zero word is a
    // no-op (0 * c = 0), so the words are mixed unconditionally.
    let (low, high) = tail.split_at(tail.len().min(8));
    h2 ^= mix_k2(le_u64(high));
    h1 ^= mix_k1(le_u64(low));

    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

fn mix_k1(k: u64) -> u64 {
    k.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2)
}

fn mix_k2(k: u64) -> u64 {
    k.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Up to 8 bytes as a little-endian integer (missing high bytes are zero).
fn le_u64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .enumerate()
        .fold(0, |acc, (i, &b)| acc | (u64::from(b) << (8 * i)))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Published vectors for x64_128 (seed, input, h1, h2), as in spaolacci/murmur3's test table,
    /// which is the library polaris-go calls.
    const VECTORS: &[(u32, &str, u64, u64)] = &[
        (0, "", 0, 0),
        (0, "hello", 0xcbd8_a7b3_41bd_9b02, 0x5b1e_906a_48ae_1d19),
        (
            0,
            "hello, world",
            0x342f_ac62_3a5e_bc8e,
            0x4cdc_bc07_9642_414d,
        ),
        (
            0,
            "19 Jan 2038 at 3:14:07 AM",
            0xb89e_5988_b737_affc,
            0x664f_c295_0231_b2cb,
        ),
        (
            0,
            "The quick brown fox jumps over the lazy dog.",
            0xcd99_481f_9ee9_02c9,
            0x695d_a1a3_8987_b6e7,
        ),
        (1, "", 0x4610_abe5_6eff_5cb5, 0x5162_2daa_78f8_3583),
        (1, "hello", 0xa78d_dff5_adae_8d10, 0x1289_00ef_2090_0135),
        (
            1,
            "hello, world",
            0x8b95_f808_8407_25c6,
            0x1597_ed54_22bd_493b,
        ),
        (
            1,
            "19 Jan 2038 at 3:14:07 AM",
            0x2a92_9de9_c8f9_7b2f,
            0x56a4_1d99_af43_a2db,
        ),
        (
            1,
            "The quick brown fox jumps over the lazy dog.",
            0xfb33_2517_1f97_44da,
            0xaaf8_b92a_5f72_2952,
        ),
        (0x2a, "", 0xf02a_a77d_fa1b_8523, 0xd101_6610_da11_cbb9),
        (0x2a, "hello", 0xc4b8_b3c9_60af_6f08, 0x2334_b875_b0ef_bc7a),
        (
            0x2a,
            "hello, world",
            0xb918_64d7_97ca_a956,
            0xd5d1_39a5_5afe_6150,
        ),
        (
            0x2a,
            "19 Jan 2038 at 3:14:07 AM",
            0xfd8f_19eb_dc8c_6b6a,
            0xd30f_dc31_0fa0_8ff9,
        ),
        (
            0x2a,
            "The quick brown fox jumps over the lazy dog.",
            0x74f3_3c65_9cda_5af7,
            0x4ec7_a891_caf3_16f0,
        ),
    ];

    #[test]
    fn matches_published_x64_128_vectors() {
        for &(seed, input, h1, h2) in VECTORS {
            assert_eq!(
                murmur3_x64_128(input.as_bytes(), seed),
                (h1, h2),
                "seed {seed} input {input:?}"
            );
            assert_eq!(murmur3_64(input.as_bytes(), seed), h1);
        }
    }

    #[test]
    fn matches_reference_c_digest_of_quick_brown_fox() {
        // The reference C implementation's 16-byte digest of this sentence (no trailing dot),
        // seed 0, is 6c1b07bc7bbc4be347939ac4a93c437a: h1 then h2, each little-endian.
        let (h1, h2) = murmur3_x64_128(b"The quick brown fox jumps over the lazy dog", 0);
        let mut digest = h1.to_le_bytes().to_vec();
        digest.extend_from_slice(&h2.to_le_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "6c1b07bc7bbc4be347939ac4a93c437a");
    }

    #[test]
    fn every_tail_length_is_hashed_distinctly() {
        // 0..=33 bytes covers empty, every tail length and one and two full blocks.
        let data: Vec<u8> = (0u8..33).collect();
        let mut seen: Vec<u64> = (0..=data.len())
            .map(|n| murmur3_64(data.get(..n).unwrap_or_default(), 0))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), data.len() + 1);
    }
}
