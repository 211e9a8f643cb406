"""Evaluation: the scorer (scoring.py) and the accuracy matrix it fills (matrix.py)."""
