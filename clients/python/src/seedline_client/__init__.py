"""Typed Python client for Seedline."""
