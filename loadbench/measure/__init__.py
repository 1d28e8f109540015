"""Measuring: checksums, one trial, one pod's run, and saving checkpoints."""
