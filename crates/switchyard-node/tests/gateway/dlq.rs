//! Dead letters: list, show, replay, purge.

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use tokio::sync::mpsc;

use crate::common::{MEMORY, TestNode, client, get_json, recv};

/// A subscription that rejects every message until it was replayed once.
async fn rejecting_until_replayed(node: &TestNode) -> mpsc::UnboundedReceiver<Envelope> {
    rejecting_until_replayed_as(node, "billing").await
}

/// [`rejecting_until_replayed`], named `name`.
async fn rejecting_until_replayed_as(
    node: &TestNode,
    name: &str,
) -> mpsc::UnboundedReceiver<Envelope> {
    let (tx, rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe(
            name,
            "billing.#",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    if env.header("replay-count").is_none() {
                        return Ok::<_, std::convert::Infallible>(Outcome::reject("card declined"));
                    }
                    let _ = tx.send(env);
                    Ok(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    rx
}

async fn publish(node: &TestNode, topic: &str, body: &str) -> String {
    let res = client()
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_and_purged() {
    let node = TestNode::start(MEMORY).await;
    let mut replayed = rejecting_until_replayed(&node).await;
    let a = publish(&node, "billing.charge", r#"{"amount": 5}"#).await;
    let b = publish(&node, "billing.refund", r#"{"amount": 6}"#).await;
    let c = publish(&node, "billing.charge", r#"{"amount": 7}"#).await;
    node.bus.run_until_idle().await;
    let http = client();

    let list: Value = http
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 3);
    let first = &list["items"][0];
    assert_eq!(first["id"], a.as_str());
    assert_eq!(first["reason"], "rejected");
    assert_eq!(first["handler"], "billing");
    assert!(first["error"].as_str().unwrap().contains("card declined"));
    assert_eq!(first["message"]["topic"], "billing.charge");
    assert_eq!(first["message"]["payload"], json!({"amount": 5}));
    assert!(first["dead_lettered_at"].as_str().unwrap().ends_with('Z'));

    let page: Value = http
        .get(node.url("/v1/dlq?topic=billing.charge&limit=1&offset=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], c.as_str());

    let one: Value = http
        .get(node.url(&format!("/v1/dlq/{b}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["message"]["topic"], "billing.refund");

    let report: Value = http
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({"ids": [a]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report, json!({"replayed": 1, "failed": []}));
    let env = recv(&mut replayed, "the replayed message").await;
    assert_eq!(env.id.to_string(), a, "a replay keeps the message id");
    assert_eq!(env.header("replayed-from"), Some("billing"));

    let report: Value = http
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({"ids": ["01ARZ3NDEKTSV4RRFFQ69G5FAV"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["replayed"], 0);
    assert!(
        report["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no dead letter")
    );

    let purged: Value = http
        .post(node.url("/v1/dlq/purge"))
        .json(&json!({"all": true, "topic": "billing.refund"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged, json!({"purged": 1, "unknown": []}));

    let report: Value = http
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["replayed"], 1);
    let env = recv(&mut replayed, "the bulk-replayed message").await;
    assert_eq!(env.id.to_string(), c);
    node.bus.run_until_idle().await;
    let list: Value = http
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 0);
    let _ = b;
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_selection_must_say_ids_or_all() {
    let node = TestNode::start(MEMORY).await;
    let http = client();
    for body in [
        json!({}),
        json!({"ids": [], "all": true}),
        // Any string is an id except an empty one or one with spaces or control characters.
        json!({"ids": ["a b"]}),
    ] {
        let res = http
            .post(node.url("/v1/dlq/purge"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
    }
}

#[tokio::test]
async fn dead_letters_are_filtered_by_error_and_time() {
    let node = TestNode::start(MEMORY).await;
    let _replayed = rejecting_until_replayed(&node).await;
    let first = publish(&node, "billing.charge", r#"{"amount": 1}"#).await;
    node.bus.run_until_idle().await;
    publish(&node, "billing.charge", r#"{"amount": 2}"#).await;
    node.bus.run_until_idle().await;
    let http = client();
    let list = |query: &'static str| {
        let http = http.clone();
        let url = node.url(&format!("/v1/dlq?{query}"));
        async move {
            let res = http.get(url).send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (_, all) = list("").await;
    assert_eq!(all["total"], 2, "{all}");
    assert_eq!(all["items"][0]["id"], first.as_str());
    let at = all["items"][0]["dead_lettered_at"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(list("error=declined").await.1["total"], 2);
    assert_eq!(list("error=timeout").await.1["total"], 0);
    assert_eq!(
        list("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z")
            .await
            .1["total"],
        2
    );
    assert_eq!(list("since=2999-01-01T00:00:00Z").await.1["total"], 0);
    // `since` includes its instant, `until` excludes it.
    let since: Value = http
        .get(node.url("/v1/dlq"))
        .query(&[("since", at.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(since["total"], 2, "since {at}: {since}");
    let until: Value = http
        .get(node.url("/v1/dlq"))
        .query(&[("until", at.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(until["total"], 0, "until {at}: {until}");
    let (status, body) = list("since=yesterday").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["kind"], "bad_query");
    node.stop().await.unwrap();
}

/// A replay is a publish to the message's topic: a subscription that handled the message
/// fine the first time gets it again (docs/gateway.md, "Dead letters"), once, beside the
/// subscription that dead-lettered it.
#[tokio::test]
async fn a_replay_reaches_the_subscriptions_that_handled_the_message_too() {
    let node = TestNode::start(MEMORY).await;
    let mut failed = rejecting_until_replayed(&node).await;
    let (tx, mut fine) = mpsc::unbounded_channel();
    node.bus
        .subscribe("audit", "billing.#", crate::common::forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let id = publish(&node, "billing.charge", r#"{"amount": 5}"#).await;
    let first = recv(&mut fine, "audit's first delivery").await;
    assert_eq!(first.header("replay-count"), None);
    node.bus.run_until_idle().await;
    let res = client()
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"replayed": 1, "failed": []})
    );
    let again = recv(&mut failed, "billing's replayed delivery").await;
    let audit = recv(&mut fine, "audit's replayed delivery").await;
    for env in [&again, &audit] {
        assert_eq!(env.id.to_string(), id);
        assert_eq!(env.header("replay-count"), Some("1"));
        assert_eq!(env.header("replayed-from"), Some("billing"));
    }
    node.bus.run_until_idle().await;
    assert!(
        fine.try_recv().is_err(),
        "audit got it twice in all, not more"
    );
    assert!(failed.try_recv().is_err());
    node.stop().await.unwrap();
}

/// A message two subscriptions dead-lettered is listed twice (one entry each, one id); a
/// replay naming its id twice, as a page of `GET /v1/dlq` ids does (`switchyard dlq replay
/// --all`), publishes it once and reports it once, not once replayed and once "no dead letter".
#[tokio::test]
async fn an_id_named_twice_in_a_replay_is_replayed_once() {
    let node = TestNode::start(MEMORY).await;
    let mut a = rejecting_until_replayed(&node).await;
    let mut b = rejecting_until_replayed_as(&node, "billing-b").await;
    let id = publish(&node, "billing.charge", "{}").await;
    node.bus.run_until_idle().await;
    let list: Value = get_json(&node, "/v1/dlq").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str(), id.as_str()], "{list}");
    let res = client()
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({ "ids": ids }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"replayed": 1, "failed": []})
    );
    recv(&mut a, "billing's replayed delivery").await;
    recv(&mut b, "billing-b's replayed delivery").await;
    node.bus.run_until_idle().await;
    assert!(a.try_recv().is_err() && b.try_recv().is_err(), "once each");
    let left: Value = get_json(&node, "/v1/dlq").await;
    assert_eq!(left["total"], 0, "{left}");
    node.stop().await.unwrap();
}

/// A dead letter replayed on the memory transport to a topic no subscription of the node
/// matches any more (its service was stopped) is not published into the void: it stays in the
/// queue and the replay says why. Found by review rev16 at the library level (a replay there
/// removed the entry and the message was gone).
#[tokio::test]
async fn a_replay_to_a_topic_nobody_subscribes_any_more_keeps_the_entry() {
    let node = TestNode::start(MEMORY).await;
    let sub = node
        .bus
        .subscribe(
            "billing",
            "billing.#",
            handler_fn(|_env: Envelope| async move {
                Ok::<_, std::convert::Infallible>(Outcome::reject("card declined"))
            }),
        )
        .start()
        .await
        .unwrap();
    let id = publish(&node, "billing.charge", "{}").await;
    node.bus.run_until_idle().await;
    drop(sub);
    let res = client()
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({ "ids": [id] }))
        .send()
        .await
        .unwrap();
    let body = res.json::<Value>().await.unwrap();
    assert_eq!(body["replayed"], 0, "{body}");
    let error = body["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no subscription"), "{body}");
    let left: Value = get_json(&node, "/v1/dlq").await;
    assert_eq!(left["total"], 1, "the entry stays: {left}");
    node.stop().await.unwrap();
}

/// Docs (Dead letters): replay and purge take the listing's filters (`topic`,
/// `subscription`, `error`, `since`, `until`) with `"all": true`, so that what a filtered
/// listing shows is exactly what a purge removes. Two subscriptions dead-letter each of two
/// messages (4 entries): a purge with `subscription` removes that subscription's entries
/// only, `error` and `since` / `until` narrow it, and a replay with `subscription` replays
/// the messages it lists (each once, all their entries leaving the queue).
#[tokio::test]
async fn purge_and_replay_take_the_listings_filters() {
    let node = TestNode::start(MEMORY).await;
    let mut billing = rejecting_until_replayed_as(&node, "billing").await;
    let _audit = rejecting_until_replayed_as(&node, "audit").await;
    let a = publish(&node, "billing.charge", r#"{"amount": 1}"#).await;
    let b = publish(&node, "billing.refund", r#"{"amount": 2}"#).await;
    node.bus.run_until_idle().await;
    let http = client();
    let post = |path: &'static str, body: Value| {
        let http = http.clone();
        let url = node.url(path);
        async move {
            let res = http.post(url).json(&body).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let total = |query: &'static str| {
        let node = &node;
        async move {
            get_json(node, &format!("/v1/dlq?{query}")).await["total"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(total("").await, 4);
    assert_eq!(total("subscription=audit").await, 2);

    // What the listing with the same filter shows, and nothing else.
    for (body, purged) in [
        (json!({"all": true, "error": "no such error"}), 0),
        (
            json!({"all": true, "subscription": "audit", "until": "2000-01-01T00:00:00Z"}),
            0,
        ),
        (
            json!({"all": true, "subscription": "audit", "since": "2000-01-01T00:00:00Z",
                "error": "card declined", "topic": "billing.charge"}),
            1,
        ),
    ] {
        let (status, res) = post("/v1/dlq/purge", body.clone()).await;
        assert_eq!(status, 200, "{body}: {res}");
        assert_eq!(res, json!({"purged": purged, "unknown": []}), "{body}");
    }
    assert_eq!(
        total("").await,
        3,
        "only audit's billing.charge entry purged"
    );
    assert_eq!(total("subscription=billing").await, 2);
    assert_eq!(total("subscription=audit&topic=billing.charge").await, 0);

    // Ids narrowed by the filter: an id none of whose entries matches is left alone.
    let (status, res) = post(
        "/v1/dlq/purge",
        json!({"ids": [a], "subscription": "audit"}),
    )
    .await;
    assert_eq!((status, &res["purged"]), (200, &json!(0)), "{res}");
    assert_eq!(total("").await, 3);

    // A malformed time is refused, as in the listing.
    let (status, res) = post("/v1/dlq/purge", json!({"all": true, "since": "yesterday"})).await;
    assert_eq!(status, 400, "{res}");
    assert_eq!(total("").await, 3);

    // Replay with the subscription filter: audit lists b only; b is replayed once and all its
    // entries (billing's too) leave the queue; a stays.
    let (status, res) = post(
        "/v1/dlq/replay",
        json!({"all": true, "subscription": "audit"}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res, json!({"replayed": 1, "failed": []}));
    let env = recv(&mut billing, "b replayed").await;
    assert_eq!(env.id.to_string(), b);
    node.bus.run_until_idle().await;
    let left = get_json(&node, "/v1/dlq").await;
    let ids: Vec<_> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["handler"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, vec![(a.as_str(), "billing")], "{left}");
    node.stop().await.unwrap();
}

/// Docs (Dead letters): `GET /v1/dlq?ids=<id>,<id>` lists the entries of these messages
/// wherever they are in the queue (the trace view looks up its own messages so, however many
/// older dead letters precede them); it combines with the other filters, and a malformed or
/// empty list is refused.
#[tokio::test]
async fn dead_letters_are_listed_by_message_ids() {
    let node = TestNode::start(MEMORY).await;
    let _billing = rejecting_until_replayed_as(&node, "billing").await;
    let _audit = rejecting_until_replayed_as(&node, "audit").await;
    let a = publish(&node, "billing.charge", r#"{"amount": 1}"#).await;
    let b = publish(&node, "billing.refund", r#"{"amount": 2}"#).await;
    let c = publish(&node, "billing.charge", r#"{"amount": 3}"#).await;
    node.bus.run_until_idle().await;
    let listed = |query: String| {
        let node = &node;
        async move {
            let v = get_json(node, &format!("/v1/dlq?{query}")).await;
            let items: Vec<(String, String)> = v["items"]
                .as_array()
                .unwrap_or_else(|| panic!("{query}: {v}"))
                .iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap().to_owned(),
                        i["handler"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (v["total"].clone(), items)
        }
    };
    let (total, items) = listed(format!("ids={c},{a}&limit=1&offset=3")).await;
    assert_eq!(total, 4, "a's and c's entries, 2 each");
    assert_eq!(items, vec![(c.clone(), "audit".to_owned())], "oldest first");
    let (total, items) = listed(format!("ids={b}&subscription=billing")).await;
    assert_eq!(
        (total, items),
        (json!(1), vec![(b.clone(), "billing".to_owned())])
    );
    let (total, _) = listed("ids=01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned()).await;
    assert_eq!(total, 0);
    for bad in ["ids=", "ids=a%20b"] {
        let res = client()
            .get(node.url(&format!("/v1/dlq?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    node.stop().await.unwrap();
}
