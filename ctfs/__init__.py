"""ctfs: OpenVZ-style operating-system containers driven through a filesystem."""

__version__ = "0.3.0"
