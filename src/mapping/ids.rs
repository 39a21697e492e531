//! New 64-bit message ids (Snowflake layout: 41 bits of milliseconds since the
//! configured epoch, 10 worker bits, 12 sequence bits), derived only from the
//! legacy row so that every rerun of every phase yields the same id.
//!
//! The millisecond part is the send time (seconds) × 1000 plus the legacy id's
//! bits above 22; the 22 worker+sequence bits are the legacy id's low 22 bits.
//! Two messages therefore share a new id only if their legacy ids agree in the
//! low 22 bits and `send_time*1000 + (id >> 22)` agrees, which needs legacy ids
//! ≥ 1000 << 22 (4.19 billion): beyond any INT UNSIGNED key in use. Ids sort by
//! send time, so a reversed id in a row key lists a room newest first.

/// Salt and hash helper: the SplitMix64 finaliser, fixed forever because row
/// keys depend on it.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn new_message_id(legacy_id: u64, send_time_s: u64, epoch_ms: u64) -> u64 {
    let ms = (send_time_s * 1000).saturating_sub(epoch_ms) + (legacy_id >> 22);
    ((ms & ((1 << 41) - 1)) << 22) | (legacy_id & ((1 << 22) - 1))
}

/// Milliseconds since the Unix epoch encoded in a new id.
pub fn id_millis(new_id: u64, epoch_ms: u64) -> u64 {
    (new_id >> 22) + epoch_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 1_262_304_000_000;

    #[test]
    fn ids_are_deterministic_unique_and_time_ordered() {
        let a = new_message_id(1, 1_400_000_000, EPOCH);
        assert_eq!(a, new_message_id(1, 1_400_000_000, EPOCH));
        let mut seen = std::collections::HashSet::new();
        for id in 0..100_000u64 {
            assert!(seen.insert(new_message_id(id * 37, 1_400_000_000 + id / 10, EPOCH)));
        }
        assert!(new_message_id(5, 1_400_000_001, EPOCH) > new_message_id(9, 1_400_000_000, EPOCH));
        assert_eq!(id_millis(a, EPOCH) / 1000, 1_400_000_000);
    }

    /// The inverse of `new_message_id` where it is defined: an id decodes back
    /// to its (send time, legacy id), so two rows with different ones differ.
    fn decode(id: u64) -> (u64, u64) {
        let ms = id >> 22;
        let hi = ms % 1000;
        (
            (ms - hi) / 1000 + EPOCH / 1000,
            (hi << 22) | (id & ((1 << 22) - 1)),
        )
    }

    #[test]
    fn ids_collide_only_where_the_readme_says() {
        let wrap_s = (EPOCH + (1 << 41)) / 1000;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            x = mix64(x);
            let legacy = x % (1000 << 22);
            let send = EPOCH / 1000 + (mix64(x) % (wrap_s - 1 - EPOCH / 1000));
            assert_eq!(decode(new_message_id(legacy, send, EPOCH)), (send, legacy));
        }
        let t = 1_500_000_000;
        // Legacy ids from 1000 << 22 spill into the next second.
        assert_eq!(
            new_message_id(1000 << 22, t, EPOCH),
            new_message_id(0, t + 1, EPOCH)
        );
        // Send times before the epoch clamp to it: the id is the legacy id.
        assert_eq!(new_message_id(77, 0, EPOCH), 77);
        assert_eq!(new_message_id(77, 1_000_000_000, EPOCH), 77);
        // From 2^41 ms after the epoch, ids wrap.
        assert!(new_message_id(1, wrap_s + 1, EPOCH) < new_message_id(1, wrap_s - 1, EPOCH));
    }

    #[test]
    fn same_second_ids_differ_by_legacy_id() {
        let t = 1_500_000_000;
        assert_ne!(new_message_id(100, t, EPOCH), new_message_id(101, t, EPOCH));
        assert_ne!(
            new_message_id(1 << 22, t, EPOCH),
            new_message_id(0, t, EPOCH)
        );
    }
}
