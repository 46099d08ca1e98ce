"""Moved to :mod:`sqz.data.prepare`. This old path stays only until the CLI (which still
imports it) is rewritten as the ``sqz/cli/`` package; delete it then."""

from sqz.data.prepare import SHARD_SCHEMA, ShardPlan, plan_shards, prepare

__all__ = ["SHARD_SCHEMA", "ShardPlan", "plan_shards", "prepare"]
