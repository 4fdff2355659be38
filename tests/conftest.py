"""Test-wide settings.

Hypothesis runs without its per-example deadline: the machines that run the suite are
small and shared, and a slow example is not a failure. Failures print a reproduction blob.
"""

from hypothesis import settings

settings.register_profile("phalanx", deadline=None, print_blob=True)
settings.load_profile("phalanx")
