"""``make demo``: Phalanx's capabilities at work on embedded defaults."""
