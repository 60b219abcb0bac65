"""Benchmark: trajlake's scrubber against vanilla Presidio on τ-bench text, speed and recall, same run.

vanilla   Presidio as its README shows it: AnalyzerEngine (default recognizers; the NLP engine pointed at the
          only spaCy model this machine has, en_core_web_sm) + AnonymizerEngine (default replace), one text at a
          time, on every string of every event body.
trajlake  EventScrubber over the same events: field rules, the session dictionary, patterns, Presidio NER
          only where needed, cached (what the worker's scrub process runs).
Both single process, on one BLAS thread. texts/s = the number of body strings / wall time. Recall per PII
kind = 1 − (distinct ground-truth values still present after scrubbing / distinct values present before), with
the ground truth from airline-users.json (privacy/leakage.py).

Usage: .venv/bin/python bench/scrub_speed.py [--trajectories 40] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from privacy.leakage import GroundTruth, LeakScanner, strings_of  # noqa: E402
from privacy.scrub import SPACY_MODEL, EventScrubber, one_blas_thread  # noqa: E402
from streams.sources.tau_bench import load_trajectories, replay_events  # noqa: E402

TAU = REPO.parent / "shared" / "data" / "tau-bench"


def vanilla_engines():
    import logging

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy", "models": [
        {"lang_code": "en", "model_name": SPACY_MODEL}]}).create_engine()
    return AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"]), AnonymizerEngine()


def recall(scanner: LeakScanner, before: list[str], after: list[str]) -> dict[str, float]:
    b, a = scanner.scan(before).found, scanner.scan(after).found
    return {k: round(1 - len(a.get(k, set())) / len(v), 4) for k, v in sorted(b.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    one_blas_thread()  # one core each, as privacy/worker.py's init does in the worker
    events = [e.event for e in replay_events(load_trajectories(TAU / "gpt-4o-airline.json"), limit=a.trajectories)]
    texts = [t for e in events for t in strings_of(e["body"]) if t.strip()]
    scanner = LeakScanner(GroundTruth.load(TAU / "airline-users.json"))
    analyzer, anonymizer = vanilla_engines()
    ours = EventScrubber(b"bench-key", use_ner=True)
    ours.analyzer  # noqa: B018 - load before timing, as the worker does at start
    analyzer.analyze("warm up John Smith", language="en")
    runs = []
    for _ in range(a.runs):
        t = time.perf_counter()
        v_out = [anonymizer.anonymize(x, analyzer.analyze(x, language="en")).text for x in texts]
        v_s = time.perf_counter() - t
        ours._ner.cache_clear()  # every run starts cold: no NER results carried over from the previous run
        t = time.perf_counter()
        o_events = ours.scrub_events([json.loads(json.dumps(e)) for e in events], {})
        o_s = time.perf_counter() - t
        runs.append({"vanilla_texts_per_s": len(texts) / v_s, "trajlake_texts_per_s": len(texts) / o_s})
        print(json.dumps(runs[-1]), flush=True)
    o_texts = [t for e in o_events for t in strings_of(e["body"])]
    v_recall, o_recall = recall(scanner, texts, v_out), recall(scanner, texts, o_texts)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    out = {"machine": machine, "texts": len(texts), "events": len(events), "runs": runs, "median": med,
           "recall": {"vanilla": v_recall, "trajlake": o_recall}}
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "out" / "scrub_speed.json").write_text(json.dumps(out, indent=2))
    print(f"\n{len(texts)} texts from {len(events)} events ({a.trajectories} trajectories), {a.runs} runs, "
          f"machine {machine}\n")
    print("| scrubber | texts/s (median) | ratio | recall: " + " / ".join(v_recall) + " |")
    print("|---|---|---|---|")
    print(f"| vanilla Presidio | {med['vanilla_texts_per_s']:,.1f} | 1.0 | "
          + " / ".join(f"{v_recall[k]:.2f}" for k in v_recall) + " |")
    print(f"| trajlake | {med['trajlake_texts_per_s']:,.1f} | "
          f"{med['trajlake_texts_per_s'] / med['vanilla_texts_per_s']:.1f} | "
          + " / ".join(f"{o_recall.get(k, 0):.2f}" for k in v_recall) + " |")


if __name__ == "__main__":
    main()
