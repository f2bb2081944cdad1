//! Audit lines: every change of a session, and every refusal, says who
//! asked (`cli` or `config`), what, to which session, and when (the log
//! line's timestamp). They go to the log under the target `audit`, so
//! `--log-format json` makes them one JSON object each.

/// Records one audited event.
pub fn record(who: &str, action: &str, session: &str, detail: &str) {
    tracing::info!(target: "audit", who, action, session, detail, "audit");
}

/// Records a refusal (a session or a source kept out).
pub fn refused(who: &str, session: &str, why: &str) {
    tracing::warn!(target: "audit", who, action = "refuse", session, detail = why, "audit");
}
