"""Benchmark: Presidio on spaCy's NER alone (what build_analyzer runs) against the pipelines it replaced.

Texts: every distinct string of every event body of the 200 τ-bench trajectories and of a seeded synthetic
stream (the worker's two sources). For each pipeline, Presidio's analyze over spaCy's batched `process_batch`
(as `EventScrubber.prepare_ner` calls it), --runs times over the first --sample texts, interleaved; ms per text
is the median. Then each pipeline's findings (entity, start, end, score) over all texts, compared with NER alone.

  ner-only  build_analyzer as committed: the ner pipe, lowercase text as lemmas, matrices multiplied by numpy's
            OpenBLAS (one thread, as in the worker's scrub process)
  blis      the same, but multiplied by thinc's default, cython-blis
  before    what build_analyzer ran before: every pipe but the parser (tok2vec, tagger, attribute_ruler,
            lemmatizer, ner), spaCy's lemmas
  whole     the full model, the parser on too
(before and whole multiply with numpy's OpenBLAS too: they differ from ner-only in their pipes alone)

Usage: .venv/bin/python bench/ner_pipeline.py [--synthetic-events 20000] [--sample 3000] [--runs 3]
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

from privacy import policy  # noqa: E402
from privacy.leakage import strings_of  # noqa: E402
from privacy.scrub import LEMMA_COMPONENT, NON_NER_PIPES, build_analyzer, one_blas_thread  # noqa: E402
from streams.sources.synthetic import synthetic_events  # noqa: E402
from streams.sources.tau_bench import load_trajectories, replay_events  # noqa: E402

TAU = REPO.parent / "shared" / "data" / "tau-bench" / "gpt-4o-airline.json"


def corpus(synthetic: int) -> list[str]:
    texts = [t for e in replay_events(load_trajectories(TAU)) for t in strings_of(e.event["body"]) if t.strip()]
    texts += [t for e in synthetic_events(synthetic, seed=11) for t in strings_of(e.event.get("body"))
              if isinstance(t, str) and len(t) > 3]
    return list(dict.fromkeys(texts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic-events", type=int, default=20_000)
    ap.add_argument("--sample", type=int, default=3_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    one_blas_thread()  # as privacy/worker.py's init does in the scrub process
    texts = corpus(args.synthetic_events)
    analyzer = build_analyzer()
    nlp = analyzer.nlp_engine.nlp["en"]
    ops = nlp.get_pipe("ner").model.ops  # one ops object, shared by every layer (privacy/scrub.py::_gemm_by_numpy)
    entities = list(policy.PRESIDIO_LABELS)

    def use(variant: str) -> None:
        ops.use_blis = variant == "blis"
        for name in NON_NER_PIPES:
            on = variant == "whole" or (variant == "before" and name != "parser")
            (nlp.enable_pipe if on else nlp.disable_pipe)(name)
        (nlp.enable_pipe if variant in ("ner-only", "blis") else nlp.disable_pipe)(LEMMA_COMPONENT)

    def findings(ts: list[str]) -> list[list[tuple]]:
        return [sorted((r.entity_type, r.start, r.end, round(r.score, 6))
                       for r in analyzer.analyze(text, language="en", entities=entities, nlp_artifacts=artifacts))
                for text, artifacts in analyzer.nlp_engine.process_batch(ts, language="en", batch_size=64)]

    sample = texts[:args.sample]
    variants = ("ner-only", "blis", "before", "whole")
    for name in variants:
        use(name)
        findings(sample[:200])  # warm each
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.runs):
        for name in variants[r % 4:] + variants[:r % 4]:  # the order rotates per run
            use(name)
            t = time.perf_counter()
            findings(sample)
            times[name].append(1000 * (time.perf_counter() - t) / len(sample))
    found = {}
    for name in variants:
        use(name)
        found[name] = findings(texts)
    use("ner-only")
    lite = found["ner-only"]
    differ = {name: [i for i in range(len(texts)) if lite[i] != found[name][i]] for name in variants[1:]}
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"texts": len(texts), "sample": len(sample), "ms_per_text": times, "median": med,
              "ratio_to_blis": med["ner-only"] / med["blis"], "ratio_to_before": med["ner-only"] / med["before"],
              "ratio_to_whole": med["ner-only"] / med["whole"],
              "findings": sum(map(len, lite)), "texts_differing": {k: len(v) for k, v in differ.items()},
              "differing_examples": {k: [(texts[i][:200], lite[i], found[k][i]) for i in v[:10]]
                                     for k, v in differ.items()},
              "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}"}
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ner_pipeline.json").write_text(json.dumps(result, indent=1))
    print(f"| pipeline | ms/text runs | median |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {' / '.join(f'{x:.2f}' for x in v)} | **{med[k]:.2f}** |")
    print(f"ratio ner-only/blis {result['ratio_to_blis']:.2f}, ner-only/before {result['ratio_to_before']:.2f}, "
          f"ner-only/whole {result['ratio_to_whole']:.2f}; findings {result['findings']:,} on {len(texts):,} texts; "
          "texts whose findings differ from ner-only: " + ", ".join(f"{k} {len(v)}" for k, v in differ.items()))


if __name__ == "__main__":
    main()
