"""Training exports against real consumers: Hugging Face `datasets` loads every file, rows have TRL's and OpenAI's
documented shapes, splits are leak-free, PII scan passes on τ-bench, manifests reproduce byte for byte."""
from __future__ import annotations

import shutil
from datetime import date

import orjson
import pytest

from jobs import heuristics
from jobs.export import ExportFailed, ExportRequest, build, load_manifest, reproduce, run
from jobs.export_rows import FORMATS
from jobs.splits import leakage
from schemas.reward import load_reward_spec
from tests.conftest import TAU

pytestmark = pytest.mark.integration

SYN_START, SYN_END = date(2026, 11, 2), date(2026, 11, 4)
TAU_START, TAU_END = date(2024, 5, 14), date(2024, 5, 17)
V2 = load_reward_spec("reward-v2")


def rows(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def synthetic_lake(spark, base_settings, tmp_path_factory):
    """~8k synthetic events → bronze (scrubbed) and silver by the batch path → heuristics under reward-v2."""
    from streams.recompute import bronze_through, write_silver
    from streams.sources.synthetic import synthetic_events

    s = base_settings.model_copy(update={"lake_root": tmp_path_factory.mktemp("export-syn") / "lake"})
    write_silver(s, bronze_through(s, (e.event for e in synthetic_events(8_000, seed=5, sessions_per_minute=0.5))))
    heuristics.run(spark, s, SYN_START, SYN_END, spec=V2)
    return s


@pytest.fixture(scope="module")
def synthetic_export(synthetic_lake):
    return run(synthetic_lake, ExportRequest("syn", tuple(FORMATS), SYN_START, SYN_END, "reward-v2"))


@pytest.fixture(scope="module")
def tau_export(spark, tau_lake):
    """All 200 τ-bench trajectories through the real worker (Presidio on), scored, exported with the customer
    database as the PII ground truth."""
    s, _, _ = tau_lake
    heuristics.run(spark, s, TAU_START, TAU_END, spec=V2)
    s = s.model_copy(update={"pii_ground_truth": TAU / "airline-users.json"})
    return s, run(s, ExportRequest("tau", tuple(FORMATS), TAU_START, TAU_END, "reward-v2"))


def test_every_file_loads_with_hugging_face_datasets(synthetic_export, tau_export):
    from lake.training import export_split

    for result in (synthetic_export, tau_export[1]):
        for name, meta in result.manifest["files"].items():
            if not name.endswith(".jsonl"):
                continue
            fmt, split = name.split("/")[0], name.split("/")[1].removesuffix(".jsonl")
            ds = export_split(result.path, fmt, split)
            assert len(ds) == meta["rows"]
            assert set(ds.unique("split")) == {split} if meta["rows"] else ds.num_rows == 0
        # every split of every format has its file, empty when no row went to it (the τ-bench export has no holdout)
        assert {n for n in result.manifest["files"] if n.endswith(".jsonl")} == {
            f"{fmt}/{split}.jsonl" for fmt in result.manifest["request"]["formats"]
            for split in ("train", "validation", "test", "holdout")}
    assert any(m["rows"] == 0 for m in tau_export[1].manifest["files"].values() if "rows" in m)


def test_rows_have_trls_documented_columns(synthetic_export):
    out = synthetic_export.path
    for r in rows(out / "dpo" / "train.jsonl"):
        # conversational preference: prompt is a list of messages, chosen/rejected assistant turns
        assert r["prompt"][-1]["role"] in ("user", "assistant") and any(m["role"] == "user" for m in r["prompt"])
        assert [m["role"] for m in r["chosen"]] == [m["role"] for m in r["rejected"]] == ["assistant"]
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    kto = rows(out / "kto" / "train.jsonl")
    assert {r["label"] for r in kto} == {True, False}
    assert all(r["completion"][0]["role"] == "assistant" and r["prompt"] for r in kto)
    sft = rows(out / "sft" / "train.jsonl")
    assert sft and all(r["messages"][-1]["role"] == "assistant" and r["reward"] >= V2.exports.sft_min_composite
                       for r in sft)
    steps = rows(out / "steps" / "train.jsonl")
    for ep in steps[:50]:
        traj = ep["trajectories"][0]
        assert traj["steps"][-1]["done"] and not any(s["done"] for s in traj["steps"][:-1])
        assert all(0 <= s["reward"] <= 1 for s in traj["steps"])


def test_rows_have_openais_documented_shapes(synthetic_export, tau_export):
    for r in rows(synthetic_export.path / "openai_dpo" / "train.jsonl"):
        assert set(r) >= {"input", "preferred_output", "non_preferred_output"}
        assert isinstance(r["input"]["messages"], list)
        assert r["preferred_output"][0]["role"] == r["non_preferred_output"][0]["role"] == "assistant"
    out = tau_export[1].path
    sft = [r for split in ("train", "validation", "test", "holdout") if (out / "sft" / f"{split}.jsonl").exists()
           for r in rows(out / "sft" / f"{split}.jsonl")]
    assert sft, "τ-bench has successful episodes above the threshold"
    for r in sft:
        roles = [m["role"] for m in r["messages"]]
        assert roles[0] == "system" and "user" in roles and roles[-1] == "assistant"
        for m in r["messages"]:
            for call in m.get("tool_calls") or []:
                assert call["type"] == "function" and isinstance(call["function"]["arguments"], str)
            if m["role"] == "tool":
                assert m["tool_call_id"]
        assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in r.get("tools", []))
    rft = rows(out / "rft" / "train.jsonl")
    assert rft and all(r["messages"][-1]["role"] == "user" and r["reference_answer"]["source"] == "tau-bench"
                       for r in rft)
    grader = orjson.loads((out / "rft" / "grader.json").read_bytes())
    namespace: dict = {}
    exec(grader["source"], namespace)  # the grader a trainer would run: it scores a perfect sample 1.0
    item = next(r for r in rft if r["reference_answer"]["actions"])
    sample = {"output_tools": [{"function": {"name": a["name"], "arguments": orjson.dumps(a["kwargs"]).decode()}}
                               for a in item["reference_answer"]["actions"]]}
    assert namespace["grade"](sample, item) == 1.0 and namespace["grade"]({"output_tools": []}, item) == 0.0


