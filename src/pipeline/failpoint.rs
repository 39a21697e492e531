//! `FALCON_FAILPOINT=kill-after:SITE:N` (builds with the `failpoints`
//! feature): the Nth time the process reaches SITE it kills itself with
//! SIGKILL, as a crash would. Sites: `hfile` (the Nth HFile written), `load`
//! (the Nth table bulk-loaded, before it is recorded), `overlap` (the Nth unit
//! written while the previous unit's Kafka commit was under way, once its
//! HBase writes were acknowledged and before its own events were sent).

/// Counts a visit to `site`; true on the visit the failpoint names.
#[cfg(feature = "failpoints")]
pub(crate) fn reached(site: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static VISITS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let at = std::env::var("FALCON_FAILPOINT").ok().and_then(|v| {
        let (s, k) = v.strip_prefix("kill-after:")?.split_once(':')?;
        (s == site).then(|| k.parse::<u64>().ok()).flatten()
    });
    let Some(at) = at else {
        return false;
    };
    let mut visits = VISITS.lock().unwrap_or_else(|p| p.into_inner());
    let n = visits
        .get_or_insert_with(HashMap::new)
        .entry(site.to_string())
        .or_insert(0);
    *n += 1;
    *n == at
}

/// Kills the process with SIGKILL (no destructor, no flush: a crash).
#[cfg(feature = "failpoints")]
pub(crate) fn kill(site: &str) -> ! {
    tracing::warn!("failpoint: killed at {site}");
    let _ = std::process::Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status();
    std::thread::sleep(std::time::Duration::from_secs(60));
    std::process::abort()
}

/// [`kill`] on the visit of `site` the failpoint names.
pub(crate) fn kill_after(site: &str) {
    #[cfg(feature = "failpoints")]
    if reached(site) {
        kill(site)
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = site;
}
