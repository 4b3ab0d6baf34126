//! The tests every `StateStore` backend must pass. A backend's own test module calls
//! `run` with a fresh, empty store.

use warren_core::TenantId;
use warren_core::sandbox::{SandboxState, StopCause};

use crate::{SandboxIdentity, StateStore, Transition};

fn transition(tenant: &str, state: SandboxState, at_ms: u64) -> Transition {
    Transition {
        tenant: TenantId::parse(tenant).unwrap(),
        state,
        at_ms,
        cause: None,
        identity: None,
        detail: None,
    }
}

/// Runs every check against `store`, which must start empty.
pub async fn run(store: &dyn StateStore) {
    let a = TenantId::parse("user_a").unwrap();
    let b = TenantId::parse("user_b").unwrap();

    assert_eq!(
        store.sandbox(&a).await.unwrap(),
        None,
        "a new store knows no sandbox"
    );
    assert!(store.events(None, 10).await.unwrap().is_empty());

    let identity = SandboxIdentity {
        generation: 1,
        pid: Some(4242),
        pid_start_ticks: Some(987_654),
        address: Some("127.0.0.1:40001".into()),
        container: Some("c0ffee".into()),
        last_active_ms: Some(1_700_000_000_000),
    };
    store
        .record(&transition("user_a", SandboxState::Starting, 1_000))
        .await
        .unwrap();
    store
        .record(&Transition {
            identity: Some(identity.clone()),
            ..transition("user_a", SandboxState::Ready, 1_010)
        })
        .await
        .unwrap();
    store
        .record(&transition("user_b", SandboxState::Starting, 1_020))
        .await
        .unwrap();
    // An identity attached while starting: the row has it, the state and the event
    // log are unchanged.
    store.identify(&b, &identity).await.unwrap();
    let starting = store.sandbox(&b).await.unwrap().unwrap();
    assert_eq!(
        (starting.state, starting.identity.as_ref()),
        (SandboxState::Starting, Some(&identity))
    );
    assert_eq!(store.events(Some(&b), 10).await.unwrap().len(), 1);

    let row = store.sandbox(&a).await.unwrap().unwrap();
    assert_eq!(row.state, SandboxState::Ready);
    assert_eq!(row.since_ms, 1_010);
    assert_eq!(
        row.identity.as_ref(),
        Some(&identity),
        "the identity round-trips"
    );
    assert_eq!(row.last_stop, None);

    let mut live: Vec<_> = store
        .live_sandboxes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.tenant)
        .collect();
    live.sort();
    assert_eq!(live, vec![a.clone(), b.clone()]);

    store
        .record(&Transition {
            cause: Some(StopCause::Crash),
            detail: Some("exit status 137".into()),
            ..transition("user_a", SandboxState::Asleep, 2_000)
        })
        .await
        .unwrap();
    let row = store.sandbox(&a).await.unwrap().unwrap();
    assert_eq!(row.state, SandboxState::Asleep);
    assert_eq!(row.last_stop, Some((StopCause::Crash, 2_000)));
    assert_eq!(row.detail.as_deref(), Some("exit status 137"));
    assert_eq!(row.identity, None, "an asleep sandbox has no process");
    assert_eq!(store.live_sandboxes().await.unwrap().len(), 1);
    let all: Vec<String> = store
        .sandboxes()
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}:{:?}", r.tenant, r.state))
        .collect();
    assert_eq!(all.len(), 2, "asleep ones too: {all:?}");
    assert!(all.contains(&"user_a:Asleep".to_owned()), "{all:?}");

    // A later start keeps the record of the last stop until the next one.
    store
        .record(&transition("user_a", SandboxState::Starting, 3_000))
        .await
        .unwrap();
    assert_eq!(
        store.sandbox(&a).await.unwrap().unwrap().last_stop,
        Some((StopCause::Crash, 2_000))
    );

    let events = store.events(Some(&a), 10).await.unwrap();
    let states: Vec<_> = events.iter().map(|e| (e.state, e.at_ms)).collect();
    assert_eq!(
        states,
        vec![
            (SandboxState::Starting, 3_000),
            (SandboxState::Asleep, 2_000),
            (SandboxState::Ready, 1_010),
            (SandboxState::Starting, 1_000)
        ],
        "events come newest first, one per transition"
    );
    assert_eq!(events[1].cause, Some(StopCause::Crash));
    assert!(events.iter().all(|e| e.tenant == a));
    assert_eq!(
        store.events(None, 2).await.unwrap().len(),
        2,
        "the limit holds"
    );
    assert_eq!(store.events(Some(&b), 10).await.unwrap().len(), 1);

    // Tiers an operator assigned: set, moved, taken back, kept apart per tenant.
    assert!(store.tiers().await.unwrap().is_empty());
    store.set_tier(&a, Some("pro")).await.unwrap();
    store.set_tier(&b, Some("free")).await.unwrap();
    store.set_tier(&a, Some("team")).await.unwrap();
    assert_eq!(
        store.tiers().await.unwrap(),
        vec![
            (a.clone(), "team".to_owned()),
            (b.clone(), "free".to_owned())
        ]
    );
    store.set_tier(&b, None).await.unwrap();
    assert_eq!(
        store.tiers().await.unwrap(),
        vec![(a.clone(), "team".to_owned())]
    );

    // A start's detail goes to its event, never over the row's detail of the last stop;
    // amending changes the latest event in that state with that detail only.
    let mut crashed = transition("user_b", SandboxState::Asleep, 4_000);
    crashed.cause = Some(StopCause::Crash);
    crashed.detail = Some("exit status 1".into());
    store.record(&crashed).await.unwrap();
    let mut ready = transition("user_b", SandboxState::Ready, 5_000);
    ready.detail = Some("admission 1 ms".into());
    store.record(&ready).await.unwrap();
    let row = store.sandbox(&b).await.unwrap().unwrap();
    assert_eq!(row.detail.as_deref(), Some("exit status 1"));
    assert_eq!(row.last_stop, Some((StopCause::Crash, 4_000)));
    // A later event in the same state (a gateway leaving the sandbox to the next)
    // does not take the start's note.
    store
        .record(&transition("user_b", SandboxState::Ready, 5_500))
        .await
        .unwrap();
    store
        .amend_event(
            &b,
            SandboxState::Ready,
            "admission 1 ms",
            "admission 1 ms, first byte 2 ms",
        )
        .await
        .unwrap();
    assert_eq!(
        store.sandbox(&b).await.unwrap().unwrap().detail.as_deref(),
        Some("exit status 1")
    );
    let events = store.events(Some(&b), 10).await.unwrap();
    assert_eq!(events[0].detail, None, "the later event keeps its own");
    assert_eq!(
        events[1].detail.as_deref(),
        Some("admission 1 ms, first byte 2 ms")
    );
}
