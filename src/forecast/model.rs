//! The plan's arithmetic, and nothing else: measured inputs in, durations
//! out. No I/O, so every formula is pinned by a unit test.
//!
//! - **Base.** A row's cost has a part per row (key lookups, an event, a
//!   Kafka record, an HBase put) and a part per byte. With one throughput
//!   measured over rows of mean width `w₀`, a table of mean width `w` costs
//!   `(1 − s) + s·w/w₀` of a measured row, `s` being the share of the cost
//!   that goes by bytes at the measured width (`--byte-share`, default 0: on
//!   the development stack, calibrated on a sample of narrower rows than the
//!   whole, `s` = ½ predicted 1.59× the actual base time and rows alone
//!   0.91×, `scripts/bench-plan.sh`).
//!   Shards are independent processes, but they share the servers (and,
//!   on a small machine, the cores): `n` shards copy at Amdahl's
//!   `n·r₁ / (1 + σ(n − 1))`, the contention `σ` measured by the
//!   calibration's second copy with two shards side by side
//!   (`σ = 2/S₂ − 1` for a measured speed-up `S₂`; 0, i.e. linear, when it
//!   was not measured), and never above the shared targets' ceiling
//!   (`--ceiling`, the slowest link's rows/s). A shard's fixed start
//!   (snapshot, plan, topics and tables) is added once.
//! - **Diff catch-up.** A backlog of `B` changes applied at `μ` changes/s
//!   while the source keeps writing `λ` changes/s shrinks at `μ − λ`:
//!   `B / (μ − λ)`, and never when `μ ≤ λ`.
//! - **Verify.** Rows compared / measured verify rows/s.
//! - **The window.** A shard count fits when base, the catch-up of the
//!   changes written while base ran, and verify all fit in the window.

use serde::Serialize;

/// A source table's size as `information_schema` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableSize {
    pub table: String,
    pub rows: u64,
    pub avg_row_bytes: u64,
    pub data_bytes: u64,
}

/// A throughput measured once, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// Rows (base, verify) or row changes (diff) per second, of one process.
    pub per_s: f64,
    /// Mean row width of what was measured (base), when known.
    pub row_bytes: Option<f64>,
    /// `calibration`, `kafka run record …`, `summary FILE`, or `assumed: …`.
    pub source: String,
}

/// Shards copying side by side, measured: `shards` of them copied
/// `speedup` times the rows/s of one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scaling {
    pub shards: u32,
    pub speedup: f64,
    /// Amdahl's contention `σ` that the speed-up implies, 0 to 1.
    pub contention: f64,
    pub source: String,
}

impl Scaling {
    /// `σ` from `n` shards measured `speedup`× one: `(n/S − 1)/(n − 1)`,
    /// clamped to 0 (linear, or better from noise) … 1 (no gain at all).
    pub fn measured(shards: u32, speedup: f64, source: String) -> Option<Scaling> {
        (shards >= 2 && speedup > 0.0).then(|| {
            let n = f64::from(shards);
            Scaling {
                shards,
                speedup,
                contention: ((n / speedup - 1.0) / (n - 1.0)).clamp(0.0, 1.0),
                source,
            }
        })
    }
}