def test_tau_bench_export_carries_no_pii_and_counts_match(tau_export, tau_lake):
    _, records, _ = tau_lake
    m = tau_export[1].manifest
    assert m["pii_scan"]["hits"] == {} and "ground_truth" in m["pii_scan"]["detectors"]
    # every episode with an outside grade becomes one RFT prompt unless dropped as a near duplicate, or as an exact
    # duplicate of another's prompt: two trials of one task can open with the same words (and under privacy-3,
    # whether their scrubbed system prompts matched depended on the order the worker saw each session's events
    # across the two raw topics: placeholders are numbered in that order, and NER took the heading "Modify" for a name)
    episodes, duplicates = m["counts"]["episodes"], m["counts"]["exact_duplicates_removed"]
    rft = sum(m["counts"]["rows"]["rft"].values()) + duplicates.get("rft", 0)
    assert rft == episodes["formatted"] == len(records) - episodes["near_duplicates_removed"]
    # an episode counts as exported when any format kept a row of it
    assert episodes["formatted"] - sum(duplicates.values()) <= episodes["exported"] <= episodes["formatted"]
    assert m["sources"]["bronze/events"] is not None and m["reward_version"] == "reward-v2"
    # the files themselves, scanned apart from the export's own scan (whose word the manifest above is): every line
    # of every exported file against the customer database, names, e-mails, birth dates, streets, cards and ids
    from privacy.leakage import GroundTruth, LeakScanner

    files = sorted(tau_export[1].path.rglob("*.jsonl"))
    assert files
    leaks = LeakScanner(GroundTruth.load(TAU / "airline-users.json")).scan(
        line for f in files for line in f.read_text().splitlines())
    assert leaks.total == 0, f"leaked {leaks.found}:\n" + "\n".join(leaks.examples)


def test_splits_are_disjoint_by_user_and_follow_the_ratios(synthetic_export):
    users: dict[str, set[str]] = {}
    for name in synthetic_export.manifest["files"]:
        if name.startswith("steps/"):
            for r in rows(synthetic_export.path / name):
                users.setdefault(r["user_id"], set()).add(r["split"])
    assert len(users) > 300 and all(len(s) == 1 for s in users.values())
    share = {sp: sum(1 for s in users.values() if sp in s) / len(users) for sp in ("train", "validation", "test")}
    assert 0.68 < share["train"] < 0.84 and 0.05 < share["validation"] < 0.15 and 0.05 < share["test"] < 0.15


