"""A training run: the loop, its set-up and resumption, one step, the schedule, the time
plan, the run directory, torchrun, fine-tuning's start, and what it reports."""
