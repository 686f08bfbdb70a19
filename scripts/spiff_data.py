#!/usr/bin/env python3
"""SpiffWorkflow data, written the way SpiffWorkflow writes it, and the metadata it would store.

generate: a psql script (COPY blocks) that fills the tables of tests/fixtures/spiffworkflow/schema.sql
  with instances whose task data is the text Python's json.dumps writes (default separators,
  ensure_ascii, insertion order, floats in Python's spelling), content-addressed by the sha256
  of json.dumps(data, sort_keys=True), several tasks per instance with numeric(17,6) end times:
  a Start task with {}, intermediate completed tasks sharing a few documents, the latest
  completed task with the instance's own document, READY and FUTURE tasks after it. Some
  instances have no completed task, some a tie on end_in_seconds (the greater guid wins),
  a completed task without an end, or a dangling json_data_hash.

reference: reads {"tasks": [[instance_id, state, end_text, guid, hash], ...],
  "data": {hash: text}, "instances": [id, ...], "paths": [{"key", "path"}]} on stdin and prints
  the rows SpiffWorkflow's rule gives ([[instance_id, key, value], ...] sorted): latest
  COMPLETED task by end_in_seconds (NULL last), then guid, its data (or {}) read with
  json.loads, the dotted path followed through dicts only, no row for a missing or None
  value, str(value) cut to 255 characters. Independent of the extension's code.
"""
import argparse
import hashlib
import json
import random
import sys
from decimal import Decimal

FLOATS = [1e16, -0.0, 2.5e-300, 0.1 + 0.2, 1.0, 1.5e-07, 123.456, 1e22, 5e-324, 1234567.0]
WORDS = ["approve", "invoice", "ledger", "säule", "naïve", "東京", "quote's", 'say "hi"',
         "tab\there", "line\nbreak", "back\\slash", "emoji 🎉", "plain"]
MODELS = [("finance/invoice", "Invoice"), ("hr/leave-request", "Leave request")]
EPOCH_MICROS = 1795903610884019


def dumps(data):
    return json.dumps(data)


def content_hash(data):
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def seconds(micros):
    return str(Decimal(micros).scaleb(-6).quantize(Decimal("0.000001")))


def copy_text(value):
    if value is None:
        return "\\N"
    return (str(value).replace("\\", "\\\\").replace("\t", "\\t")
            .replace("\n", "\\n").replace("\r", "\\r"))


def instance_document(rng, i, size, nul=True):
    number = None if i % 10 == 4 else f"INV-{i:06d}"
    invoice = {"number": number, "total": rng.choice(FLOATS), "currency": "EUR",
               "lines": [{"sku": f"S{k}", "qty": k, "price": round(rng.random() * 100, 2)}
                         for k in range(1, 4)]}
    if i % 10 == 3:
        del invoice["number"]
    data = {
        "invoice": invoice,
        "amount": rng.choice(FLOATS) if i % 3 else i * 1000003,
        "big": 10 ** 20 + i,
        "approved": i % 2 == 0,
        "nothing": None,
        # Insertion order, not sorted: Python keeps it, and so must the rendering.
        "nested": {"z": i, "a": [1.0, None, "it's"], "m": {"é": -0.0}, "b": rng.choice(WORDS)},
        "customer": {"name": rng.choice(WORDS), "address": {"city": rng.choice(WORDS)}},
        "note": " ".join(rng.choice(WORDS) for _ in range(60)),
        "nul_list": ["a\x00b"] if i % 7 == 0 and nul else [],
    }
    if i % 29 == 0 and nul:
        data["nul"] = "a\x00b"
    if size:
        # Form data of about `size` bytes in all, from a pool of chunks (each chunk about 600
        # bytes of json text).
        chunks = (size - len(dumps(data))) // 600 + 1
        data["padding"] = [entry for chunk in rng.choices(padding_pool(), k=chunks) for entry in chunk]
    return data


_POOL = []


def padding_pool():
    if not _POOL:
        rng = random.Random(99)
        for c in range(256):
            _POOL.append([{"id": c * 10 + k, "word": rng.choice(WORDS), "value": round(rng.random() * 1000, 3)}
                          for k in range(10)])
    return _POOL


