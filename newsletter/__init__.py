"""newsletter: turn a week of research summaries into a weekly email digest."""

__version__ = "0.1.0"
