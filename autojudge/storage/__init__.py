"""Storage: files that appear whole (atomic writes), append-only JSONL, artifacts (safetensors +
JSON with a checksum, never pickle), the user cache, and the files the package ships."""

from autojudge.storage.artifact import read_artifact, write_artifact
from autojudge.storage.assets import asset
from autojudge.storage.atomic import atomic_directory, atomic_write_bytes
from autojudge.storage.jsonl import CorruptRecordError, append_records, drop_torn_tail, jsonable, read_records
from autojudge.storage.user_cache import cache_root

__all__ = ["CorruptRecordError", "append_records", "asset", "atomic_directory", "atomic_write_bytes", "cache_root",
           "drop_torn_tail", "jsonable", "read_artifact", "read_records", "write_artifact"]
