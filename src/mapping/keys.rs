//! HBase row keys. A one-byte salt spreads writes over pre-split regions; for
//! messages the salt comes from the room so that one scan of
//! `salt | room_id` returns the room's messages, newest first (reversed ids).

use super::ids::mix64;

pub fn salt(buckets: u16, id: u64) -> u8 {
    (mix64(id) % u64::from(buckets)) as u8
}

/// `salt(room) | room_id BE8 | (u64::MAX - new_id) BE8`
pub fn message(buckets: u16, room_id: u64, new_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(salt(buckets, room_id));
    k.extend_from_slice(&room_id.to_be_bytes());
    k.extend_from_slice(&(u64::MAX - new_id).to_be_bytes());
    k
}

/// The scan prefix of one room's messages.
pub fn room_prefix(buckets: u16, room_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(salt(buckets, room_id));
    k.extend_from_slice(&room_id.to_be_bytes());
    k
}

/// `salt(id) | id BE8`: rooms, accounts.
pub fn entity(buckets: u16, id: u64) -> Vec<u8> {
    room_prefix(buckets, id)
}

/// `salt(room) | room_id BE8 | account_id BE8`
pub fn member(buckets: u16, room_id: u64, account_id: u64) -> Vec<u8> {
    let mut k = room_prefix(buckets, room_id);
    k.extend_from_slice(&account_id.to_be_bytes());
    k
}

/// Id map rows: `salt(legacy) | 'L' | legacy BE8` → new id and room id, and
/// `salt(new) | 'N' | new BE8` → legacy id.
pub fn id_map_legacy(buckets: u16, legacy: u64) -> Vec<u8> {
    tagged(buckets, b'L', legacy)
}

pub fn id_map_new(buckets: u16, new_id: u64) -> Vec<u8> {
    tagged(buckets, b'N', new_id)
}

fn tagged(buckets: u16, tag: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(salt(buckets, id));
    k.push(tag);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Split points of a table pre-split into one region per salt value.
pub fn splits(buckets: u16) -> Vec<Vec<u8>> {
    (1..buckets).map(|b| vec![b as u8]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_messages_sort_newest_first_under_one_prefix() {
        let older = message(16, 77, 1000);
        let newer = message(16, 77, 2000);
        assert!(newer < older);
        let p = room_prefix(16, 77);
        assert!(older.starts_with(&p) && newer.starts_with(&p));
    }

    #[test]
    fn salts_cover_every_bucket() {
        let mut seen = [false; 16];
        for id in 0..1000 {
            seen[salt(16, id) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(splits(4), vec![vec![1], vec![2], vec![3]]);
    }
}
