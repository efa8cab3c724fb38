"""Benchmarks: every implementation of each op (triton, reference, native, compile, the SDPA backends) and the
GPT-2 124M training step, at the shapes GPT-2 124M training runs.

    gpt bench --plan                  every case the full GPU suite times, one per line
    gpt bench                         the full suite on the GPU, results under results/<gpu>/
    gpt bench --quick                 small CPU shapes, the harness smoke test
    pytest tests/bench_ops.py --benchmark-only  the same op cases through pytest-benchmark (from a checkout)

Modules: `harness` (timers, ceilings, memory), `ops` (the plan, per-op cases and their runner), `train_step`
(end-to-end training throughput), `report` (CSV, plots, Markdown summary), `anchors` (published figures the
summary quotes), `decode` (generation speed with and without the KV cache), `cli` (the `gpt bench` command).
"""

from pathlib import Path

# Where results go unless --out says otherwise: results/<device>/ under the current folder (from a checkout's
# root, the repository's results/ folder, where measured results are committed; they are data, not package code).
RESULTS_DIR = Path("results")
