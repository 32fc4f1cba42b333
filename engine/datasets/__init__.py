"""Governed data: signed dataset manifests and approvals, the role matrix they live under, usage
policy, and schema checks of CSV and Parquet. DVC itself is reached through :mod:`engine.adapters.dvc`.
"""
