"""Rollout engines: sample G completions per prompt and return token ids, masks and behaviour log-probs."""
