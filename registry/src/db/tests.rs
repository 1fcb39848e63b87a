//! Listing loads tags and aliases per page, not per row: round trips and results.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{DatabaseKind, Model, NewVersion, Store, Tags, VersionStatus};
use lakescore_core::wire::Signature;

/// What listing a seeded model must give: name, tags, latest version, aliases.
type Expected = (String, Tags, Option<i64>, BTreeMap<String, i64>);

/// The databases to run each test on: SQLite, and PostgreSQL where
/// `LAKESCORE_TEST_POSTGRES_URL` names a server (scripts/test always sets it).
fn databases() -> Vec<DatabaseKind> {
    if std::env::var_os("LAKESCORE_TEST_POSTGRES_URL").is_some() {
        vec![DatabaseKind::Sqlite, DatabaseKind::Postgres]
    } else {
        assert!(std::env::var_os("LAKESCORE_TEST_STRICT").is_none(), "LAKESCORE_TEST_POSTGRES_URL is not set");
        vec![DatabaseKind::Sqlite]
    }
}

/// A store on a fresh, empty database (the directory holds the SQLite file).
async fn store(kind: DatabaseKind) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match kind {
        DatabaseKind::Sqlite => format!("sqlite://{}?mode=rwc", dir.path().join("registry.db").display()),
        DatabaseKind::Postgres => {
            use sqlx::Connection;
            let url = std::env::var("LAKESCORE_TEST_POSTGRES_URL").expect("LAKESCORE_TEST_POSTGRES_URL");
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to the test PostgreSQL");
            let name = format!("lakescore_t_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
            let mut parsed = url::Url::parse(&url).expect("postgres URL");
            parsed.set_path(&format!("/{name}"));
            parsed.to_string()
        }
    };
    let store = Store::connect(&url, 4, Duration::from_secs(5)).await.expect("connect");
    (dir, store)
}

fn signature() -> Signature {
    Signature {
        ir_version: 8,
        producer_name: "test".into(),
        producer_version: String::new(),
        graph_name: "g".into(),
        opset_imports: Vec::new(),
        uses_ai_onnx_ml: false,
        inputs: Vec::new(),
        outputs: Vec::new(),
        metadata: BTreeMap::new(),
    }
}

async fn add_version(store: &Store, model: &str, n: u32) -> i64 {
    let (sig, backends, tags) = (signature(), BTreeMap::new(), Tags::from([("n".to_string(), n.to_string())]));
    let new = NewVersion {
        sha256: &format!("{model}-{n}"),
        size: 1,
        created_by: "alice",
        description: "",
        tags: &tags,
        signature: &sig,
        backends: &backends,
    };
    store.insert_version(model, new).await.expect("insert version").version
}

/// Models `m0000`…: every one has tags; even ones have versions 1 and 2 with aliases
/// (`a`, `b` → 1; `c` → 2); every fourth has version 2 archived, so its latest is 1.
/// Returns what listing them must give, in listing order.
async fn seed_models(store: &Store, count: usize) -> Vec<Expected> {
    let mut expected = Vec::new();
    for i in 0..count {
        let name = format!("m{i:04}");
        let tags = Tags::from([("team".to_string(), format!("t{}", i % 3)), ("idx".to_string(), i.to_string())]);
        store.create_model(&name, "", &tags, "alice").await.expect("create");
        let (mut latest, mut aliases) = (None, BTreeMap::new());
        if i % 2 == 0 {
            add_version(store, &name, 1).await;
            add_version(store, &name, 2).await;
            for (alias, v) in [("a", 1), ("b", 1), ("c", 2)] {
                store.set_alias(&name, alias, v, "alice").await.expect("alias");
                aliases.insert(alias.to_string(), v);
            }
            latest = Some(2);
            if i % 4 == 0 {
                store.archive_version(&name, 2, "alice").await.expect("archive");
                aliases.remove("c");
                latest = Some(1);
            }
        }
        expected.push((name, tags, latest, aliases));
    }
    expected
}

fn assert_models(got: &[Model], expected: &[Expected]) {
    assert_eq!(got.len(), expected.len());
    for (m, (name, tags, latest, aliases)) in got.iter().zip(expected) {
        assert_eq!(&m.name, name);
        assert_eq!(&m.tags, tags, "{name}");
        assert_eq!(&m.latest_version, latest, "{name}");
        assert_eq!(&m.aliases, aliases, "{name}");
    }
}

