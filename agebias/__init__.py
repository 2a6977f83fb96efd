"""agebias: measure and reduce age bias in face recognition."""
__version__ = "0.1.0"
