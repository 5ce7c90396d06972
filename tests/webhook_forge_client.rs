//! The forge clients against a stand-in forge API on 127.0.0.1 that keeps comments in memory and
//! records every request: one plan comment per pull request, updated in place, never duplicated.

mod forge_standin;

use forge_standin::{start, take_requests};
use keystone::daemon::forge::{CommentSync, CommitState, ForgeClient, ForgeKind};

#[tokio::test]
async fn github_comment_created_then_updated_in_place_never_duplicated() {
    let (base, forge) = start().await;
    // Someone else's comment quoting the marker, and an unrelated comment.
    forge.lock().unwrap().comments.extend([
        (
            1,
            42,
            "mallory".to_string(),
            "<!-- keystone-plan: pr=42 -->\nfake".to_string(),
        ),
        (2, 42, "alice".to_string(), "LGTM".to_string()),
    ]);
    let c = ForgeClient::new(ForgeKind::GitHub, &base, "acme/config", "ghp-token\n").unwrap();

    let v1 = "<!-- keystone-plan: pr=42 -->\n### Keystone plan v1".to_string();
    let s = c
        .upsert_plan_comments(42, std::slice::from_ref(&v1))
        .await
        .unwrap();
    assert_eq!(
        s,
        CommentSync {
            created: vec![1001],
            ..Default::default()
        }
    );
    assert_eq!(
        take_requests(&forge),
        [
            "GET /user [Bearer ghp-token]",
            "GET /repos/acme/config/issues/42/comments?per_page=100&page=1 [Bearer ghp-token]",
            "POST /repos/acme/config/issues/42/comments [Bearer ghp-token] {\"body\":\"<!-- keystone-plan: pr=42 -->\\n### Keystone plan v1\"}",
        ]
    );

    // Next push: the same comment is edited.
    let v2 = "<!-- keystone-plan: pr=42 -->\n### Keystone plan v2".to_string();
    let s = c
        .upsert_plan_comments(42, std::slice::from_ref(&v2))
        .await
        .unwrap();
    assert_eq!(s.updated, [1001]);
    assert!(s.created.is_empty());
    assert_eq!(
        take_requests(&forge),
        [
            "GET /repos/acme/config/issues/42/comments?per_page=100&page=1 [Bearer ghp-token]",
            "PATCH /repos/acme/config/issues/comments/1001 [Bearer ghp-token] {\"body\":\"<!-- keystone-plan: pr=42 -->\\n### Keystone plan v2\"}",
        ]
    );

    // Same plan again: no write at all.
    let s = c
        .upsert_plan_comments(42, std::slice::from_ref(&v2))
        .await
        .unwrap();
    assert_eq!(s.unchanged, [1001]);
    assert_eq!(take_requests(&forge).len(), 1, "only the listing");

    // The plan grows past the comment limit: a continuation is added; then it shrinks again.
    let long = vec![
        v2.clone(),
        "<!-- keystone-plan: pr=42 part=2 -->\nmore".to_string(),
    ];
    let s = c.upsert_plan_comments(42, &long).await.unwrap();
    assert_eq!(
        (s.unchanged.clone(), s.created.clone()),
        (vec![1001], vec![1002])
    );
    let s = c
        .upsert_plan_comments(42, std::slice::from_ref(&v2))
        .await
        .unwrap();
    assert_eq!(s.deleted, [1002]);

    let g = forge.lock().unwrap();
    let bodies: Vec<(u64, &str, &str)> = g
        .comments
        .iter()
        .map(|c| (c.0, c.2.as_str(), c.3.as_str()))
        .collect();
    assert_eq!(
        bodies,
        [
            (1, "mallory", "<!-- keystone-plan: pr=42 -->\nfake"),
            (2, "alice", "LGTM"),
            (1001, "keystone-bot", v2.as_str()),
        ]
    );
}

#[tokio::test]
async fn gitea_comments_paginate_and_commit_status_is_set() {
    let (base, forge) = start().await;
    // 150 comments before ours: the listing must page.
    {
        let mut g = forge.lock().unwrap();
        for i in 0..150 {
            g.comments
                .push((i + 10, 7, "bob".into(), format!("comment {i}")));
        }
        g.comments.push((
            500,
            7,
            "keystone-bot".into(),
            "<!-- keystone-plan: pr=7 -->\nold".into(),
        ));
        // An old duplicate left by an interrupted run goes.
        g.comments.push((
            501,
            7,
            "keystone-bot".into(),
            "<!-- keystone-plan: pr=7 -->\nolder".into(),
        ));
    }
    let c = ForgeClient::new(
        ForgeKind::Gitea,
        &format!("{base}/api/v1"),
        "acme/config",
        "gitea-token",
    )
    .unwrap();
    let s = c
        .upsert_plan_comments(7, &["<!-- keystone-plan: pr=7 -->\nnew".to_string()])
        .await
        .unwrap();
    assert_eq!(
        s,
        CommentSync {
            updated: vec![500],
            deleted: vec![501],
            ..Default::default()
        }
    );
    c.set_commit_status(
        "cafe0123",
        CommitState::Pending,
        "keystone/plan",
        "computing the plan",
        Some("http://127.0.0.1/status"),
    )
    .await
    .unwrap();
    c.set_commit_status(
        "cafe0123",
        CommitState::Failure,
        "keystone/plan",
        &"x".repeat(200),
        None,
    )
    .await
    .unwrap();
    let reqs = take_requests(&forge);
    assert_eq!(
        reqs,
        [
            "GET /api/v1/user [token gitea-token]",
            "GET /api/v1/repos/acme/config/issues/7/comments?limit=100&page=1 [token gitea-token]",
            "GET /api/v1/repos/acme/config/issues/7/comments?limit=100&page=2 [token gitea-token]",
            "PATCH /api/v1/repos/acme/config/issues/comments/500 [token gitea-token] {\"body\":\"<!-- keystone-plan: pr=7 -->\\nnew\"}",
            "DELETE /api/v1/repos/acme/config/issues/comments/501 [token gitea-token]",
            "POST /api/v1/repos/acme/config/statuses/cafe0123 [token gitea-token] {\"state\":\"pending\",\"context\":\"keystone/plan\",\"description\":\"computing the plan\",\"target_url\":\"http://127.0.0.1/status\"}",
            &format!(
                "POST /api/v1/repos/acme/config/statuses/cafe0123 [token gitea-token] {{\"state\":\"failure\",\"context\":\"keystone/plan\",\"description\":\"{}\"}}",
                "x".repeat(140)
            ),
        ]
    );
}

#[tokio::test]
async fn forge_errors_name_the_request_and_the_answer() {
    let (base, _forge) = start().await;
    let c = ForgeClient::new(
        ForgeKind::GitHub,
        &format!("{base}/nope"),
        "acme/config",
        "t",
    )
    .unwrap();
    let e = c.upsert_plan_comments(1, &["x".into()]).await.unwrap_err();
    assert_eq!(e.to_string(), "forge API GET /user answered 404: ");
}
