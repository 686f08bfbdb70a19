//! One sync: the models to `backfill.sync_process_models`, a line for each that changed or was
//! rejected, and the jobs the changes queued.

use crate::out;
use crate::pq::{json_texts, Client, DbError};
use crate::spec::Models;
use serde_json::Value;

/// What a sync did.
#[derive(Default)]
pub struct Synced {
    /// Models rejected (the server's reason, or a file that could not be read).
    pub rejected: usize,
    /// The jobs the sync's updates queued, oldest first.
    pub jobs: Vec<i64>,
}

/// Syncs `models` and prints a line per model that changed or was rejected. Fails only for
/// what is no model's fault (the connection, a privilege): the caller decides whether to try
/// again.
pub fn sync(client: &mut Client, models: &Models, catch_up: bool) -> Result<Synced, DbError> {
    for (id, why) in &models.unreadable {
        out::line(&format!("rejected  {id}: {why}"));
    }
    let (actions, mut jobs) = match sync_in_one_transaction(client, &models.models) {
        Ok(done) => done,
        // The whole array was refused before any model was written: the text of one of them
        // is what jsonb cannot hold (\u0000, a number beyond numeric's range). Each model is
        // sent alone then, and those the server refuses are rejected with its reason.
        Err(e) if is_data_error(&e) => one_by_one(client, &models.models)?,
        Err(e) => return Err(e),
    };
    let mut rejected = models.unreadable.len();
    for (id, action) in &actions {
        match action.strip_prefix("rejected: ") {
            Some(why) => {
                rejected += 1;
                out::line(&format!("rejected  {id}: {why}"));
            }
            None if action == "unchanged" => {}
            None => out::line(&format!("{action:<9} {id}")),
        }
    }
    if catch_up {
        // The models this sync inserted were caught up by the insert's trigger.
        let already_there: Vec<&str> = actions
            .iter()
            .filter(|(_, action)| action == "updated" || action == "unchanged")
            .map(|(id, _)| id.as_str())
            .collect();
        for row in client.query(
            "SELECT c.model, c.job_id
               FROM backfill.process_model p
              CROSS JOIN LATERAL backfill.catch_up(p.id) AS c
              WHERE p.id IN (SELECT jsonb_array_elements_text($1::jsonb))
                AND p.metadata_extraction_paths <> '[]'
              ORDER BY c.job_id",
            &[&json_texts(&already_there)],
        )? {
            let (model, job) = (
                row.text(0).unwrap_or_default(),
                row.get::<i64>(1).unwrap_or(0),
            );
            out::line(&format!("catch-up  {model} (job {job})"));
            jobs.push(job);
        }
    }
    Ok(Synced { rejected, jobs })
}

type Actions = Vec<(String, String)>;

/// `backfill.sync_process_models` of `models`: (id, action) for each, and the jobs queued. The
/// jobs are those the sync's own transaction inserted: a job row's `created_at` is the time of
/// the transaction that queued it, which `now()` repeats inside that transaction.
fn sync_in_one_transaction(
    client: &mut Client,
    models: &[Value],
) -> Result<(Actions, Vec<i64>), DbError> {
    client.execute("BEGIN")?;
    let done = sync_models(client, models).and_then(|done| {
        client.execute("COMMIT")?;
        Ok(done)
    });
    if done.is_err() && !client.is_closed() {
        let _ = client.execute("ROLLBACK");
    }
    done
}

/// The sync's statements, in the transaction the caller opened.
fn sync_models(client: &mut Client, models: &[Value]) -> Result<(Actions, Vec<i64>), DbError> {
    let rows = client.query(
        "SELECT id, action FROM backfill.sync_process_models($1::text::jsonb)",
        &[&Value::Array(models.to_vec()).to_string()],
    )?;
    let actions: Actions = rows
        .iter()
        .map(|row| {
            (
                row.text(0).unwrap_or_default().to_owned(),
                row.text(1).unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // An update of the paths queues a job, and so does an insert with paths (a catch-up).
    let updated: Vec<&str> = actions
        .iter()
        .filter(|(_, action)| action == "updated" || action == "inserted")
        .map(|(id, _)| id.as_str())
        .collect();
    let jobs = if updated.is_empty() {
        Vec::new()
    } else {
        client
            .query(
                "SELECT id FROM backfill.job
                  WHERE created_at = now() AND origin = 'model_update' AND parent_id IS NULL
                    AND process_model_identifier IN (SELECT jsonb_array_elements_text($1::jsonb))
                  ORDER BY id",
                &[&json_texts(&updated)],
            )?
            .iter()
            .filter_map(|row| row.get(0))
            .collect()
    };
    Ok((actions, jobs))
}

/// Each model alone: one the server refuses for its data is rejected with the server's
/// reason, and the others are synced.
fn one_by_one(client: &mut Client, models: &[Value]) -> Result<(Actions, Vec<i64>), DbError> {
    let mut actions = Vec::new();
    let mut jobs = Vec::new();
    for model in models {
        match sync_in_one_transaction(client, std::slice::from_ref(model)) {
            Ok((done, queued)) => {
                actions.extend(done);
                jobs.extend(queued);
            }
            Err(e) if is_data_error(&e) => {
                let id = model["id"].as_str().unwrap_or_default().to_owned();
                actions.push((id, format!("rejected: {e}")));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((actions, jobs))
}

/// Whether the server refused data (SQLSTATE class 22, or 54: a value too big).
fn is_data_error(e: &DbError) -> bool {
    e.code
        .as_deref()
        .is_some_and(|code| code.starts_with("22") || code.starts_with("54"))
}
