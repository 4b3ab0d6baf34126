//! `warren tier TENANT [TIER | --clear]`: show the tenant's tier, put it in one of the
//! config's tiers, or give it back the one its config names. Calls a running gateway's
//! admin API, or with `--offline` writes the state store itself; either way the choice
//! is kept in the state store and survives restarts.

use anyhow::bail;
use http::Method;
use warren_core::TenantId;
use warren_core::config::Config;
use warren_state::{SqliteStore, StateStore};

use crate::admin_api::{Target, block_on, call_with};
use crate::settings::parse_tenant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tenant (user) id.
    #[arg(value_parser = parse_tenant)]
    tenant: TenantId,
    /// The tier to put it in: a `[tiers.<name>]` of the gateway's config.
    #[arg(conflicts_with = "clear")]
    tier: Option<String>,
    /// Take back an earlier choice: the tenant's tier is its config's again.
    #[arg(long)]
    clear: bool,
    #[command(flatten)]
    target: Target,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = args.target.config.load()?;
    if let Some(tier) = &args.tier
        && !settings.tiers.contains_key(tier)
    {
        let known: Vec<&str> = settings.tiers.keys().map(String::as_str).collect();
        bail!(
            "unknown tier {tier:?}; the config's tiers: {}",
            known.join(", ")
        );
    }
    if args.target.offline {
        args.target.check_offline(&settings)?;
        return block_on(offline(&settings, &args))?;
    }
    let base = args.target.base(&settings);
    let path = format!("/admin/api/tenants/{}", args.tenant);
    let (method, path, body) = match (&args.tier, args.clear) {
        (None, false) => (Method::GET, path, None),
        (tier, _) => (
            Method::PUT,
            format!("{path}/tier"),
            Some(serde_json::json!({ "tier": tier })),
        ),
    };
    block_on(async {
        call_with(&settings, &base, method, &path, body, &mut |line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            println!(
                "{}: tier {}, instance type {}, network {}, {}",
                v["tenant"].as_str().unwrap_or("?"),
                v["tier"].as_str().unwrap_or("(none)"),
                v["instance_type"].as_str().unwrap_or("?"),
                v["network"].as_str().unwrap_or("?"),
                v["state"].as_str().unwrap_or("?"),
            );
            Ok(())
        })
        .await
    })?
}

/// The same, on the state store, while no gateway runs.
async fn offline(settings: &Config, args: &Args) -> anyhow::Result<()> {
    if settings.state.kind != warren_core::config::StateKind::Sqlite {
        bail!("--offline works on the SQLite state store only");
    }
    let state = SqliteStore::open(&settings.state_path())?;
    if args.tier.is_some() || args.clear {
        state.set_tier(&args.tenant, args.tier.as_deref()).await?;
    }
    let assigned = state
        .tiers()
        .await?
        .into_iter()
        .find_map(|(t, tier)| (t == args.tenant).then_some(tier));
    let profile = settings.sandbox_profile_in(&args.tenant, assigned.as_deref());
    println!(
        "{}: tier {}, instance type {}, network {:?}, agent {}",
        args.tenant,
        profile.tier.unwrap_or("(none)"),
        profile.instance_type,
        profile.network,
        profile.agent_name
    );
    Ok(())
}
