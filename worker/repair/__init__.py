"""Repair tools: backfills (gaps, windows, snapshots) and dead-letter replays, run by the
``fanout-worker backfill`` and ``dead-letters`` commands through the live handlers."""
