"""Ranking metrics and evaluators."""
