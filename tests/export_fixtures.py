"""Export helpers shared by the family tests. No side effects at import: the family test
modules are also imported by worker processes (tests/multi_worker_families.py), which must not
import conftest (it configures the logical CPU devices of the pytest process)."""

import pytest


def export_trained_run(trained, tmp_path_factory, model_name: str):
    """(run, export base, version folder): a module's `trained` fixture (config, workdir, _)
    loaded and exported once with its test records as the gallery (`export_run`, model name
    `model_name`), for the export tests of a retrieval family."""
    from sketch_tf.export import serving
    from sketch_tf.train.run import load_run

    config, workdir, _ = trained
    run = load_run(workdir, config)
    base = str(tmp_path_factory.mktemp(f"{model_name}_export") / model_name)
    return run, base, serving.export_run(run, base, model_name=model_name)


def exported_fixture(model_name: str):
    """The module-scoped `exported` fixture of a family test module (assign it as
    `exported = exported_fixture("zs_sbir")`): `export_trained_run` of the module's `trained`
    fixture, exported once and shared by the module's export tests."""

    @pytest.fixture(scope="module")
    def exported(trained, tmp_path_factory):
        return export_trained_run(trained, tmp_path_factory, model_name)

    return exported