def test_holdout_stays_frozen_when_the_share_changes(synthetic_lake, synthetic_export, tmp_path):
    holdout = {r["user_id"] for r in rows(synthetic_export.path / "steps" / "holdout.jsonl")}
    assert holdout
    s = synthetic_lake.model_copy(update={"export_holdout_share": 0.0})
    again = run(s, ExportRequest("syn", ("steps",), SYN_START, SYN_END, "reward-v2"))
    assert again.path.name != synthetic_export.path.name
    assert {r["user_id"] for r in rows(again.path / "steps" / "holdout.jsonl")} == holdout


def test_split_settings_that_would_thaw_the_frozen_holdout_are_refused(synthetic_lake, tmp_path):
    """A larger holdout share moved groups earlier exports trained on into the holdout; another salt or grouping
    read none of the frozen groups, whose episodes then landed in train. Each is refused, naming the setting."""
    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    shutil.copytree(synthetic_lake.lake, s.lake, ignore=shutil.ignore_patterns("exports"))
    first = run(s, ExportRequest("first", ("kto",), SYN_START, SYN_END, "reward-v2"))
    assert first.manifest["holdout_groups_registered"] > 0
    for change, setting in ((dict(export_holdout_share=s.export_holdout_share * 2), "HOLDOUT_SHARE"),
                            (dict(export_split_salt="another"), "SPLIT_SALT"),
                            (dict(export_group_by="task"), "GROUP_BY")):
        with pytest.raises(ExportFailed, match=f"TRAJLAKE_EXPORT_{setting}.*start a new registry"):
            run(s.model_copy(update=change), ExportRequest("next", ("kto",), SYN_START, SYN_END, "reward-v2"))
    # a smaller share keeps the registered groups in the holdout, and is allowed
    assert run(s.model_copy(update={"export_holdout_share": s.export_holdout_share / 2}),
               ExportRequest("next", ("kto",), SYN_START, SYN_END, "reward-v2")).path.name == "v0001"


def test_manifest_reproduces_byte_identical_files(synthetic_lake, synthetic_export, tmp_path):
    rebuilt = reproduce(synthetic_lake, synthetic_export.path / "manifest.json", tmp_path / "again")
    assert {k: v["sha256"] for k, v in rebuilt["files"].items()} == \
        {k: v["sha256"] for k, v in synthetic_export.manifest["files"].items()}
    # the manifest pins versions: rows streamed in later do not change a reproduction
    assert load_manifest(synthetic_export.path)["sources"]["silver/episodes"] is not None


def test_a_rebuild_that_differs_names_a_changed_near_duplicate_method(synthetic_lake, synthetic_export, tmp_path):
    m = load_manifest(synthetic_export.path)
    assert m["splits"]["near_duplicate_method"]
    # as if made by an older version: another method, and a file the rebuild will not match
    m["splits"]["near_duplicate_method"] = "minhash-word3-duckdb-v1"
    first = sorted(m["files"])[0]
    m["files"][first]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_bytes(orjson.dumps(m))
    with pytest.raises(ExportFailed, match=f"differs from the manifest in {first}; .*near-duplicate method "
                                           "'minhash-word3-duckdb-v1'.*version that made it"):
        reproduce(synthetic_lake, tmp_path / "manifest.json", tmp_path / "again")


def test_leakage_check_catches_a_planted_leak(synthetic_export):
    train = rows(synthetic_export.path / "kto" / "train.jsonl")
    test = rows(synthetic_export.path / "kto" / "test.jsonl")
    clean = [(r["split"], r["user_id"], "") for r in train + test]
    assert leakage(clean, frozenset()).ok
    planted = clean + [("test", train[0]["user_id"], "")]
    result = leakage(planted, frozenset())
    assert not result.ok and "1 group(s) in more than one split" in result.summary()
    assert not leakage(clean, frozenset({train[0]["user_id"]})).ok  # a frozen group outside the holdout


