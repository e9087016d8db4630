"""Environment benchmark: verify throughput and episode reset time, ours vs the reference approach.

The reference (NeMo Gym ``workplace_assistant``) re-reads its six CSV files with pandas for every
session and, to verify, builds two fresh environments (predicted and ground truth), replays the
calls with pandas operations and compares lower-cased DataFrames with ``DataFrame.equals``. The
``PandasReference`` class below does exactly that work for the tools the benchmark trajectories use
(pandas is available here as a datasets dependency; env_sim itself never imports it). Both sides
score the same trajectories and must agree on every reward.

Run: ``make bench-env`` (or ``python -m bench.env_bench``). Writes bench/results/env.json and adds
rows to docs/benchmarks.md. Everything runs in this one process, i.e. on one core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from env_sim.workplace_assistant.database import DATA_DIR, Database  # noqa: E402
from env_sim.workplace_assistant.verify import verify  # noqa: E402
from infra.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "env.json"
BENCH_DOC = ROOT / "docs" / "benchmarks.md"
DOC_HEADER = "| date | machine | config | metric | figure |\n|---|---|---|---|---|\n"


def _call(tool, **kwargs):
    return {"name": tool, "arguments": json.dumps(kwargs)}


def make_trajectories(n: int, seed: int = 0) -> list[tuple[list, list]]:
    """(predicted, ground_truth) pairs shaped like real episodes: a few reads, then writes that are
    right, partly wrong, extra, or missing."""
    rng = random.Random(seed)
    snap = Database.fresh()
    email_ids = snap.emails.column("email_id")
    event_ids = snap.calendar_events.column("event_id")
    customer_ids = snap.crm.column("customer_id")
    people = list(snap.directory)
    tasks = [
        lambda: [_call("email_reply_email", email_id=rng.choice(email_ids), body="Thanks, will do.")],
        lambda: [_call("email_delete_email", email_id=rng.choice(email_ids))],
        lambda: [
            _call(
                "calendar_update_event",
                event_id=rng.choice(event_ids),
                field="event_name",
                new_value="Risk Management Forum",
            )
        ],
        lambda: [
            _call("customer_relationship_manager_update_customer", customer_id=c, field="status", new_value="Lost")
            for c in rng.sample(customer_ids, rng.randint(1, 5))
        ],
        lambda: [
            _call("customer_relationship_manager_delete_customer", customer_id=c)
            for c in rng.sample(customer_ids, rng.randint(1, 4))
        ],
        lambda: [
            _call(
                "customer_relationship_manager_add_customer",
                customer_name="Dakota Thomas",
                assigned_to_email=rng.choice(people),
                status="Lead",
            )
        ],
        lambda: [
            _call(
                "analytics_create_plot",
                time_min="2023-11-01",
                time_max="2023-11-29",
                value_to_plot="total_visits",
                plot_type=rng.choice(["bar", "line"]),
            )
        ],
        lambda: [],
    ]
    reads = [
        lambda: _call("email_search_emails", query=rng.choice(["kofi", "carlos update", "meeting"]), page_size=5),
        lambda: _call(
            "customer_relationship_manager_search_customers",
            status="Proposal",
            product_interest="Hardware",
            page_size=10,
        ),
        lambda: _call("company_directory_find_email_address", name=rng.choice(["nadia", "raj", "akira"])),
    ]
    out = []
    for _ in range(n):
        gt = rng.choice(tasks)()
        pred = [rng.choice(reads)() for _ in range(rng.randint(0, 2))]
        r = rng.random()
        if r < 0.5:
            pred += gt  # correct
        elif r < 0.7 and gt:
            pred += gt[:-1]  # one write missing
        elif r < 0.85:
            pred += gt + rng.choice(tasks)()  # an extra write
        else:
            pred += [_call("email_delete_email", email_id=rng.choice(email_ids))]  # wrong write
        out.append((pred, gt))
    return out


class PandasReference:
    """The reference's per-episode work, in pandas: read the CSVs, replay calls, compare frames."""

    def __init__(self):
        import pandas as pd

        self.pd = pd
        proc = DATA_DIR / "processed"
        self.emails = pd.read_csv(proc / "emails.csv", dtype=str)
        self.events = pd.read_csv(proc / "calendar_events.csv", dtype=str)
        self.analytics = pd.read_csv(proc / "analytics_data.csv", dtype=str)
        self.analytics["user_engaged"] = self.analytics["user_engaged"] == "True"
        self.plots = pd.DataFrame(columns=["file_path"])
        self.tasks = pd.read_csv(proc / "project_tasks.csv", dtype=str)
        self.crm = pd.read_csv(proc / "customer_relationship_manager_data.csv", dtype=str)
        self.directory = pd.read_csv(DATA_DIR / "raw" / "email_addresses.csv", header=None, names=["email_address"])

    # -- the tools the benchmark trajectories use ---------------------------------------------------
    def _send(self, recipient, subject, body):
        new_id = str(int(self.emails["email_id"].max()) + 1)
        row = {
            "email_id": new_id,
            "inbox/outbox": "outbox",
            "sender/recipient": recipient.lower(),
            "subject": subject,
            "sent_datetime": "2023-11-30 23:59:00",
            "body": body,
        }
        self.emails = self.pd.concat([self.emails, self.pd.DataFrame([row])], ignore_index=True)

    def email_reply_email(self, email_id, body):
        if email_id in self.emails["email_id"].values:
            email = self.emails[self.emails["email_id"] == email_id].to_dict(orient="records")[0]
            self._send(email["sender/recipient"], f"RE: {email['subject']}", body)

    def email_delete_email(self, email_id):
        if email_id in self.emails["email_id"].values:
            self.emails = self.emails[self.emails["email_id"] != email_id]

    def email_search_emails(self, query="", page=1, page_size=5):
        words = query.lower().split()
        hit = self.emails.apply(
            lambda r: all(w in f"{r['subject']} {r['body']} {r['sender/recipient']}".lower() for w in words), axis=1
        )
        found = self.emails[hit].copy()
        found["t"] = self.pd.to_datetime(found["sent_datetime"])
        return found.sort_values("t", ascending=False).drop(columns=["t"]).to_dict(orient="records")[:page_size]

    def calendar_update_event(self, event_id, field, new_value):
        if event_id in self.events["event_id"].values:
            self.events.loc[self.events["event_id"] == event_id, field] = new_value

    def analytics_create_plot(self, time_min, time_max, value_to_plot, plot_type):
        self.plots.loc[len(self.plots)] = [f"plots/{time_min}_{time_max}_{value_to_plot}_{plot_type}.png"]

    def customer_relationship_manager_search_customers(self, status, product_interest, page_size=5):
        c = self.crm[self.crm["status"].str.contains(status, case=False)]
        c = c[c["product_interest"].str.contains(product_interest, case=False)]
        return c.to_dict(orient="records")[:page_size]

    def customer_relationship_manager_update_customer(self, customer_id, field, new_value):
        if customer_id in self.crm["customer_id"].values:
            self.crm.loc[self.crm["customer_id"] == customer_id, field] = new_value

    def customer_relationship_manager_delete_customer(self, customer_id):
        if customer_id in self.crm["customer_id"].values:
            self.crm = self.crm[self.crm["customer_id"] != customer_id]

    def customer_relationship_manager_add_customer(self, customer_name, assigned_to_email, status):
        new_id = str(int(self.crm["customer_id"].max()) + 1).zfill(8)
        row = {
            "customer_id": new_id,
            "customer_name": customer_name,
            "customer_email": None,
            "customer_phone": None,
            "last_contact_date": None,
            "product_interest": None,
            "status": status,
            "assigned_to_email": assigned_to_email.lower(),
            "notes": "",
            "follow_up_by": None,
        }
        self.crm = self.pd.concat([self.crm, self.pd.DataFrame([row])], ignore_index=True)

    def company_directory_find_email_address(self, name):
        d = self.directory
        return d[d["email_address"].str.contains(name.lower(), case=False)]["email_address"].tolist()

    # -- replay and compare ----------------------------------------------------------------------
    @classmethod
    def replay(cls, calls) -> PandasReference:
        env = cls()
        for c in calls:
            try:
                getattr(env, c["name"])(**json.loads(c["arguments"]))
            except Exception:
                continue
        return env

    def frames(self):
        out = []
        for df in (self.events, self.emails, self.plots, self.tasks, self.crm):
            df = df.copy()
            for col in df.columns:
                if col not in ("status", "list_name", "board"):
                    df[col] = df[col].str.lower()
            out.append(df)
        return out

    @classmethod
    def reward(cls, predicted, ground_truth) -> float:
        a, b = cls.replay(predicted).frames(), cls.replay(ground_truth).frames()
        return float(all(x.equals(y) for x, y in zip(a, b)))


