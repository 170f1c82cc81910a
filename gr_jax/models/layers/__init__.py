"""Reusable Flax building blocks, annotated with logical axis names for sharding."""
