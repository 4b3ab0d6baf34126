//! The starts view: sandbox starts per minute and cold-start times over the last hour,
//! from the event log. A start is a `ready` event whose detail is the start's phases
//! (`start 12.3 ms: admission 0.1 ms, restore 2.0 ms, ...`, see `StartPhases::describe`);
//! a sandbox taken over from an earlier gateway has none and is not counted. A failed
//! start is an `asleep` event with cause `start_failed`. Drawn as inline SVG, here.

use std::fmt::Write as _;

use warren_core::human;
use warren_core::sandbox::{SandboxState, StopCause};

use super::render::esc;
use crate::admin::tenants::EventView;

/// Minutes shown.
const MINUTES: usize = 60;
const MINUTE_MS: u64 = 60_000;

/// One start, as its event tells.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub total_ms: f64,
    /// Each phase by name, in order (`first byte` once the first answer was sent).
    pub phases: Vec<(String, f64)>,
}

/// Reads a start's event detail; `None` for any other detail.
pub fn parse_start(detail: &str) -> Option<Start> {
    let rest = detail.strip_prefix("start ")?;
    let (total, phases) = rest.split_once(": ")?;
    let ms = |s: &str| s.trim().strip_suffix(" ms")?.parse::<f64>().ok();
    let total_ms = ms(total)?;
    let phases = phases
        .split(", ")
        .map(|part| {
            let (name, value) = part.strip_suffix(" ms")?.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Start { total_ms, phases })
}

/// The nearest-rank percentile `p` (0 to 100) of `sorted`, which is sorted.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Debug, Clone, Default)]
struct Minute {
    starts: Vec<f64>,
    failed: usize,
}

/// What the last hour's events say of starts.
#[derive(Debug, Default)]
pub struct Starts {
    minutes: Vec<Minute>,
    /// Every start's total, sorted.
    totals: Vec<f64>,
    /// Each phase's times, in the order phases first appeared.
    phases: Vec<(String, Vec<f64>)>,
    failed: usize,
}

impl Starts {
    /// From events of any order and age; those of the hour before `now_ms` count.
    pub fn of(events: &[EventView], now_ms: u64) -> Self {
        let from = now_ms.saturating_sub(MINUTES as u64 * MINUTE_MS);
        let mut starts = Starts {
            minutes: vec![Minute::default(); MINUTES],
            ..Starts::default()
        };
        for e in events
            .iter()
            .filter(|e| e.at_ms > from && e.at_ms <= now_ms)
        {
            let minute = (((e.at_ms - from - 1) / MINUTE_MS) as usize).min(MINUTES - 1);
            if e.state == SandboxState::Asleep && e.cause == Some(StopCause::StartFailed) {
                starts.minutes[minute].failed += 1;
                starts.failed += 1;
                continue;
            }
            let Some(start) = (e.state == SandboxState::Ready)
                .then(|| e.detail.as_deref().and_then(parse_start))
                .flatten()
            else {
                continue;
            };
            starts.minutes[minute].starts.push(start.total_ms);
            starts.totals.push(start.total_ms);
            for (name, ms) in start.phases {
                match starts.phases.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, times)) => times.push(ms),
                    None => starts.phases.push((name, vec![ms])),
                }
            }
        }
        starts.totals.sort_by(f64::total_cmp);
        for minute in &mut starts.minutes {
            minute.starts.sort_by(f64::total_cmp);
        }
        for (_, times) in &mut starts.phases {
            times.sort_by(f64::total_cmp);
        }
        starts
    }

    /// The starts view: summary cards, the two charts, each phase's p50 and p95.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let p = |q| percentile(&self.totals, q).map_or("–".into(), human::millis);
        let _ = write!(
            out,
            "<h2>Starts in the last hour</h2><div class=\"cards\" id=\"start-summary\">\
             {}{}{}{}{}</div>",
            card("starts", &self.totals.len().to_string()),
            card("failed starts", &self.failed.to_string()),
            card("cold start p50", &p(50.0)),
            card("cold start p95", &p(95.0)),
            card("slowest", &p(100.0)),
        );
        out.push_str("<h2>Starts per minute</h2>");
        out.push_str(&self.starts_chart());
        out.push_str(
            "<h2>Cold-start time per minute</h2><p class=\"legend\">\
             <span class=\"k50\">━ p50</span><span class=\"k95\">╍ p95</span></p>",
        );
        out.push_str(&self.times_chart());
        out.push_str(
            "<h2>Phases</h2><table id=\"phases\"><thead><tr><th>phase</th>\
             <th class=\"num\">p50</th><th class=\"num\">p95</th></tr></thead><tbody>",
        );
        if self.phases.is_empty() {
            out.push_str(
                "<tr><td colspan=\"3\" class=\"muted\">no start in the last hour</td></tr>",
            );
        }
        for (name, times) in &self.phases {
            let q = |p| percentile(times, p).map_or("–".into(), human::millis);
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(name),
                q(50.0),
                q(95.0)
            );
        }
        out.push_str("</tbody></table>");
        out
    }

    fn starts_chart(&self) -> String {
        let most = self
            .minutes
            .iter()
            .map(|m| m.starts.len() + m.failed)
            .max()
            .unwrap_or(0)
            .max(1);
        let mut svg = frame(
            "starts-chart",
            "Sandbox starts per minute",
            &most.to_string(),
        );
        for (i, m) in self.minutes.iter().enumerate() {
            let (ok, failed) = (m.starts.len(), m.failed);
            if ok + failed == 0 {
                continue;
            }
            let x = X0 + i as f64 * STEP + 1.0;
            let h_ok = PLOT_H * ok as f64 / most as f64;
            let h_failed = PLOT_H * failed as f64 / most as f64;
            let title = format!("{} min ago: {ok} starts, {failed} failed", MINUTES - i);
            let _ = write!(
                svg,
                "<g><title>{title}</title><rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" \
                 width=\"{:.1}\" height=\"{h_ok:.1}\"/><rect class=\"bar-failed\" x=\"{x:.1}\" \
                 y=\"{:.1}\" width=\"{:.1}\" height=\"{h_failed:.1}\"/></g>",
                Y0 + PLOT_H - h_ok,
                STEP - 2.0,
                Y0 + PLOT_H - h_ok - h_failed,
                STEP - 2.0,
            );
        }
        svg.push_str("</svg>");
        svg
    }

    fn times_chart(&self) -> String {
        let points: Vec<(usize, f64, f64)> = self
            .minutes
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                Some((
                    i,
                    percentile(&m.starts, 50.0)?,
                    percentile(&m.starts, 95.0)?,
                ))
            })
            .collect();
        let top = points.iter().map(|p| p.2).fold(1.0f64, f64::max);
        let mut svg = frame(
            "cold-start-chart",
            "Cold-start time per minute",
            &human::millis(top),
        );
        let at = |i: usize, ms: f64| (X0 + (i as f64 + 0.5) * STEP, Y0 + PLOT_H * (1.0 - ms / top));
        for (class, pick) in [("p50", 1), ("p95", 2)] {
            let line: Vec<String> = points
                .iter()
                .map(|p| {
                    let (x, y) = at(p.0, if pick == 1 { p.1 } else { p.2 });
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                svg,
                "<polyline class=\"{class}\" points=\"{}\"/>",
                line.join(" ")
            );
        }
        for (i, p50, p95) in &points {
            let title = format!(
                "{} min ago: p50 {}, p95 {}",
                MINUTES - i,
                human::millis(*p50),
                human::millis(*p95)
            );
            let (x, y50) = at(*i, *p50);
            let (_, y95) = at(*i, *p95);
            let _ = write!(
                svg,
                "<g><title>{title}</title><circle class=\"dot95\" cx=\"{x:.1}\" cy=\"{y95:.1}\" r=\"3\"/>\
                 <circle class=\"dot50\" cx=\"{x:.1}\" cy=\"{y50:.1}\" r=\"3\"/></g>"
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 170.0;
/// The plot's left edge (room for the scale), top, and height.
const X0: f64 = 56.0;
const Y0: f64 = 12.0;
const PLOT_H: f64 = 130.0;
const STEP: f64 = (WIDTH - X0 - 8.0) / MINUTES as f64;

/// An open `<svg>` with its axes, its scale's top label and the time labels.
fn frame(id: &str, label: &str, top: &str) -> String {
    let bottom = Y0 + PLOT_H;
    let right = X0 + STEP * MINUTES as f64;
    let mid = X0 + STEP * MINUTES as f64 / 2.0;
    format!(
        "<svg class=\"chart\" id=\"{id}\" role=\"img\" aria-label=\"{label}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         xmlns=\"http://www.w3.org/2000/svg\">\
         <line class=\"axis\" x1=\"{X0}\" y1=\"{bottom}\" x2=\"{right:.1}\" y2=\"{bottom}\"/>\
         <line class=\"axis\" x1=\"{X0}\" y1=\"{Y0}\" x2=\"{X0}\" y2=\"{bottom}\"/>\
         <text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text class=\"label\" x=\"{}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\
         <text class=\"label\" x=\"{X0}\" y=\"{}\">60 min ago</text>\
         <text class=\"label\" x=\"{mid:.1}\" y=\"{}\" text-anchor=\"middle\">30 min ago</text>\
         <text class=\"label\" x=\"{right:.1}\" y=\"{}\" text-anchor=\"end\">now</text>",
        X0 - 6.0,
        Y0 + 8.0,
        esc(top),
        X0 - 6.0,
        bottom + 16.0,
        bottom + 16.0,
        bottom + 16.0,
    )
}

fn card(label: &str, value: &str) -> String {
    format!(
        "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div></div>",
        esc(label),
        esc(value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_ms: u64, state: SandboxState, cause: Option<StopCause>, detail: &str) -> EventView {
        EventView {
            id: 0,
            at_ms,
            tenant: "user_a".into(),
            state,
            cause,
            detail: Some(detail.into()),
        }
    }

    #[test]
    fn reads_a_starts_detail_with_and_without_its_first_byte() {
        let start = parse_start(
            "start 12.5 ms: admission 0.1 ms, restore 2.0 ms, create 3.4 ms, boot 7.0 ms",
        )
        .unwrap();
        assert_eq!(start.total_ms, 12.5);
        assert_eq!(start.phases.len(), 4);
        assert_eq!(start.phases[2], ("create".into(), 3.4));
        let start = parse_start(
            "start 1.0 ms: admission 0.1 ms, restore 0.2 ms, create 0.3 ms, boot 0.4 ms, first byte 9.5 ms",
        )
        .unwrap();
        assert_eq!(start.phases[4], ("first byte".into(), 9.5));
        assert_eq!(parse_start("exit status 0"), None);
        assert_eq!(parse_start("start soon: whenever"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&v, 100.0), Some(20.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn counts_the_last_hours_starts_by_minute() {
        let now = 10 * 3_600_000;
        let detail = |ms: f64| {
            format!("start {ms} ms: admission 0.0 ms, restore 0.0 ms, create 0.0 ms, boot {ms} ms")
        };
        let events = vec![
            event(now - 30_000, SandboxState::Ready, None, &detail(100.0)),
            event(now - 40_000, SandboxState::Ready, None, &detail(300.0)),
            event(
                now - 20 * MINUTE_MS,
                SandboxState::Ready,
                None,
                &detail(50.0),
            ),
            event(
                now - 61 * MINUTE_MS,
                SandboxState::Ready,
                None,
                &detail(9.0),
            ),
            event(
                now - 5_000,
                SandboxState::Asleep,
                Some(StopCause::StartFailed),
                "boom",
            ),
            event(
                now - 5_000,
                SandboxState::Asleep,
                Some(StopCause::Idle),
                "exit",
            ),
            // A sandbox taken over: ready without a start's detail.
            EventView {
                detail: None,
                ..event(now - 1_000, SandboxState::Ready, None, "")
            },
        ];
        let starts = Starts::of(&events, now);
        assert_eq!(starts.totals, [50.0, 100.0, 300.0]);
        assert_eq!(starts.failed, 1);
        assert_eq!(starts.minutes[59].starts, [100.0, 300.0]);
        assert_eq!(starts.minutes[59].failed, 1);
        assert_eq!(starts.minutes[39].starts, [50.0]);
        let html = starts.render();
        assert!(html.contains("id=\"starts-chart\"") && html.contains("id=\"cold-start-chart\""));
        assert!(html.contains("<polyline class=\"p95\""), "{html}");
        assert!(html.contains("<td>boot</td>"), "{html}");
    }
}
