"""Kernel benchmarks (GPU): speed and peak memory against eager and torch.compile, as ratios to the roofline."""
