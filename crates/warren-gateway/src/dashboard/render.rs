//! The dashboard's views as HTML, from what the admin API answers. Pure functions of
//! their data and the time, so tests can read them without a gateway. Every piece of
//! data goes through `esc`; no view uses inline style or script (the page's CSP
//! allows neither).

use std::fmt::Write as _;

use warren_core::human;
use warren_core::sandbox::SandboxState;

use crate::admin::tenants::{Capacity, EventView, TenantDetail, TenantView};
use crate::schedule::WorkerStatus;

/// The views, as the tabs list them: `?view=<name>`.
pub const VIEWS: [(&str, &str); 5] = [
    ("sandboxes", "Sandboxes"),
    ("capacity", "Capacity"),
    ("starts", "Starts"),
    ("events", "Events"),
    ("workers", "Workers"),
];

/// Escapes text for HTML content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a value for a URL's query.
pub fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// `14:03:27 UTC`, or the date too when not today.
pub fn clock(now_ms: u64, at_ms: u64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at_ms as i64).unwrap_or_default();
    let now = chrono::DateTime::from_timestamp_millis(now_ms as i64).unwrap_or_default();
    if at.date_naive() == now.date_naive() {
        at.format("%H:%M:%S UTC").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M UTC").to_string()
    }
}

fn state_badge(state: &str) -> String {
    let state = esc(state);
    format!("<span class=\"state state-{state}\">{state}</span>")
}

fn tenant_link(tenant: &str) -> String {
    format!(
        "<a href=\"/admin/?tenant={}\">{}</a>",
        query_value(tenant),
        esc(tenant)
    )
}

fn dash() -> String {
    "<span class=\"muted\">–</span>".into()
}

/// The tabs, `active` marked (none on a tenant's page).
pub fn nav(active: &str) -> String {
    VIEWS
        .iter()
        .map(|(name, label)| {
            let class = if *name == active {
                " class=\"active\""
            } else {
                ""
            };
            format!("<a href=\"/admin/?view={name}\" id=\"tab-{name}\"{class}>{label}</a>")
        })
        .collect()
}

fn capacity_cards(cap: &Capacity) -> String {
    let card = |id: &str, label: &str, value: String| {
        format!(
            "<div class=\"card\" id=\"{id}\"><div class=\"label\">{label}</div>\
             <div class=\"value\">{}</div></div>",
            esc(&value)
        )
    };
    format!(
        "<div class=\"cards\">{}{}{}</div>",
        card(
            "cap-running",
            "running",
            format!("{} / {}", cap.running, cap.max_instances)
        ),
        card(
            "cap-waiting",
            "waiting for a slot",
            format!("{} / {}", cap.waiting, cap.queue_limit)
        ),
        card("cap-pool", "warm pool", cap.pool_ready.to_string()),
    )
}

fn snapshot_cell(v: &TenantView, now_ms: u64) -> String {
    match (v.status.sync.seq, v.status.sync.last_sync_ms) {
        (Some(seq), Some(at)) => format!(
            "#{seq} <span class=\"muted\">{}</span>",
            human::ago(now_ms, at)
        ),
        (Some(seq), None) => format!("#{seq}"),
        _ => dash(),
    }
}

fn lag_cell(v: &TenantView) -> String {
    match (v.sync_lag_ms, &v.status.sync.failing_since_ms) {
        (_, Some(_)) => format!(
            "<span class=\"bad\" title=\"{}\">failing</span>",
            esc(v.status.sync.last_error.as_deref().unwrap_or_default())
        ),
        (Some(lag), None) => human::millis(lag as f64),
        (None, None) => "<span class=\"muted\">in sync</span>".into(),
    }
}

fn memory_cell(v: &TenantView) -> String {
    match v
        .resources
        .as_ref()
        .and_then(|r| r.memory_bytes.map(|m| (m, r.memory_limit_bytes)))
    {
        Some((m, Some(limit))) => format!("{} / {}", human::bytes(m), human::bytes(limit)),
        Some((m, None)) => human::bytes(m),
        None => dash(),
    }
}

