"""Offline data preparation: sample data and chunking of long videos."""
