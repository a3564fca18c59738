"""Pruning building blocks: layer selection, importance criteria, schedules, surgery helpers."""
