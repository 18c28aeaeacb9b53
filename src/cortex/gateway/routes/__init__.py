"""Thin HTTP handlers per dialect, plus fleet administration."""
