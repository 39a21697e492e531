//! Changes that HBase's timestamp rules could hide, on the real servers: two
//! changes of a row in one second, a hard delete then a re-insert with an
//! older version, a message moved to another room or re-timed (and its id
//! map), an update whose new image is rejected, a repair followed by a later
//! change, and a far-future version in watermark mode. One job, one base,
//! then each case's source changes and the phase that must apply them.

mod support;

use support::{assert_converged, Job};

fn applied(s: &serde_json::Value, table: &str, kind: &str) -> u64 {
    s["applied"][table][kind].as_u64().unwrap_or(0)
}

async fn one_u64(job: &Job, sql: &str) -> u64 {
    let pool = job.pool().await;
    let v: u64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_second_changes_reinserts_moves_and_rejected_updates_stay_visible() {
    let job = Job::new("edges", 3_000, false).await;
    let base = job.base(&["--workers", "2"]);
    assert_eq!(base.code, 0, "{}", base.stderr);

    let room_desc = one_u64(
        &job,
        "SELECT room_id FROM room WHERE description IS NOT NULL AND last_update_time > 0 ORDER BY room_id LIMIT 1",
    )
    .await;
    // Messages picked far apart, each with a room of its own kind of change.
    let ids: Vec<u64> = {
        let pool = job.pool().await;
        sqlx::query_scalar("SELECT message_id FROM message WHERE deleted = 0 AND body IS NOT NULL ORDER BY message_id LIMIT 5 OFFSET 100")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let (reinserted, moved, retimed, rejected, renulled) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    let other_room = one_u64(
        &job,
        &format!("SELECT MAX(room_id) FROM room WHERE room_id <> (SELECT room_id FROM message WHERE message_id = {moved})"),
    )
    .await;
    let old_room = one_u64(
        &job,
        &format!("SELECT room_id FROM message WHERE message_id = {moved}"),
    )
    .await;
    let old_new_id = |job: &Job, legacy: u64| -> u64 {
        let hb = job.hbase_messages();
        String::from_utf8(hb[&legacy].1["id"].0.clone())
            .unwrap()
            .parse()
            .unwrap()
    };
    let retimed_old_id = old_new_id(&job, retimed);
    let (r_room, r_acct, r_send, r_upd): (u64, u64, u64, u64) = {
        let pool = job.pool().await;
        sqlx::query_as(&format!(
            "SELECT room_id, account_id, send_time, update_time FROM message WHERE message_id = {reinserted}"
        ))
        .fetch_one(&pool)
        .await
        .unwrap()
    };

    job.sql(&[
        "SET SESSION sql_mode = ''",
        // A column set to NULL and back in the same second, the version unchanged.
        &format!("UPDATE room SET description = NULL WHERE room_id = {room_desc}"),
        &format!("UPDATE room SET description = '戻った説明' WHERE room_id = {room_desc}"),
        // A message's body NULL (rejected: the row is removed) and back, in
        // the same second, its update_time unchanged.
        &format!("UPDATE message SET body = NULL WHERE message_id = {renulled}"),
        &format!("UPDATE message SET body = '戻った本文' WHERE message_id = {renulled}"),
        // A hard delete, then the same key inserted again with its old (older) version.
        &format!("DELETE FROM message WHERE message_id = {reinserted}"),
        &format!(
            "INSERT INTO message (message_id, room_id, account_id, body, send_time, update_time, deleted) \
             VALUES ({reinserted}, {r_room}, {r_acct}, '再投稿', {r_send}, {r_upd}, 0)"
        ),
        // Moved to another room, the version unchanged (row key changes, new id does not).
        &format!("UPDATE message SET room_id = {other_room} WHERE message_id = {moved}"),
        // send_time edited backwards by a day (new id changes, to an older one).
        &format!("UPDATE message SET send_time = send_time - 86400 WHERE message_id = {retimed}"),
        // The new image is rejected (its room does not exist): the old state must go.
        &format!("UPDATE message SET room_id = 987654321 WHERE message_id = {rejected}"),
    ])
    .await;

    let out = job.diff(&["--until-now"]);
    assert_eq!(out.code, 3, "exit 3: rows dead-lettered\n{}", out.stderr);
    let s = out.json();
    // The NULL body is rejected (the row is removed), then written back.
    assert_eq!(s["dead_lettered"], 2, "{s}");
    assert_eq!(s["dead_letter_reasons"]["message"]["orphan_room"], 1, "{s}");
    assert_eq!(s["dead_letter_reasons"]["message"]["null_value"], 1, "{s}");
    assert_eq!(applied(&s, "message", "hard_delete"), 1, "{s}");
    assert_eq!(applied(&s, "message", "insert"), 1, "{s}");
    let dead = std::fs::read_to_string(s["dead_letter_file"].as_str().unwrap()).unwrap();
    assert!(
        dead.contains(&format!("\"key\":\"{rejected}\""))
            && dead.contains("previous state was removed from the targets"),
        "{dead}"
    );

    // HBase (every table, the id map both ways) and Kafka equal the source.
    assert_converged(&job).await;
    let hb = job.hbase_messages();
    let body = |id: u64| String::from_utf8(hb[&id].1["body"].0.clone()).unwrap();
    assert_eq!(body(reinserted), "再投稿");
    assert_eq!(body(renulled), "戻った本文");
    assert!(
        !hb.contains_key(&rejected),
        "the rejected row's old state is gone"
    );
    let room_events = job.kafka_rows("room");
    assert_eq!(
        room_events[&room_desc.to_string()].as_ref().unwrap()["description"].as_deref(),
        Some("戻った説明")
    );
    // The moved message: one row, in the new room; the retimed one: its new id.
    assert_eq!(
        String::from_utf8(hb[&moved].1["room_id"].0.clone()).unwrap(),
        other_room.to_string()
    );
    assert_ne!(other_room, old_room);
    assert_ne!(old_new_id(&job, retimed), retimed_old_id);
    let kafka = job.kafka_rows("message");
    assert_eq!(
        kafka.get(&rejected.to_string()),
        Some(&None),
        "removal event"
    );

    // verify agrees, skipping the dead-lettered row.
    let v = job.verify(&[]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repaired_row_loses_to_a_later_diff_write_and_repair_never_removes_a_live_key() {
    let job = Job::new("erepair", 2_000, false).await;
    let base = job.base(&["--workers", "2"]);
    assert_eq!(base.code, 0, "{}", base.stderr);
    let hb = job.hbase_messages();
    let (&hidden, (row_key, cells)) = hb.iter().nth(50).unwrap();
    let version = cells["update_time"].0.clone();
    let version: u64 = String::from_utf8(version).unwrap().parse().unwrap();
    let send: u64 = String::from_utf8(cells["send_time"].0.clone())
        .unwrap()
        .parse()
        .unwrap();
    let v_ms = send.max(version) * 1000;
    // Deleted by hand "as of now" (a marker above the row's version), and a
    // live event in Kafka for a key the source never had.
    job.hbase_delete_row("message", row_key);
    let ghost = 900_000_000u64;
    let mut ev = job.kafka_events("message")[&hidden.to_string()].clone();
    ev["key"] = ghost.to_string().into();
    ev["data"]["message_id"] = ghost.into();
    let room = ev["data"]["room_id"].as_u64().unwrap().to_string();
    job.kafka_produce("message", &room, &serde_json::to_vec(&ev).unwrap());
    // The id map: one message's new → legacy row gone, another's legacy →
    // new row naming a wrong room, and a row no message has.
    let (a, b) = {
        let mut it = hb.iter().skip(60);
        (it.next().unwrap(), it.next().unwrap())
    };
    let num = |cells: &support::StoredCells, q: &str| -> u64 {
        String::from_utf8(cells[q].0.clone())
            .unwrap()
            .parse()
            .unwrap()
    };
    let buckets = job.config.hbase.salt_buckets;
    let id_map = job.config.hbase.id_map_table.clone();
    {
        use falcon_migrate::mapping::keys;
        use falcon_migrate::sink::hbase::cells::{put_cells, row_delete, LATEST};
        let mut c = job.hbase();
        let gone = row_delete(&keys::id_map_new(buckets, num(&a.1 .1, "id")), LATEST);
        c.delete_multiple(&id_map, vec![gone]).unwrap();
        let wrong = put_cells(
            &keys::id_map_legacy(buckets, *b.0),
            b"d",
            &[("room_id", b"424242")],
            Some(i64::from(u32::MAX) * 1000),
        );
        let stray = put_cells(
            &keys::id_map_legacy(buckets, 777_777_777),
            b"d",
            &[("new_id", b"1"), ("room_id", b"1")],
            Some(1),
        );
        c.put_multiple(&id_map, vec![wrong, stray]).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let check = job.verify(&["--target", "hbase", "--recheck-delay", "0"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    let m = &check.json()["id_map"];
    assert_eq!(
        (
            m["missing"].as_u64(),
            m["different"].as_u64(),
            m["extra"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{m}"
    );
    let sample = m["sample"].to_string();
    assert!(
        sample.contains(&format!("L:{} different", b.0)) && sample.contains("L:777777777 extra"),
        "{sample}"
    );

    let out = job.verify(&["--repair", "--recheck-delay", "0.2"]);
    assert_eq!(
        out.code, 0,
        "differences found and repaired\n{}",
        out.stderr
    );
    let s = out.json();
    assert_eq!(s["repair"]["remaining"], 0, "{s}");
    assert_eq!(s["id_map"]["remaining"], 0, "{s}");
    let again = job.verify(&[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let hb = job.hbase_messages();
    let repaired_ts = hb[&hidden].1["body"].1;
    assert!(repaired_ts > v_ms as i64, "rewritten above the marker");
    // The repair's removal events name only keys the source does not have.
    let source_ids: std::collections::HashSet<String> = {
        let pool = job.pool().await;
        let v: Vec<u64> = sqlx::query_scalar("SELECT message_id FROM message")
            .fetch_all(&pool)
            .await
            .unwrap();
        v.into_iter().map(|x| x.to_string()).collect()
    };
    let removals: Vec<String> = job
        .kafka_all("message")
        .into_iter()
        .filter(|e| e["source"]["phase"] == "repair" && e["data"].is_null())
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(removals, vec![ghost.to_string()]);
    assert!(removals.iter().all(|k| !source_ids.contains(k)));

    // A later change that keeps the row's version (update_time untouched)
    // must win over the repaired state in HBase.
    job.sql(&[&format!(
        "UPDATE message SET body = '修理の後の編集' WHERE message_id = {hidden}"
    )])
    .await;
    let d = job.diff(&["--until-now"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    let hb = job.hbase_messages();
    assert_eq!(
        String::from_utf8(hb[&hidden].1["body"].0.clone()).unwrap(),
        "修理の後の編集"
    );
    assert_converged(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_version_does_not_freeze_watermark_mode() {
    let job = Job::new("efuture", 1_000, false).await;
    let base = job.base(&["--workers", "2"]);
    assert_eq!(base.code, 0, "{}", base.stderr);
    let (future, later) = (7u64, 11u64);
    job.sql(&[&format!(
        "UPDATE message SET update_time = UNIX_TIMESTAMP() + 50 * 365 * 86400, body = '未来' WHERE message_id = {future}"
    )])
    .await;
    let first = job.diff(&["--mode", "watermark", "--until-now"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let s = first.json();
    assert_eq!(s["future_rows"], 1, "{s}");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to = s["to"]["message"]["version_s"].as_u64().unwrap();
    assert!(
        to <= now_s + 5,
        "the watermark stays at the source's clock: {s}"
    );

    // A change made now (older than the future row) is still picked up.
    job.sql(&[&format!(
        "UPDATE message SET update_time = UNIX_TIMESTAMP(), body = '今の編集' WHERE message_id = {later}"
    )])
    .await;
    let second = job.diff(&["--mode", "watermark", "--until-now"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let hb = job.hbase_messages();
    let body = |id: u64| String::from_utf8(hb[&id].1["body"].0.clone()).unwrap();
    assert_eq!(body(later), "今の編集");
    assert_eq!(body(future), "未来");
    assert_eq!(second.json()["future_rows"], 1);
}
