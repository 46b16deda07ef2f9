"""Evaluation: scoring models on AQA records, metrics with bootstrap intervals, reports."""
