"""Benchmarks: the Triton kernels against the eager reference, torch's native ops and torch.compile.

    gpt bench                         full suite on the GPU, results under bench/results/<gpu>/
    gpt bench --quick                 small CPU shapes (eager, torch, compile), the harness smoke test
    pytest bench/ --benchmark-only    the same cases through pytest-benchmark

Modules: `harness` (timing, ceilings, memory), `ops` (per-op cases), `train_step` (end-to-end GPT
training throughput), `report` (CSV, plots, Markdown summary), `cli` (the `gpt bench` command).
"""