#[tokio::test]
async fn listing_models_takes_the_same_round_trips_for_10_and_1000() {
    for kind in databases() {
        let mut checkouts = Vec::new();
        for count in [10, 1000] {
            let (_dir, store) = store(kind).await;
            let expected = seed_models(&store, count).await;
            let before = store.checkouts();
            let page = store.list_models(&[], None, 1000, None).await.expect("list");
            checkouts.push(store.checkouts() - before);
            assert_models(&page.items, &expected);
            assert_eq!(page.next_page_token, None);
        }
        // The page's rows, then tags and aliases for the whole page.
        assert_eq!(checkouts, [3, 3], "round trips listing 10 and 1,000 models on {kind:?}");
    }
}

#[tokio::test]
async fn listing_models_pages_and_filters_as_before() {
    for kind in databases() {
        listing_models_pages_and_filters_as_before_on(kind).await;
    }
}

async fn listing_models_pages_and_filters_as_before_on(kind: DatabaseKind) {
    let (_dir, store) = store(kind).await;
    let expected = seed_models(&store, 10).await;
    let (mut listed, mut after, mut tokens) = (Vec::new(), None, Vec::new());
    loop {
        let page = store.list_models(&[], None, 3, after.as_deref()).await.expect("list");
        listed.extend(page.items);
        match page.next_page_token {
            Some(token) => {
                tokens.push(token.clone());
                after = Some(token);
            }
            None => break,
        }
    }
    assert_models(&listed, &expected);
    assert_eq!(tokens, ["m0002", "m0005", "m0008"]);
    // Filtered and visibility-restricted lists carry the same tags and aliases.
    let filter = crate::filter::parse("tags.team = 't1'").expect("filter");
    let alice = ["user:alice".to_string()];
    let page = store.list_models(&filter, Some(("alice", &alice)), 1000, None).await.expect("list");
    let t1: Vec<_> = expected.iter().filter(|(_, tags, ..)| tags["team"] == "t1").cloned().collect();
    assert_models(&page.items, &t1);
    let bob = ["user:bob".to_string()];
    assert!(store.list_models(&[], Some(("bob", &bob)), 1000, None).await.expect("list").items.is_empty());
    // One model alone reads the same as in the list.
    let one = store.get_model("m0004").await.expect("get");
    assert_models(&[one], &expected[4..5]);
}

#[tokio::test]
async fn listing_versions_takes_the_same_round_trips_for_10_and_1000() {
    for kind in databases() {
        listing_versions_takes_the_same_round_trips_for_10_and_1000_on(kind).await;
    }
}

async fn listing_versions_takes_the_same_round_trips_for_10_and_1000_on(kind: DatabaseKind) {
    let (_dir, store) = store(kind).await;
    let mut checkouts = Vec::new();
    for (model, count) in [("small", 10), ("large", 1000)] {
        store.create_model(model, "", &Tags::new(), "alice").await.expect("create");
        for n in 1..=count {
            add_version(&store, model, n).await;
        }
        // Aliases on every seventh version; every third ready version carries two.
        let mut aliases = BTreeMap::<i64, Vec<String>>::new();
        for v in (1..=count as i64).step_by(7) {
            store.set_alias(model, &format!("z{v}"), v, "alice").await.expect("alias");
            aliases.entry(v).or_default().push(format!("z{v}"));
            if v % 3 == 0 {
                store.set_alias(model, &format!("a{v}"), v, "alice").await.expect("alias");
                aliases.entry(v).or_default().insert(0, format!("a{v}"));
            }
        }
        store.archive_version(model, 8, "alice").await.ok();
        aliases.remove(&8);
        let before = store.checkouts();
        let page = store.list_versions(model, None, 1000, None).await.expect("list");
        checkouts.push(store.checkouts() - before);
        assert_eq!(page.items.len(), count as usize);
        assert_eq!(page.next_page_token, None);
        for (i, v) in page.items.iter().enumerate() {
            assert_eq!(v.model, model);
            assert_eq!(v.version, i as i64 + 1);
            assert_eq!(v.tags["n"], v.version.to_string());
            assert_eq!(v.aliases, aliases.get(&v.version).cloned().unwrap_or_default(), "{model}:{}", v.version);
            let status = if v.version == 8 { VersionStatus::Archived } else { VersionStatus::Ready };
            assert_eq!(v.status, status);
        }
    }
    // The model's id, the page's rows, then aliases for the whole page.
    assert_eq!(checkouts, [3, 3], "round trips listing 10 and 1,000 versions on {kind:?}");

    // Pages of 4 over the small model, archived ones filtered out, aliases as on one version.
    let (mut listed, mut after, mut tokens) = (Vec::new(), None, Vec::new());
    loop {
        let page = store.list_versions("small", Some(VersionStatus::Ready), 4, after).await.expect("list");
        listed.extend(page.items);
        match page.next_page_token {
            Some(token) => {
                after = Some(token.parse().expect("token"));
                tokens.push(token);
            }
            None => break,
        }
    }
    assert_eq!(listed.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, 9, 10]);
    assert_eq!(tokens, ["4", "9"]);
    for v in &listed {
        assert_eq!(v.aliases, store.get_version("small", v.version).await.expect("get").aliases);
    }
}

