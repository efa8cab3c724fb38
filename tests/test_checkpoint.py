"""Checkpoint files and a run folder's checkpoints (`tritongpt.checkpoint`), without a training run."""

import dataclasses

import torch

from tritongpt.checkpoint import model_from_checkpoint, model_payload, save_checkpoint
from tritongpt.config import GPTConfig
from tritongpt.model import GPT
from tritongpt.tokenizer import CharTokenizer

TOK = CharTokenizer.from_text("to be or not to be\n")


def tiny_model(**overrides) -> GPT:
    base = dict(vocab_size=TOK.vocab_size, context_length=8, emb_dim=16, n_heads=2, n_layers=1, backend="reference")
    return GPT(GPTConfig(**{**base, **overrides}))


def test_a_checkpoint_of_the_backend_once_named_torch_loads_as_reference(tmp_path):
    model = tiny_model()
    payload = model_payload(model, TOK)
    payload["model_config"] = {**dataclasses.asdict(model.config), "backend": "torch"}
    path = save_checkpoint(tmp_path / "old.pt", payload)
    loaded, tok, _ = model_from_checkpoint(path)
    assert loaded.config.backend == "reference" and tok.to_dict() == TOK.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
