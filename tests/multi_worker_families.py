"""The family configs of the multi-worker parity test, and the worker process that trains them.

`python -m tests.multi_worker_families SPEC.json` is one worker of a
MultiWorkerMirroredStrategy cluster (its `TF_CONFIG` names the cluster and the worker): it
trains every family of the spec, in order, with one strategy, into the spec's workdirs. The
test (tests/test_multi_worker.py) trains the same configs with one replica and compares.

SPEC.json: {"records": {family: records folder}, "workdirs": {family: workdir}}.
"""

import json
import os
import sys


def family_configs(records: dict[str, str]) -> dict:
    """The tiny test config of every family (the ones the family tests train), with what
    differs by design between replicas turned off (dropout masks are drawn per replica) and
    in-batch mining on (the cross-replica gather). One entry per key of `records`."""
    from tests.families.style_sbir.test_task import _config as style_config
    from tests.families.zooms.test_task import tiny_config as zooms_config
    from tests.families.zs_sbir.test_task import _config as zs_config

    configs = {}
    if "zooms" in records:
        configs["zooms"] = zooms_config(records["zooms"])
        configs["zooms"].model.dropout = 0.0
    if "zs_sbir" in records:
        configs["zs_sbir"] = zs_config(records["zs_sbir"], negatives="mined")
    if "style_sbir" in records:
        configs["style_sbir"] = style_config(records["style_sbir"])
    for config in configs.values():
        config.train.log_every = 1
    return configs


def main(spec_path: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sketch_tf.train.run import train_run
    from sketch_tf.train.strategy import build_strategy

    with open(spec_path) as f:
        spec = json.load(f)
    strategy = build_strategy("multi_worker")
    for family, config in family_configs(spec["records"]).items():
        result = train_run(config, spec["workdirs"][family], strategy, log=lambda *_: None)
        print(json.dumps({"family": family, "step": result.step, "status": result.status}))


if __name__ == "__main__":
    main(sys.argv[1])