fn cpu_cell(v: &TenantView) -> String {
    match v.resources.as_ref().and_then(|r| r.cpu_ms) {
        Some(ms) => human::millis(ms as f64),
        None => dash(),
    }
}

/// Sandboxes: the capacity, then every tenant with its state.
pub fn sandboxes(views: &[TenantView], cap: &Capacity, now_ms: u64) -> String {
    let mut out = capacity_cards(cap);
    out.push_str(
        "<h2>Sandboxes</h2><table id=\"sandboxes\"><thead><tr><th>tenant</th><th>state</th>\
         <th>tier</th><th>instance type</th><th>agent</th><th>last activity</th>\
         <th>snapshot</th><th>sync lag</th><th class=\"num\">memory</th>\
         <th class=\"num\">CPU time</th></tr></thead><tbody>",
    );
    if views.is_empty() {
        out.push_str("<tr><td colspan=\"10\" class=\"muted\">no tenant yet</td></tr>");
    }
    for v in views {
        let s = &v.status;
        // Beside the state: a start's phase, or why an asleep one last stopped.
        let aside = match (&s.phase, &s.last_stop) {
            (Some(phase), _) => Some(phase.name),
            (None, Some(stop)) if s.state == SandboxState::Asleep => Some(stop.cause.as_str()),
            _ => None,
        };
        let state = match aside {
            Some(aside) => format!(
                "{} <span class=\"muted\">{}</span>",
                state_badge(s.state.as_str()),
                esc(aside)
            ),
            None => state_badge(s.state.as_str()),
        };
        let _ = write!(
            out,
            "<tr data-tenant=\"{}\" data-state=\"{}\"><td>{}</td><td>{state}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&s.tenant),
            s.state.as_str(),
            tenant_link(&s.tenant),
            s.tier.as_deref().map_or_else(dash, esc),
            esc(&s.instance_type),
            esc(&s.agent),
            v.last_activity_ms
                .map_or_else(dash, |at| human::ago(now_ms, at)),
            snapshot_cell(v, now_ms),
            lag_cell(v),
            memory_cell(v),
            cpu_cell(v),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// A horizontal bar of `part` over `whole`, as SVG.
fn bar(id: Option<&str>, part: f64, whole: f64, class: &str) -> String {
    let width = 320.0;
    let id = id.map_or_else(String::new, |id| format!(" id=\"{id}\""));
    let filled = if whole > 0.0 {
        (part / whole).clamp(0.0, 1.0) * width
    } else {
        0.0
    };
    format!(
        "<svg class=\"meter\"{id} width=\"{width}\" height=\"14\" viewBox=\"0 0 {width} 14\" \
         xmlns=\"http://www.w3.org/2000/svg\"><rect class=\"bar-free\" x=\"0\" y=\"0\" \
         width=\"{width}\" height=\"14\" rx=\"3\"/><rect class=\"{class}\" x=\"0\" y=\"0\" \
         width=\"{filled:.1}\" height=\"14\" rx=\"3\"/></svg>"
    )
}

/// Capacity: slots against `max_instances`, the queue, sandboxes by state, and the
/// sync lag of each running sandbox against `sync.max_delay`.
pub fn capacity(views: &[TenantView], cap: &Capacity, max_delay_ms: u64, now_ms: u64) -> String {
    let mut out = capacity_cards(cap);
    let _ = write!(
        out,
        "<h2>Slots</h2><table id=\"slots\"><tbody>\
         <tr><td>running</td><td>{}</td><td class=\"num\">{} of {} (max_instances)</td></tr>\
         <tr><td>waiting for a slot</td><td>{}</td><td class=\"num\">{} of {} (queue_limit)</td></tr>\
         </tbody></table>",
        bar(
            Some("slots-bar"),
            cap.running as f64,
            cap.max_instances as f64,
            "bar-used"
        ),
        cap.running,
        cap.max_instances,
        bar(
            Some("queue-bar"),
            cap.waiting as f64,
            cap.queue_limit as f64,
            "lag"
        ),
        cap.waiting,
        cap.queue_limit,
    );
    out.push_str("<h2>By state</h2><div class=\"cards\" id=\"by-state\">");
    for state in [
        SandboxState::Ready,
        SandboxState::Starting,
        SandboxState::Stopping,
        SandboxState::Asleep,
    ] {
        let n = views.iter().filter(|v| v.status.state == state).count();
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{n}</div></div>",
            state_badge(state.as_str())
        );
    }
    out.push_str("</div>");
    let _ = write!(
        out,
        "<h2>Sync lag of running sandboxes</h2><p class=\"muted\">How long changes have waited \
         to reach the store; the sync engine's bound is {} (sync.max_delay).</p>\
         <table id=\"sync-lag\"><thead><tr><th>tenant</th><th>lag</th><th></th>\
         <th>snapshot</th><th>last error</th></tr></thead><tbody>",
        human::millis(max_delay_ms as f64)
    );
    let running: Vec<&TenantView> = views
        .iter()
        .filter(|v| v.status.state != SandboxState::Asleep)
        .collect();
    if running.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"muted\">no sandbox runs</td></tr>");
    }
    for v in running {
        let lag = v.sync_lag_ms.unwrap_or(0);
        let _ = write!(
            out,
            "<tr data-tenant=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>",
            esc(&v.status.tenant),
            tenant_link(&v.status.tenant),
            lag_cell(v),
            bar(None, lag as f64, max_delay_ms.max(1) as f64, "lag"),
            snapshot_cell(v, now_ms),
            esc(v.status.sync.last_error.as_deref().unwrap_or_default()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// Events, newest first; `tenant` is the filter shown, if any.
pub fn events(events: &[EventView], tenant: Option<&str>, now_ms: u64) -> String {
    let mut out = String::new();
    match tenant {
        Some(t) => {
            let _ = write!(
                out,
                "<h2>Recent events of {}</h2><p><a href=\"/admin/?view=events\">all tenants</a></p>",
                tenant_link(t)
            );
        }
        None => out.push_str("<h2>Recent events</h2>"),
    }
    out.push_str(&events_table(events, now_ms));
    out
}

fn events_table(events: &[EventView], now_ms: u64) -> String {
    let mut out = String::from(
        "<table id=\"events\"><thead><tr><th>time</th><th>tenant</th><th>state</th>\
         <th>cause</th><th>detail</th></tr></thead><tbody>",
    );
    if events.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"muted\">no event yet</td></tr>");
    }
    for e in events {
        let _ = write!(
            out,
            "<tr data-tenant=\"{}\" data-state=\"{}\"><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"detail\">{}</td></tr>",
            esc(&e.tenant),
            e.state.as_str(),
            human::ago(now_ms, e.at_ms),
            clock(now_ms, e.at_ms),
            tenant_link(&e.tenant),
            state_badge(e.state.as_str()),
            e.cause.map_or_else(dash, |c| esc(c.as_str())),
            esc(e.detail.as_deref().unwrap_or_default()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// One tenant: its facts, the stop and restart buttons, its snapshots and events.
pub fn tenant(d: &TenantDetail, now_ms: u64) -> String {
    let v = &d.view;
    let s = &v.status;
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2 id=\"tenant\" data-tenant=\"{}\">{} {}</h2>",
        esc(&s.tenant),
        esc(&s.tenant),
        state_badge(s.state.as_str())
    );
    let mut facts: Vec<(&str, String)> = vec![
        (
            "state",
            format!(
                "{} since {}",
                esc(s.state.as_str()),
                human::ago(now_ms, s.since_ms)
            ),
        ),
        ("tier", s.tier.as_deref().map_or_else(dash, esc)),
        ("instance type", esc(&s.instance_type)),
        ("agent", esc(&s.agent)),
        ("network", esc(&format!("{:?}", s.network).to_lowercase())),
        (
            "last activity",
            v.last_activity_ms
                .map_or_else(dash, |at| human::ago(now_ms, at)),
        ),
        ("memory", memory_cell(v)),
        ("CPU time", cpu_cell(v)),
        ("sync lag", lag_cell(v)),
    ];
    if let Some(phase) = &s.phase {
        facts.push((
            "start phase",
            format!(
                "{} ({} so far)",
                esc(phase.name),
                human::millis(phase.elapsed_ms as f64)
            ),
        ));
    }
    if let Some(stop) = &s.last_stop {
        facts.push((
            "last stop",
            format!(
                "{}, {} <span class=\"muted\">{}</span>",
                esc(stop.cause.as_str()),
                human::ago(now_ms, stop.at_ms),
                esc(stop.detail.as_deref().unwrap_or_default())
            ),
        ));
    }
    let snapshot = match (&d.last_snapshot, d.snapshots) {
        (Some(last), Some(n)) => format!(
            "#{} of {n}, {} ({} files, {})",
            last.seq,
            human::ago(now_ms, last.created_ms),
            last.files,
            human::bytes(last.bytes)
        ),
        (None, Some(0)) => "none yet".into(),
        _ => dash(),
    };
    facts.push(("last snapshot", snapshot));
    if let Some(e) = &d.store_error {
        facts.push(("store", format!("<span class=\"bad\">{}</span>", esc(e))));
    }
    out.push_str("<dl class=\"facts\" id=\"facts\">");
    for (k, v) in facts {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    }
    out.push_str("</dl>");
    let t = query_value(&s.tenant);
    let _ = write!(
        out,
        "<div class=\"actions\">\
         <form method=\"post\" action=\"/admin/tenants/{t}/stop\"><button type=\"submit\" \
         class=\"danger\" id=\"stop\">Stop</button></form>\
         <form method=\"post\" action=\"/admin/tenants/{t}/restart\"><button type=\"submit\" \
         id=\"restart\">Restart</button></form>\
         <a href=\"/admin/?view=events&amp;tenant={t}\">all its events</a></div>"
    );
    out.push_str("<h2>Recent events</h2>");
    out.push_str(&events_table(&d.events, now_ms));
    out
}

/// Workers: each background worker's state and last error.
pub fn workers(workers: &[WorkerStatus], now_ms: u64) -> String {
    let mut out = String::from(
        "<h2>Background workers</h2><table id=\"workers\"><thead><tr><th>worker</th>\
         <th>state</th><th class=\"num\">runs</th><th class=\"num\">errors</th>\
         <th>last run</th><th>next run</th><th>last error</th></tr></thead><tbody>",
    );
    for w in workers {
        let next = w.next_run_ms.map_or_else(dash, |at| {
            format!("in {}", human::millis(at.saturating_sub(now_ms) as f64))
        });
        let _ = write!(
            out,
            "<tr data-worker=\"{}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>",
            esc(w.name),
            esc(w.name),
            state_badge(w.state),
            w.runs,
            w.errors,
            w.last_run_ms.map_or_else(dash, |at| human::ago(now_ms, at)),
            next,
            esc(w.last_error.as_deref().unwrap_or_default()),
        );
    }
    out.push_str(
        "</tbody></table><p class=\"muted\">Retention has no worker of its own: the sweep \
         applies it to each tenant it syncs.</p>",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_query_values() {
        assert_eq!(esc("<b a=\"1\">'&"), "&lt;b a=&quot;1&quot;&gt;&#39;&amp;");
        assert_eq!(query_value("user_a.b-c~"), "user_a.b-c~");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }

    #[test]
    fn durations_and_ages_read_as_people_say_them() {
        assert_eq!(human::millis(3.25), "3.2 ms");
        assert_eq!(human::millis(850.0), "850 ms");
        assert_eq!(human::millis(12_300.0), "12.3 s");
        assert_eq!(human::ago(100_000, 99_500), "just now");
        assert_eq!(human::ago(100_000, 40_000), "60 s ago");
        assert_eq!(human::ago(10_000_000, 0), "2 h ago");
        assert_eq!(human::bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn an_event_detail_cannot_inject_markup() {
        let e = EventView {
            id: 1,
            at_ms: 1000,
            tenant: "user_a".into(),
            state: SandboxState::Asleep,
            cause: None,
            detail: Some("<script>alert(1)</script>".into()),
        };
        let html = events(&[e], Some("user_a"), 2000);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
