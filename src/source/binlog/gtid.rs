//! MariaDB GTID state, followed through the binlog stream.
//!
//! A diff checkpoint records the GTID state at its position (`d-s-n,…`, one
//! entry per replication domain) so that it can be found again on another
//! server after a failover (`source::mysql::position_of_gtid`). Asking the
//! server for it (`BINLOG_GTID_POS(file, offset)`) reads the binlog file from
//! its start up to the offset: a cost that grows with the file (about 3 s for
//! 650 MB here), paid once per batch it would put seconds of lag on every
//! batch late in a 1 GiB binlog file. So the server is asked once, for the
//! start, and the reader keeps the state up to date from the GTID events it
//! reads: a group's GTID counts once the group has ended.

use std::collections::BTreeMap;

/// MariaDB's GTID_EVENT.
pub(super) const GTID_EVENT: u8 = 162;

/// Domain → (server id, sequence number) of the last group of that domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState(BTreeMap<u32, (u32, u64)>);

impl GtidState {
    /// Parses `d-s-n[,d-s-n…]` (the empty string: no group yet). None when
    /// an entry is not of that form.
    pub fn parse(s: &str) -> Option<GtidState> {
        let mut m = BTreeMap::new();
        for g in s.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let mut it = g.split('-');
            let (d, sv, n) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() {
                return None;
            }
            m.insert(d.parse().ok()?, (sv.parse().ok()?, n.parse().ok()?));
        }
        Some(GtidState(m))
    }

    /// A group that ended: the state now includes it.
    pub fn apply(&mut self, g: Gtid) {
        self.0.insert(g.domain, (g.server, g.seq));
    }

    /// Domain → sequence number.
    pub fn seq_by_domain(&self) -> BTreeMap<u64, u64> {
        self.0
            .iter()
            .map(|(d, (_, n))| (u64::from(*d), *n))
            .collect()
    }
}

impl std::fmt::Display for GtidState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (d, (s, n))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

/// One group's GTID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
    /// A group of its own (DDL), not a transaction: no BEGIN follows.
    pub standalone: bool,
}

impl Gtid {
    /// From a GTID_EVENT: its body starts with the sequence number (8 bytes),
    /// the domain id (4 bytes), little-endian, and the flags (FL_STANDALONE
    /// is bit 0); the server id is the event header's.
    pub fn from_event(server: u32, body: &[u8]) -> Option<Gtid> {
        let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
        let domain = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
        let flags = *body.get(12)?;
        Some(Gtid {
            domain,
            server,
            seq,
            standalone: flags & 1 != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_print_and_take_each_domains_last_group() {
        let mut s = GtidState::parse("1-7-40, 0-1-135").unwrap();
        assert_eq!(s.to_string(), "0-1-135,1-7-40");
        s.apply(Gtid {
            domain: 0,
            server: 2,
            seq: 136,
            standalone: false,
        });
        s.apply(Gtid {
            domain: 5,
            server: 2,
            seq: 1,
            standalone: true,
        });
        assert_eq!(s.to_string(), "0-2-136,1-7-40,5-2-1");
        assert_eq!(
            s.seq_by_domain().into_iter().collect::<Vec<_>>(),
            [(0, 136), (1, 40), (5, 1)]
        );
        assert_eq!(GtidState::parse("").unwrap().to_string(), "");
        for bad in ["0-1", "0-1-2-3", "a-1-2", "0-1-x"] {
            assert_eq!(GtidState::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_gtid_event_body_gives_sequence_and_domain() {
        let mut body = 4242u64.to_le_bytes().to_vec();
        body.extend(3u32.to_le_bytes());
        body.push(0x01); // FL_STANDALONE
        assert_eq!(
            Gtid::from_event(9, &body),
            Some(Gtid {
                domain: 3,
                server: 9,
                seq: 4242,
                standalone: true,
            })
        );
        body[12] = 0x02; // FL_GROUP_COMMIT_ID: a transaction
        assert!(!Gtid::from_event(9, &body).unwrap().standalone);
        assert_eq!(Gtid::from_event(9, &body[..12]), None);
    }
}