def test_a_pii_hit_fails_the_export_and_publishes_nothing(synthetic_lake, tmp_path):
    """A value the scrubber missed (planted in a copy of the lake's bronze events) stops the export."""
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    from lake.readers import read_table
    from lake.tables import table_path
    from schemas.tables import BRONZE_EVENTS, GOLD_EPISODE_SCORES

    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    shutil.copytree(synthetic_lake.lake, s.lake, ignore=shutil.ignore_patterns("exports"))
    events = read_table(s, BRONZE_EVENTS)
    # the opening request of a completed, scored episode in the window: the prompt of its training rows
    scores = read_table(s, GOLD_EPISODE_SCORES, columns=["session_id", "outcome", "gate_passed"])
    exported = pc.filter(scores["session_id"], pc.and_(pc.equal(scores["outcome"], "completed"), scores["gate_passed"]))
    requests = events.filter(pc.and_(pc.equal(events["event_type"], "user_message"),
                                     pc.and_(pc.is_null(events["action_id"]), pc.is_in(events["session_id"], exported))))
    row = requests.slice(0, 1).to_pylist()[0]
    row.update(event_id="00000000-0000-4000-8000-00000000beef", body=orjson.dumps(
        {"text": "my address is jane.roe@example.com, call me on 415-555-0100"}).decode())
    write_deltalake(str(table_path(s, BRONZE_EVENTS)), events.schema.empty_table().from_pylist([row], events.schema),
                    mode="append", partition_by=["date"])
    with pytest.raises(ExportFailed, match="email value.*phone value|personal data") as exc:
        run(s, ExportRequest("leaky", ("kto", "sft"), SYN_START, SYN_END, "reward-v2"))
    assert exc.value.manifest["quality"]["failures"][0]["column"] == "pii_values"
    with pytest.raises(ExportFailed, match="no override publishes personal data"):  # the override cannot pass PII
        run(s, ExportRequest("leaky", ("kto", "sft"), SYN_START, SYN_END, "reward-v2", allow_failed_checks=True))
    root = s.lake / "exports" / "leaky"
    assert not any(p.name.startswith("v") for p in root.iterdir())
    assert not (s.lake / "exports" / "holdout_registry").exists()


def test_bad_requests_name_the_problem(synthetic_lake, tmp_path):
    with pytest.raises(ExportFailed, match="unknown format"):
        build(synthetic_lake, ExportRequest("x", ("sft", "parquet"), SYN_START, SYN_END, "reward-v2"), tmp_path)
    with pytest.raises(ExportFailed, match="no \\[exports\\] policy"):
        build(synthetic_lake, ExportRequest("x", ("sft",), SYN_START, SYN_END, "reward-v1"), tmp_path)
    with pytest.raises(ExportFailed, match="no episodes"):
        build(synthetic_lake, ExportRequest("x", ("sft",), date(2020, 1, 1), date(2020, 1, 2), "reward-v2"), tmp_path)
    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    for name in (".hidden", "..", "a/b", "holdout_registry"):
        with pytest.raises(ExportFailed, match="export name"):
            run(s, ExportRequest(name, ("sft",), SYN_START, SYN_END, "reward-v2"))
    assert not (tmp_path / "lake").exists()  # refused before anything was made on disk
    bad_truth = synthetic_lake.model_copy(update={"pii_ground_truth": tmp_path / "users.json"})
    with pytest.raises(ExportFailed, match="TRAJLAKE_PII_GROUND_TRUTH=.*users.json cannot be loaded"):
        build(bad_truth, ExportRequest("x", ("sft",), SYN_START, SYN_END, "reward-v2"), tmp_path / "out")


def test_a_rebuild_ignores_holdout_groups_registered_after_the_export(synthetic_lake, tmp_path):
    """An export made before the holdout registry existed is rebuilt with an empty registry, not with the groups
    later exports froze (they would move into holdout and change every split file)."""
    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    shutil.copytree(synthetic_lake.lake, s.lake, ignore=shutil.ignore_patterns("exports"))
    first = run(s, ExportRequest("first", ("kto",), SYN_START, SYN_END, "reward-v2"))
    assert first.manifest["sources"]["exports/holdout_registry"] is None
    # a larger share is refused against this registry (check_registry_policy); a new registry takes it
    shutil.rmtree(s.lake / "exports" / "holdout_registry")
    wider = run(s.model_copy(update={"export_holdout_share": 0.4}),
                ExportRequest("wider", ("kto",), SYN_START, SYN_END, "reward-v2"))
    assert wider.manifest["holdout_groups_registered"] > first.manifest["holdout_groups_registered"]
    rebuilt = reproduce(s, first.path, tmp_path / "again")
    assert {k: v["sha256"] for k, v in rebuilt["files"].items()} == \
        {k: v["sha256"] for k, v in first.manifest["files"].items()}


