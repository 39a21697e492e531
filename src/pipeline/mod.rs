//! The phases: `base` (bulk copy), and later `diff` and `verify` flows.

pub mod base;
pub mod diff;
pub mod watermark;
