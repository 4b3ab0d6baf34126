//! `warren audit`: a scalability audit of the running deployment, from its tenants,
//! events and metrics, in the shape of the audit warren re-creates.

use super::harness::{Gateway, echo, run_warren};

#[tokio::test]
async fn the_audit_reports_configuration_capacity_findings_and_costs_from_live_figures() {
    let mut gw = Gateway::start(
        "max_instances = 3\ninstance_type = \"standard-1\"\n[prices]\nvcpu_second = 0.0001\n",
    );
    for user in ["user_a", "user_b"] {
        let mut ws = gw.ws(user).await;
        echo(&mut ws, "hello").await;
    }
    let config = gw.dir.path().join("warren.toml");
    let data = gw.data_dir();
    let url = gw.url("");
    let cwd = gw.dir.path().to_owned();
    let audit = |json: bool| {
        let mut args = vec![
            "audit",
            "--gateway",
            &url,
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        run_warren(&args, &cwd)
    };
    let (code, out, err) = audit(true);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let capacity = &report["capacity"];
    assert_eq!(capacity["tenants_known"], 2, "{report}");
    assert_eq!(capacity["running"], 2);
    assert_eq!(capacity["max_instances"], 3);
    assert!(
        capacity["memory_per_sandbox_bytes"].as_u64().unwrap() > 0,
        "measured: {report}"
    );
    assert_eq!(report["usage"]["starts_ready"], 2);
    assert_eq!(report["usage"]["active_tenants"], 2);
    // Costs at 100 and 1,000 users from the config's prices: standard-1 is 0.5 vCPU,
    // 4 GiB and 8 GB of disk, its vCPU priced here at 0.0001 a second.
    let per_second: f64 = 0.5 * 0.0001 + 4.0 * 0.000_002_5 + 8.0 * 0.000_000_07;
    let costs = report["costs"].as_array().unwrap();
    assert_eq!(costs.len(), 2);
    let (hundred, thousand) = (&costs[0], &costs[1]);
    assert_eq!(hundred["active_users"], 100);
    let compute = hundred["compute_per_month"].as_f64().unwrap();
    // Minutes of events measure no usage: priced as always running, and said so.
    assert!(report["usage"]["duty_cycle"].is_null(), "{report}");
    assert!(
        hundred["assumption"]
            .as_str()
            .unwrap()
            .contains("an upper bound")
    );
    let want = 100.0 * 30.0 * 86_400.0 * per_second;
    assert!(
        (compute - want).abs() < want * 1e-9,
        "{compute} against {want}"
    );
    let ratio = thousand["total_per_month"].as_f64().unwrap()
        / hundred["total_per_month"].as_f64().unwrap();
    assert!((ratio - 10.0).abs() < 1e-9, "{ratio}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["title"] == "Cold starts")
    );

    // Markdown by default, in the original audit's shape.
    let (code, out, err) = audit(false);
    assert_eq!(code, 0, "{err}");
    for heading in [
        "# Scalability Audit Report",
        "## Current Configuration",
        "| max_instances | 3 |",
        "## Scaling Capacity",
        "**Running now:** 2 of max_instances 3",
        "## Findings",
        "### At 100 Active Users",
        "### At 1000 Active Users",
    ] {
        assert!(out.contains(heading), "{heading}:\n{out}");
    }

    // Without a gateway it says so and fails.
    gw.stop();
    let (code, _, err) = audit(false);
    assert_ne!(code, 0);
    assert!(err.contains("no gateway answers"), "{err}");
}