def _time_per_item(fn, items, min_seconds: float) -> tuple[float, list]:
    """Seconds per item over whole passes until min_seconds elapsed; also the results of pass 1."""
    results = [fn(*it) for it in items]  # warm-up pass, also the results
    passes, start = 0, time.perf_counter()
    while True:
        for it in items:
            fn(*it)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / (passes * len(items)), results


def _time_call(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def machine_name() -> str:
    """CPU model, its widest vector extension (the same model name covers AVX2-only and AVX512-BF16 machines
    here, and CPU figures differ ~2x between them), cores and Python."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = next(
        (
            name
            for flag, name in (("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"))
            if flag in flags
        ),
        None,
    )
    return f"{cpu}{f' ({isa})' if isa else ''}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run(n_trajectories: int, min_seconds: float) -> dict:
    import pandas

    trajectories = make_trajectories(n_trajectories)
    ours_s, ours_rewards = _time_per_item(lambda p, g: verify(p, g).reward, trajectories, min_seconds)
    ref_sample = trajectories[: max(20, n_trajectories // 10)]
    ref_s, ref_rewards = _time_per_item(PandasReference.reward, ref_sample, min_seconds)
    disagreements = sum(a != b for a, b in zip(ours_rewards, ref_rewards))
    if disagreements:
        raise SystemExit(f"reward mismatch between env_sim and the pandas reference on {disagreements} trajectories")
    reset_ours = _time_call(Database.fresh, 2000)
    reset_ref = _time_call(PandasReference, 30)
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine_name(),
        "pandas": pandas.__version__,
        "n_trajectories": n_trajectories,
        "mean_reward": sum(ours_rewards) / len(ours_rewards),
        "ours": {"verify_trajectories_per_s": 1.0 / ours_s, "reset_us": reset_ours * 1e6},
        "reference_pandas": {
            "verify_trajectories_per_s": 1.0 / ref_s,
            "reset_us": reset_ref * 1e6,
            "n_trajectories_timed": len(ref_sample),
        },
        "speedup_verify": ref_s / ours_s,
        "speedup_reset": reset_ref / reset_ours,
    }


def publish(
    result: dict, output: Path, doc: tuple[str, list[tuple[str, str]]] | None, hidden_keys: tuple[str, ...] = ()
) -> None:
    """A bench's ending: its result as JSON at `output`, printed (less the bulky `hidden_keys`), and `doc`'s
    (config, [(metric, figure)]) rows added to the table of docs/benchmarks.md (None: left out)."""
    atomic_write_json(output, result)
    print(json.dumps({k: v for k, v in result.items() if k not in hidden_keys}, indent=1))
    if doc is not None:
        config, rows = doc
        append_table_rows(BENCH_DOC, result["date"], result["machine"], config, rows)


def append_table_rows(path: Path, date: str, machine: str, config: str, rows: list[tuple[str, str]]) -> None:
    """Add (metric, figure) rows to the benchmarks table (created with its header if missing), right after
    the table's last row."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n" + DOC_HEADER
    if DOC_HEADER not in text:
        text = text.rstrip("\n") + "\n\n" + DOC_HEADER
    lines = "".join(f"| {date} | {machine} | {config} | {m} | {f} |\n" for m, f in rows)
    head, sep, tail = text.partition(DOC_HEADER)
    block_end = tail.find("\n\n")
    table, rest = (tail, "") if block_end < 0 else (tail[: block_end + 1], tail[block_end + 1 :])
    atomic_write_text(path, head + sep + table + lines + rest)


def append_doc_rows(result: dict, path: Path = BENCH_DOC) -> None:
    """Add this run's rows to the benchmarks table."""
    config = f"bench.env_bench, {result['n_trajectories']} trajectories, 1 core"
    o, r = result["ours"], result["reference_pandas"]
    rows = [
        ("env verify throughput (env_sim)", f"{o['verify_trajectories_per_s']:,.0f} trajectories/s"),
        (
            f"env verify throughput (reference approach, pandas {result['pandas']})",
            f"{r['verify_trajectories_per_s']:,.1f} trajectories/s",
        ),
        ("env verify speed-up vs reference approach", f"{result['speedup_verify']:,.0f}x"),
        ("env episode reset (env_sim Database.fresh)", f"{o['reset_us']:,.1f} µs"),
        ("env episode reset (reference approach: re-read CSVs)", f"{r['reset_us'] / 1000:,.1f} ms"),
        ("env reset speed-up vs reference approach", f"{result['speedup_reset']:,.0f}x"),
    ]
    append_table_rows(path, result["date"], result["machine"], config, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trajectories", type=int, default=400)
    p.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed duration per side")
    p.add_argument("--no-doc", action="store_true", help="do not append rows to docs/benchmarks.md")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = run(args.trajectories, args.min_seconds)
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    if not args.no_doc:
        append_doc_rows(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
