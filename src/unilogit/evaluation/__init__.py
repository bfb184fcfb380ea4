"""Evaluators: how much of the forget set a model still knows, and how much else it kept."""
