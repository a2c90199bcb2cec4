//! The demo's test pattern: every block's bytes follow from its LBA and a
//! seed, so a block written to, or read from, the wrong place is caught.
//!
//! Layout of one block: bytes 0-7 the LBA and 8-15 the pattern seed (little
//! endian), so a wrong block can be identified; then a splitmix64 stream
//! seeded from both.

/// Bytes at the start of each block that name its LBA and seed.
pub const HEADER: usize = 16;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills one block with the pattern of `lba`.
pub fn fill_block(block: &mut [u8], lba: u64, seed: u64) {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&lba.to_le_bytes());
    header[8..].copy_from_slice(&seed.to_le_bytes());
    let h = HEADER.min(block.len());
    block[..h].copy_from_slice(&header[..h]);
    let mut state = seed ^ lba.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0xA076_1D64_78BD_642F;
    for chunk in block[h..].chunks_mut(8) {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The pattern of `blocks` consecutive blocks from `lba`.
pub fn blocks(lba: u64, blocks: u32, block_size: u32, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; blocks as usize * block_size as usize];
    for (i, block) in buf.chunks_mut(block_size as usize).enumerate() {
        fill_block(block, lba + i as u64, seed);
    }
    buf
}

/// Checks blocks read from `lba` on; returns one description per bad block
/// (at most `limit`) and the number of bad blocks.
pub fn check(
    data: &[u8],
    lba: u64,
    block_size: u32,
    seed: u64,
    limit: usize,
) -> (Vec<String>, u64) {
    let mut expected = vec![0u8; block_size as usize];
    let mut found = Vec::new();
    let mut bad = 0;
    for (i, block) in data.chunks(block_size as usize).enumerate() {
        let at = lba + i as u64;
        fill_block(&mut expected, at, seed);
        if block != &expected[..block.len()] {
            bad += 1;
            if found.len() < limit {
                found.push(explain(block, &expected, at, seed));
            }
        }
    }
    (found, bad)
}

/// Why `block` is not the pattern of `lba`.
fn explain(block: &[u8], expected: &[u8], lba: u64, seed: u64) -> String {
    if block.iter().all(|&b| b == 0) {
        return format!("LBA {lba}: all zeros (the write never arrived?)");
    }
    if block.len() >= HEADER {
        let their_lba = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        let their_seed = u64::from_le_bytes(block[8..16].try_into().expect("8 bytes"));
        if their_seed == seed && their_lba != lba {
            return format!("LBA {lba}: holds the block written to LBA {their_lba} (misplaced)");
        }
        if their_seed != seed && their_lba == lba {
            return format!(
                "LBA {lba}: holds data of an earlier run (seed {their_seed:#x}; stale)"
            );
        }
    }
    let first = block
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    format!("LBA {lba}: corrupted from byte {first} on")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct_per_lba_and_seed() {
        let a = blocks(7, 1, 512, 42);
        assert_eq!(a, blocks(7, 1, 512, 42));
        assert_ne!(a, blocks(8, 1, 512, 42));
        assert_ne!(a, blocks(7, 1, 512, 43));
        assert_eq!(&a[..8], &7u64.to_le_bytes());
        assert_eq!(&a[8..16], &42u64.to_le_bytes());
        // Not trivially repetitive past the header.
        assert_ne!(&a[16..24], &a[24..32]);
        let two = blocks(7, 2, 512, 42);
        assert_eq!(&two[..512], &a[..]);
        assert_eq!(&two[512..], &blocks(8, 1, 512, 42)[..]);
    }

    #[test]
    fn check_accepts_the_pattern() {
        let data = blocks(100, 16, 4096, 9);
        assert_eq!(check(&data, 100, 4096, 9, 10), (vec![], 0));
    }

    #[test]
    fn check_names_misplaced_stale_zero_and_corrupt_blocks() {
        let mut data = blocks(0, 8, 512, 1);
        // Block 2 holds block 5's data, block 3 is from another run,
        // block 4 is zero, block 6 has one flipped bit.
        let five = data[5 * 512..6 * 512].to_vec();
        data[2 * 512..3 * 512].copy_from_slice(&five);
        data[3 * 512..4 * 512].copy_from_slice(&blocks(3, 1, 512, 2));
        data[4 * 512..5 * 512].fill(0);
        data[6 * 512 + 100] ^= 1;
        let (found, bad) = check(&data, 0, 512, 1, 10);
        assert_eq!(bad, 4);
        assert!(
            found[0].contains("LBA 2: holds the block written to LBA 5"),
            "{found:?}"
        );
        assert!(
            found[1].contains("LBA 3: holds data of an earlier run"),
            "{found:?}"
        );
        assert!(found[2].contains("LBA 4: all zeros"), "{found:?}");
        assert!(
            found[3].contains("LBA 6: corrupted from byte 100"),
            "{found:?}"
        );
        let (few, bad) = check(&data, 0, 512, 1, 1);
        assert_eq!((few.len(), bad), (1, 4));
    }
}