def test_a_rebuild_names_a_setting_or_spec_that_differs_from_the_manifest(synthetic_lake, synthetic_export,
                                                                         tmp_path):
    m = load_manifest(synthetic_export.path)
    assert m["request"]["margin_days"] == synthetic_lake.job_margin_days and len(m["reward_spec_sha256"]) == 64
    with pytest.raises(ExportFailed, match="set TRAJLAKE_JOB_MARGIN_DAYS="):
        reproduce(synthetic_lake.model_copy(update={"job_margin_days": synthetic_lake.job_margin_days + 1}),
                  synthetic_export.path, tmp_path / "a")
    m["reward_spec_sha256"] = "0" * 64   # as if reward-v2.toml had been edited since
    (tmp_path / "manifest.json").write_bytes(orjson.dumps(m))
    with pytest.raises(ExportFailed, match="reward-v2 here has other numbers.*restore schemas/reward/reward-v2.toml"):
        reproduce(synthetic_lake, tmp_path / "manifest.json", tmp_path / "b")


def test_an_export_whose_holdout_cannot_be_frozen_publishes_nothing(synthetic_lake, tmp_path, monkeypatch):
    import jobs.export as export

    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    shutil.copytree(synthetic_lake.lake, s.lake, ignore=shutil.ignore_patterns("exports"))

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_register_holdout", broken)
    with pytest.raises(ExportFailed, match="registering the .* holdout group.*disk full.*nothing was published"):
        run(s, ExportRequest("frozen", ("kto",), SYN_START, SYN_END, "reward-v2"))
    root = s.lake / "exports" / "frozen"
    assert [p.name.split("-")[0] for p in root.iterdir()] == [".failed"] and not (root / "LATEST").exists()
    monkeypatch.undo()
    assert run(s, ExportRequest("frozen", ("kto",), SYN_START, SYN_END, "reward-v2")).path.name == "v0001"


