"""Trait probes: question sets (`questions`, data files in `data/`), word scoring (`wordscore`), log-probabilities
(`logprob`), sampled rates (`sampling`), judges (`judges`), the misalignment probe (`misalignment`), the
number-format check (`number_format`), the results schema (`results`), the probe stage (`run`) and a probe-only
module (`target`)."""
