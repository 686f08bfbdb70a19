//! One sync: the models to `backfill.sync_process_models`, a line for each that changed or was
//! rejected, and the jobs the changes queued.

use crate::connect::describe;
use crate::out;
use crate::spec::Models;
use postgres::Client;
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
pub fn sync(client: &mut Client, models: &Models) -> Result<Synced, postgres::Error> {
    for (id, why) in &models.unreadable {
        out::line(&format!("rejected  {id}: {why}"));
    }
    let (actions, jobs) = match sync_in_one_transaction(client, &models.models) {
        Ok(done) => done,
        // The whole array was refused before any model was written: the text of one of them
        // is what jsonb cannot hold (\u0000, a number beyond numeric's range). Each model is
        // sent alone then, and those the server refuses are rejected with its reason.
        Err(e) if is_data_error(&e) => one_by_one(client, &models.models)?,
        Err(e) => return Err(e),
    };
    let mut rejected = models.unreadable.len();
    for (id, action) in actions {
        match action.strip_prefix("rejected: ") {
            Some(why) => {
                rejected += 1;
                out::line(&format!("rejected  {id}: {why}"));
            }
            None if action == "unchanged" => {}
            None => out::line(&format!("{action:<9} {id}")),
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
) -> Result<(Actions, Vec<i64>), postgres::Error> {
    let mut transaction = client.transaction()?;
    let rows = transaction.query(
        "SELECT id, action FROM backfill.sync_process_models($1::text::jsonb)",
        &[&Value::Array(models.to_vec()).to_string()],
    )?;
    let actions: Actions = rows
        .iter()
        .map(|row| {
            let id: Option<String> = row.get(0);
            (id.unwrap_or_default(), row.get(1))
        })
        .collect();
    let updated: Vec<&str> = actions
        .iter()
        .filter(|(_, action)| action == "updated")
        .map(|(id, _)| id.as_str())
        .collect();
    let jobs = if updated.is_empty() {
        Vec::new()
    } else {
        transaction
            .query(
                "SELECT id FROM backfill.job
                  WHERE created_at = now() AND origin = 'model_update' AND parent_id IS NULL
                    AND process_model_identifier = ANY ($1)
                  ORDER BY id",
                &[&updated],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    transaction.commit()?;
    Ok((actions, jobs))
}

/// Each model alone: one the server refuses for its data is rejected with the server's
/// reason, and the others are synced.
fn one_by_one(
    client: &mut Client,
    models: &[Value],
) -> Result<(Actions, Vec<i64>), postgres::Error> {
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
                actions.push((id, format!("rejected: {}", describe(&e))));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((actions, jobs))
}

/// Whether the server refused data (SQLSTATE class 22, or 54: a value too big).
fn is_data_error(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|code| matches!(&code.code()[..2], "22" | "54"))
}
