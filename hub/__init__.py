"""Connect Hub: one uniform instruction, every channel, every outcome recorded."""

__version__ = "0.1.0"
