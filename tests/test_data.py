"""Window samplers: determinism, shifted targets, per-rank slices, short splits; the sliding-window dataset."""

import numpy as np
import pytest
import torch

from gpt.data import DataError, SlidingWindowDataset, WindowSampler, token_dtype
from gpt.tokenizer import CharTokenizer

TOKENS = np.arange(1000, dtype=np.uint16) % 97


def test_sampler_deterministic_and_shifted():
    s = WindowSampler(TOKENS, context_length=16, batch_size=4, seed=7)
    x, y = s.batch(step=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = WindowSampler(TOKENS, 16, 4, seed=7).batch(step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, s.batch(step=4)[0])
    assert not torch.equal(x, WindowSampler(TOKENS, 16, 4, seed=8).batch(step=3)[0])
    assert torch.equal(s.fixed_batches(2)[1][0], s.fixed_batches(2)[1][0])


def test_ranks_and_micro_batches_cover_the_global_batch():
    """2 ranks x 2 micro-batches x 3 windows == 1 process with one batch of 12 windows."""
    single = WindowSampler(TOKENS, 8, batch_size=12, seed=1)
    split = WindowSampler(TOKENS, 8, batch_size=3, seed=1, grad_accum=2, world_size=2)
    whole = single.batch(step=5)[0]
    parts = [split.batch(5, micro, rank)[0] for micro in range(2) for rank in range(2)]
    assert torch.equal(torch.cat(parts), whole)


def test_context_longer_than_split():
    with pytest.raises(DataError, match="fewer than one window"):
        WindowSampler(TOKENS[:16], context_length=16, batch_size=1, seed=0, name="val.bin")
    WindowSampler(TOKENS[:17], context_length=16, batch_size=1, seed=0)  # exactly one window fits


def test_sliding_window_dataset():
    tok = CharTokenizer.from_text("abcdefghij")
    ds = SlidingWindowDataset("abcdefghij", max_length=4, stride=2, tokenizer=tok)
    assert len(ds) == 3  # windows start at 0, 2, 4 (the last needs a target at 8)
    x, y = ds[1]
    assert tok.decode(x.tolist()) == "cdef" and tok.decode(y.tolist()) == "defg"
    assert tok.decode(ds[-1][0].tolist()) == "efgh"
    with pytest.raises(IndexError):
        ds[3]
    assert len(SlidingWindowDataset(list(range(10)), max_length=3, stride=3)) == 3
    with pytest.raises(DataError):
        SlidingWindowDataset(list(range(4)), max_length=4, stride=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert next(iter(loader))[0].shape == (2, 4)


def test_token_dtype():
    assert token_dtype(50257) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32


def test_fixed_batches_depend_only_on_the_global_batch():
    single = WindowSampler(TOKENS, 8, batch_size=4, seed=2).fixed_batches(2)
    ranks = [WindowSampler(TOKENS, 8, batch_size=2, seed=2, world_size=2).fixed_batches(2, rank=r) for r in (0, 1)]
    for i in range(2):
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), single[i][0])


def test_python_source_corpus():
    from gpt.data import python_source_files

    files = python_source_files()
    assert len(files) > 100 and files == sorted(files)
    assert any(f.name == "os.py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
