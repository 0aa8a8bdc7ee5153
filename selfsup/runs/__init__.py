"""The run folder: config.json, provenance.json, metrics.jsonl, checkpoint.pt, backbone.safetensors,
pictures/ and eval/. Everything that reads or writes one goes through here: atomic writes, the
checkpoint format, provenance, ``load_backbone``, a run's config and data, and result paths.

It sits above ``data`` and ``models`` (loading a backbone builds one; a run's data is a dataset)
and below ``methods``, ``engine`` and ``eval``.
"""
from ..atomic import atomic_write, write_json
from .backbone import checkpoint_backbone, load_backbone
from .checkpoint import load_checkpoint, read_backbone, save_backbone, save_checkpoint
from .data import data_spec, foreign_tag, run_data
from .folder import RUN_DIRS, RUN_FILES, git_commit, prepare, provenance, read_metrics, result_name, result_path, run_config
from .paths import check_result_out, check_writable

__all__ = ["atomic_write", "write_json", "load_backbone", "checkpoint_backbone", "load_checkpoint", "read_backbone",
           "save_backbone", "save_checkpoint", "run_data", "RUN_DIRS", "RUN_FILES", "git_commit", "prepare",
           "provenance", "read_metrics", "run_config", "result_path", "result_name", "data_spec", "foreign_tag",
           "check_writable", "check_result_out"]