def test_an_export_the_pii_scan_refuses_keeps_no_rows(synthetic_lake, tmp_path):
    """Personal data that got past the scrubber (here written into silver by hand) refuses the export, and the
    refused run's directory keeps the reason, not the rows: they are the data that must not exist."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from lake.readers import read_table
    from lake.tables import table_path
    from schemas.tables import SILVER_STEPS

    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    shutil.copytree(synthetic_lake.lake, s.lake, ignore=shutil.ignore_patterns("exports"))
    steps = read_table(s, SILVER_STEPS)
    outputs = steps.column("output").to_pylist()
    outputs[0] = f"{outputs[0]} Reach me at jane.doe@example.com"
    steps = steps.set_column(steps.schema.get_field_index("output"), "output",
                             pa.array(outputs, steps.schema.field("output").type))
    write_deltalake(str(table_path(s, SILVER_STEPS)), steps, mode="overwrite",
                    partition_by=list(SILVER_STEPS.partition_by) or None)
    with pytest.raises(ExportFailed, match="the PII scan found personal data"):
        run(s, ExportRequest("leaky", ("kto", "steps"), SYN_START, SYN_END, "reward-v2"))
    (failed,) = (s.lake / "exports" / "leaky").iterdir()
    assert failed.name.startswith(".failed") and [p.name for p in failed.iterdir()] == ["REFUSED.json"]
    report = orjson.loads((failed / "REFUSED.json").read_bytes())
    assert report["pii_scan"]["hits"] and "jane.doe" not in (failed / "REFUSED.json").read_text()


def test_the_cli_rebuilds_from_a_manifest(synthetic_lake, synthetic_export, tmp_path):
    from tests.conftest import settings_env
    from tests.trajlake.test_cli import run as cli

    r = cli(["export", "--from-manifest", str(synthetic_export.path), "--out", str(tmp_path / "rebuilt")],
            settings_env(synthetic_lake))
    # rich wraps long lines at the terminal's width
    assert r.returncode == 0 and "every sha256 equals the manifest's" in " ".join(r.stdout.split()), r.stderr
    assert (tmp_path / "rebuilt" / "manifest.json").exists()


def test_a_leak_fails_the_export_unless_overridden(synthetic_lake, tmp_path, monkeypatch):
    """Identical prompts in two splits (as if the near-duplicate pass had missed them: every prompt digest is made
    equal) fail the export's quality suite and publish nothing; --allow-failed-checks publishes, and the manifest
    records the override and what failed."""
    import jobs.export as export
    from lake.readers import read_table
    from schemas.tables import QUALITY_QUARANTINE

    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    shutil.copytree(synthetic_lake.lake, s.lake, ignore=shutil.ignore_patterns("exports"))
    monkeypatch.setattr(export, "prompt_digest_sql", lambda text, **_: "'one-prompt'")
    request = ExportRequest("leaky", ("kto",), SYN_START, SYN_END, "reward-v2")
    with pytest.raises(ExportFailed, match="identical prompt.*in more than one split.*--allow-failed-checks") as exc:
        run(s, request)
    assert not any(p.name.startswith("v") for p in (s.lake / "exports" / "leaky").iterdir())
    failed = exc.value.manifest["quality"]
    assert not failed["success"] and not failed["overridden"]
    assert [f["column"] for f in failed["failures"]] == ["check_one_split_per_prompt"]
    quarantined = read_table(s, QUALITY_QUARANTINE).to_pylist()
    assert quarantined and {r["table"] for r in quarantined} == {"exports"}

    result = run(s, ExportRequest("leaky", ("kto",), SYN_START, SYN_END, "reward-v2", allow_failed_checks=True))
    q = result.manifest["quality"]
    assert q["overridden"] and not q["success"] and q["failures"][0]["column"] == "check_one_split_per_prompt"
    assert (result.path / "kto" / "train.jsonl").exists()


def test_a_clean_export_records_its_passing_suite(synthetic_export):
    q = synthetic_export.manifest["quality"]
    assert q["suite"] == "exports" and q["success"] and not q["overridden"] and q["expectations"] >= 10


def test_an_sft_export_formats_only_episodes_above_the_threshold(synthetic_lake, synthetic_export, tmp_path):
    """SFT alone groups and formats only the episodes its threshold admits, and writes the same bytes as the SFT
    part of an export of every format."""
    m, _ = build(synthetic_lake, ExportRequest("sft-only", ("sft",), SYN_START, SYN_END, "reward-v2"), tmp_path)
    full = synthetic_export.manifest
    sft_files = {k: v["sha256"] for k, v in full["files"].items() if k.startswith("sft/")}
    assert {k: v["sha256"] for k, v in m["files"].items()} == sft_files
    eps = m["counts"]["episodes"]
    assert eps["exported"] <= eps["formatted"] < full["counts"]["episodes"]["formatted"] == eps["in_window"]


def test_formatting_processes_write_the_same_bytes_as_inline(synthetic_lake, synthetic_export, tmp_path,
                                                             monkeypatch):
    """The process pool (forkserver, batches handed back as compact parts) and inline formatting agree byte for
    byte."""
    import jobs.export

    monkeypatch.setattr(jobs.export, "INLINE_UP_TO", 0)
    s = synthetic_lake.model_copy(update={"export_workers": 2})
    m, _ = build(s, ExportRequest("pool", tuple(FORMATS), SYN_START, SYN_END, "reward-v2"), tmp_path)
    assert {k: v["sha256"] for k, v in m["files"].items()} == \
        {k: v["sha256"] for k, v in synthetic_export.manifest["files"].items()}
    assert m["counts"] == synthetic_export.manifest["counts"]


def test_an_episode_revised_after_scoring_is_not_exported_with_its_old_score(synthetic_lake, synthetic_export,
                                                                             tmp_path):
    """A completed episode reopened after the scoring run has a stale score (of the revision that completed):
    it counts as unscored until it is rescored, instead of being imitated as a success."""
    from deltalake import write_deltalake

    from lake.readers import read_table
    from lake.tables import table_path
    from schemas.tables import SILVER_EPISODES

    s = synthetic_lake.model_copy(update={"lake_root": tmp_path / "lake"})
    shutil.copytree(synthetic_lake.lake, s.lake, ignore=shutil.ignore_patterns("exports"))
    sft = {r["episode_id"] for name in ("train", "validation", "test", "holdout")
           if (synthetic_export.path / "sft" / f"{name}.jsonl").exists()
           for r in rows(synthetic_export.path / "sft" / f"{name}.jsonl")}
    episodes = read_table(s, SILVER_EPISODES)
    row = next(r for r in episodes.to_pylist() if r["episode_id"] in sft)
    row.update(revision=row["revision"] + 1, outcome="reopened")
    write_deltalake(str(table_path(s, SILVER_EPISODES)), episodes.schema.empty_table().from_pylist([row], episodes.schema),
                    mode="append", partition_by=list(SILVER_EPISODES.partition_by))
    m, _ = build(s, ExportRequest("stale", ("sft",), SYN_START, SYN_END, "reward-v2"), tmp_path / "out")
    eps = m["counts"]["episodes"]
    assert eps["stale_scores"] == 1
    assert eps["unscored"] == synthetic_export.manifest["counts"]["episodes"]["unscored"] + 1
    exported = {r["episode_id"] for p in (tmp_path / "out" / "sft").glob("*.jsonl") for r in rows(p)}
    assert row["episode_id"] not in exported and sft - {row["episode_id"]} <= exported
