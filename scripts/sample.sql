-- A realistic sample for the demo: three process models, 6,000 instances with ids
-- interleaved between models, 2 to 5 tasks each in mixed states and completion orders,
-- task data content-addressed in json_data. About one instance in ten has no completed task.
-- Run in a database where the extension is installed.

INSERT INTO backfill.process_model (id, display_name, metadata_extraction_paths) VALUES
    ('finance/invoice', 'Invoice approval', '[{"key": "customer_id", "path": "customer.id"}]'),
    ('hr/onboarding', 'Employee onboarding', '[{"key": "employee", "path": "employee.name"}]'),
    ('ops/incident', 'Incident response', '[{"key": "severity", "path": "incident.severity"}]');

-- Instance i belongs to invoice (i % 6 in 0..2), onboarding (3, 4) or incident (5).
INSERT INTO backfill.process_instance (id, process_model_identifier, status, created_at_in_seconds, updated_at_in_seconds)
SELECT i,
       CASE WHEN i % 6 < 3 THEN 'finance/invoice' WHEN i % 6 < 5 THEN 'hr/onboarding' ELSE 'ops/incident' END,
       CASE WHEN i % 10 = 3 THEN 'running' ELSE 'complete' END,
       1700000000 + i * 60,
       1700000000 + i * 60 + 3600
  FROM generate_series(1, 6000) AS i;
SELECT setval(pg_get_serial_sequence('backfill.process_instance', 'id'), 6000);

-- Tasks: instance i has 2 + i % 4 tasks; task t of instance i ends at a time that is not in
-- t order (so "latest" means latest end, not last created). Instances with i % 10 = 3 have
-- only READY tasks.
CREATE TEMP TABLE sample_task AS
SELECT i, t, model,
       CASE WHEN i % 10 = 3 THEN 'READY'
            WHEN t = 2 + i % 4 THEN 'READY'          -- the last one is still open
            ELSE 'COMPLETED' END AS state,
       1700000000 + i * 60 + ((t * 7919 + i) % 11) * 30 + t * 0.25 AS end_in_seconds,
       CASE model
       WHEN 'finance/invoice' THEN jsonb_build_object(
           'customer', jsonb_build_object('id', 1000 + i % 97, 'name', (ARRAY['Acme', 'Zoë & Co', 'O''Brien Ltd', '東京商事'])[1 + i % 4]),
           'invoice', jsonb_build_object(
               'number', 'INV-' || lpad(i::text, 6, '0'),
               'status', (ARRAY['draft', 'submitted', 'reviewed', 'approved', 'paid'])[t],
               'total', round((i * 7.31 + t)::numeric, 2),
               'approved', t >= 4,
               'lines', jsonb_build_array(
                   jsonb_build_object('sku', 'SKU-' || (i % 13), 'qty', 1 + t),
                   jsonb_build_object('sku', 'SKU-' || (i % 7), 'qty', 2))),
           'step', t)
       WHEN 'hr/onboarding' THEN jsonb_build_object(
           'employee', jsonb_build_object('name', 'Employee ' || i, 'start', '2026-0' || (1 + i % 9) || '-01'),
           'equipment', CASE WHEN t > 2 THEN jsonb_build_array('laptop', 'badge') ELSE '[]'::jsonb END,
           'manager', CASE WHEN i % 5 = 0 THEN NULL ELSE 'Manager ' || (i % 20) END,
           'step', t)
       ELSE jsonb_build_object(
           'incident', jsonb_build_object('severity', 1 + i % 4, 'escalated', t > 2, 'score', round((i % 100) / 8.0, 3)),
           'step', t)
       END AS data
  FROM (SELECT id AS i, process_model_identifier AS model FROM backfill.process_instance) AS pi,
       generate_series(1, 2 + (i % 4)::int) AS t;

INSERT INTO backfill.json_data (hash, data)
SELECT DISTINCT md5(data::text), data FROM sample_task;

INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash, start_in_seconds, end_in_seconds)
SELECT md5('task' || i || '/' || t)::uuid, i, state, md5(data::text),
       end_in_seconds - 30, CASE WHEN state = 'COMPLETED' THEN end_in_seconds END
  FROM sample_task;

-- What the live engine wrote for the paths the models already had.
INSERT INTO backfill.process_instance_metadata (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
SELECT pi.id, p.key, m.value ->> p.key, pi.updated_at_in_seconds, pi.updated_at_in_seconds
  FROM backfill.process_instance pi
  JOIN backfill.process_model pm ON pm.id = pi.process_model_identifier
 CROSS JOIN LATERAL jsonb_to_recordset(pm.metadata_extraction_paths) AS p(key text, path text)
 CROSS JOIN LATERAL (SELECT backfill.extract_metadata(backfill.latest_task_data(pi.id), pm.metadata_extraction_paths)) AS m(value);

DROP TABLE sample_task;
ANALYZE backfill.process_instance, backfill.task, backfill.json_data, backfill.process_instance_metadata;