#[tokio::test]
async fn searching_versions_by_tag_pages_across_models() {
    for kind in databases() {
        searching_versions_by_tag_pages_across_models_on(kind).await;
    }
}

async fn searching_versions_by_tag_pages_across_models_on(kind: DatabaseKind) {
    use crate::filter::parse;
    let (_dir, store) = store(kind).await;
    // m0000, m0002, m0004: versions 1 and 2 tagged n=1, n=2.
    seed_models(&store, 5).await;
    let all = store.search_versions(&[], None, 1000, None).await.expect("search");
    let keys: Vec<(String, i64)> = all.items.iter().map(|v| (v.model.clone(), v.version)).collect();
    let expected: Vec<(String, i64)> =
        ["m0000", "m0002", "m0004"].iter().flat_map(|m| [(m.to_string(), 2), (m.to_string(), 1)]).collect();
    assert_eq!(keys, expected, "{kind:?}: by name, newest version first");

    // Pages of two follow on from the token, without repeats.
    let (mut paged, mut after) = (Vec::new(), None::<(String, i64)>);
    loop {
        let page =
            store.search_versions(&[], None, 2, after.as_ref().map(|(n, v)| (n.as_str(), *v))).await.expect("page");
        paged.extend(page.items.iter().map(|v| (v.model.clone(), v.version)));
        match page.next_page_token {
            Some(t) => {
                let (n, v) = t.rsplit_once(':').expect("name:version");
                after = Some((n.to_string(), v.parse().expect("version")));
            }
            None => break,
        }
    }
    assert_eq!(paged, expected, "{kind:?}");

    // The version's own tags (JSON in the row), and the model's name.
    let tagged = store.search_versions(&parse("tags.n = '2'").expect("filter"), None, 100, None).await.expect("tag");
    assert!(tagged.items.iter().all(|v| v.version == 2) && tagged.items.len() == 3, "{kind:?}");
    let filter = parse("name = 'm0002' AND tags.n != '2'").expect("filter");
    let one = store.search_versions(&filter, None, 100, None).await.expect("name and tag");
    assert_eq!(one.items.iter().map(|v| (v.model.as_str(), v.version)).collect::<Vec<_>>(), [("m0002", 1)]);
    // A tag no version has: `!=` matches every version, `=` none.
    assert_eq!(
        store.search_versions(&parse("tags.x != 'y'").expect("f"), None, 100, None).await.expect("ne").items.len(),
        6
    );
    assert!(store
        .search_versions(&parse("tags.x = 'y'").expect("f"), None, 100, None)
        .await
        .expect("eq")
        .items
        .is_empty());

    // One tag set or removed leaves the others; on a model and on a version.
    let v = store.set_version_tag("m0000", 1, "validated", Some("yes")).await.expect("set");
    assert_eq!(v.tags, Tags::from([("n".into(), "1".into()), ("validated".into(), "yes".into())]));
    let v = store.set_version_tag("m0000", 1, "n", None).await.expect("remove");
    assert_eq!(v.tags, Tags::from([("validated".into(), "yes".into())]));
    assert!(store.set_version_tag("m0000", 9, "k", Some("v")).await.is_err(), "no such version");
    let m = store.set_model_tag("m0001", "team", Some("risk")).await.expect("model tag");
    assert_eq!(m.tags.get("team").map(String::as_str), Some("risk"));
    assert_eq!(m.tags.get("idx").map(String::as_str), Some("1"));
    let m = store.set_model_tag("m0001", "idx", None).await.expect("remove model tag");
    assert_eq!(m.tags, Tags::from([("team".into(), "risk".into())]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alias_history_keeps_every_change_and_answers_as_of_a_time() {
    for kind in databases() {
        alias_history_on(kind).await;
    }
}

async fn alias_history_on(kind: DatabaseKind) {
    let (_dir, store) = store(kind).await;
    store.create_model("fraud", "", &Tags::new(), "alice").await.expect("create");
    for n in 1..=3 {
        add_version(&store, "fraud", n).await;
    }
    let mark = |label: &str| {
        let t = super::now();
        // Changes are stamped in milliseconds: the next one is strictly later.
        std::thread::sleep(Duration::from_millis(5));
        (label.to_string(), t)
    };
    let before_any = mark("before");
    store.set_alias("fraud", "champion", 1, "alice").await.expect("set 1");
    let after_1 = mark("after 1");
    store.set_alias("fraud", "champion", 2, "bob").await.expect("move to 2");
    let after_2 = mark("after 2");
    store.delete_alias("fraud", "champion", "carol").await.expect("delete");
    let after_delete = mark("after delete");
    store.set_alias("fraud", "champion", 3, "alice").await.expect("set 3");
    store.archive_version("fraud", 3, "dave").await.expect("archive drops the alias");

    let history = store.alias_history("fraud", "champion", 100, None).await.expect("history");
    let changes: Vec<(Option<i64>, Option<i64>, &str)> =
        history.items.iter().map(|c| (c.version, c.previous_version, c.by.as_str())).collect();
    assert_eq!(
        changes,
        [
            (None, Some(3), "dave"),
            (Some(3), None, "alice"),
            (None, Some(2), "carol"),
            (Some(2), Some(1), "bob"),
            (Some(1), None, "alice")
        ],
        "{kind:?}: newest first"
    );
    // Pages of two, by the token.
    let first = store.alias_history("fraud", "champion", 2, None).await.expect("page");
    let token = first.next_page_token.clone().expect("more");
    let second = store.alias_history("fraud", "champion", 2, Some(token.parse().expect("id"))).await.expect("page 2");
    assert_eq!(first.items, history.items[..2], "{kind:?}");
    assert_eq!(second.items, history.items[2..4], "{kind:?}");

    // As of a time: the version it pointed at then; nothing before it existed or while deleted.
    let at = |t: &(String, String)| {
        let store = store.clone();
        let t = t.clone();
        async move { store.alias_at("fraud", "champion", &t.1).await.ok() }
    };
    assert_eq!(at(&before_any).await, None, "{kind:?}");
    assert_eq!(at(&after_1).await, Some(1), "{kind:?}");
    assert_eq!(at(&after_2).await, Some(2), "{kind:?}");
    assert_eq!(at(&after_delete).await, None, "{kind:?}: deleted then");
    assert_eq!(store.alias_at("fraud", "champion", &super::now()).await.ok(), None, "{kind:?}: archived now");
    // At the very instant of a change, the change counts.
    let exact = &history.items[3].at;
    assert_eq!(store.alias_at("fraud", "champion", exact).await.ok(), Some(2), "{kind:?}");

    // Concurrent moves: every one recorded, each entry's previous the one before it.
    let moves: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.set_alias("fraud", "racer", 1 + i % 2, "x").await.map(|_| ()) })
        })
        .collect();
    for m in moves {
        m.await.expect("join").expect("move");
    }
    let raced = store.alias_history("fraud", "racer", 100, None).await.expect("history");
    assert_eq!(raced.items.len(), 20, "{kind:?}: no lost entries");
    for pair in raced.items.windows(2) {
        assert_eq!(pair[0].previous_version, pair[1].version, "{kind:?}: a chain");
    }
    assert_eq!(raced.items.last().expect("first").previous_version, None);
    assert_eq!(store.get_alias("fraud", "racer").await.ok(), raced.items[0].version);
}
