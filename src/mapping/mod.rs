//! Rows → what the targets hold. A source row is read by its table's
//! [`spec`], mapped to one [`Canonical`] row (an ordered list of named values:
//! decimal text or UTF-8 text, or NULL) by [`canonical`], and admitted or
//! rejected with a reason by [`admit`] — the one rule every phase (base, diff,
//! watermark, verify) applies. The same canonical row is written to HBase (one
//! cell per non-NULL value), carried in the Kafka event's `data`, and hashed by
//! `verify`, so the three sides are compared on one encoding.

pub mod admit;
pub mod canonical;
pub mod ids;
pub mod keys;
pub mod spec;

pub use admit::{Admission, Rooms};
pub use canonical::{
    canonical, is_mojibake, parse_datetime, required_room, Canonical, Cell, MapContext, Reject,
    Rejection,
};
pub use spec::{hex, spec, ColType, SourceCol, SrcVal, TableSpec};
