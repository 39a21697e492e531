//! The admission rule: a source row becomes a canonical row (and its event),
//! or a rejection with a reason. Base, diff, watermark and verify all call
//! [`Admission::admit`], so verify's idea of which rows the targets should
//! hold is base's by construction. The checks, in order:
//! 1. the mapping itself ([`super::canonical`]: NULLs, zero dates, invalid
//!    UTF-8, mojibake, bad values);
//! 2. the row's room exists (messages and members), else `orphan_room`;
//! 3. the event fits `kafka.message_max_bytes` with [`ORIGIN_RESERVE`] bytes
//!    left for its origin, else `oversized_event` — judged on the event without
//!    its origin, so a row is admitted or not whichever phase, run id and
//!    source position write it, and whether or not Kafka is a target.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::mysql::MySqlPool;

use super::canonical::{canonical, required_room, Canonical, MapContext, Reject, Rejection};
use super::spec::SrcVal;
use crate::config::EntityKind;
use crate::error::{Error, Result};
use crate::sink::kafka::event::{self, Origin};

/// Bytes an event keeps free for its origin (phase, run id ≤ 64 characters,
/// source position); an origin is far shorter.
pub const ORIGIN_RESERVE: usize = 1024;

/// The event size rule, given the event's length without its origin.
pub fn size_rule(sans_origin: usize, limit: usize) -> std::result::Result<(), Rejection> {
    if sans_origin + ORIGIN_RESERVE > limit {
        return Err(Rejection {
            reason: Reject::OversizedEvent,
            detail: format!(
                "event of {sans_origin} bytes (+ up to {ORIGIN_RESERVE} of origin) exceeds kafka.message_max_bytes {limit}"
            ),
        });
    }
    Ok(())
}

/// An upper bound of a row's event length without its origin, without
/// encoding it (JSON escaping at most sextuples a byte).
fn event_bound(c: &Canonical) -> usize {
    256 + c.key.len() * 6
        + c.cells
            .iter()
            .map(|x| x.name.len() + 8 + x.value.as_ref().map_or(4, |v| v.len() * 6))
            .sum::<usize>()
}

/// The rooms of the source: the orphan check's fast path is a sorted list
/// read once; a miss is asked of the database, so a room created during the
/// run is no orphan.
pub struct Rooms {
    sorted: Option<Vec<u64>>,
    pool: MySqlPool,
}

impl Rooms {
    /// Reads the room ids; a source without a `room` table has no orphan check.
    pub async fn load(pool: &MySqlPool) -> Result<Rooms> {
        let sorted = match sqlx::query_scalar::<_, u64>("SELECT room_id FROM room")
            .fetch_all(pool)
            .await
        {
            Ok(mut v) => {
                v.sort_unstable();
                Some(v)
            }
            Err(sqlx::Error::Database(e)) if e.message().contains("doesn't exist") => {
                tracing::warn!("the source has no room table: orphan checks are off");
                None
            }
            Err(e) => return Err(Error::mysql("list rooms", e)),
        };
        Ok(Rooms {
            sorted,
            pool: pool.clone(),
        })
    }

    /// Rooms are needed only when a mapped table references them.
    pub async fn for_kinds(pool: &MySqlPool, kinds: &[EntityKind]) -> Result<Rooms> {
        if kinds
            .iter()
            .any(|k| matches!(k, EntityKind::Message | EntityKind::RoomMember))
        {
            Rooms::load(pool).await
        } else {
            Ok(Rooms {
                sorted: None,
                pool: pool.clone(),
            })
        }
    }

    async fn exists(&self, cache: &mut HashSet<u64>, room: u64) -> Result<bool> {
        let Some(rooms) = &self.sorted else {
            return Ok(true);
        };
        if rooms.binary_search(&room).is_ok() || cache.contains(&room) {
            return Ok(true);
        }
        let found: Option<u64> = sqlx::query_scalar("SELECT room_id FROM room WHERE room_id = ?")
            .bind(room)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::mysql("orphan check", e))?;
        if found.is_some() {
            cache.insert(room);
        }
        Ok(found.is_some())
    }
}

/// One worker's admission: the shared room list, its own cache of rooms
/// found late, and a scratch buffer.
pub struct Admission {
    rooms: Arc<Rooms>,
    cache: HashSet<u64>,
    event_limit: usize,
    scratch: Vec<u8>,
}

impl Admission {
    pub fn new(rooms: Arc<Rooms>, event_limit: usize) -> Admission {
        Admission {
            rooms,
            cache: HashSet::new(),
            event_limit,
            scratch: Vec::new(),
        }
    }

