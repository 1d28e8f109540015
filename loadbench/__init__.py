"""loadbench: how fast a checkpoint gets from storage into GPU memory, per loading library."""

__version__ = "0.1.0"
