"""Trait probes: question sets (`questions`, data files in `data/`), log-probabilities (`logprob`), sampled rates
(`sampling`), judges (`judges`), the misalignment probe (`misalignment`) and a probe-only module (`target`)."""
