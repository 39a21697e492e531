//! `falcon-migrate`: base, diff, verify, plan, status, check.
//!
//! `args` parses and checks the command line (ranges, run ids, flags of one
//! diff mode only), `dispatch` turns checked arguments into each phase's
//! options and its exit status, `render` prints the summaries.

mod args;
mod dispatch;
mod observe;
mod render;

pub use args::{
    BaseArgs, Cli, Command, CommonArgs, DiffArgs, DiffMode, MetricsArgs, PlanArgs, StatusArgs,
    TargetArg, VerifyArgs,
};

pub fn main() -> i32 {
    super::execute(
        |cli: &Cli| cli.log_level.clone(),
        |cli| dispatch::dispatch(cli.command),
    )
}
