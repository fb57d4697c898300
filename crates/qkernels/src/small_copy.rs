//! Copies and fills of short byte runs, inline instead of a `memcpy` / `memset` call per run.

/// `dst.copy_from_slice(src)` for short runs (im2col's taps and kernel rows, AMX's K tails),
/// inline instead of a `memcpy` call per run: up to 64 bytes as two overlapping moves of the
/// largest power of two not above the length (the small-copy trick of memcpy implementations),
/// up to 4 KiB as 64-byte moves.
#[inline(always)]
pub(crate) fn copy_small(dst: &mut [u8], src: &[u8]) {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    match len {
        0 => {}
        1..4 => {
            // First, middle and last byte: every byte of a run of 1 to 3.
            for i in [0, len / 2, len - 1] {
                dst[i] = src[i];
            }
        }
        4..8 => copy_ends::<4>(dst, src),
        8..16 => copy_ends::<8>(dst, src),
        16..32 => copy_ends::<16>(dst, src),
        32..=64 => copy_ends::<32>(dst, src),
        65..=4096 => copy_chunks::<64>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// `dst.fill(value)` for short runs (im2col's padding), inline up to 64 bytes.
#[inline(always)]
pub(crate) fn fill_small(dst: &mut [u8], value: u8) {
    if dst.len() <= 64 {
        copy_small(dst, &[value; 64][..dst.len()]);
    } else {
        dst.fill(value);
    }
}

/// Copies `src` (`W..=2W` bytes, as long as `dst`) as its first and its last `W` bytes.
#[inline(always)]
fn copy_ends<const W: usize>(dst: &mut [u8], src: &[u8]) {
    let len = dst.len();
    let head: [u8; W] = src[..W].try_into().unwrap_or([0; W]);
    let tail: [u8; W] = src[len - W..].try_into().unwrap_or([0; W]);
    dst[..W].copy_from_slice(&head);
    dst[len - W..].copy_from_slice(&tail);
}

/// Copies `src` (at least `W` bytes, as long as `dst`) in `W`-byte moves, the last one
/// overlapping its predecessor.
#[inline(always)]
fn copy_chunks<const W: usize>(dst: &mut [u8], src: &[u8]) {
    let len = dst.len();
    let mut at = 0;
    loop {
        let start = at.min(len - W);
        let chunk: [u8; W] = src[start..start + W].try_into().unwrap_or([0; W]);
        dst[start..start + W].copy_from_slice(&chunk);
        if start + W >= len {
            break;
        }
        at += W;
    }
}

#[cfg(test)]
mod tests {
    use super::copy_small;

    #[test]
    fn copy_small_copies_every_length_exactly() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 1) as u8).collect();
        for len in (0..300).chain([1000, 4095, 4096, 4097, 5000]) {
            let mut dst = vec![0u8; len + 8];
            copy_small(&mut dst[..len], &src[..len]);
            assert_eq!(&dst[..len], &src[..len], "length {len}");
            assert!(dst[len..].iter().all(|&b| b == 0), "length {len} wrote past the end");
        }
    }
}
