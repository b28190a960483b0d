"""The embedded tiny default: a small causal LM and tokenizer built offline for CPU runs."""