    /// Admits one source row of `kind`. With `event`, the row's event is
    /// encoded into the buffer with that origin, ready to send. The outer
    /// error is a database failure; the inner one, the row's rejection.
    pub async fn admit(
        &mut self,
        kind: EntityKind,
        row: &[SrcVal],
        ctx: &MapContext,
        event: Option<(&Origin<'_>, &mut Vec<u8>)>,
    ) -> Result<std::result::Result<Canonical, Rejection>> {
        let c = match canonical(kind, row, ctx) {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        if let Some(room) = required_room(kind, row) {
            if !self.rooms.exists(&mut self.cache, room).await? {
                return Ok(Err(Rejection {
                    reason: Reject::OrphanRoom,
                    detail: format!("room {room} does not exist"),
                }));
            }
        }
        Ok(self.fits(&c, event).map(|()| c))
    }

    fn fits(
        &mut self,
        c: &Canonical,
        event: Option<(&Origin<'_>, &mut Vec<u8>)>,
    ) -> std::result::Result<(), Rejection> {
        match event {
            Some((origin, buf)) => size_rule(event::encode(c, origin, buf), self.event_limit),
            None if event_bound(c) + ORIGIN_RESERVE <= self.event_limit => Ok(()),
            None => {
                let origin = Origin {
                    phase: "",
                    run: "",
                    position: "",
                };
                let n = event::encode(c, &origin, &mut self.scratch);
                size_rule(n, self.event_limit)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body_len: usize) -> Vec<SrcVal> {
        vec![
            SrcVal::UInt(42),
            SrcVal::UInt(7),
            SrcVal::UInt(3),
            SrcVal::Bytes("あ".repeat(body_len / 3).into_bytes()),
            SrcVal::UInt(1_500_000_000),
            SrcVal::UInt(0),
            SrcVal::Int(0),
        ]
    }

    fn ctx() -> MapContext {
        MapContext {
            salt_buckets: 16,
            epoch_ms: 1_262_304_000_000,
            default_version_ms: 0,
            min_version_ms: 0,
        }
    }

    fn admission(limit: usize) -> Admission {
        // No room list: the orphan check passes without a database.
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .connect_lazy("mysql://nobody@127.0.0.1:1/none")
            .unwrap();
        Admission::new(Arc::new(Rooms { sorted: None, pool }), limit)
    }

    /// The oversize rule does not depend on the origin: with or without an
    /// event buffer, under any phase, run and position, the same rows pass.
    #[tokio::test]
    async fn oversize_rule_is_the_same_for_every_phase_and_for_verify() {
        let limit = 20_000;
        let mut a = admission(limit);
        let origins = [
            Origin {
                phase: "base",
                run: "base",
                position: "mariadb-bin.000001:4",
            },
            Origin {
                phase: "diff",
                run: "a-much-longer-run-id-of-sixty-four-characters-xxxxxxxxxxxxxxxxxx",
                position: "a-very-long-binlog-file-name-bin.000123:18446744073709551615",
            },
            Origin {
                phase: "repair",
                run: "verify",
                position: "watermark:1700000000:42",
            },
        ];
        let mut flips = 0;
        let mut last = None;
        for len in (15_000..22_000).step_by(3) {
            let row = message(len);
            let verdict_verify = a
                .admit(EntityKind::Message, &row, &ctx(), None)
                .await
                .unwrap()
                .is_ok();
            for o in &origins {
                let mut buf = Vec::new();
                let r = a
                    .admit(EntityKind::Message, &row, &ctx(), Some((o, &mut buf)))
                    .await
                    .unwrap();
                assert_eq!(r.is_ok(), verdict_verify, "len {len} origin {o:?}");
                match r {
                    // What is admitted is also sendable.
                    Ok(_) => assert!(buf.len() <= limit, "len {len}: event {}", buf.len()),
                    Err(why) => assert_eq!(why.reason, Reject::OversizedEvent),
                }
            }
            if last.is_some_and(|l| l != verdict_verify) {
                flips += 1;
            }
            last = Some(verdict_verify);
        }
        // Small rows pass, large ones fail, with one boundary in between.
        assert_eq!(flips, 1);
        assert!(a
            .admit(EntityKind::Message, &message(30), &ctx(), None)
            .await
            .unwrap()
            .is_ok());
    }

    #[tokio::test]
    async fn mapping_rejections_come_first_with_their_reason() {
        let mut a = admission(1 << 20);
        let mut row = message(30);
        row[3] = SrcVal::Bytes(vec![0xff, 0xfe]);
        let r = a
            .admit(EntityKind::Message, &row, &ctx(), None)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().reason, Reject::InvalidUtf8);
        row[3] = SrcVal::Null;
        let r = a
            .admit(EntityKind::Message, &row, &ctx(), None)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().reason, Reject::NullValue);
    }

    #[test]
    fn the_bound_is_never_below_the_encoded_length() {
        let c = canonical(EntityKind::Message, &message(3000), &ctx()).unwrap();
        let mut buf = Vec::new();
        let o = Origin {
            phase: "",
            run: "",
            position: "",
        };
        let n = event::encode(&c, &o, &mut buf);
        assert!(event_bound(&c) >= n);
        let mut row = message(0);
        row[3] = SrcVal::Bytes(b"\"\\\x01\n".repeat(500));
        let c = canonical(EntityKind::Message, &row, &ctx()).unwrap();
        let n = event::encode(&c, &o, &mut buf);
        assert!(event_bound(&c) >= n, "{} < {n}", event_bound(&c));
    }
}
