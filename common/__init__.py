"""Shared foundation: settings, the SparkSession factory, event schemas, the store and the local stack."""
