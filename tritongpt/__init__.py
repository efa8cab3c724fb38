"""GPT-2 from scratch: config, model, tokenizers, data, training, generation and the `gpt` command."""