/// The source's write rate, measured from its binlog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteRate {
    pub changes_per_h: f64,
    pub bytes_per_h: f64,
    /// Row changes and binlog bytes read, over `window_s` seconds.
    pub changes: u64,
    pub bytes: u64,
    pub window_s: f64,
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct Inputs {
    pub tables: Vec<TableSize>,
    /// One base shard (process) with the workers it ran with.
    pub base: Option<Measured>,
    /// The most rows/s the shared servers absorb, whatever the shard count.
    pub ceiling: Option<f64>,
    /// How shards measured side by side scaled, when measured.
    pub scaling: Option<Scaling>,
    /// A fixed cost of starting a shard, seconds.
    pub startup_s: f64,
    /// The share of a row's cost that goes by its bytes, 0 to 1.
    pub byte_share: f64,
    pub diff: Option<Measured>,
    pub verify: Option<Measured>,
    pub writes: Option<WriteRate>,
    /// Days of changes the diff catch-up is asked about.
    pub days: f64,
    pub window_s: f64,
    pub max_shards: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaseRow {
    pub shards: u32,
    pub rows_per_s: f64,
    pub seconds: f64,
    /// Whether the ceiling, not the shard count, sets the rate.
    pub capped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatchUp {
    pub backlog_changes: f64,
    pub apply_per_s: f64,
    pub incoming_per_s: f64,
    /// None: the diff never catches up (it applies no faster than the source writes).
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Night {
    pub shards: u32,
    pub base_s: f64,
    /// Catch-up of the changes written while base ran.
    pub catch_up_s: Option<f64>,
    pub verify_s: Option<f64>,
    pub total_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub rows: u64,
    pub data_bytes: u64,
    pub base: Vec<BaseRow>,
    pub diff: Option<CatchUp>,
    pub verify_s: Option<f64>,
    /// The fewest shards whose night fits the window, with its breakdown.
    pub fit: Option<Night>,
    /// Why a figure is missing, or an assumption worth knowing.
    pub notes: Vec<String>,
}

/// A table's cost in measured rows: `(1 − s) + s·w/w₀` per row.
pub fn weighted_rows(t: &TableSize, measured_width: Option<f64>, byte_share: f64) -> f64 {
    match measured_width {
        Some(w0) if w0 > 0.0 => {
            t.rows as f64 * ((1.0 - byte_share) + byte_share * t.avg_row_bytes as f64 / w0)
        }
        _ => t.rows as f64,
    }
}

/// The mean width of the rows of `tables`, weighted by rows.
pub fn mean_width(tables: &[TableSize]) -> Option<f64> {
    let rows: u64 = tables.iter().map(|t| t.rows).sum();
    (rows > 0).then(|| {
        tables
            .iter()
            .map(|t| t.rows as f64 * t.avg_row_bytes as f64)
            .sum::<f64>()
            / rows as f64
    })
}

/// Rows/s of `n` shards with contention `sigma` (0: linear), and whether
/// the ceiling set it.
pub fn base_rate(per_shard: f64, n: u32, sigma: f64, ceiling: Option<f64>) -> (f64, bool) {
    let n = f64::from(n);
    let scaled = per_shard * n / (1.0 + sigma * (n - 1.0));
    match ceiling {
        Some(c) if c < scaled => (c, true),
        _ => (scaled, false),
    }
}

/// Doubling the shards must gain at least this much to be worth listing.
const WORTH_DOUBLING: f64 = 1.05;

/// Seconds to apply `backlog` changes at `apply` changes/s while `incoming`
/// more arrive each second.
pub fn catch_up_s(backlog: f64, apply: f64, incoming: f64) -> Option<f64> {
    if backlog <= 0.0 {
        return Some(0.0);
    }
    (apply > incoming).then(|| backlog / (apply - incoming))
}

/// Shard counts 1, 2, 4, … up to `max` (and `max` itself), stopping after
/// the first count the ceiling caps (more shards change nothing) or, from 2
/// on, whose doubling would gain less than 5% (contention eats it).
pub fn shard_counts(max: u32, per_shard: f64, sigma: f64, ceiling: Option<f64>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut n = 1u32;
    loop {
        out.push(n);
        let (rate, capped) = base_rate(per_shard, n, sigma, ceiling);
        if capped || n >= max {
            break;
        }
        let next = n.saturating_mul(2).min(max);
        if n >= 2 && base_rate(per_shard, next, sigma, ceiling).0 < rate * WORTH_DOUBLING {
            break;
        }
        n = next;
    }
    out
}

pub fn forecast(i: &Inputs) -> Forecast {
    let rows: u64 = i.tables.iter().map(|t| t.rows).sum();
    let data_bytes: u64 = i.tables.iter().map(|t| t.data_bytes).sum();
    let mut notes = Vec::new();
    let incoming = i.writes.as_ref().map(|w| w.changes_per_h / 3600.0);
    let sigma = i.scaling.as_ref().map_or(0.0, |s| s.contention);

    let base: Vec<BaseRow> = match &i.base {
        Some(m) if m.per_s > 0.0 => {
            let width = m.row_bytes;
            let work: f64 = i
                .tables
                .iter()
                .map(|t| weighted_rows(t, width, i.byte_share))
                .sum();
            shard_counts(i.max_shards.max(1), m.per_s, sigma, i.ceiling)
                .into_iter()
                .map(|n| {
                    let (rate, capped) = base_rate(m.per_s, n, sigma, i.ceiling);
                    BaseRow {
                        shards: n,
                        rows_per_s: rate,
                        seconds: i.startup_s + work / rate,
                        capped,
                    }
                })
                .collect()
        }
        _ => {
            notes.push(
                "no base throughput: run `plan --calibrate N`, or give a base summary (--summary) or a base run recorded in Kafka (--run-id)".into(),
            );
            Vec::new()
        }
    };
    if i.ceiling.is_none() && i.scaling.is_none() && base.len() > 1 {
        notes.push(
            "shards are assumed to scale linearly (not measured): `plan --calibrate N` copies with two shards side by side too, or give --ceiling, the slowest shared link's rows/s (bench-base.sh measures Kafka's and HBase's)".into(),
        );
    }
    if let (Some(s), Some(last)) = (&i.scaling, base.last()) {
        if !last.capped && last.shards < i.max_shards {
            notes.push(format!(
                "more than {} shards would gain less than 5% each doubling ({} shards measured {:.2}× one)",
                last.shards, s.shards, s.speedup
            ));
        }
    }

    let diff = match (&i.diff, incoming) {
        (Some(d), Some(inc)) => {
            let backlog = inc * 3600.0 * 24.0 * i.days;
            Some(CatchUp {
                backlog_changes: backlog,
                apply_per_s: d.per_s,
                incoming_per_s: inc,
                seconds: catch_up_s(backlog, d.per_s, inc),
            })
        }
        (None, _) => {
            notes.push("no diff throughput: give a diff --until-now summary (--summary)".into());
            None
        }
        (_, None) => {
            notes.push("no binlog write rate (see the error above it in the log)".into());
            None
        }
    };
    if let Some(CatchUp { seconds: None, .. }) = &diff {
        notes.push("diff applies no faster than the source writes: it never catches up".into());
    }

    let verify_s = match &i.verify {
        Some(v) if v.per_s > 0.0 => Some(rows as f64 / v.per_s),
        _ => {
            notes.push("no verify throughput: give a verify summary (--summary)".into());
            None
        }
    };

    let night = |b: &BaseRow| {
        let catch_up = match (&i.diff, incoming) {
            (Some(d), Some(inc)) => catch_up_s(inc * b.seconds, d.per_s, inc),
            _ => None,
        };
        let total = match (catch_up, verify_s) {
            (Some(c), Some(v)) => Some(b.seconds + c + v),
            _ => None,
        };
        Night {
            shards: b.shards,
            base_s: b.seconds,
            catch_up_s: catch_up,
            verify_s,
            total_s: total,
        }
    };
    let fit = base
        .iter()
        .map(night)
        .find(|n| n.total_s.is_some_and(|t| t <= i.window_s));
    if fit.is_none() && !base.is_empty() {
        notes.push(format!(
            "no shard count up to {} fits the {}-second window{}",
            base.last().map_or(0, |b| b.shards),
            i.window_s,
            if verify_s.is_none() || diff.is_none() {
                " (the diff or verify figure is missing)"
            } else {
                ""
            }
        ));
    }
    Forecast {
        rows,
        data_bytes,
        base,
        diff,
        verify_s,
        fit,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: u64, w: u64) -> TableSize {
        TableSize {
            table: "t".into(),
            rows,
            avg_row_bytes: w,
            data_bytes: rows * w,
        }
    }

    fn measured(per_s: f64, w: Option<f64>) -> Option<Measured> {
        Some(Measured {
            per_s,
            row_bytes: w,
            source: "test".into(),
        })
    }

    fn inputs() -> Inputs {
        Inputs {
            tables: vec![table(1_000_000, 200), table(100_000, 50)],
            base: measured(10_000.0, None),
            ceiling: None,
            scaling: None,
            startup_s: 0.0,
            byte_share: 0.0,
            diff: measured(2_000.0, None),
            verify: measured(20_000.0, None),
            writes: Some(WriteRate {
                changes_per_h: 360_000.0, // 100/s
                bytes_per_h: 1e8,
                changes: 1000,
                bytes: 1000,
                window_s: 10.0,
                source: "test".into(),
            }),
            days: 1.0,
            window_s: 7.0 * 3600.0,
            max_shards: 64,
        }
    }

    #[test]
    fn a_table_as_wide_as_the_measured_rows_costs_one_row_each() {
        assert_eq!(weighted_rows(&table(1000, 300), Some(300.0), 0.5), 1000.0);
        // Twice as wide with half the cost by bytes: half again as costly;
        // no byte share, or no width measured: rows alone.
        assert_eq!(weighted_rows(&table(1000, 600), Some(300.0), 0.5), 1500.0);
        assert_eq!(weighted_rows(&table(1000, 600), Some(300.0), 0.0), 1000.0);
        assert_eq!(weighted_rows(&table(1000, 600), None, 0.5), 1000.0);
        assert_eq!(mean_width(&[table(3, 100), table(1, 500)]), Some(200.0));
        assert_eq!(mean_width(&[]), None);
    }

    #[test]
    fn shards_scale_linearly_until_the_ceiling() {
        assert_eq!(base_rate(10.0, 4, 0.0, None), (40.0, false));
        assert_eq!(base_rate(10.0, 4, 0.0, Some(25.0)), (25.0, true));
        assert_eq!(base_rate(10.0, 2, 0.0, Some(25.0)), (20.0, false));
        assert_eq!(
            shard_counts(64, 10.0, 0.0, None),
            vec![1, 2, 4, 8, 16, 32, 64]
        );
        assert_eq!(shard_counts(12, 10.0, 0.0, None), vec![1, 2, 4, 8, 12]);
        // Capped at 4 (40 > 25): 8 would change nothing.
        assert_eq!(shard_counts(64, 10.0, 0.0, Some(25.0)), vec![1, 2, 4]);
    }

    #[test]
    fn contention_measured_with_two_shards_bends_the_curve() {
        // Two shards measured 1.6× one: σ = (2/1.6 − 1)/1 = 0.25.
        let s = Scaling::measured(2, 1.6, "test".into()).unwrap();
        assert!((s.contention - 0.25).abs() < 1e-12);
        // The measured point is reproduced, and 4 shards get 4/(1 + 0.75).
        assert!((base_rate(10.0, 2, s.contention, None).0 - 16.0).abs() < 1e-9);
        assert!((base_rate(10.0, 4, s.contention, None).0 - 40.0 / 1.75).abs() < 1e-9);
        // Noise above linear is linear; no gain at all is σ = 1, flat.
        assert_eq!(
            Scaling::measured(2, 2.3, "t".into()).unwrap().contention,
            0.0
        );
        assert_eq!(
            Scaling::measured(2, 0.9, "t".into()).unwrap().contention,
            1.0
        );
        assert_eq!(base_rate(10.0, 8, 1.0, None).0, 10.0);
        // No gain at all: 2 shards are still shown (the operator asks), not 4.
        assert_eq!(shard_counts(64, 10.0, 1.0, None), vec![1, 2]);
        assert!(Scaling::measured(1, 1.0, "t".into()).is_none());
        // σ = 0.25 tends to 40 rows/s: 1, 2, 4, 8, 16, 32 (36.6 → 64: 38.3, +4.6%).
        assert_eq!(shard_counts(64, 10.0, 0.25, None), vec![1, 2, 4, 8, 16, 32]);
        let mut i = inputs();
        i.scaling = Some(s);
        let f = forecast(&i);
        assert_eq!(f.base[1].seconds, 1_100_000.0 / 16_000.0);
        assert_eq!(f.base.len(), 6);
        assert!(f.notes.iter().any(|n| n.contains("more than 32 shards")));
        assert!(!f
            .notes
            .iter()
            .any(|n| n.contains("assumed to scale linearly")));
    }

    #[test]
    fn catch_up_shrinks_at_the_difference_of_rates() {
        assert_eq!(catch_up_s(1000.0, 30.0, 10.0), Some(50.0));
        assert_eq!(catch_up_s(1000.0, 10.0, 10.0), None);
        assert_eq!(catch_up_s(0.0, 1.0, 5.0), Some(0.0));
    }

    #[test]
    fn base_time_halves_with_twice_the_shards() {
        let f = forecast(&inputs());
        assert_eq!(f.rows, 1_100_000);
        assert_eq!(f.base[0].seconds, 110.0);
        assert_eq!(f.base[1].seconds, 55.0);
        assert_eq!(f.base.len(), 7);
    }

    #[test]
    fn diff_catch_up_of_a_day_and_verify() {
        let f = forecast(&inputs());
        let d = f.diff.unwrap();
        assert_eq!(d.backlog_changes, 8_640_000.0);
        assert_eq!(d.seconds, Some(8_640_000.0 / 1900.0));
        assert_eq!(f.verify_s, Some(55.0));
    }

    #[test]
    fn the_fit_is_the_fewest_shards_whose_night_fits() {
        let mut i = inputs();
        i.tables = vec![table(500_000_000, 200)];
        // 1 shard: 50,000 s of base alone; 2: 25,000 s (> 7 h = 25,200 with
        // catch-up and verify); 4: 12,500 s + catch-up 12,500·100/1900 + 25,000 verify.
        i.verify = measured(100_000.0, None);
        let f = forecast(&i);
        let n = f.fit.unwrap();
        assert_eq!(n.shards, 4);
        assert_eq!(n.base_s, 12_500.0);
        assert_eq!(n.catch_up_s, Some(12_500.0 * 100.0 / 1900.0));
        assert_eq!(n.verify_s, Some(5_000.0));
        assert!(n.total_s.unwrap() <= 25_200.0);
    }

    #[test]
    fn missing_measurements_are_said_not_guessed() {
        let mut i = inputs();
        i.base = None;
        i.diff = None;
        let f = forecast(&i);
        assert!(f.base.is_empty() && f.diff.is_none() && f.fit.is_none());
        assert!(f.notes.iter().any(|n| n.contains("no base throughput")));
        assert!(f.notes.iter().any(|n| n.contains("no diff throughput")));

        let mut i = inputs();
        i.diff = measured(50.0, None); // slower than the 100/s written
        let f = forecast(&i);
        assert_eq!(f.diff.unwrap().seconds, None);
        assert!(f.fit.is_none());
        assert!(f.notes.iter().any(|n| n.contains("never catches up")));
    }

    #[test]
    fn wide_tables_cost_more_with_a_byte_share() {
        let mut i = inputs();
        i.base = measured(10_000.0, Some(100.0));
        i.tables = vec![table(100_000, 300)];
        assert_eq!(forecast(&i).base[0].seconds, 10.0);
        i.byte_share = 0.5;
        assert_eq!(forecast(&i).base[0].seconds, 20.0);
    }

    #[test]
    fn the_ceiling_caps_and_the_startup_is_paid_once() {
        let mut i = inputs();
        i.ceiling = Some(25_000.0);
        i.startup_s = 5.0;
        let f = forecast(&i);
        let last = f.base.last().unwrap();
        assert_eq!((last.shards, last.capped), (4, true));
        assert_eq!(last.seconds, 5.0 + 1_100_000.0 / 25_000.0);
        assert_eq!(f.base[0].seconds, 115.0);
    }
}
