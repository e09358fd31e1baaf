"""Figures drawn from benchmark CSVs with matplotlib's Agg backend (no display needed)."""
