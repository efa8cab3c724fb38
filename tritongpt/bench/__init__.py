"""Benchmarks: every implementation of each op (triton, reference, native, compile, the SDPA backends) and the
GPT-2 124M training step, at the shapes GPT-2 124M training runs.

    gpt bench --plan                  every case the full GPU suite times, one per line
    gpt bench                         the full suite on the GPU, results under results/<gpu>/
    gpt bench --quick                 small CPU shapes, the harness smoke test
    pytest tests/bench_ops.py --benchmark-only  the same op cases through pytest-benchmark (from a checkout)
    python -m tritongpt.bench.profile step --backend triton+compile --out DIR   where a step's time goes
    python -m tritongpt.bench.profile ncu --op layer_norm --out DIR             why one kernel is as fast as it is

Modules: `harness` (timers, ceilings, memory), `ops` (the plan, per-op cases and their runner), `train_step`
(end-to-end training throughput), `report` (CSV, plots, Markdown summary), `anchors` (published figures the
summary quotes), `decode` (generation speed with and without the KV cache), `cli` (the `gpt bench` command),
`profile` (the measurements behind a missed goal: a torch.profiler per-op table of one training step, by
category, and one kernel call run under Nsight Compute with its memory throughput, occupancy, registers and
warp stall reasons in a short ncu.md).
"""

from pathlib import Path

# Where results go unless --out says otherwise: results/<device>/ under the current folder (from a checkout's
# root, the repository's results/ folder, where measured results are committed; they are data, not package code).
RESULTS_DIR = Path("results")
