"""Tokenization speed of `gpt prepare` against the common baseline, on a generated multi-document corpus.

    python -m tritongpt.bench.prepare            # 200 MB corpus, N = 1 .. cores, 2 rounds -> results/<device>/
    python -m tritongpt.bench.prepare --mb 50 200  # two corpus sizes: memory must not grow with the corpus
    python -m tritongpt.bench.prepare --mb 20 --workers 1 2 --rounds 1 --no-csv  # a quick look

The corpus is generated (never downloaded): FineWeb-like Parquet, one document per row of a `text` column,
about 3.5 KB per document of Zipf-distributed words (English function words, made-up words, numbers, a
little non-ASCII) in sentences and paragraphs; it is kept in the temporary folder for later runs.

Providers, each tokenizing every document with GPT-2 BPE into 100M-token shards, with N workers:

    baseline   a multiprocessing.Pool(N) of tiktoken `encode_ordinary` calls, one document per task
               (imap, chunksize 16), `<|endoftext|>` before each, uint16 shards: how nanoGPT /
               build-nanogpt prepare FineWeb
    pool       the same pool, fed chunks of ~1 MB of documents, each returned as one uint16 array (what
               `gpt prepare` would be with processes instead of threads)
    ours       `gpt prepare --workers N`: N threads (tiktoken runs without the GIL), headered shards,
               meta.json with sha256, resumable

Every run is a fresh process; the providers alternate within each round, and the best of the rounds is
kept: the machine may be shared. MB/s counts the UTF-8 bytes of the documents' text per second of wall time;
MB per CPU-second divides them by the CPU time of the run's processes (user + system, workers included),
which other jobs on the machine change much less. Memory: the peak over the run of the proportional set size
(PSS, shared pages split between the processes that share them) of the main process and its workers,
sampled every 50 ms; running two corpus sizes (`--mb 50 200`) shows whether it grows with the corpus.
Results: results/<device>/prepare.csv (long format) and prepare.md (table, versions, machine, date).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tritongpt.bench import RESULTS_DIR

PROVIDERS = ("baseline", "pool", "ours")
SHARD_TOKENS = 100_000_000
EOT = 50256
COMMON = (
    "the of and to a in is that for it as was with be by on not he I this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can who its them other "
    "my time out into than only new some could these two may first then do any like now people over also after "
    "water because most through where world should very just made state between school learning students"
).split()
SYLLABLES = "ka to re mi an el or is un pe la ti so de ra ne co mu ba li st pr ch qu ou ay ion ing er ent al".split()
EXOTIC = ["café", "naïve", "Zürich", "日本語", "Ελληνικά", "кириллица", "🎉", "—", "“quoted”", "e.g.", "(see"]


# ---------------------------------------------------------------------------------------------------------
# The corpus


def corpus_path(mb: float, seed: int, cache: Path | None = None) -> Path:
    folder = cache or Path(tempfile.gettempdir()) / "tritongpt-bench-prepare"
    return folder / f"corpus-{mb:g}MB-seed{seed}.parquet"


def make_corpus(path: Path, mb: float, seed: int = 0) -> Path:
    """Write a Parquet file of about `mb` MB of text (UTF-8), in row groups of ~8 MB; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    made = set(COMMON) | set(EXOTIC)
    words = list(COMMON) + EXOTIC
    while len(words) < 30000:
        w = "".join(rng.choice(SYLLABLES, rng.integers(1, 5)))
        if w not in made:
            made.add(w)
            words.append(w)
    words += [str(n) for n in range(0, 2100, 7)]
    vocab = np.array(words, dtype=object)
    capital = np.array([w[:1].upper() + w[1:] for w in words], dtype=object)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    cdf = np.cumsum(p / p.sum())
    seps = np.array([" ", ". ", ", ", "? ", ".\n\n", "; ", ": "], dtype=object)
    sep_p = np.array([0.86, 0.07, 0.04, 0.005, 0.015, 0.005, 0.005])

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    target, written = int(mb * 10**6), 0
    with pq.ParquetWriter(tmp, pa.schema([("id", pa.int64()), ("text", pa.string())])) as w:
        n_docs = 0
        while written < target:
            n = max(min(1_400_000, (target - written) // 5), 10_000)  # words in this row group (up to ~8 MB)
            idx = np.searchsorted(cdf, rng.random(n))
            sep = rng.choice(len(seps), size=n, p=sep_p)
            ends = sep != 0
            starts = np.roll(ends, 1)
            toks = np.where(starts, capital[idx], vocab[idx])
            pieces = np.empty(2 * n, dtype=object)
            pieces[0::2], pieces[1::2] = toks, seps[sep]
            lengths = np.maximum(rng.lognormal(6.2, 0.7, size=n // 200).astype(int), 20)
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            bounds = bounds[bounds < n]
            docs = ["".join(pieces[2 * a : 2 * b - 1]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            written += sum(len(d.encode("utf-8")) for d in docs)
            ids = pa.array(np.arange(n_docs, n_docs + len(docs)))
            w.write_table(pa.table({"id": ids, "text": docs}))
            n_docs += len(docs)
    os.replace(tmp, path)
    return path


def corpus_stats(path: Path) -> tuple[int, int]:
    """(documents, UTF-8 bytes of text)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n_bytes = 0
    for batch in pf.iter_batches(columns=["text"]):
        n_bytes += pc.sum(pc.binary_length(batch.column(0))).as_py() or 0
    return pf.metadata.num_rows, n_bytes


# ---------------------------------------------------------------------------------------------------------
# One run (in a fresh process)


def _documents(path: Path):
    """The corpus' texts, read as `gpt prepare` reads them (a row group at a time, no pre-buffering)."""
    from tritongpt.corpus import iter_parquet

    for text, _ in iter_parquet(path):
        yield text


_ENC = None


def _baseline_tokenize(doc: str) -> np.ndarray:
    tokens = [EOT]
    tokens.extend(_ENC.encode_ordinary(doc))
    return np.array(tokens).astype(np.uint16)


def _pool_tokenize(docs: list[str]) -> np.ndarray:
    parts = []
    for d in docs:
        parts += [EOT, *_ENC.encode_ordinary(d)]
    return np.array(parts, dtype=np.uint16)


def _chunks(docs, chars: int = 1 << 20):
    out, n = [], 0
    for d in docs:
        out.append(d)
        n += len(d)
        if n >= chars:
            yield out
            out, n = [], 0
    if out:
        yield out


class _Shards:
    """build-nanogpt's shard filling: a uint16 buffer of SHARD_TOKENS, written with np.save when full."""

    def __init__(self, out: Path) -> None:
        self.out, self.buf, self.n, self.index, self.total = out, np.empty(SHARD_TOKENS, np.uint16), 0, 0, 0

    def add(self, tokens: np.ndarray) -> None:
        self.total += len(tokens)
        while len(tokens):
            take = min(len(tokens), SHARD_TOKENS - self.n)
            self.buf[self.n : self.n + take] = tokens[:take]
            self.n += take
            tokens = tokens[take:]
            if self.n == SHARD_TOKENS:
                self.flush()

    def flush(self) -> None:
        if self.n:
            np.save(self.out / f"shard_{self.index:06d}.npy", self.buf[: self.n])
            self.index, self.n = self.index + 1, 0


def run_one(provider: str, workers: int, corpus: Path, out: Path) -> dict:
    """Tokenize the corpus once: seconds, CPU seconds (workers included), tokens, peak PSS in MB."""
    global _ENC
    from tritongpt.tokenizer import gpt2_encoding

    out.mkdir(parents=True, exist_ok=True)
    if provider == "ours":
        import tritongpt.prepare
        from tritongpt.config import DataConfig
        from tritongpt.prepare import prepare
        from tritongpt.tokenizer import GPT2Tokenizer

        tok = GPT2Tokenizer()  # loaded before the clock starts, as the baseline's encoder is
        tritongpt.prepare.get_tokenizer = lambda name: tok
    else:
        _ENC = gpt2_encoding()  # before the fork: the workers inherit it
    memory = _MemorySampler()
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    if provider == "ours":
        cfg = DataConfig(dir=str(out), inputs=[str(corpus)], tokenizer="gpt2", val_fraction=0.0)
        meta = prepare(cfg, quiet=True, workers=workers, force=True)
        tokens = meta["split"]["train_tokens"]
    else:
        shards = _Shards(out)
        with mp.get_context("fork").Pool(workers) as pool:
            if provider == "baseline":
                results = pool.imap(_baseline_tokenize, _documents(corpus), chunksize=16)
            else:
                results = pool.imap(_pool_tokenize, _chunks(_documents(corpus)))
            for arr in results:
                shards.add(arr)
        shards.flush()
        tokens = shards.total
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "peak_pss_MB": memory.stop() / 2**20}


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (a Pool's workers count once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class _MemorySampler:
    """Peak PSS of this process and its descendants, sampled from /proc every 50 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, sum(_pss(p) for p in _family(os.getpid())))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def _family(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_in_subprocess(provider: str, workers: int, corpus: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "tritongpt.bench.prepare", "--one", provider, str(workers), str(corpus), str(out)]
    root = Path(__file__).resolve().parents[2]  # the folder holding tritongpt/: importable from a checkout too
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"{provider} N={workers} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------
# The benchmark


def machine() -> dict:
    import pyarrow
    import tiktoken

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "tiktoken": tiktoken.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tritongpt.bench.prepare", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap.add_argument("--mb", type=float, nargs="+", default=[200], help="corpus sizes in MB of text (default 200)")
    ap.add_argument("--workers", type=int, nargs="+", default=list(range(1, cores + 1)), metavar="N")
    ap.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    ap.add_argument("--rounds", type=int, default=2, help="runs of each (provider, N); the best is kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, help="folder of the generated corpora (default: the temporary folder)")
    ap.add_argument("--no-csv", action="store_true", help="print the table only")
    ap.add_argument("--out", type=Path, help="results folder (default results/<device>)")
    ap.add_argument("--one", nargs=4, metavar=("PROVIDER", "N", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        provider, n, corpus, out = args.one
        print(json.dumps(run_one(provider, int(n), Path(corpus), Path(out))))
        return 0
    if min(args.mb) <= 0 or args.rounds < 1 or min(args.workers) < 1:
        ap.error("--mb must be > 0, --rounds and --workers >= 1")

    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, tiktoken {info['tiktoken']}, pyarrow {info['pyarrow']}")
    best: dict[tuple[int, str, int], dict] = {}
    corpora = {}
    for mb in args.mb:
        corpus = corpus_path(mb, args.seed, args.cache)
        if not corpus.is_file():
            t0 = time.perf_counter()
            make_corpus(corpus, mb, args.seed)
            print(f"generated {corpus} in {time.perf_counter() - t0:.0f} s")
        docs, text_bytes = corpus_stats(corpus)
        corpora[mb] = (docs, text_bytes)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"corpus {corpus}: {docs:,} documents, {text_bytes / 1e6:,.1f} MB of text (load {load})")
        with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
            for r in range(args.rounds):
                for n in args.workers:
                    for provider in args.providers:
                        out = Path(scratch) / f"{provider}-{n}-{r}"
                        res = run_in_subprocess(provider, n, corpus, out)
                        res["MB/s"] = text_bytes / 1e6 / res["seconds"]
                        res["tokens/s"] = res["tokens"] / res["seconds"]
                        res["MB/cpu-s"] = text_bytes / 1e6 / res["cpu_seconds"]
                        print(
                            f"  round {r + 1} {provider:>8} N={n}: {res['seconds']:7.1f} s  {res['MB/s']:6.2f} MB/s  "
                            f"{res['tokens/s'] / 1e6:5.2f} M tokens/s  {res['MB/cpu-s']:5.2f} MB/cpu-s  "
                            f"peak PSS {res['peak_pss_MB']:,.0f} MB",
                            flush=True,
                        )
                        key = (mb, provider, n)
                        if key not in best or res["seconds"] < best[key]["seconds"]:
                            best[key] = res
                        for f in out.iterdir():  # free the disk between runs
                            f.unlink()
    info["load"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    table = summary_table(best, args)
    print("\n" + "\n".join(table))
    if args.no_csv:
        return 0
    import torch

    from tritongpt.bench.harness import current_env
    from tritongpt.bench.report import with_env, write_csv

    rows = []
    for (mb, provider, n), res in best.items():
        common = dict(op="prepare", provider=provider, mode="tokenize", shape=f"{mb:g}MB N{n}", dtype="gpt2")
        metrics = ("MB/s", "tokens/s", "MB/cpu-s", "seconds", "peak_pss_MB")
        rows += [{**common, "metric": m, "value": res[m]} for m in metrics]
        base = best.get((mb, "baseline", n))
        if base:
            rows.append({**common, "metric": "speedup_vs_baseline", "value": base["seconds"] / res["seconds"]})
    env = current_env(torch.device("cpu"))
    out = args.out or RESULTS_DIR / env.slug
    write_csv(with_env(rows, env), out / "prepare.csv")
    (out / "prepare.md").write_text("\n".join(summary_header(args, info, env, corpora) + table) + "\n", "utf-8")
    print(f"wrote {out / 'prepare.csv'} and {out / 'prepare.md'}")
    return 0


def summary_table(best: dict, args) -> list[str]:
    lines = [
        "| corpus | provider | N | MB/s | M tokens/s | vs baseline | MB per CPU-s | peak PSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mb in args.mb:
        for n in args.workers:
            base = best.get((mb, "baseline", n))
            for provider in args.providers:
                res = best[(mb, provider, n)]
                speedup = f"{base['seconds'] / res['seconds']:.2f}×" if base else "—"
                lines.append(
                    f"| {mb:g} MB | {provider} | {n} | {res['MB/s']:.2f} | {res['tokens/s'] / 1e6:.3f} | {speedup} | "
                    f"{res['MB/cpu-s']:.2f} | {res['peak_pss_MB']:,.0f} |"
                )
    return lines


def summary_header(args, info: dict, env, corpora: dict) -> list[str]:
    sizes = ", ".join(f"{mb:g} MB ({d:,} documents, {b / 1e6:,.1f} MB of text)" for mb, (d, b) in corpora.items())
    return [
        "# `gpt prepare` tokenization speed",
        "",
        f"`python -m tritongpt.bench.prepare --mb {' '.join(f'{mb:g}' for mb in args.mb)} "
        f"--workers {' '.join(map(str, args.workers))} "
        f"--rounds {args.rounds}`, {env.date}: {info['cpu']}, {info['cores']} cores shared with other jobs (load "
        f"average {info['load']} at the end), Python {info['python']}, tiktoken {info['tiktoken']}, pyarrow "
        f"{info['pyarrow']}, numpy {info['numpy']}, torch {env.torch}.",
        "",
        f"Generated Parquet corpora: {sizes}. GPT-2 BPE into 100M-token shards. Best of {args.rounds} round(s), "
        "each run a fresh process. baseline: `multiprocessing.Pool(N).imap` of tiktoken `encode_ordinary` per "
        "document (chunksize 16), as nanoGPT / build-nanogpt; pool: the same pool fed ~1 MB chunks of documents; "
        "ours: `gpt prepare --workers N` (threads). MB per CPU-s: text MB over the CPU time of all the run's "
        "processes. Peak PSS: main process and workers together.",
        "",
    ]


if __name__ == "__main__":  # under `gpt`'s rules for Ctrl-C and standard output
    from tritongpt.cli import run_guarded

    sys.exit(run_guarded("python -m tritongpt.bench.prepare", main))
