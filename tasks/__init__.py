"""Thin Prefect tasks: arguments in, one `motfm_core` call, paths out."""
