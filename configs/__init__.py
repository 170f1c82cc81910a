"""Experiment configs: one file per system, ``get_config(arg)`` -> ConfigDict."""
