"""hullguard: container-aware malware protection for Linux servers."""

__version__ = "0.1.0"
