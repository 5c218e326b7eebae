"""Data sets as TFDS builders and the grain input pipeline both trainers share."""