def generate(args):
    rng = random.Random(args.seed)
    out = sys.stdout
    out.write("\\set ON_ERROR_STOP on\nBEGIN;\n")
    if args.schema:
        out.write(f"SET LOCAL search_path = {args.schema};\n")
    for stub in ["\"user\"", "bpmn_process", "bpmn_process_definition", "task_definition"]:
        out.write(f"INSERT INTO {stub} (id) VALUES (1) ON CONFLICT DO NOTHING;\n")
    first = args.first_id
    ids = [first + k + k // 12 for k in range(args.instances)]  # gaps in the ids
    out.write("COPY process_instance (id, process_model_identifier, process_model_display_name,"
              " process_initiator_id, bpmn_process_definition_id, bpmn_process_id, status,"
              " start_in_seconds, updated_at_in_seconds, created_at_in_seconds) FROM stdin;\n")
    for i in ids:
        model, name = MODELS[0] if i % 5 else MODELS[1]
        created = EPOCH_MICROS // 1_000_000 + i * 60
        status = "complete" if i % 17 else "user_input_required"
        out.write(f"{i}\t{model}\t{name}\t1\t1\t1\t{status}\t{created}\t{created}\t{created}\n")
    out.write("\\.\n")

    # Documents shared by many tasks (forms filled on the way), then each instance's own.
    shared = [{}] + [{"step": k, "form": {"field": rng.choice(WORDS), "value": rng.choice(FLOATS)}}
                     for k in range(4)]
    trap = {"invoice": {"number": "NOT-THE-LATEST"}, "amount": -1}
    out.write("COPY json_data (hash, data) FROM stdin;\n")
    for data in shared + [trap]:
        out.write(f"{content_hash(data)}\t{copy_text(dumps(data))}\n")
    own = {}
    for i in ids:
        data = instance_document(rng, i, args.doc_bytes, nul=not args.without_nul)
        own[i] = content_hash(data)
        out.write(f"{own[i]}\t{copy_text(dumps(data))}\n")
    out.write("\\.\n")

    out.write("COPY task (guid, bpmn_process_id, process_instance_id, task_definition_id, state,"
              " properties_json, json_data_hash, python_env_data_hash, start_in_seconds,"
              " end_in_seconds) FROM stdin;\n")
    empty = content_hash({})
    trap_hash = content_hash(trap)
    guid_rng = random.Random(args.seed + 1)

    def task(i, state, data_hash, end):
        guid = "%032x" % guid_rng.getrandbits(128)
        guid = f"{guid[:8]}-{guid[8:12]}-{guid[12:16]}-{guid[16:20]}-{guid[20:]}"
        end_text = "\\N" if end is None else seconds(end)
        start_text = seconds((end or EPOCH_MICROS) - 250_000)
        out.write(f"{guid}\t1\t{i}\t1\t{state}\t{{}}\t{data_hash}\t{empty}\t{start_text}\t{end_text}\n")

    for i in ids:
        t0 = EPOCH_MICROS + i * 60_000_000
        if i % 17 == 0:
            # Not one task completed yet.
            task(i, "READY", trap_hash, None)
            task(i, "FUTURE", empty, None)
            continue
        task(i, "COMPLETED", empty, t0)
        middle = 1 + i % 3
        for k in range(middle):
            task(i, "COMPLETED", content_hash(shared[1 + (i + k) % 4]), t0 + (k + 1) * 1_500_000)
        latest = t0 + (middle + 1) * 1_500_000 + 884_019
        latest_hash = own[i] if i % 23 else "0" * 64  # a dangling hash: no data, {}
        if i % 11 == 0:
            # A tie on end_in_seconds: the greater guid wins, whichever that is.
            task(i, "COMPLETED", trap_hash, latest)
        task(i, "COMPLETED", latest_hash, latest)
        if i % 19 == 0:
            task(i, "COMPLETED", trap_hash, None)  # completed without an end: counts as earliest
        task(i, "READY", trap_hash, None)
        task(i, "FUTURE", trap_hash, None)
        if i % 13 == 0:
            task(i, "ERROR", trap_hash, latest + 5_000_000)
    out.write("\\.\n")
    out.write("SELECT pg_catalog.setval('process_instance_id_seq', (SELECT max(id) FROM process_instance)) \\g /dev/null\n")
    out.write("COMMIT;\n")


def reference(_args):
    given = json.load(sys.stdin)
    latest = {}
    for instance, state, end, guid, data_hash in given["tasks"]:
        if state != "COMPLETED":
            continue
        # end DESC NULLS LAST, guid DESC: the greatest (has end, end, guid).
        rank = (end is not None, Decimal(end) if end is not None else Decimal(0), guid)
        if instance not in latest or rank > latest[instance][0]:
            latest[instance] = (rank, data_hash)
    rows = []
    for instance in given["instances"]:
        text = given["data"].get(latest[instance][1]) if instance in latest else None
        data = json.loads(text) if text is not None else {}
        for path in given["paths"]:
            value = data
            for segment in path["path"].split("."):
                value = value.get(segment) if isinstance(value, dict) else None
            if value is None:
                continue
            rows.append([instance, path["key"], str(value)[:255]])
    rows.sort(key=lambda r: (r[0], r[1]))
    json.dump(rows, sys.stdout, ensure_ascii=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("generate")
    g.add_argument("--instances", type=int, default=1000)
    g.add_argument("--first-id", type=int, default=1)
    g.add_argument("--doc-bytes", type=int, default=0, help="pad each instance's document to about this size")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--without-nul", action="store_true",
                   help="no \\u0000 in the data (PostgreSQL's json operators and jsonb cannot read it)")
    g.add_argument("--schema", default="", help="the schema holding the tables (search_path)")
    g.set_defaults(run=generate)
    r = commands.add_parser("reference")
    r.set_defaults(run=reference)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
